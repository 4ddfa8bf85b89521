"""The few array operations a layer needs between kernel calls, on the GPU.

:class:`DeviceOps` mirrors :class:`fastrnn.layers.HostOps` for device arrays
(numba device arrays, or anything with ``__cuda_array_interface__``, taken
without a copy): stacking layers and directions, dropout masks, gradient
accumulation. Each operation is one small elementwise kernel; none copies
through the host except where named (``from_host``, ``to_host``).
"""
import numpy as np
from numba import cuda

THREADS = 256


def _blocks(n):
    return max(1, (n + THREADS - 1) // THREADS)


@cuda.jit
def _copy3_kernel(dst, src, off_dst, off_src, n_last, swap):
    # dst[t, b, off_dst + k] = src[t, b, off_src + k] (src indexed [b, t] when swap)
    # dst: [T, B, *], src: [T, B, *] or [B, T, *]; k < n_last
    i = cuda.grid(1)
    T, B = dst.shape[0], dst.shape[1]
    if i < T * B * n_last:
        k = i % n_last
        tb = i // n_last
        b = tb % B
        t = tb // B
        if swap:
            dst[t, b, off_dst + k] = src[b, t, off_src + k]
        else:
            dst[t, b, off_dst + k] = src[t, b, off_src + k]


@cuda.jit
def _axpby_kernel(out, a, b, alpha, beta, mode):
    # flat arrays of one size: mode 0: out = alpha*a + beta*b; 1: out = a * b; 2: out = alpha
    i = cuda.grid(1)
    if i < out.size:
        if mode == 0:
            out[i] = alpha * a[i] + beta * b[i]
        elif mode == 1:
            out[i] = a[i] * b[i]
        else:
            out[i] = alpha


def _flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


class DeviceOps:
    """Array operations on device arrays (see :class:`fastrnn.layers.HostOps`)."""

    on_device = True

    @staticmethod
    def asarray(a):
        """A numba view of a device array, without a copy."""
        if type(a).__module__.startswith("numba.cuda"):
            return a
        return cuda.as_cuda_array(a)

    @staticmethod
    def from_host(a):
        return cuda.to_device(np.ascontiguousarray(a))

    @staticmethod
    def to_host(a):
        return a.copy_to_host()

    @staticmethod
    def zeros(shape, dtype):
        return cuda.to_device(np.zeros(shape, dtype))

    @staticmethod
    def empty(shape, dtype):
        return cuda.device_array(shape, dtype)

    def contiguous3(self, a, swap=False):
        """A C-contiguous copy of a 3-D array, axes 0 and 1 swapped when ``swap``."""
        shape = (a.shape[1], a.shape[0], a.shape[2]) if swap else a.shape
        out = cuda.device_array(shape, a.dtype)
        n = shape[0] * shape[1] * shape[2]
        _copy3_kernel[_blocks(n), THREADS](out, a, 0, 0, shape[2], swap)
        return out

    def concat_last(self, parts):
        if len(parts) == 1:
            return parts[0]
        T, B = parts[0].shape[:2]
        out = cuda.device_array((T, B, sum(p.shape[2] for p in parts)), parts[0].dtype)
        off = 0
        for p in parts:
            n = T * B * p.shape[2]
            _copy3_kernel[_blocks(n), THREADS](out, p, off, 0, p.shape[2], False)
            off += p.shape[2]
        return out

    def take_last(self, a, lo, hi):
        T, B = a.shape[:2]
        out = cuda.device_array((T, B, hi - lo), a.dtype)
        n = T * B * (hi - lo)
        _copy3_kernel[_blocks(n), THREADS](out, a, 0, lo, hi - lo, False)
        return out

    def _ew(self, out, a, b, alpha, beta, mode):
        fo, fa, fb = _flat(out), _flat(a), _flat(b)
        _axpby_kernel[_blocks(fo.size), THREADS](fo, fa, fb, alpha, beta, mode)
        return out

    def add(self, a, b):
        return self._ew(cuda.device_array(a.shape, a.dtype), a, b, 1.0, 1.0, 0)

    def iadd(self, a, b):
        self._ew(a, a, b, 1.0, 1.0, 0)

    def mul(self, a, b):
        return self._ew(cuda.device_array(a.shape, a.dtype), a, b, 1.0, 1.0, 1)

    def fill0(self, a):
        self._ew(a, a, a, 0.0, 0.0, 2)

    @staticmethod
    def set_index0(dst, i, src):
        dst[i].copy_to_device(src)

    @staticmethod
    def stack0(parts):
        out = cuda.device_array((len(parts),) + tuple(parts[0].shape), parts[0].dtype)
        for i, p in enumerate(parts):
            out[i].copy_to_device(p)
        return out
