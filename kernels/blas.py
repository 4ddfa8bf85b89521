"""The one BLAS of the CPU kernels, and its thread count.

Every BLAS call, in and out of the compiled loops, goes to ONE library: the
OpenBLAS that NumPy itself loads. Its ``cblas_?gemm`` symbol is bound into
LLVM under a fixed name (``llvmlite.binding.add_symbol`` plus a
``types.ExternalFunction``, called as :func:`mm` from ``@njit`` code), so the
compiled kernels keep ``cache=True`` (a ctypes function pointer would disable
caching) and no second OpenBLAS pool (SciPy's, which ``np.dot`` in ``@njit``
would use) competes for the cores (two pools of spinning worker threads made a
GEMM-then-loop sequence 2x slower on the 2-core machine).

The BLAS thread count is chosen per call by the size of each product
(:data:`TWO_THREAD_FLOPS`), capped by :func:`set_num_threads`; NumPy's own
OpenBLAS setting is restored when a call returns (:class:`Threads`).
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading

import numpy as np

from fastrnn.kernels.cpu_settings import settings

try:  # the backend reports itself unavailable instead of failing the package import
    import llvmlite.binding as _ll
    from numba import types
    from numba.extending import overload
    NUMBA_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the install
    NUMBA_ERROR = f"numba is not installed ({exc})"

__all__ = ["available", "set_num_threads", "get_num_threads", "Threads", "mm"]

# The cblas symbol is bound under these fixed names. Every integer argument is
# passed as int64: NumPy's OpenBLAS here is ILP64 (``scipy_cblas_sgemm64_``);
# for an LP64 build on x86-64/aarch64 the callee reads the low 32 bits of the
# same register or 8-byte stack slot, which holds the same (small, positive)
# value. Keeping one signature keeps cached machine code valid either way.
_SGEMM_NAME = "fastrnn_cblas_sgemm"
_DGEMM_NAME = "fastrnn_cblas_dgemm"
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _blas_library_paths():
    """Candidate shared libraries for the BLAS that NumPy uses, best first."""
    npdir = os.path.dirname(np.__file__)
    paths = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy.libs/*blas*"):
        paths += sorted(glob.glob(os.path.join(npdir, pattern)))
    try:  # Linux: whatever BLAS is already mapped into this process
        with open("/proc/self/maps") as maps:
            for line in maps:
                p = line.split()[-1]
                if "blas" in os.path.basename(p).lower() and os.path.isfile(p):
                    paths.append(p)
    except OSError:
        pass
    seen = []
    for p in paths:
        p = os.path.realpath(p)
        if p not in seen:
            seen.append(p)
    return seen


def _bind_blas():
    """Find NumPy's cblas ?gemm and thread setter; bind the gemms into LLVM."""
    for path in _blas_library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre, suf in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            try:
                s = getattr(lib, f"{pre}cblas_sgemm{suf}")
                d = getattr(lib, f"{pre}cblas_dgemm{suf}")
            except AttributeError:
                continue
            setter = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
            getter = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
            _ll.add_symbol(_SGEMM_NAME, ctypes.cast(s, ctypes.c_void_p).value)
            _ll.add_symbol(_DGEMM_NAME, ctypes.cast(d, ctypes.c_void_p).value)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
            if getter is not None:
                getter.restype = ctypes.c_int
            return path, setter, getter
    return None, None, None


if NUMBA_ERROR is None:
    BLAS_PATH, blas_set_threads, blas_get_threads = _bind_blas()
else:  # pragma: no cover
    BLAS_PATH = blas_set_threads = blas_get_threads = None


def available():
    """``(ok, reason)``: the backend needs Numba and NumPy's cblas symbols."""
    if NUMBA_ERROR is not None:
        return False, NUMBA_ERROR
    if BLAS_PATH is None:
        return False, ("could not find cblas_sgemm/cblas_dgemm in the BLAS library "
                       "NumPy loads (expected NumPy's bundled OpenBLAS)")
    return True, ""


# --------------------------------------------------------------------------- threads
# Below this many FLOPs per BLAS call one thread is used, above it up to
# set_num_threads(). For the no-transpose products used here a second thread
# pays from about 1 MFLOP on (the transposed, NT, product only from ~16 MFLOP),
# with no layer shape slower. The count is switched per call (one cheap call
# into OpenBLAS) and put back when the call returns, so NumPy's own setting is
# left alone.
TWO_THREAD_FLOPS = 1e6
def usable_cores():
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):          # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: the thread cap when neither set_num_threads nor FASTRNN_NUM_THREADS set it:
#: the cores the process may run on
DEFAULT_THREADS = usable_cores()


def set_num_threads(n):
    """Set the most threads the CPU kernels use (any n >= 1; each call may use fewer,
    and no more than the usable cores unless ``settings.oversubscribe``)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    settings.num_threads = n


def get_num_threads():
    """The most threads the CPU kernels use."""
    return settings.num_threads or DEFAULT_THREADS


class Threads:
    """Switch OpenBLAS's thread count within one call; restore it at the end.

    OpenBLAS's thread count is one process-wide setting. Calls from several
    Python threads at once share it: the first call in saves NumPy's value, the
    last one out restores it (a lock and a count), and while more than one call
    runs every call uses one BLAS thread (each call already has a core's worth
    of work). Without this, two overlapping calls could restore each other's
    temporary value and leave NumPy on one thread for good."""

    __slots__ = ("cur",)
    _lock = threading.Lock()
    _active = 0
    _saved = 0

    def __init__(self):
        cls = Threads
        with cls._lock:
            if cls._active == 0:
                cls._saved = blas_get_threads() if blas_get_threads is not None else 0
            cls._active += 1
            self.cur = None

    def use(self, flops):
        n = 1 if (flops < TWO_THREAD_FLOPS or Threads._active > 1) else get_num_threads()
        if n > 1 and not settings.oversubscribe:      # BLAS threads past the cores only wait
            n = min(n, usable_cores())
        if n != self.cur and blas_set_threads is not None:
            with Threads._lock:
                blas_set_threads(n)
            self.cur = n
        return n

    def restore(self):
        cls = Threads
        with cls._lock:
            cls._active -= 1
            if cls._active == 0 and blas_set_threads is not None and cls._saved:
                blas_set_threads(cls._saved)


# --------------------------------------------------------------------------- mm
if NUMBA_ERROR is None and BLAS_PATH is not None:
    _I = types.int64
    _P = types.uintp
    _sgemm = types.ExternalFunction(_SGEMM_NAME, types.void(
        _I, _I, _I, _I, _I, _I, types.float32, _P, _I, _P, _I, types.float32, _P, _I))
    _dgemm = types.ExternalFunction(_DGEMM_NAME, types.void(
        _I, _I, _I, _I, _I, _I, types.float64, _P, _I, _P, _I, types.float64, _P, _I))

    def mm(a, b, c, trans_b, beta):
        """c = a @ (bᵀ if trans_b else b) + beta * c, through NumPy's BLAS (stub)."""
        raise NotImplementedError("mm is only callable from @njit code")

    @overload(mm, inline="always")
    def _ol_mm(a, b, c, trans_b, beta):
        # 2-d views with contiguous rows: a [M, K], b [N, K] or [K, N], c [M, N]
        gemm = _sgemm if a.dtype == types.float32 else _dgemm

        def impl(a, b, c, trans_b, beta):
            # M, N, K >= 1 always here (B, H >= 1); no branches: a branch in an
            # inlined overload trips Numba's SSA pass (NumbaIRAssumptionWarning)
            isz = a.itemsize
            M, K = a.shape
            N = c.shape[1]
            # leading dimensions from the row strides; a one-row array may carry
            # any row stride (NumPy's relaxed strides), so never below the width
            gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS + (_TRANS - _NO_TRANS) * trans_b, M, N, K,
                 1.0, a.ctypes.data, max(a.strides[0] // isz, K), b.ctypes.data,
                 max(b.strides[0] // isz, b.shape[1]), beta, c.ctypes.data,
                 max(c.strides[0] // isz, N))
        return impl
