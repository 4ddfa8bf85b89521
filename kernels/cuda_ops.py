"""Device-array helpers, and the few array operations a layer needs between kernel calls.

The helpers take any device array: numba device arrays, or anything with
``__cuda_array_interface__`` (CuPy, torch), viewed without a copy
(:func:`view`); host arrays are copied over only by :func:`to_device` and back
only by :func:`to_host`. :func:`fastrnn.contract.is_device_array` is the one
test of what counts as a device array. Allocation and fills come from
:mod:`fastrnn.kernels.cuda_base` (``empty``, ``zeros``, ``fill`` here are its
functions), and so do the launch sizes (``settings.threads`` threads per block).
Here too: the tree reductions of a block's shared array that the losses and
the gradient norm share.

:class:`DeviceOps` mirrors :class:`fastrnn.ops.HostOps` for device arrays:
stacking layers and directions, dropout masks, gradient accumulation. Each
operation is one small elementwise kernel; none copies through the host
except where named (``from_host``, ``to_host``).
"""
import numba
import numpy as np
from numba import cuda

from ..contract import is_device_array
from .cuda_base import _empty as empty
from .cuda_base import _fill as fill
from .cuda_base import _grid
from .cuda_base import _zeros as zeros

__all__ = ["view", "to_device", "to_host", "empty", "zeros", "fill", "contiguous", "mul",
           "DeviceOps"]

_F64 = numba.from_dtype(np.dtype(np.float64))


# --------------------------------------------------------------------------- arrays
def view(a):
    """A numba view of a device array (no copy)."""
    if type(a).__module__.startswith("numba.cuda"):
        return a
    return cuda.as_cuda_array(a)


def to_device(a, dtype=None):
    """``a`` on the device: device arrays as they are (viewed), host arrays copied."""
    if is_device_array(a):
        return view(a)
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def to_host(a):
    """A host ndarray (device arrays copied back, host arrays as they are)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return view(a).copy_to_host()


def _flat(a):
    """A C-contiguous device array as 1-D (a view)."""
    return a if len(a.shape) == 1 else a.reshape(a.size)


def _launch_flat(kernel, a, *args):
    """``kernel(*args)`` with one thread per element of ``a``; nothing when ``a`` is empty."""
    if a.size:
        kernel[_grid(a.size)](*args)


@cuda.jit
def _copy1_kernel(dst, src):
    # src, dst: [N] (any strides)
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


@cuda.jit
def _copy2_kernel(dst, src):
    # src, dst: [M, N] (any strides)
    i = cuda.grid(1)
    N = dst.shape[1]
    if i < dst.shape[0] * N:
        dst[i // N, i % N] = src[i // N, i % N]


@cuda.jit
def _copy3_kernel(dst, src, off_dst, off_src, n_last, swap):
    # dst[t, b, off_dst + k] = src[t, b, off_src + k] (src indexed [b, t] when swap)
    # dst: [T, B, *], src: [T, B, *] or [B, T, *] (any strides); k < n_last
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


def _copy3(out, src, off_dst, off_src, n_last, swap):
    """``out[:, :, off_dst:off_dst + n_last] = src[:, :, off_src:...]`` (axes 0, 1 of
    ``src`` swapped when ``swap``), one thread per element copied."""
    n = out.shape[0] * out.shape[1] * n_last
    _copy3_kernel[_grid(n)](out, src, off_dst, off_src, n_last, swap)


def contiguous(a):
    """``a`` itself when C-contiguous, else a C-contiguous copy (1-3 dimensions)."""
    a = view(a)
    if a.is_c_contiguous():
        return a
    out = empty(a.shape, a.dtype)
    nd = len(a.shape)
    if nd == 3:
        _copy3(out, a, 0, 0, a.shape[2], False)
        return out
    kern = {1: _copy1_kernel, 2: _copy2_kernel}.get(nd)
    if kern is None:
        raise ValueError(f"a non-contiguous device array of {nd} dimensions "
                         "cannot be copied here (1 to 3 only)")
    kern[_grid(out.size)](out, a)
    return out


@cuda.jit
def _mul_kernel(a, b, out):
    # flat [N]
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] * b[i]


def mul(a, b):
    """``a * b`` elementwise (same shape; both C-contiguous)."""
    out = empty(a.shape, a.dtype)
    _launch_flat(_mul_kernel, out, _flat(a), _flat(b), _flat(out))
    return out


@cuda.jit
def _axpby_kernel(out, a, b, alpha, beta):
    # flat arrays of one size: out = alpha*a + beta*b
    i = cuda.grid(1)
    if i < out.size:
        out[i] = alpha * a[i] + beta * b[i]


def _sum_into(out, a, b):
    """``out = a + b`` (C-contiguous, one shape; ``out`` may be ``a``); returns ``out``."""
    fo = _flat(out)
    _axpby_kernel[_grid(fo.size)](fo, _flat(a), _flat(b), 1.0, 1.0)
    return out


# --------------------------------------------------------------------------- reductions
# Tree reductions of a shared array of ``nt`` entries (a power of two), one
# entry per thread, into entry 0. They sync the block (after the entries are
# stored, then after each level), so every thread of the block must call them.
@cuda.jit(device=True)
def _block_sum(buf, tid, nt):
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _block_max(buf, tid, nt):
    # the maximum, NaN propagating
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            b = buf[tid + s]
            if b > buf[tid] or b != b:
                buf[tid] = b
        cuda.syncthreads()
        s //= 2


# --------------------------------------------------------------------------- layer ops
class DeviceOps:
    """Array operations on device arrays (see :class:`fastrnn.ops.HostOps`)."""

    on_device = True

    asarray = staticmethod(view)
    zeros = staticmethod(zeros)
    empty = staticmethod(empty)

    @staticmethod
    def from_host(a):
        return cuda.to_device(np.ascontiguousarray(a))

    @staticmethod
    def to_host(a):
        return a.copy_to_host()

    def contiguous3(self, a, swap=False):
        """A C-contiguous copy of a 3-D array, axes 0 and 1 swapped when ``swap``."""
        shape = (a.shape[1], a.shape[0], a.shape[2]) if swap else a.shape
        out = empty(shape, a.dtype)
        _copy3(out, a, 0, 0, shape[2], swap)
        return out

    def concat_last(self, parts):
        if len(parts) == 1:
            return parts[0]
        T, B = parts[0].shape[:2]
        out = empty((T, B, sum(p.shape[2] for p in parts)), parts[0].dtype)
        off = 0
        for p in parts:
            _copy3(out, p, off, 0, p.shape[2], False)
            off += p.shape[2]
        return out

    def take_last(self, a, lo, hi):
        T, B = a.shape[:2]
        out = empty((T, B, hi - lo), a.dtype)
        _copy3(out, a, 0, lo, hi - lo, False)
        return out

    def add(self, a, b):
        return _sum_into(empty(a.shape, a.dtype), a, b)

    def iadd(self, a, b):
        _sum_into(a, a, b)

    mul = staticmethod(mul)

    @staticmethod
    def fill0(a):
        fill(a, 0)

    @staticmethod
    def set_index0(dst, i, src):
        dst[i].copy_to_device(src)

    @staticmethod
    def stack0(parts):
        out = empty((len(parts),) + tuple(parts[0].shape), parts[0].dtype)
        for i, p in enumerate(parts):
            out[i].copy_to_device(p)
        return out
