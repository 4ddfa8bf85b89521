"""The CUDA backend: ``numba.cuda`` kernels for every cell of :mod:`fastrnn.cells`.

It implements the backend contract of :mod:`fastrnn.dispatch` (one layer, one
direction, a whole sequence) on device arrays: numba device arrays or anything
with ``__cuda_array_interface__`` (taken without a copy); NumPy arrays are
copied to the device for convenience. Every array returned lives on the device.

Notation: ``T`` steps, ``B`` batch, ``I`` inputs, ``H`` hidden units, ``G``
gates (``GH = G*H``), ``K`` saved activations per unit (see ``_SAVED``).

Strategies (chosen per call by :func:`choose_strategy`, or forced through
``settings.strategy``):

``"per_step"``
    One tiled GEMM ``xw = x W_ihᵀ + b_ih`` over all ``T*B`` rows, then per step
    the recurrent product ``hw = h W_hhᵀ + b_hh`` (the same tiled GEMM kernel)
    and one fused pointwise kernel that applies the cell, writes ``y`` and, in
    training, saves the gate activations. ``gru_reset_before`` and
    ``peephole_full`` have a second product inside the step (``U_n (r ⊙ h)``,
    ``P_o c'``), so their step is two pointwise kernels around it.
``"persistent"``
    The whole time loop in one cooperative kernel. Block ``k`` owns the hidden
    units ``[k*HB, (k+1)*HB)`` and keeps the rows of ``W_hh`` for those units
    (all gates) in shared memory: ``HB`` is shrunk until that slice fits
    ``settings.shared_bytes`` (48 KiB by default, the most a block gets without
    an opt-in), with more blocks to cover ``H``; only when that grid cannot be
    co-resident are the weights read from global memory (L2) instead. Each
    recurrent product ``h · W_hh[row]`` is split across a group of
    ``settings.persistent_lanes`` threads (a warp: each lane takes every 32nd
    ``k``, then a ``shfl_down_sync`` tree adds the partial sums), so even at
    ``B = 1`` every thread of the block works. Per step each block computes
    its units' products, ``syncthreads``, applies the cell to its units and
    then waits at ``cuda.cg.this_grid().sync()`` so the next step reads a
    complete ``h`` (double-buffered, so no block overwrites what another still
    reads). Backward keeps the *columns* of ``W_hh`` for its units (a slice of
    ``W_hhᵀ``) and has the same one grid barrier per step (between writing the
    gate gradients of its units and reading everyone's for ``dh += da W_hh``).
    ``gru_reset_before`` and ``peephole_full`` need every unit's ``r ⊙ h``
    (resp. ``c'``) inside the step, so theirs has two grid barriers per step
    and reads the weights from global memory (no shared cache), with the same
    warp-split products. ``cuda.cg.this_grid().sync()`` makes numba launch
    the kernel cooperatively; the grid is sized from
    ``max_cooperative_grid_blocks`` so all blocks are co-resident, and
    ``"auto"`` falls back to per-step kernels (with a warning, once) if the
    cooperative kernel cannot be built or launched here.

:func:`choose_strategy` takes the persistent kernel for batches up to
``settings.persistent_max_batch`` and ``H`` up to
``settings.persistent_max_hidden`` (beyond, one layer's ``W_hh`` no longer
fits the shared memory of a whole GPU and a per-step cuBLAS product reads it
as fast).

Weight gradients and ``dx`` are time-parallel GEMMs after the backward loop.
When CuPy is importable (and ``settings.use_cupy``), those large GEMMs, and
the per-step products of at least ``settings.cupy_min_rows`` rows, go to
cuBLAS through it; without CuPy the tiled kernel does them all.

Under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) everything runs
except a persistent grid of more than one block (the simulator's grid barrier
only synchronises within a block), which is refused with a ValueError;
``"auto"`` never picks the persistent kernel there. The simulator has no warp
shuffles: this module gives it a stand-in (see ``_sim_shfl_down_sync``).

Host overhead per call: workspaces up to ``settings.workspace_bytes`` are kept
per thread and shape and reused (:func:`clear_workspaces` frees them); the
device array of full lengths used when ``lengths`` is None is made once per
``(T, B)``. The CuPy path wraps numba arrays as CuPy arrays by pointer (no
``__cuda_array_interface__`` stream synchronisation) and calls
``cupy.cublas.gemm`` with ``beta = 1`` into an output pre-filled with the bias,
so it allocates nothing for contiguous operands.

Empty problems (``T``, ``B`` or ``H`` zero) launch no kernel: forward returns
empty outputs of the right shapes and the state unchanged; backward returns
zero weight gradients and ``dh0 = dh_n``.

Saved for backward (training): ``hs [T,B,H]`` the state *before* each step,
``cs [T,B,H]`` the cell before each step (LSTM family), ``acts [T,B,K*H]`` the
activations, all indexed by *step* ``s``; the gradients of the
pre-activations are kept twice: ``dah [T,B,GH]`` by step (for the recurrent
product and ``dW_hh``) and ``dax [T,B,GH]`` by time (for ``dx`` and
``dW_ih``). Entries of padded steps are written as zeros, so every buffer is
fully defined without a memset.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

try:  # numba-cuda may be missing entirely
    import numba
    from numba import cuda
    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the install
    numba = cuda = None
    _IMPORT_ERROR = exc

from fastrnn.dispatch import Weights

from . import pointwise

__all__ = ["available", "forward", "backward", "to_device", "to_host", "settings", "Settings",
           "configure", "choose_strategy", "clear_workspaces", "SIMULATOR", "STRATEGIES",
           "PERSISTENT_CELLS"]

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
#: cells the persistent kernel runs (one recurrent product per step)
PERSISTENT_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "peephole_diagonal",
                    "gru_reset_before", "peephole_full")
#: of those, the cells whose step holds a second, dependent product
TWO_PHASE_CELLS = ("gru_reset_before", "peephole_full")


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


def available():
    """``(True, "")`` when kernels can run (a GPU, or the simulator), else ``(False, why)``."""
    if cuda is None:
        return False, f"numba.cuda cannot be imported ({_IMPORT_ERROR})"
    if SIMULATOR:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if cuda.is_available():
            return True, ""
    except Exception as exc:  # pragma: no cover - driver problems
        return False, f"CUDA driver error: {exc}"
    return False, ("no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to run the kernels "
                   "in Numba's CUDA simulator)")


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


# --------------------------------------------------------------------------- arrays
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


def to_device(weights):
    """A :class:`Weights` of device arrays (device inputs are taken as they are)."""
    return Weights(*(_dev(w) for w in weights))


def to_host(obj):
    """Copy a device array, or a tuple / :class:`Weights` of them, to NumPy."""
    if obj is None:
        return None
    if isinstance(obj, Weights):
        return Weights(*(to_host(w) for w in obj))
    if isinstance(obj, tuple):
        return tuple(to_host(o) for o in obj)
    if isinstance(obj, np.ndarray):
        return obj
    return obj.copy_to_host()


def _empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


def _copy(a):
    out = cuda.device_array(a.shape, dtype=a.dtype)
    out.copy_to_device(a)
    return out


def _zeros(shape, dtype):
    out = cuda.device_array(shape, dtype=dtype)
    n = int(np.prod(shape))
    if n:
        tpb = settings.threads
        _fill_kernel[(n + tpb - 1) // tpb, tpb](out.reshape(n), 0)
    return out


def _device_key():
    """Which device the cached arrays below belong to."""
    if SIMULATOR:
        return 0
    return cuda.get_current_device().id


_WS = threading.local()     # per thread: {key: device array}, and their total bytes


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
    cache = getattr(_WS, "arrays", None)
    if cache is None:
        cache = _WS.arrays = {}
        _WS.nbytes = 0
    key = (_device_key(), tag, shape, dtype.str)
    a = cache.get(key)
    if a is None:
        if _WS.nbytes + nbytes > cap:
            cache.clear()
            _WS.nbytes = 0
        a = cache[key] = cuda.device_array(shape, dtype=dtype)
        _WS.nbytes += nbytes
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
    cache = getattr(_WS, "arrays", None)
    if cache is not None:
        cache.clear()
        _WS.nbytes = 0
    _CONST.clear()


def _row_major(a, rows):
    """View a C-contiguous [..., N] device array as [rows, N]."""
    return a.reshape(rows, a.shape[len(a.shape) - 1])


# --------------------------------------------------------------------------- device code
if cuda is not None:
    @cuda.jit(device=True)
    def _tanh(x):
        return math.tanh(x)

    @cuda.jit(device=True)
    def _sigmoid(x):
        # σ(x) = (1 + tanh(x/2)) / 2: no exp overflow for large |x|. The
        # constant takes x's type: a bare 0.5 would turn float32 kernels into
        # float64 ones (double-precision tanh), as the PTX showed
        half = type(x)(0.5)
        return half * math.tanh(half * x) + half

    _pw = pointwise.build(cuda.jit(device=True), _tanh, _sigmoid)
    # module-level names: the kernels can only call globals, not namespace attributes
    _pw_gru_grad = _pw.gru_grad
    _pw_gru_reset_before_gates = _pw.gru_reset_before_gates
    _pw_gru_reset_before_grad_n = _pw.gru_reset_before_grad_n
    _pw_gru_reset_before_grad_r = _pw.gru_reset_before_grad_r
    _pw_gru_reset_before_step = _pw.gru_reset_before_step
    _pw_gru_step = _pw.gru_step
    _pw_lstm_grad = _pw.lstm_grad
    _pw_lstm_step = _pw.lstm_step
    _pw_peephole_cell = _pw.peephole_cell
    _pw_peephole_grad_cell = _pw.peephole_grad_cell
    _pw_peephole_grad_out = _pw.peephole_grad_out
    _pw_peephole_out = _pw.peephole_out
    _pw_rnn_relu_grad = _pw.rnn_relu_grad
    _pw_rnn_relu_step = _pw.rnn_relu_step
    _pw_rnn_tanh_grad = _pw.rnn_tanh_grad
    _pw_rnn_tanh_step = _pw.rnn_tanh_step

    @cuda.jit
    def _fill_kernel(a, v):
        # a: [N]
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = v

    @cuda.jit
    def _transpose_kernel(a, out):
        # a: [M, N]  out: [N, M]
        m, n = cuda.grid(2)
        if m < a.shape[0] and n < a.shape[1]:
            out[n, m] = a[m, n]

    @cuda.jit(device=True)
    def _time(s, b, lengths, reverse):
        """The time index step ``s`` of entry ``b`` reads, or -1 past its length."""
        n = lengths[b]
        if s >= n:
            return -1
        if reverse:
            return n - 1 - s
        return s

    @cuda.jit
    def _bias_kernel(C, bias, use_bias, accumulate):
        # C: [M,N] = (C if accumulate else 0) + (bias if use_bias else 0); bias: [N]
        # (a grid-stride loop over a 1-D grid: no 65,535-block limit on M)
        M = C.shape[0]
        N = C.shape[1]
        for i in range(cuda.grid(1), M * N, cuda.gridsize(1)):
            m = i // N
            n = i - m * N
            if accumulate:
                if use_bias:
                    C[m, n] += bias[n]
            elif use_bias:
                C[m, n] = bias[n]
            else:
                C[m, n] = 0

    @cuda.jit(device=True)
    def _lane_sum(v, lanes):
        """The sum of ``v`` over each aligned group of ``lanes`` threads (a power
        of two <= 32), valid in the group's first lane. Every thread of the
        warp must call it (full-mask shuffles): callers keep their loops
        uniform across the block."""
        off = lanes // 2
        while off > 0:
            v += cuda.shfl_down_sync(0xFFFFFFFF, v, off)
            off //= 2
        return v

    # ------------------------------------------------------------- forward points
    # One hidden unit ``j`` of one batch entry ``b`` at step ``s`` (time ``t``,
    # -1 when padded). Shapes: xw [T,B,GH]; hw [B,GH]; h_in/h_out, c_in/c_out
    # [B,H] (the same array in the per-step path; double buffers in the
    # persistent kernel); y [T,B,H]; acts [S,B,K*H]; hs, cs [S,B,H] with
    # S = T in training and 1 in inference (``slot`` = s or 0); peep [3,H] or
    # [3,H,H]; aux: per-cell work array.

    @cuda.jit(device=True)
    def _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, K, has_c):
        """A padded step: zero output, state carried, saved entries zeroed."""
        y[s, b, j] = 0
        h_out[b, j] = h_in[b, j]
        hs[slot, b, j] = 0
        for k in range(K):
            acts[slot, b, k * H + j] = 0
        if has_c:
            c_out[b, j] = c_in[b, j]
            cs[slot, b, j] = 0

    def _rnn_fwd_point(step):
        """The RNN step for one unit, with ``step`` = tanh or relu (pointwise)."""
        @cuda.jit(device=True)
        def fwd(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, peep, aux):
            if t < 0:
                _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 1, False)
                return
            hn = step(xw[t, b, j] + hw[b, j])
            hs[slot, b, j] = h_in[b, j]
            acts[slot, b, j] = hn
            h_out[b, j] = hn
            y[t, b, j] = hn
        return fwd

    _rnn_tanh_fwd = _rnn_fwd_point(_pw_rnn_tanh_step)
    _rnn_relu_fwd = _rnn_fwd_point(_pw_rnn_relu_step)

    @cuda.jit(device=True)
    def _lstm_fwd(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs,
                  peep, aux):
        if t < 0:
            _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 5, True)
            return
        cp = c_in[b, j]
        i, f, g, o, c, tc, hn = _pw_lstm_step(
            xw[t, b, j] + hw[b, j], xw[t, b, H + j] + hw[b, H + j],
            xw[t, b, 2 * H + j] + hw[b, 2 * H + j], xw[t, b, 3 * H + j] + hw[b, 3 * H + j], cp)
        hs[slot, b, j] = h_in[b, j]
        cs[slot, b, j] = cp
        acts[slot, b, j] = i
        acts[slot, b, H + j] = f
        acts[slot, b, 2 * H + j] = g
        acts[slot, b, 3 * H + j] = o
        acts[slot, b, 4 * H + j] = tc
        c_out[b, j] = c
        h_out[b, j] = hn
        y[t, b, j] = hn

    @cuda.jit(device=True)
    def _gru_fwd(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs,
                 peep, aux):
        if t < 0:
            _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 4, False)
            return
        hp = h_in[b, j]
        anh = hw[b, 2 * H + j]
        r, z, n, hn = _pw_gru_step(xw[t, b, j] + hw[b, j], xw[t, b, H + j] + hw[b, H + j],
                                 xw[t, b, 2 * H + j], anh, hp)
        hs[slot, b, j] = hp
        acts[slot, b, j] = r
        acts[slot, b, H + j] = z
        acts[slot, b, 2 * H + j] = n
        acts[slot, b, 3 * H + j] = anh
        h_out[b, j] = hn
        y[t, b, j] = hn

    @cuda.jit(device=True)
    def _peep_diag_fwd(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs,
                       peep, aux):
        if t < 0:
            _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 6, True)
            return
        cp = c_in[b, j]
        i, f, g, c = _pw_peephole_cell(xw[t, b, j] + hw[b, j] + peep[0, j] * cp,
                                     xw[t, b, H + j] + hw[b, H + j] + peep[1, j] * cp,
                                     xw[t, b, 2 * H + j] + hw[b, 2 * H + j], cp)
        o, tc, hn = _pw_peephole_out(xw[t, b, 3 * H + j] + hw[b, 3 * H + j] + peep[2, j] * c, c)
        hs[slot, b, j] = h_in[b, j]
        cs[slot, b, j] = cp
        acts[slot, b, j] = i
        acts[slot, b, H + j] = f
        acts[slot, b, 2 * H + j] = g
        acts[slot, b, 3 * H + j] = o
        acts[slot, b, 4 * H + j] = tc
        acts[slot, b, 5 * H + j] = c
        c_out[b, j] = c
        h_out[b, j] = hn
        y[t, b, j] = hn

    # peephole "full": aux [B,2H] holds (P_i c, P_f c) for the cell phase, then
    # [B,H] of P_o c' in aux[:, 0:H] for the output phase (written by GEMMs)
    @cuda.jit(device=True)
    def _peep_full_fwd_cell(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot,
                            hs, cs, peep, aux):
        if t < 0:
            _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 6, True)
            return
        cp = c_in[b, j]
        i, f, g, c = _pw_peephole_cell(xw[t, b, j] + hw[b, j] + aux[b, j],
                                     xw[t, b, H + j] + hw[b, H + j] + aux[b, H + j],
                                     xw[t, b, 2 * H + j] + hw[b, 2 * H + j], cp)
        hs[slot, b, j] = h_in[b, j]
        cs[slot, b, j] = cp
        acts[slot, b, j] = i
        acts[slot, b, H + j] = f
        acts[slot, b, 2 * H + j] = g
        acts[slot, b, 5 * H + j] = c
        c_out[b, j] = c

    @cuda.jit(device=True)
    def _peep_full_fwd_out(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot,
                           hs, cs, peep, aux):
        if t < 0:
            return
        o, tc, hn = _pw_peephole_out(xw[t, b, 3 * H + j] + hw[b, 3 * H + j] + aux[b, j],
                                   c_out[b, j])
        acts[slot, b, 3 * H + j] = o
        acts[slot, b, 4 * H + j] = tc
        h_out[b, j] = hn
        y[t, b, j] = hn

    # gru_reset_before: aux [B,H] receives r ⊙ h (the input of U_n), saved as
    # acts[:, :, 3H:4H] so that dW_hh's candidate rows see it
    @cuda.jit(device=True)
    def _grub_fwd_gates(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot,
                        hs, cs, peep, aux):
        if t < 0:
            _pad(b, j, s, H, h_in, h_out, c_in, c_out, y, acts, slot, hs, cs, 4, False)
            aux[b, j] = 0
            return
        hp = h_in[b, j]
        r, z = _pw_gru_reset_before_gates(xw[t, b, j] + hw[b, j], xw[t, b, H + j] + hw[b, H + j])
        hs[slot, b, j] = hp
        acts[slot, b, j] = r
        acts[slot, b, H + j] = z
        acts[slot, b, 3 * H + j] = r * hp
        aux[b, j] = r * hp

    @cuda.jit(device=True)
    def _grub_fwd_step(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot,
                       hs, cs, peep, aux):
        if t < 0:
            return
        n, hn = _pw_gru_reset_before_step(xw[t, b, 2 * H + j] + hw[b, 2 * H + j],
                                        acts[slot, b, H + j], h_in[b, j])
        acts[slot, b, 2 * H + j] = n
        h_out[b, j] = hn
        y[t, b, j] = hn

    # ------------------------------------------------------------- backward points
    # dy [T,B,H]; dh, dc [B,H] carried gradients (updated in place); acts, hs,
    # cs as saved by forward (indexed by step s); dax [T,B,GH] by time (padded
    # slots: zero, written through slot s); dah [T,B,GH] by step; aux: work.

    @cuda.jit(device=True)
    def _zero_da(b, j, s, H, G, dax, dah):
        for g in range(G):
            dax[s, b, g * H + j] = 0
            dah[s, b, g * H + j] = 0

    def _rnn_bwd_point(grad):
        """Back through the RNN step of one unit, ``grad`` from the pointwise table."""
        @cuda.jit(device=True)
        def bwd(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
            if t < 0:
                _zero_da(b, j, s, H, 1, dax, dah)
                return
            da = grad(acts[s, b, j], dy[t, b, j] + dh[b, j])
            dax[t, b, j] = da
            dah[s, b, j] = da
            dh[b, j] = 0
        return bwd

    _rnn_tanh_bwd = _rnn_bwd_point(_pw_rnn_tanh_grad)
    _rnn_relu_bwd = _rnn_bwd_point(_pw_rnn_relu_grad)

    @cuda.jit(device=True)
    def _lstm_bwd(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            _zero_da(b, j, s, H, 4, dax, dah)
            return
        dai, daf, dag, dao, dcp = _pw_lstm_grad(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], acts[s, b, 3 * H + j],
            acts[s, b, 4 * H + j], cs[s, b, j], dy[t, b, j] + dh[b, j], dc[b, j])
        dax[t, b, j] = dai
        dax[t, b, H + j] = daf
        dax[t, b, 2 * H + j] = dag
        dax[t, b, 3 * H + j] = dao
        dah[s, b, j] = dai
        dah[s, b, H + j] = daf
        dah[s, b, 2 * H + j] = dag
        dah[s, b, 3 * H + j] = dao
        dc[b, j] = dcp
        dh[b, j] = 0

    @cuda.jit(device=True)
    def _gru_bwd(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            _zero_da(b, j, s, H, 3, dax, dah)
            return
        dar, daz, dnx, dnh, dhp = _pw_gru_grad(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], acts[s, b, 3 * H + j],
            hs[s, b, j], dy[t, b, j] + dh[b, j])
        dax[t, b, j] = dar
        dax[t, b, H + j] = daz
        dax[t, b, 2 * H + j] = dnx
        dah[s, b, j] = dar
        dah[s, b, H + j] = daz
        dah[s, b, 2 * H + j] = dnh
        dh[b, j] = dhp

    @cuda.jit(device=True)
    def _peep_diag_bwd(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            _zero_da(b, j, s, H, 4, dax, dah)
            return
        i = acts[s, b, j]
        f = acts[s, b, H + j]
        g = acts[s, b, 2 * H + j]
        cp = cs[s, b, j]
        dao, dch = _pw_peephole_grad_out(acts[s, b, 3 * H + j], acts[s, b, 4 * H + j],
                                       dy[t, b, j] + dh[b, j])
        dai, daf, dag, dcd = _pw_peephole_grad_cell(i, f, g, cp, dc[b, j] + dch + dao * peep[2, j])
        dax[t, b, j] = dai
        dax[t, b, H + j] = daf
        dax[t, b, 2 * H + j] = dag
        dax[t, b, 3 * H + j] = dao
        dah[s, b, j] = dai
        dah[s, b, H + j] = daf
        dah[s, b, 2 * H + j] = dag
        dah[s, b, 3 * H + j] = dao
        dc[b, j] = dcd + dai * peep[0, j] + daf * peep[1, j]
        dh[b, j] = 0

    # peephole "full": aux [B,H] holds dL/dc' (carried + through h'), then a GEMM
    # adds P_oᵀ dao before the cell phase
    @cuda.jit(device=True)
    def _peep_full_bwd_out(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            _zero_da(b, j, s, H, 4, dax, dah)
            return
        dao, dch = _pw_peephole_grad_out(acts[s, b, 3 * H + j], acts[s, b, 4 * H + j],
                                       dy[t, b, j] + dh[b, j])
        dax[t, b, 3 * H + j] = dao
        dah[s, b, 3 * H + j] = dao
        aux[b, j] = dc[b, j] + dch
        dh[b, j] = 0

    @cuda.jit(device=True)
    def _peep_full_bwd_cell(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            return
        dai, daf, dag, dcd = _pw_peephole_grad_cell(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], cs[s, b, j], aux[b, j])
        dax[t, b, j] = dai
        dax[t, b, H + j] = daf
        dax[t, b, 2 * H + j] = dag
        dah[s, b, j] = dai
        dah[s, b, H + j] = daf
        dah[s, b, 2 * H + j] = dag
        dc[b, j] = dcd

    # gru_reset_before: aux [B,H] receives dL/d(r ⊙ h) = dan U_n from a GEMM
    @cuda.jit(device=True)
    def _grub_bwd_n(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        aux[b, j] = 0        # the persistent kernel accumulates dL/d(r ⊙ h) into it
        if t < 0:
            _zero_da(b, j, s, H, 3, dax, dah)
            return
        dan, daz, dhp = _pw_gru_reset_before_grad_n(acts[s, b, H + j], acts[s, b, 2 * H + j],
                                                  hs[s, b, j], dy[t, b, j] + dh[b, j])
        dax[t, b, H + j] = daz
        dax[t, b, 2 * H + j] = dan
        dah[s, b, H + j] = daz
        dah[s, b, 2 * H + j] = dan
        dh[b, j] = dhp

    @cuda.jit(device=True)
    def _grub_bwd_r(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        if t < 0:
            return
        dar, dhp = _pw_gru_reset_before_grad_r(acts[s, b, j], hs[s, b, j], aux[b, j])
        dax[t, b, j] = dar
        dah[s, b, j] = dar
        dh[b, j] += dhp


@lru_cache(maxsize=None)
def _fwd_kernel(point):
    """A per-step launch of forward point ``point`` over all (b, j)."""

    @cuda.jit
    def kernel(s, reverse, lengths, xw, hw, h, c, y, acts, slot, hs, cs, peep, aux):
        # one thread per (b, j); h, c: [B,H] updated in place
        idx = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if idx < B * H:
            b = idx // H
            j = idx - b * H
            t = _time(s, b, lengths, reverse)
            point(b, j, s, t, H, xw, hw, h, h, c, c, y, acts, slot, hs, cs, peep, aux)

    return kernel


@lru_cache(maxsize=None)
def _bwd_kernel(point):
    """A per-step launch of backward point ``point`` over all (b, j)."""

    @cuda.jit
    def kernel(s, reverse, lengths, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux):
        idx = cuda.grid(1)
        B = dh.shape[0]
        H = dh.shape[1]
        if idx < B * H:
            b = idx // H
            j = idx - b * H
            t = _time(s, b, lengths, reverse)
            point(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux)

    return kernel


# --------------------------------------------------------------------------- GEMM
@lru_cache(maxsize=None)
def _gemm_kernel(tile, np_dtype, trans_a, trans_b):
    """``C (+)= op(A) @ op(B) (+ bias)``, ``op(X) = Xᵀ`` when ``trans_x``.

    Square ``tile`` x ``tile`` thread blocks, one output element per thread;
    each operand is staged through shared memory with the thread index running
    along the operand's contiguous axis (coalesced loads for either layout).
    """
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)
    ts = tile
    ts1 = tile + 1      # padded rows: no shared-memory bank conflicts on the column reads

    @cuda.jit
    def gemm_kernel(A, B, C, bias, use_bias, accumulate):
        # A: [M,K] or [K,M]; B: [K,N] or [N,K]; C: [M,N]; bias: [N]
        sa = cuda.shared.array((ts, ts1), dt)   # sa[r, k] = op(A)[m0+r, k0+k]
        sb = cuda.shared.array((ts, ts1), dt)   # sb[k, c] = op(B)[k0+k, n0+c]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m0 = cuda.blockIdx.x * ts      # M on grid x (2**31 - 1 blocks), N on y
        n0 = cuda.blockIdx.y * ts
        M = C.shape[0]
        N = C.shape[1]
        if trans_a:
            K = A.shape[0]
        else:
            K = A.shape[1]
        acc = zero
        for k0 in range(0, K, ts):
            if trans_a:
                if k0 + ty < K and m0 + tx < M:
                    sa[tx, ty] = A[k0 + ty, m0 + tx]
                else:
                    sa[tx, ty] = zero
            else:
                if m0 + ty < M and k0 + tx < K:
                    sa[ty, tx] = A[m0 + ty, k0 + tx]
                else:
                    sa[ty, tx] = zero
            if trans_b:
                if n0 + ty < N and k0 + tx < K:
                    sb[tx, ty] = B[n0 + ty, k0 + tx]
                else:
                    sb[tx, ty] = zero
            else:
                if k0 + ty < K and n0 + tx < N:
                    sb[ty, tx] = B[k0 + ty, n0 + tx]
                else:
                    sb[ty, tx] = zero
            cuda.syncthreads()
            for kk in range(ts):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        m = m0 + ty
        n = n0 + tx
        if m < M and n < N:
            if use_bias:
                acc += bias[n]
            if accumulate:
                acc += C[m, n]
            C[m, n] = acc

    return gemm_kernel


@lru_cache(maxsize=None)
def _gemm_blocked_kernel(bm, bn, bk, tm, tn, np_dtype, trans_a, trans_b):
    """``C (+)= op(A) @ op(B) (+ bias)`` with register blocking.

    A block of ``(bn/tn) x (bm/tm)`` threads computes a ``bm x bn`` tile of C,
    each thread ``tm x tn`` outputs held in registers, stepping through K in
    slices of ``bk`` staged in shared memory: one shared load feeds ``tn``
    (resp. ``tm``) multiply-adds instead of one, which is what bounds the
    simple one-output-per-thread kernel. Thread (tx, ty) owns rows
    ``ty + i*(bm/tm)`` and columns ``tx + j*(bn/tn)`` (interleaved, so a warp's
    shared reads are consecutive and its stores to C coalesced).
    """
    if bm % tm or bn % tn:
        raise ValueError(f"gemm_blocking: {bm}/{tm} and {bn}/{tn} must divide")
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)
    ny = bm // tm
    nx = bn // tn
    nthr = nx * ny
    sa_shape = (bk, bm)
    sb_shape = (bk, bn)
    acc_shape = (tm, tn)

    @cuda.jit
    def gemm_blocked_kernel(A, B, C, bias, use_bias, accumulate):
        # A: [M,K] or [K,M]; B: [K,N] or [N,K]; C: [M,N]; bias: [N]
        sa = cuda.shared.array(sa_shape, dt)    # sa[k, r] = op(A)[m0+r, k0+k]
        sb = cuda.shared.array(sb_shape, dt)    # sb[k, c] = op(B)[k0+k, n0+c]
        acc = cuda.local.array(acc_shape, dt)
        ra = cuda.local.array(tm, dt)
        rb = cuda.local.array(tn, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * nx + tx
        m0 = cuda.blockIdx.x * bm      # M on grid x (2**31 - 1 blocks), N on y
        n0 = cuda.blockIdx.y * bn
        M = C.shape[0]
        N = C.shape[1]
        if trans_a:
            K = A.shape[0]
        else:
            K = A.shape[1]
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = zero
        for k0 in range(0, K, bk):
            # stage the slices; consecutive threads walk each operand's contiguous axis
            for e in range(tid, bk * bm, nthr):
                if trans_a:
                    kk = e // bm
                    r = e - kk * bm
                else:
                    r = e // bk
                    kk = e - r * bk
                if m0 + r < M and k0 + kk < K:
                    if trans_a:
                        sa[kk, r] = A[k0 + kk, m0 + r]
                    else:
                        sa[kk, r] = A[m0 + r, k0 + kk]
                else:
                    sa[kk, r] = zero
            for e in range(tid, bk * bn, nthr):
                if trans_b:
                    c = e // bk
                    kk = e - c * bk
                else:
                    kk = e // bn
                    c = e - kk * bn
                if n0 + c < N and k0 + kk < K:
                    if trans_b:
                        sb[kk, c] = B[n0 + c, k0 + kk]
                    else:
                        sb[kk, c] = B[k0 + kk, n0 + c]
                else:
                    sb[kk, c] = zero
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    ra[i] = sa[kk, ty + i * ny]
                for j in range(tn):
                    rb[j] = sb[kk, tx + j * nx]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(tm):
            m = m0 + ty + i * ny
            if m < M:
                for j in range(tn):
                    n = n0 + tx + j * nx
                    if n < N:
                        v = acc[i, j]
                        if use_bias:
                            v += bias[n]
                        if accumulate:
                            v += C[m, n]
                        C[m, n] = v

    return gemm_blocked_kernel


_NO_BIAS = {}
#: most blocks along grid y (CUDA's limit); the GEMMs put M on x and loop over N
_MAX_GRID_Y = 65535
_cupy_module = None


def _cupy():
    global _cupy_module
    if SIMULATOR or not settings.use_cupy:
        return None
    if _cupy_module is None:
        _cupy_module = False
        try:
            import cupy
        except Exception:
            return None
        try:
            # a CuPy built for another CUDA major (cupy-cuda12x beside a CUDA 13
            # driver, or two CuPy wheels installed together) imports but fails
            # here: then the tiled kernels do every product
            cupy.cuda.Device().id
            cupy.cuda.get_cublas_handle()
            _cupy_module = cupy
        except Exception as exc:
            import warnings
            warnings.warn(f"fastrnn: CuPy is installed but does not work here ({exc}); the "
                          "CUDA backend uses its own GEMM kernels", RuntimeWarning, stacklevel=3)
    return _cupy_module or None


def _as_cupy(cp, a):
    """A CuPy view of device array ``a`` built from its pointer.

    ``cp.asarray`` would read ``__cuda_array_interface__``, and when that
    names a stream CuPy synchronises on it on every call; the kernels here all
    run on the default stream, so no synchronisation is needed."""
    cai = a.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    strides = cai.get("strides")
    if strides is None:             # C-contiguous
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    extent = 0
    if all(shape):
        extent = dtype.itemsize + sum((n - 1) * st for n, st in zip(shape, strides))
    mem = cp.cuda.UnownedMemory(cai["data"][0], extent, a, cp.cuda.Device().id)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0), strides=strides)


def _bias(C, bias, accumulate):
    """``C = (C if accumulate else 0) + bias`` (bias None: zero), in place."""
    M, N = C.shape
    tpb = settings.threads
    blocks = max(1, min((M * N + tpb - 1) // tpb, 4096))
    _bias_kernel[blocks, tpb](C, bias if bias is not None else _no_bias(C.dtype),
                              bias is not None, bool(accumulate))


def _no_bias(dtype):
    dtype = np.dtype(dtype)
    key = (_device_key(), dtype.str)
    bias = _NO_BIAS.get(key)
    if bias is None:
        bias = _NO_BIAS[key] = cuda.to_device(np.zeros(1, dtype))
    return bias


def _gemm(A, B, C, bias=None, accumulate=False, trans_a=False, trans_b=False, big=False):
    """``C (+)= op(A) @ op(B) (+ bias)`` on device arrays (C: [M, N]).

    ``big`` marks the time-parallel products, which go to cuBLAS when CuPy is
    there; per-step products do when they have ``settings.cupy_min_rows`` rows.
    An empty inner dimension (K = 0) gives ``C (+)= bias``.
    """
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    if M == 0 or N == 0:
        return C
    if K == 0:
        _bias(C, bias, accumulate)
        return C
    cp = _cupy() if (big or M >= settings.cupy_min_rows) else None
    if cp is not None:
        if bias is not None:            # C = bias (+ C), then C = op(A) op(B) + 1 * C
            _bias(C, bias, accumulate)
        beta = 1.0 if (bias is not None or accumulate) else 0.0
        a, b, c = _as_cupy(cp, A), _as_cupy(cp, B), _as_cupy(cp, C)
        gemm = getattr(getattr(cp, "cublas", None), "gemm", None)
        if gemm is not None:
            gemm("T" if trans_a else "N", "T" if trans_b else "N", a, b, out=c, alpha=1.0,
                 beta=beta)
        else:   # pragma: no cover - CuPy without cupy.cublas (before v9)
            prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
            if beta:
                c += prod
            else:
                c[...] = prod
        return C
    dtype = np.dtype(C.dtype)
    use_bias = bias is not None
    if not use_bias:
        bias = _no_bias(dtype)
    if M >= settings.blocked_min_rows:
        bm, bn, bk, tm, tn = settings.gemm_blocking
        kernel = _gemm_blocked_kernel(bm, bn, bk, tm, tn, dtype.type, bool(trans_a),
                                      bool(trans_b))
        block = (bn // tn, bm // tm)
    else:
        ts = settings.tile
        kernel = _gemm_kernel(ts, dtype.type, bool(trans_a), bool(trans_b))
        bm = bn = ts
        block = (ts, ts)
    step = _MAX_GRID_Y * bn         # columns per launch
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        if n0 or n1 < N:
            Bs = B[n0:n1] if trans_b else B[:, n0:n1]
            Cs = C[:, n0:n1]
            bs = bias[n0:n1] if use_bias else bias
        else:
            Bs, Cs, bs = B, C, bias
        grid = ((M + bm - 1) // bm, (n1 - n0 + bn - 1) // bn)
        kernel[grid, block](A, Bs, Cs, bs, use_bias, bool(accumulate))
    return C


def _transpose(a, tag=None):
    """``aᵀ`` (a: [M, N]) as a C-contiguous array: a workspace when ``tag``."""
    M, N = a.shape
    dtype = np.dtype(a.dtype)
    out = _work(tag, (N, M), dtype) if tag else _empty((N, M), dtype)
    if M and N:
        _transpose_kernel[((M + 15) // 16, (N + 15) // 16), (16, 16)](a, out)
    return out


@lru_cache(maxsize=None)
def _colsum_kernels(bx, by, np_dtype):
    """Column sums in two deterministic passes (see :func:`_colsum`)."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def partial(a, b, use_b, part, chunk):
        # a, b: [M,N] (b multiplies a elementwise when use_b); part: [P,N], the
        # sum of rows [p*chunk, (p+1)*chunk) for p = blockIdx.y
        sh = cuda.shared.array((by, bx), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n = cuda.blockIdx.x * bx + tx
        p = cuda.blockIdx.y
        M = a.shape[0]
        r1 = min(M, (p + 1) * chunk)
        acc = zero
        if n < a.shape[1]:
            # consecutive threads read consecutive columns of a row: coalesced
            for r in range(p * chunk + ty, r1, by):
                if use_b:
                    acc += a[r, n] * b[r, n]
                else:
                    acc += a[r, n]
        sh[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and n < a.shape[1]:
            for i in range(1, by):
                acc += sh[i, tx]
            part[p, n] = acc

    @cuda.jit
    def final(part, out, accumulate):
        # part: [P,N]; out: [N] (+)= sum over p, in order
        n = cuda.grid(1)
        if n < out.shape[0]:
            acc = part[0, n]
            for p in range(1, part.shape[0]):
                acc += part[p, n]
            if accumulate:
                acc += out[n]
            out[n] = acc

    return partial, final


def _colsum(a, out, b=None, accumulate=False):
    """``out[n] (+)= sum_m a[m, n] (* b[m, n])`` (a, b: [M, N]; out: [N]).

    One thread per column adding ``M = T*B`` rows in a row would take
    milliseconds at large batch; instead blocks of ``colsum_block`` threads
    reduce chunks of ``colsum_rows`` rows of a tile of columns in shared
    memory, and a second pass adds the (at most 1024) chunks per column, in a
    fixed order: the result does not depend on scheduling.
    """
    M, N = a.shape
    if N == 0:
        return out
    if M == 0:
        if not accumulate:
            _bias(out.reshape(1, N), None, False)
        return out
    bx, by = settings.colsum_block
    P = min(1024, -(-M // max(1, settings.colsum_rows)))
    chunk = -(-M // P)
    P = -(-M // chunk)
    partial, final = _colsum_kernels(bx, by, np.dtype(a.dtype).type)
    direct = P == 1 and not accumulate
    part = out.reshape(1, N) if direct else _work("colsum", (P, N), a.dtype)
    partial[((N + bx - 1) // bx, P), (bx, by)](a, b if b is not None else a, b is not None,
                                                part, chunk)
    if not direct:
        tpb = settings.threads
        final[(N + tpb - 1) // tpb, tpb](part, out, bool(accumulate))
    return out


# --------------------------------------------------------------------------- cells
#: number of H-wide activation blocks saved per (step, entry)
_SAVED = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 5, "gru": 4, "gru_reset_before": 4,
          "peephole_diagonal": 6, "peephole_full": 6}

if cuda is not None:
    _FWD = {"rnn_tanh": _rnn_tanh_fwd, "rnn_relu": _rnn_relu_fwd, "lstm": _lstm_fwd,
            "gru": _gru_fwd, "peephole_diagonal": _peep_diag_fwd}
    _BWD = {"rnn_tanh": _rnn_tanh_bwd, "rnn_relu": _rnn_relu_bwd, "lstm": _lstm_bwd,
            "gru": _gru_bwd, "peephole_diagonal": _peep_diag_bwd}


class _Cache:
    """What backward needs: inputs, weights and the saved activations."""

    __slots__ = ("cell", "x", "weights", "lengths", "reverse", "hs", "cs", "acts",
                 "strategy", "shape")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


_persistent_disabled = None     # why "auto" stopped choosing the persistent kernel
#: errors that mean a bug here or bad input, never "this device cannot run the
#: cooperative kernel": they propagate instead of turning the persistent path off
_NOT_A_DEVICE_LIMIT = (ArithmeticError, AssertionError, AttributeError, IndexError, KeyError,
                       NameError, TypeError, ValueError)


def _disable_persistent(exc):
    global _persistent_disabled
    import warnings
    _persistent_disabled = f"{type(exc).__name__}: {exc}"
    warnings.warn("fastrnn: the persistent CUDA kernel failed to build or launch "
                  f"({_persistent_disabled}); using the per-step kernels from now on",
                  RuntimeWarning, stacklevel=3)


def choose_strategy(cell, B, H):
    """``"persistent"`` or ``"per_step"`` for this call (see the module docstring)."""
    s = settings.strategy
    if s not in STRATEGIES:
        raise ValueError(f"settings.strategy must be one of {STRATEGIES}, got {s!r}")
    if cell.name not in PERSISTENT_CELLS:
        return "per_step"
    if s != "auto":
        return s
    if SIMULATOR:
        # grid sync only synchronises one block there: never pick it implicitly
        return "per_step"
    if (B > settings.persistent_max_batch or H > settings.persistent_max_hidden
            or _persistent_disabled):
        return "per_step"
    return "persistent"


def _check_forward(cell, x, h0, c0, w, lengths):
    """Shapes and dtypes only (values are the layers' job): a kernel must never
    index out of bounds, so a mismatch stops here with the argument's name."""
    if len(x.shape) != 3:
        raise ValueError(f"x must be [T, B, I], got shape {tuple(x.shape)}")
    T, B, I = x.shape
    dtype = np.dtype(x.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    if len(h0.shape) != 2 or h0.shape[0] != B:
        raise ValueError(f"h0 must be [B={B}, H], got shape {tuple(h0.shape)}")
    H = h0.shape[1]
    GH = cell.gates * H
    expected = {"h0": (h0, (B, H)), "c0": (c0, (B, H)), "w_ih": (w.w_ih, (GH, I)),
                "w_hh": (w.w_hh, (GH, H)), "b_ih": (w.b_ih, (GH,)), "b_hh": (w.b_hh, (GH,))}
    peep_shape = cell.peephole_shape(H)
    if peep_shape is not None:
        expected["peep"] = (w.peep, (3,) + peep_shape)
    elif w.peep is not None:
        raise ValueError(f"cell {cell.name!r} takes no peephole weights")
    expected["x"] = (x, (T, B, I))
    for name, (a, shape) in expected.items():
        if a is None:
            if name == "c0":
                continue
            raise ValueError(f"{name} is required for cell {cell.name!r}")
        if not a.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(a.shape)}")
        if np.dtype(a.dtype) != dtype:
            raise TypeError(f"{name} must be {dtype} like x, got {np.dtype(a.dtype)}")
    if lengths is not None:
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if isinstance(lengths, np.ndarray) and B and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(f"lengths must lie in [1, T={T}]")


def _lengths(lengths, T, B):
    if lengths is None:     # one host-to-device copy per (T, B), not per call
        key = (_device_key(), "lengths", T, B)
        full = _CONST.get(key)
        if full is None:
            if len(_CONST) > 256:
                _CONST.clear()
            full = _CONST[key] = cuda.to_device(np.full(B, T, dtype=np.int64))
        return full
    if isinstance(lengths, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(lengths, dtype=np.int64))
    return _dev(lengths)


def forward(cell, x, h0, c0, weights, lengths=None, reverse=False, training=True):
    """Run one layer in one direction over the whole sequence (the backend contract).

    x [T,B,I]; h0, c0 [B,H]; weights :class:`Weights`; lengths None or [B].
    Returns ``(y [T,B,H], h_n [B,H], c_n [B,H] or None, cache)`` on the device.
    With ``T``, ``B`` or ``H`` zero no kernel runs: ``y`` is empty and the
    state is returned unchanged (copied).
    """
    x = _dev(x)
    h0 = _dev(h0)
    c0 = _dev(c0)
    w = to_device(weights)
    _check_forward(cell, x, h0, c0, w, lengths)
    T, B, I = x.shape
    H = h0.shape[1]
    G = cell.gates
    dtype = np.dtype(x.dtype)
    has_c = cell.has_cell
    rev = int(bool(reverse))
    S = T if training else 1
    K = _SAVED[cell.name]
    acts = _empty((S, B, K * H), dtype)
    hs = _empty((S, B, H), dtype)
    cs = _empty((S, B, H), dtype) if has_c else _dummy((1, 1, 1), dtype)
    y = _empty((T, B, H), dtype)
    h = _copy(h0)
    if has_c:
        c = _copy(c0) if c0 is not None else _zeros((B, H), dtype)
    else:
        c = _dummy((1, 1), dtype)
    strategy = "per_step"
    lens = None
    if T * B * H:       # else nothing to compute (and a zero-block launch is an error)
        lens = _lengths(lengths, T, B)
        xw = _work("xw", (T, B, G * H), dtype)                  # x W_ihᵀ + b_ih
        _gemm(_row_major(x, T * B), w.w_ih, _row_major(xw, T * B), bias=w.b_ih,
              trans_b=True, big=True)
        peep = w.peep if w.peep is not None else _dummy((1, 1), dtype)
        strategy = choose_strategy(cell, B, H)
        if strategy == "persistent":
            try:
                _persistent_forward(cell, T, rev, lens, xw, w, h, c, y, acts, hs, cs, peep,
                                    bool(training))
            except _DoesNotFit:
                strategy = "per_step"
            except _NOT_A_DEVICE_LIMIT:
                raise
            except Exception as exc:    # e.g. no libcudadevrt to link the grid barrier
                if settings.strategy != "auto":
                    raise
                _disable_persistent(exc)
                strategy = "per_step"
        if strategy == "per_step":
            _per_step_forward(cell, T, rev, lens, xw, w, h, c, y, acts, hs, cs, peep,
                              bool(training))

    cache = None
    if training:
        cache = _Cache(cell=cell, x=x, weights=w, lengths=lens, reverse=rev, hs=hs,
                       cs=cs if has_c else None, acts=acts, strategy=strategy,
                       shape=(T, B, I, H))
    return y, h, (c if has_c else None), cache


def _per_step_forward(cell, T, rev, lens, xw, w, h, c, y, acts, hs, cs, peep, training):
    B, H = h.shape
    G = cell.gates
    dtype = np.dtype(h.dtype)
    tpb = settings.threads
    grid = (B * H + tpb - 1) // tpb
    hw = _work("hw", (B, G * H), dtype)                       # h W_hhᵀ + b_hh
    name = cell.name
    # launch configurations and weight slices made once, not per step (each
    # costs microseconds of Python)
    if name == "gru_reset_before":
        rh = _work("rh", (B, H), dtype)                       # r ⊙ h
        w_rz, w_n, b_rz, b_n = w.w_hh[:2 * H], w.w_hh[2 * H:], w.b_hh[:2 * H], w.b_hh[2 * H:]
        hw_rz, hw_n = hw[:, :2 * H], hw[:, 2 * H:]
        gates = _fwd_kernel(_grub_fwd_gates)[grid, tpb]
        step = _fwd_kernel(_grub_fwd_step)[grid, tpb]
        for s in range(T):
            slot = s if training else 0
            _gemm(h, w_rz, hw_rz, bias=b_rz, trans_b=True)
            gates(s, rev, lens, xw, hw, h, c, y, acts, slot, hs, cs, peep, rh)
            _gemm(rh, w_n, hw_n, bias=b_n, trans_b=True)
            step(s, rev, lens, xw, hw, h, c, y, acts, slot, hs, cs, peep, rh)
    elif name == "peephole_full":
        pc = _work("pc", (B, 2 * H), dtype)                   # (P_i c, P_f c), then P_o c'
        p_if, p_o, pc_o = peep[:2].reshape(2 * H, H), peep[2], pc[:, :H]
        cell_phase = _fwd_kernel(_peep_full_fwd_cell)[grid, tpb]
        out_phase = _fwd_kernel(_peep_full_fwd_out)[grid, tpb]
        for s in range(T):
            slot = s if training else 0
            _gemm(h, w.w_hh, hw, bias=w.b_hh, trans_b=True)
            _gemm(c, p_if, pc, trans_b=True)
            cell_phase(s, rev, lens, xw, hw, h, c, y, acts, slot, hs, cs, peep, pc)
            _gemm(c, p_o, pc_o, trans_b=True)
            out_phase(s, rev, lens, xw, hw, h, c, y, acts, slot, hs, cs, peep, pc)
    else:
        point = _fwd_kernel(_FWD[name])[grid, tpb]
        for s in range(T):
            slot = s if training else 0
            _gemm(h, w.w_hh, hw, bias=w.b_hh, trans_b=True)
            point(s, rev, lens, xw, hw, h, c, y, acts, slot, hs, cs, peep, hw)


def backward(cell, cache, dy, dh_n, dc_n=None):
    """Back through :func:`forward` (the backend contract).

    Returns ``(dx [T,B,I], dh0 [B,H], dc0 [B,H] or None, dweights)`` on the device.
    With ``T``, ``B`` or ``H`` zero no kernel runs but fills: the weight
    gradients are zeros, ``dh0 = dh_n`` (``dc0 = dc_n``) and ``dx`` is zeros.
    """
    if cache is None:
        raise ValueError("backward needs the cache of a forward call with training=True")
    T, B, I, H = cache.shape
    G = cell.gates
    GH = G * H
    w = cache.weights
    x = cache.x
    dtype = np.dtype(x.dtype)
    has_c = cell.has_cell
    dy, dh_n, dc_n = _dev(dy), _dev(dh_n), _dev(dc_n)
    for name, a, shape in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                           ("dc_n", dc_n if has_c else None, (B, H))):
        if a is not None and (tuple(a.shape) != shape or np.dtype(a.dtype) != dtype):
            raise ValueError(f"{name} must be {dtype} of shape {shape}, got "
                             f"{np.dtype(a.dtype)} {tuple(a.shape)}")
    dh = _copy(dh_n) if dh_n is not None else _zeros((B, H), dtype)
    if has_c:
        dc = _copy(dc_n) if dc_n is not None else _zeros((B, H), dtype)
    else:
        dc = _dummy((1, 1), dtype)
    peep_shape = cell.peephole_shape(H)
    if T * B * H == 0:
        # nothing flows: zero weight gradients, the carried state gradient unchanged
        dpeep = _zeros((3,) + peep_shape, dtype) if peep_shape is not None else None
        grads = Weights(_zeros((GH, I), dtype), _zeros((GH, H), dtype), _zeros((GH,), dtype),
                        _zeros((GH,), dtype), dpeep)
        return _zeros((T, B, I), dtype), dh, (dc if has_c else None), grads
    dy = dy if dy is not None else _zeros((T, B, H), dtype)
    dax = _work("dax", (T, B, GH), dtype)           # by time
    # by step; the same buffer when step == time and both hold the same values
    dah = dax if (not cache.reverse and not cell.name == "gru") else _work("dah", (T, B, GH),
                                                                         dtype)
    peep = w.peep if w.peep is not None else _dummy((1, 1), dtype)

    done = False
    if cache.strategy == "persistent":
        try:
            _persistent_backward(cell, cache, dy, dh, dc, dax, dah, peep)
            done = True
        except _DoesNotFit:
            pass
        except _NOT_A_DEVICE_LIMIT:
            raise
        except Exception as exc:    # raised before the kernel ran: dh, dc untouched
            if settings.strategy != "auto":
                raise
            _disable_persistent(exc)
    if not done:
        _per_step_backward(cell, cache, dy, dh, dc, dax, dah, peep)

    TB = T * B
    dax2 = _row_major(dax, TB)
    dah2 = _row_major(dah, TB)
    dx = _empty((T, B, I), dtype)
    _gemm(dax2, w.w_ih, _row_major(dx, TB), big=True)
    dw_ih = _empty((GH, I), dtype)
    _gemm(dax2, _row_major(x, TB), dw_ih, trans_a=True, big=True)
    dw_hh = _empty((GH, H), dtype)
    hs2 = _row_major(cache.hs, TB)
    acts2 = _row_major(cache.acts, TB)
    if cell.name == "gru_reset_before":
        _gemm(dah2[:, :2 * H], hs2, dw_hh[:2 * H], trans_a=True, big=True)
        _gemm(dah2[:, 2 * H:], acts2[:, 3 * H:], dw_hh[2 * H:], trans_a=True, big=True)
    else:
        _gemm(dah2, hs2, dw_hh, trans_a=True, big=True)
    db_ih = _colsum(dax2, _empty((GH,), dtype))
    db_hh = _colsum(dah2, _empty((GH,), dtype))
    dpeep = None
    if cell.peephole == "diagonal":
        # dp_i = Σ da_i ⊙ c, dp_f = Σ da_f ⊙ c, dp_o = Σ da_o ⊙ c' over all (s, b)
        dpeep = _empty((3, H), dtype)
        cs2 = _row_major(cache.cs, TB)
        _colsum(dah2[:, :H], dpeep[0], b=cs2)
        _colsum(dah2[:, H:2 * H], dpeep[1], b=cs2)
        _colsum(dah2[:, 3 * H:], dpeep[2], b=acts2[:, 5 * H:])
    elif cell.peephole == "full":
        dpeep = _empty((3, H, H), dtype)
        cs2 = _row_major(cache.cs, TB)
        _gemm(dah2[:, :H], cs2, dpeep[0], trans_a=True, big=True)
        _gemm(dah2[:, H:2 * H], cs2, dpeep[1], trans_a=True, big=True)
        _gemm(dah2[:, 3 * H:], acts2[:, 5 * H:], dpeep[2], trans_a=True, big=True)
    return dx, dh, (dc if has_c else None), Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep)


def _per_step_backward(cell, cache, dy, dh, dc, dax, dah, peep):
    T, B, I, H = cache.shape
    w = cache.weights
    dtype = np.dtype(dh.dtype)
    tpb = settings.threads
    grid = (B * H + tpb - 1) // tpb
    lens, rev, acts, hs = cache.lengths, cache.reverse, cache.acts, cache.hs
    cs = cache.cs if cache.cs is not None else _dummy((1, 1, 1), dtype)
    name = cell.name
    aux = _work("aux", (B, H), dtype)
    args = (rev, lens, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux)
    if name == "gru_reset_before":
        grad_n = _bwd_kernel(_grub_bwd_n)[grid, tpb]
        grad_r = _bwd_kernel(_grub_bwd_r)[grid, tpb]
        w_rz, w_n = w.w_hh[:2 * H], w.w_hh[2 * H:]
        for s in range(T - 1, -1, -1):
            grad_n(s, *args)
            _gemm(dah[s][:, 2 * H:], w_n, aux)                  # dL/d(r ⊙ h)
            grad_r(s, *args)
            _gemm(dah[s][:, :2 * H], w_rz, dh, accumulate=True)
    elif name == "peephole_full":
        grad_out = _bwd_kernel(_peep_full_bwd_out)[grid, tpb]
        grad_cell = _bwd_kernel(_peep_full_bwd_cell)[grid, tpb]
        p_if, p_o = peep[:2].reshape(2 * H, H), peep[2]
        for s in range(T - 1, -1, -1):
            grad_out(s, *args)
            _gemm(dah[s][:, 3 * H:], p_o, aux, accumulate=True)    # + P_oᵀ dao
            grad_cell(s, *args)
            _gemm(dah[s][:, :2 * H], p_if, dc, accumulate=True)
            _gemm(dah[s], w.w_hh, dh, accumulate=True)
    else:
        point = _bwd_kernel(_BWD[name])[grid, tpb]
        for s in range(T - 1, -1, -1):
            point(s, *args)
            _gemm(dah[s], w.w_hh, dh, accumulate=True)


# --------------------------------------------------------------------------- persistent
class _DoesNotFit(Exception):
    """The persistent grid cannot be co-resident on this device."""


# In every persistent kernel a recurrent product (one output) is shared by an
# aligned group of ``lanes`` threads: lane l adds k = l, l + lanes, ... (for
# consecutive lanes, consecutive addresses of a weight row: coalesced, and in
# shared memory conflict-free), then _lane_sum adds the lanes' partial sums.
# The loops over outputs step through ``range(0, n, groups)`` so that every
# thread of the block makes the same number of shuffles.


@lru_cache(maxsize=None)
def _persistent_fwd_kernel(point, G, np_dtype):
    """The whole forward time loop of a single-product cell in one cooperative kernel."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def kernel(T, reverse, lengths, xw, w_hh, b_hh, hbuf, cbuf, y, acts, training, hs, cs,
               peep, hw, HB, use_shared, lanes):
        # xw [T,B,GH]; w_hh [GH,H]; b_hh [GH]; hbuf, cbuf [2,B,H] double buffers
        # (the state after step s is in [(s+1)%2]); y [T,B,H]; acts, hs, cs as in
        # the per-step path; hw [B,GH] work (each block only touches its own
        # units' columns)
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [R, H]: wsh[r*H + k] = w_hh[g*H + j0 + jj, k]
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        R = G * HB                       # rows of w_hh owned: r = g*HB + jj
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % lanes
        grp = tid // lanes
        ngrp = nt // lanes
        if use_shared:
            for e in range(tid, R * H, nt):
                r = e // H
                k = e - r * H
                g = r // HB
                j = j0 + r - g * HB
                if j < H:
                    wsh[e] = w_hh[g * H + j, k]
                else:
                    wsh[e] = zero
            cuda.syncthreads()
        for s in range(T):
            cur = s % 2
            h_in = hbuf[cur]
            h_out = hbuf[1 - cur]
            c_in = cbuf[cur]
            c_out = cbuf[1 - cur]
            # recurrent products of the owned rows, for every batch entry
            for base in range(0, B * R, ngrp):
                item = base + grp
                b = item // R
                r = item - b * R
                g = r // HB
                j = j0 + r - g * HB
                row = g * H + j
                acc = zero
                if b < B and j < H:
                    if use_shared:
                        for k in range(lane, H, lanes):
                            acc += wsh[r * H + k] * h_in[b, k]
                    else:
                        for k in range(lane, H, lanes):
                            acc += w_hh[row, k] * h_in[b, k]
                acc = _lane_sum(acc, lanes)
                if lane == 0 and b < B and j < H:
                    hw[b, row] = acc + b_hh[row]
            cuda.syncthreads()
            slot = s if training else 0
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    point(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs,
                          cs, peep, hw)
            # every block must have written h_out before anyone reads it as h_in
            grid.sync()

    return kernel


@lru_cache(maxsize=None)
def _persistent_bwd_kernel(point, G, np_dtype):
    """The whole backward time loop of a single-product cell in one cooperative kernel."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def kernel(T, reverse, lengths, dy, w_t, dh, dc, acts, hs, cs, dax, dah, peep, aux, HB,
               use_shared, lanes):
        # w_t [H,GH] = w_hhᵀ; dh, dc [B,H]; dah [T,B,GH] is what crosses blocks,
        # read after the barrier
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [HB, GH]: wsh[jj*GH + k] = w_hh[k, j0 + jj]
        B = dh.shape[0]
        H = dh.shape[1]
        GH = G * H
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % lanes
        grp = tid // lanes
        ngrp = nt // lanes
        if use_shared:
            for e in range(tid, HB * GH, nt):
                jj = e // GH
                k = e - jj * GH
                if j0 + jj < H:
                    wsh[e] = w_t[j0 + jj, k]
                else:
                    wsh[e] = zero
            cuda.syncthreads()
        for s in range(T - 1, -1, -1):
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    point(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux)
            grid.sync()
            # dh[b, j] += sum_k dah[s, b, k] w_hh[k, j] for the owned units
            for base in range(0, B * HB, ngrp):
                item = base + grp
                b = item // HB
                jj = item - b * HB
                j = j0 + jj
                acc = zero
                if b < B and j < H:
                    if use_shared:
                        for k in range(lane, GH, lanes):
                            acc += dah[s, b, k] * wsh[jj * GH + k]
                    else:
                        for k in range(lane, GH, lanes):
                            acc += dah[s, b, k] * w_t[j, k]
                acc = _lane_sum(acc, lanes)
                if lane == 0 and b < B and j < H:
                    dh[b, j] += acc
            # the next step's points read dh[b, j] from other threads of this block
            cuda.syncthreads()

    return kernel


if cuda is not None:
    @cuda.jit(device=True)
    def _own_rows(src, w, bias, use_bias, out, g_lo, g_hi, HB, j0, tid, nt, lanes):
        """out[b, g*H + j] = src[b, :] · w[g*H + j, :] (+ bias) for the block's
        units j and gates g in [g_lo, g_hi). src [B,H]; w [>=g_hi*H, H]."""
        B = src.shape[0]
        H = src.shape[1]
        R = (g_hi - g_lo) * HB
        lane = tid % lanes
        grp = tid // lanes
        for base in range(0, B * R, nt // lanes):
            item = base + grp
            b = item // R
            r = item - b * R
            g = g_lo + r // HB
            j = j0 + r % HB
            row = g * H + j
            acc = type(src[0, 0])(0)    # the arrays' type (a bare 0.0 would be float64)
            if b < B and j < H:
                for k in range(lane, H, lanes):
                    acc += src[b, k] * w[row, k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                if use_bias:
                    acc += bias[row]
                out[b, row] = acc

    @cuda.jit(device=True)
    def _own_cols(da, s, k0, K, wt, kw0, out, HB, j0, tid, nt, lanes):
        """out[b, j] += da[s, b, k0:k0+K] · wt[j, kw0:kw0+K] for the block's units
        j (wt: a transposed weight, so lanes read consecutive addresses);
        da [T,B,*]; out [B,H]. Ends with a block barrier: the points that
        follow read out[b, j] from other threads."""
        B = out.shape[0]
        H = out.shape[1]
        lane = tid % lanes
        grp = tid // lanes
        for base in range(0, B * HB, nt // lanes):
            item = base + grp
            b = item // HB
            j = j0 + item - b * HB
            acc = type(out[0, 0])(0)
            if b < B and j < H:
                for k in range(lane, K, lanes):
                    acc += da[s, b, k0 + k] * wt[j, kw0 + k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                out[b, j] += acc
        cuda.syncthreads()


@lru_cache(maxsize=None)
def _persistent_two_phase_fwd_kernel(name):
    """Forward time loop of the cells with a second product inside the step:
    ``gru_reset_before`` (``U_n (r ⊙ h)``) and ``peephole_full`` (``P_o c'``).
    Two grid barriers per step; weights are read from global memory (rows of
    the weights as stored: coalesced across a group's lanes), not cached in
    shared memory."""
    grub = name == "gru_reset_before"

    @cuda.jit
    def kernel(T, reverse, lengths, xw, w_hh, b_hh, hbuf, cbuf, y, acts, training, hs, cs,
               peep, hw, aux, p_if, p_o, HB, lanes):
        # w_hh [GH,H]; p_if [2H,H] = [P_i; P_f]; p_o [H,H] = P_o;
        # aux: [B,H] r ⊙ h (GRU) or [B,2H] (P_i c, P_f c) then P_o c' (peephole)
        grid = cuda.cg.this_grid()
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for s in range(T):
            cur = s % 2
            h_in = hbuf[cur]
            h_out = hbuf[1 - cur]
            c_in = cbuf[cur]
            c_out = cbuf[1 - cur]
            slot = s if training else 0
            if grub:
                _own_rows(h_in, w_hh, b_hh, True, hw, 0, 2, HB, j0, tid, nt, lanes)
            else:
                _own_rows(h_in, w_hh, b_hh, True, hw, 0, 4, HB, j0, tid, nt, lanes)
                _own_rows(c_in, p_if, b_hh, False, aux, 0, 2, HB, j0, tid, nt, lanes)
            cuda.syncthreads()
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_fwd_gates(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y,
                                        acts, slot, hs, cs, peep, aux)
                    else:
                        _peep_full_fwd_cell(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out,
                                            y, acts, slot, hs, cs, peep, aux)
            grid.sync()     # r ⊙ h, or c', of every unit is needed next
            if grub:
                _own_rows(aux, w_hh, b_hh, True, hw, 2, 3, HB, j0, tid, nt, lanes)
            else:
                _own_rows(c_out, p_o, b_hh, False, aux, 0, 1, HB, j0, tid, nt, lanes)
            cuda.syncthreads()
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_fwd_step(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y,
                                       acts, slot, hs, cs, peep, aux)
                    else:
                        _peep_full_fwd_out(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out,
                                           y, acts, slot, hs, cs, peep, aux)
            grid.sync()

    return kernel


@lru_cache(maxsize=None)
def _persistent_two_phase_bwd_kernel(name):
    """Backward time loop of ``gru_reset_before`` / ``peephole_full``: two grid
    barriers per step, each followed by products over the block's columns."""
    grub = name == "gru_reset_before"

    @cuda.jit
    def kernel(T, reverse, lengths, dy, w_t, dh, dc, acts, hs, cs, dax, dah, peep, aux,
               pif_t, po_t, HB, lanes):
        # w_t [H,GH] = w_hhᵀ; pif_t [H,2H] = [P_i; P_f]ᵀ; po_t [H,H] = P_oᵀ; aux [B,H]
        grid = cuda.cg.this_grid()
        B = dh.shape[0]
        H = dh.shape[1]
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for s in range(T - 1, -1, -1):
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_bwd_n(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep,
                                    aux)
                    else:
                        _peep_full_bwd_out(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah,
                                           peep, aux)
            grid.sync()
            if grub:
                # aux = dL/d(r ⊙ h) = dan · U_n
                _own_cols(dah, s, 2 * H, H, w_t, 2 * H, aux, HB, j0, tid, nt, lanes)
            else:
                # aux += P_oᵀ dao
                _own_cols(dah, s, 3 * H, H, po_t, 0, aux, HB, j0, tid, nt, lanes)
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_bwd_r(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep,
                                    aux)
                    else:
                        _peep_full_bwd_cell(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah,
                                            peep, aux)
            grid.sync()
            if grub:
                _own_cols(dah, s, 0, 2 * H, w_t, 0, dh, HB, j0, tid, nt, lanes)
            else:
                _own_cols(dah, s, 0, 2 * H, pif_t, 0, dc, HB, j0, tid, nt, lanes)
                _own_cols(dah, s, 0, 4 * H, w_t, 0, dh, HB, j0, tid, nt, lanes)

    return kernel


def _persistent_lanes(threads):
    """``settings.persistent_lanes``, halved until it divides the block."""
    lanes = settings.persistent_lanes
    while lanes > 1 and threads % lanes:
        lanes //= 2
    if not SIMULATOR and threads % 32:
        raise ValueError(f"persistent_threads={threads} must be a multiple of 32 (whole "
                         "warps: the products use full-warp shuffles)")
    return lanes


def _persistent_plan(H, unit_bytes, nsm, limit, units=None, shared_bytes=None):
    """``(HB, use_shared)`` for a co-resident persistent grid, or None.

    ``unit_bytes``: bytes of weights one unit's slice holds in shared memory
    (0: the kernel keeps none); ``nsm``: multiprocessors; ``limit(shmem)``:
    how many blocks with ``shmem`` bytes of dynamic shared memory can be
    co-resident. ``HB`` starts at about one block per multiprocessor; with
    the weights in shared memory it is shrunk until the slice fits
    ``shared_bytes`` (more, smaller blocks), as long as that many blocks can
    be co-resident; otherwise the weights are read from global memory (L2).
    ``units`` fixes HB.
    """
    shared_bytes = settings.shared_bytes if shared_bytes is None else shared_bytes
    fit = shared_bytes // unit_bytes if unit_bytes else 0
    if units:
        use_shared = units <= fit
        return (units, use_shared) if -(-H // units) <= limit(units * unit_bytes
                                                             if use_shared else 0) else None
    per_sm = -(-H // nsm)
    plans = ([(min(per_sm, fit), True)] if fit else []) + [(per_sm, False)]
    for HB, use_shared in plans:
        for _ in range(3):
            most = limit(HB * unit_bytes if use_shared else 0)
            if 0 < -(-H // HB) <= most:
                return HB, use_shared
            if most <= 0:
                break
            HB = -(-H // most)              # fewer, fuller blocks
            if use_shared and HB > fit:     # the slice no longer fits: next plan
                break
    return None


def _launch_persistent(kernel, args_for, H, shared_per_unit, itemsize):
    """Launch ``kernel`` on a co-resident grid of blocks of ``HB`` units each
    (sized by :func:`_persistent_plan`; ``shared_per_unit`` weights per unit).
    ``args_for(HB, use_shared, lanes)`` builds the arguments. Returns
    ``(HB, use_shared)``."""
    threads = settings.persistent_threads
    lanes = _persistent_lanes(threads)
    unit_bytes = shared_per_unit * itemsize
    if SIMULATOR:
        HB = settings.persistent_units or H
        if HB < H:
            raise ValueError(
                "the CUDA simulator's grid sync only synchronises within one block: "
                f"persistent_units={HB} < H={H} would give wrong results")
        use_shared = 0 < unit_bytes and HB * unit_bytes <= settings.shared_bytes
        kernel[1, threads, 0, HB * unit_bytes if use_shared else 0](
            *args_for(HB, use_shared, lanes))
        return HB, use_shared
    nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
    # the compiled kernel depends on the arguments' types only, not on HB
    spec = kernel.specialize(*args_for(1, False, lanes))

    def limit(shmem):
        try:
            return next(iter(spec.overloads.values())).max_cooperative_grid_blocks(threads,
                                                                                  shmem)
        except Exception:   # pragma: no cover - older numba-cuda
            return nsm

    plan = _persistent_plan(H, unit_bytes, nsm, limit, settings.persistent_units)
    if plan is None:
        raise _DoesNotFit(f"no co-resident persistent grid for H={H} ({threads} threads per "
                          f"block, {settings.shared_bytes} B of shared memory)")
    HB, use_shared = plan
    spec[-(-H // HB), threads, 0, HB * unit_bytes if use_shared else 0](
        *args_for(HB, use_shared, lanes))
    return plan


def _persistent_forward(cell, T, rev, lens, xw, w, h, c, y, acts, hs, cs, peep, training):
    B, H = h.shape
    G = cell.gates
    dtype = np.dtype(h.dtype)
    hbuf = _work("hbuf", (2, B, H), dtype)
    hbuf[0].copy_to_device(h)
    if cell.has_cell:
        cbuf = _work("cbuf", (2, B, H), dtype)
        cbuf[0].copy_to_device(c)
    else:
        cbuf = _dummy((2, 1, 1), dtype)
    hw = _work("hw", (B, G * H), dtype)
    if cell.name in TWO_PHASE_CELLS:
        kernel = _persistent_two_phase_fwd_kernel(cell.name)
        if cell.name == "peephole_full":
            aux = _work("aux2", (B, 2 * H), dtype)
            p_if, p_o = peep[:2].reshape(2 * H, H), peep[2]
        else:
            aux = _work("aux", (B, H), dtype)
            p_if = p_o = _dummy((1, 1), dtype)

        def args_for2(HB, use_shared, lanes):
            return (T, rev, lens, xw, w.w_hh, w.b_hh, hbuf, cbuf, y, acts, training, hs, cs,
                    peep, hw, aux, p_if, p_o, HB, lanes)

        _launch_persistent(kernel, args_for2, H, 0, dtype.itemsize)
    else:
        kernel = _persistent_fwd_kernel(_FWD[cell.name], G, dtype.type)

        def args_for(HB, use_shared, lanes):
            return (T, rev, lens, xw, w.w_hh, w.b_hh, hbuf, cbuf, y, acts, training, hs, cs,
                    peep, hw, HB, use_shared, lanes)

        _launch_persistent(kernel, args_for, H, G * H, dtype.itemsize)
    h.copy_to_device(hbuf[T % 2])
    if cell.has_cell:
        c.copy_to_device(cbuf[T % 2])


def _persistent_backward(cell, cache, dy, dh, dc, dax, dah, peep):
    T, B, I, H = cache.shape
    G = cell.gates
    dtype = np.dtype(dh.dtype)
    cs = cache.cs if cache.cs is not None else _dummy((1, 1, 1), dtype)
    w_t = _transpose(cache.weights.w_hh, "w_t")            # [H, GH]
    if cell.name in TWO_PHASE_CELLS:
        kernel = _persistent_two_phase_bwd_kernel(cell.name)
        aux = _work("aux", (B, H), dtype)
        if cell.name == "peephole_full":
            pif_t = _transpose(peep[:2].reshape(2 * H, H), "pif_t")
            po_t = _transpose(peep[2], "po_t")
        else:
            pif_t = po_t = _dummy((1, 1), dtype)

        def args_for2(HB, use_shared, lanes):
            return (T, cache.reverse, cache.lengths, dy, w_t, dh, dc, cache.acts, cache.hs,
                    cs, dax, dah, peep, aux, pif_t, po_t, HB, lanes)

        _launch_persistent(kernel, args_for2, H, 0, dtype.itemsize)
        return
    kernel = _persistent_bwd_kernel(_BWD[cell.name], G, dtype.type)
    aux = _dummy((1, 1), dtype)

    def args_for(HB, use_shared, lanes):
        return (T, cache.reverse, cache.lengths, dy, w_t, dh, dc, cache.acts, cache.hs, cs,
                dax, dah, peep, aux, HB, use_shared, lanes)

    _launch_persistent(kernel, args_for, H, G * H, dtype.itemsize)
