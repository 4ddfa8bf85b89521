"""What every CUDA module of the backend shares: the ``numba.cuda`` import, the
launch settings and the launch sizes derived from them (``_grid``, ``_pow2``),
the simulator's stand-ins, and device arrays (allocation, copies, the one fill
kernel, per-thread workspaces, shared constants).

It imports without numba-cuda (the kernels are then not defined), so the
backend can say why it is unavailable; the array helpers that take any device
array (views, host copies, strided copies) are in :mod:`fastrnn.kernels.cuda_ops`.

:mod:`fastrnn.kernels.cuda` re-exports the public names (``settings``,
``configure``, ``clear_workspaces``...); see its docstring for the strategies
the settings steer.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

try:  # numba-cuda may be missing entirely
    import numba
    from numba import cuda
    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the install
    numba = cuda = None
    _IMPORT_ERROR = exc

SIMULATOR = bool(numba is not None and numba.config.ENABLE_CUDASIM)


# --------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Launch configuration; tests shrink these so tiny inputs span several blocks.

    tile : side of the square tile of the simple GEMM kernel (one output per
        thread, tile² threads), used for products of fewer than
        ``blocked_min_rows`` rows (the per-step products of small batches).
    gemm_blocking : ``(bm, bn, bk, tm, tn)`` of the register-blocked GEMM kernel
        used from ``blocked_min_rows`` rows on: a ``bm x bn`` tile of C per
        block of ``(bn/tn) * (bm/tm)`` threads, K in slices of ``bk``.
    blocked_min_rows : from this many rows of C on, the blocked kernel; below,
        the simple one, whose smaller tiles give more blocks (a per-step
        product of a batch of 64 would fill only 64 blocks of 64x64).
    threads : threads per block of the pointwise kernels.
    strategy : "auto", "per_step" or "persistent".
    persistent_max_batch : "auto" uses the persistent kernel only up to this B.
    persistent_threads : threads per block of the persistent kernel.
    persistent_units : hidden units per persistent block (HB); None: chosen so
        the grid fits the device (one block under the simulator).
    persistent_lanes : threads that share one dot product in the persistent
        kernels (a power of two up to 32 that divides ``persistent_threads``).
    persistent_max_hidden : "auto" uses the persistent kernel only up to this H.
    shared_bytes : most dynamic shared memory a persistent block may use for
        its slice of ``W_hh``; the slice is shrunk (fewer units per block) to
        fit, and read from global memory only when no co-resident grid of
        such blocks covers H.
    use_cupy : send the time-parallel GEMMs to cuBLAS through CuPy if present.
    cupy_min_rows : per-step products with at least this many rows (batch
        entries) go to cuBLAS too when CuPy is used; smaller ones stay on the
        tiled kernel, where a launch is cheaper than CuPy's dispatch.
    colsum_block : ``(columns, rows)`` of threads per block of the column sums
        (bias gradients): each block reduces a chunk of rows of a tile of
        columns in shared memory, a second pass adds the chunks (fixed order:
        deterministic).
    colsum_rows : rows per chunk of the column sums.
    workspace_bytes : workspaces up to this size are kept between calls.
    """

    tile: int = 16
    gemm_blocking: tuple = (64, 64, 16, 4, 4)
    blocked_min_rows: int = 128
    threads: int = 128
    strategy: str = "auto"
    persistent_max_batch: int = 16
    persistent_threads: int = 256
    persistent_units: Optional[int] = None
    persistent_lanes: int = 32
    persistent_max_hidden: int = 1024
    shared_bytes: int = 48 * 1024
    use_cupy: bool = True
    cupy_min_rows: int = 32
    colsum_block: tuple = (32, 8)
    colsum_rows: int = 256
    workspace_bytes: int = 64 * 2 ** 20


settings = Settings()


STRATEGIES = ("auto", "per_step", "persistent")


class configure:
    """Set fields of :data:`settings`; usable as a context manager that restores them.

    >>> with configure(tile=4, threads=16):
    ...     ...
    """

    def __init__(self, **kw):
        for k in kw:
            if not hasattr(settings, k):
                raise ValueError(f"unknown CUDA setting {k!r}")
        if kw.get("strategy", "auto") not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {kw['strategy']!r}")
        lanes = kw.get("persistent_lanes", 1)
        if not (isinstance(lanes, int) and 1 <= lanes <= 32 and lanes & (lanes - 1) == 0):
            raise ValueError(f"persistent_lanes must be a power of two in [1, 32], got {lanes!r}")
        self._old = {k: getattr(settings, k) for k in kw}
        for k, v in kw.items():
            setattr(settings, k, v)

    def __enter__(self):
        return settings

    def __exit__(self, *exc):
        for k, v in self._old.items():
            setattr(settings, k, v)
        return False


if SIMULATOR:
    _sim_lock = threading.Lock()

    def _sim_shfl_down_sync(self, mask, value, delta):
        """The simulator's missing ``cuda.shfl_down_sync``: lane ``i`` gets lane
        ``i + delta``'s value (its own past the end of the warp). It waits for
        every thread of the block (a barrier of its own: much faster than the
        simulator's polled ``syncthreads``), so it is right only when every
        thread calls it the same number of times, which is how the kernels here
        call it (their loops are uniform across the block, as full-mask
        shuffles need on a GPU too)."""
        t = threading.current_thread()
        mgr = t._manager
        with _sim_lock:
            state = mgr.__dict__.get("_fastrnn_shfl")
            if state is None:
                n = int(np.prod(mgr._block_dim))
                state = mgr._fastrnn_shfl = ({}, threading.Barrier(n))
        slots, barrier = state
        slots[t.thread_id] = value
        barrier.wait(timeout=600)   # a thread that failed breaks it instead of hanging
        out = value
        if t.thread_id % 32 + delta < 32:
            out = slots.get(t.thread_id + delta, value)
        barrier.wait(timeout=600)
        return out

    from numba.cuda.simulator.kernelapi import FakeCUDAModule as _FakeCUDAModule
    if not hasattr(_FakeCUDAModule, "shfl_down_sync"):
        _FakeCUDAModule.shfl_down_sync = _sim_shfl_down_sync


# --------------------------------------------------------------------------- launch sizes
def _tpb():
    """Threads per block of the one-thread-per-element kernels (``settings.threads``)."""
    return max(1, int(settings.threads))


def _pow2():
    """Threads per block of the reduction kernels: a power of two <= settings.threads."""
    n = _tpb()
    return 1 << (n.bit_length() - 1)


def _grid(n, tpb=None):
    """``(blocks, threads)`` of a launch with one thread per element of ``n``."""
    tpb = tpb or _tpb()
    return max(1, (n + tpb - 1) // tpb), tpb


# --------------------------------------------------------------------------- arrays
if cuda is not None:
    @cuda.jit
    def _fill_kernel(a, v):
        # a: [N]
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = v


def _dev(a):
    """A device view of ``a`` (no copy for device arrays; NumPy is copied over)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if SIMULATOR:
        return a
    if cuda.is_cuda_array(a) and not cuda.devicearray.is_cuda_ndarray(a):
        return cuda.as_cuda_array(a)
    return a


def _empty(shape, dtype):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=dtype)


def _copy(a):
    out = cuda.device_array(a.shape, dtype=a.dtype)
    out.copy_to_device(a)
    return out


def _fill(a, value):
    """Set every element of the C-contiguous device array ``a`` to ``value``; returns ``a``."""
    n = a.size
    if n:
        _fill_kernel[_grid(n)](a.reshape(n), value)
    return a


def _zeros(shape, dtype):
    """A device array of zeros (filled on the device: no host copy)."""
    return _fill(_empty(shape, dtype), 0)


def _device_key():
    """Which device the cached arrays below belong to."""
    if SIMULATOR:
        return 0
    return cuda.get_current_device().id


WORKSPACES = threading.local()     # per thread: {key: device array}, and their total bytes


def _work(tag, shape, dtype):
    """A workspace: a device array kept per thread, device, ``tag``, shape and
    dtype and handed to later calls again (every kernel here runs on the
    default stream, in order, so a later call's writes follow this call's
    reads). Never returned to a caller. The cache holds at most
    ``settings.workspace_bytes``; a larger request is allocated afresh and a
    request that would overflow the cache empties it first."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    cap = settings.workspace_bytes
    if nbytes > cap:
        return cuda.device_array(shape, dtype=dtype)
    cache = getattr(WORKSPACES, "arrays", None)
    if cache is None:
        cache = WORKSPACES.arrays = {}
        WORKSPACES.nbytes = 0
    key = (_device_key(), tag, shape, dtype.str)
    a = cache.get(key)
    if a is None:
        if WORKSPACES.nbytes + nbytes > cap:
            cache.clear()
            WORKSPACES.nbytes = 0
        a = cache[key] = cuda.device_array(shape, dtype=dtype)
        WORKSPACES.nbytes += nbytes
    return a


_CONST = {}     # read-only device arrays: zero dummies, full lengths


def _dummy(shape, dtype):
    """A small zero array that stands in for an argument a cell does not use
    (never written by any kernel, so one is shared by every call)."""
    key = (_device_key(), "dummy", tuple(shape), np.dtype(dtype).str)
    a = _CONST.get(key)
    if a is None:
        a = _CONST[key] = _zeros(shape, dtype)
    return a


def clear_workspaces():
    """Free the cached workspaces and constant arrays (of this thread's cache
    and the shared constants); later calls allocate them again."""
    cache = getattr(WORKSPACES, "arrays", None)
    if cache is not None:
        cache.clear()
        WORKSPACES.nbytes = 0
    _CONST.clear()


def _row_major(a, rows):
    """View a C-contiguous [..., N] device array as [rows, N]."""
    return a.reshape(rows, a.shape[len(a.shape) - 1])

