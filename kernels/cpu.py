"""Fused Numba ``@njit`` CPU kernels: the ``"cpu"`` backend.

Implements the backend contract of :mod:`fastrnn.contract` (one layer, one
direction, a whole sequence) for every cell of :mod:`fastrnn.cells`, in
float32 and float64::

    forward(cell, x, h0, c0, weights, lengths, reverse, training)
        -> (y, h_n, c_n, cache)
    backward(cell, cache, dy, dh_n, dc_n) -> (dx, dh0, dc0, dweights)

Notation: ``T`` steps, ``B`` batch, ``I`` inputs, ``H`` hidden, ``G`` gates.

How it is fast
--------------
- The input product ``x W_ihᵀ`` for all ``T*B`` rows is one GEMM before
  the time loop; ``dx``, ``dW_ih``, ``dW_hh`` (and full peephole gradients)
  are single GEMMs over all ``T*B`` rows after it. Only ``U h`` (and, where
  the cell needs it, a second dependent product) is inside the loop.
- One compiled loop per sequence (per cell family and dtype): a BLAS call for
  the recurrent product, then a gate loop over ``j`` on per-gate slice views
  (``xi = row[:H]``...) that LLVM vectorises; the activations are the
  float32 rational tanh / sigmoid of :mod:`fastrnn.kernels.activations`.
- The recurrent product is ``h @ Uᵀ`` with ``Uᵀ`` transposed once per call,
  so OpenBLAS gets a no-transpose GEMM: at B=8, H=64 that is 1.7 µs per step
  against 11.7 µs for the transposed call (its small-matrix path only takes
  NN). The biases are written into the product's output and added by the
  GEMM itself (beta=1), so the ``T*B*G*H`` input product is never re-read
  just to add them; bias gradients are summed inside the backward loop.
- Every BLAS call, in and out of the compiled loops, goes to ONE library:
  the OpenBLAS that NumPy itself loads. Its ``cblas_?gemm`` symbol is bound
  into LLVM under a fixed name (``llvmlite.binding.add_symbol`` plus a
  ``types.ExternalFunction``), so the compiled kernels keep ``cache=True``
  (a ctypes function pointer would disable caching) and no second OpenBLAS
  pool (SciPy's, which ``np.dot`` in ``@njit`` would use) competes for the
  two cores (two pools of spinning worker threads made a GEMM-then-loop
  sequence 2x slower on the 2-core machine).
- The BLAS thread count is chosen per call by the size of each product
  (``_TWO_THREAD_FLOPS``), capped by :func:`set_num_threads`; NumPy's own
  OpenBLAS setting is restored when a call returns.
- Workspaces are allocated once per call. Inference (``training=False``)
  keeps no cache, and computes the input product in chunks of steps
  (``_CHUNK_ROWS``), so its workspace does not grow with ``T``; training
  saves the gate activations, and backward differentiates from them.

The cell equations live once, in :mod:`fastrnn.kernels.pointwise`, compiled
here with ``njit(inline="always")``.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
import types as _pytypes

import numpy as np

try:  # the backend reports itself unavailable instead of failing the package import
    import llvmlite.binding as _ll
    from numba import njit, types
    from numba.extending import overload
    _NUMBA_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the install
    _NUMBA_ERROR = f"numba is not installed ({exc})"

from fastrnn.cells import CELLS
from fastrnn.contract import Weights, check_forward
from fastrnn.kernels import heap as _heap

# a training step's temporaries reuse the pages of the step before (see heap.py)
_heap.tune()

__all__ = ["forward", "backward", "available", "set_num_threads", "get_num_threads",
           "matmul"]

# --------------------------------------------------------------------------- BLAS
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


if _NUMBA_ERROR is None:
    _BLAS_PATH, _blas_set_threads, _blas_get_threads = _bind_blas()
else:  # pragma: no cover
    _BLAS_PATH = _blas_set_threads = _blas_get_threads = None


def available():
    """``(ok, reason)``: the backend needs Numba and NumPy's cblas symbols."""
    if _NUMBA_ERROR is not None:
        return False, _NUMBA_ERROR
    if _BLAS_PATH is None:
        return False, ("could not find cblas_sgemm/cblas_dgemm in the BLAS library "
                       "NumPy loads (expected NumPy's bundled OpenBLAS)")
    return True, ""


# --------------------------------------------------------------------------- threads
# Below this many FLOPs per BLAS call one thread is used, above it up to
# set_num_threads(). Two threads paid only above ~16 MFLOP for the transposed
# (NT) product; with the no-transpose products used here, A/B runs on the 2-core machine
# (LSTM, interleaved medians) favour 1 MFLOP: e.g. (100,32,64,128) training
# 32.9 -> 28.4 ms, (100,64,128,256) inference 67.7 -> 52.3 ms, and no shape
# slower. The count is switched per call (one cheap call into OpenBLAS) and
# put back when the call returns, so NumPy's own setting is left alone.
_TWO_THREAD_FLOPS = 1e6
_max_threads = max(1, _blas_get_threads()) if _blas_get_threads is not None else 1


def _threads_from_env():
    """``FASTRNN_NUM_THREADS`` (read once, at import): the thread cap, or None."""
    raw = os.environ.get("FASTRNN_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        import warnings
        warnings.warn(f"FASTRNN_NUM_THREADS={raw!r} is not a whole number >= 1: ignored",
                      RuntimeWarning, stacklevel=2)
        return None
    return n


_max_threads = _threads_from_env() or _max_threads


def set_num_threads(n):
    """Set the most BLAS threads the CPU kernels use (each call may use fewer)."""
    global _max_threads
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _max_threads = n


def get_num_threads():
    """The most BLAS threads the CPU kernels use."""
    return _max_threads


class _Threads:
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
        cls = _Threads
        with cls._lock:
            if cls._active == 0:
                cls._saved = _blas_get_threads() if _blas_get_threads is not None else 0
            cls._active += 1
            self.cur = None

    def use(self, flops):
        n = 1 if (flops < _TWO_THREAD_FLOPS or _Threads._active > 1) else _max_threads
        if n != self.cur and _blas_set_threads is not None:
            with _Threads._lock:
                _blas_set_threads(n)
            self.cur = n
        return n

    def restore(self):
        cls = _Threads
        with cls._lock:
            cls._active -= 1
            if cls._active == 0 and _blas_set_threads is not None and cls._saved:
                _blas_set_threads(cls._saved)


# --------------------------------------------------------------------------- compiled
if _NUMBA_ERROR is None and _BLAS_PATH is not None:
    from fastrnn.kernels import pointwise as _pointwise
    from fastrnn.kernels.activations import sigmoid as _sigmoid
    from fastrnn.kernels.activations import tanh as _tanh

    _PW = _pointwise.build(njit(inline="always"), _tanh, _sigmoid)
    rnn_tanh_step, rnn_tanh_grad = _PW.rnn_tanh_step, _PW.rnn_tanh_grad
    rnn_relu_step, rnn_relu_grad = _PW.rnn_relu_step, _PW.rnn_relu_grad
    lstm_step, lstm_grad = _PW.lstm_step, _PW.lstm_grad
    gru_step, gru_grad = _PW.gru_step, _PW.gru_grad
    gru_reset_before_gates = _PW.gru_reset_before_gates
    gru_reset_before_step = _PW.gru_reset_before_step
    gru_reset_before_grad_n = _PW.gru_reset_before_grad_n
    gru_reset_before_grad_r = _PW.gru_reset_before_grad_r
    peephole_cell, peephole_out = _PW.peephole_cell, _PW.peephole_out
    peephole_grad_out, peephole_grad_cell = _PW.peephole_grad_out, _PW.peephole_grad_cell

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

    _OPTS = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)

    @njit(inline="always")
    def _fill_rows(a, v):
        """a[b, :] = v for every row: the bias a beta=1 GEMM then adds onto."""
        for b in range(a.shape[0]):
            a[b, :] = v

    @njit(inline="always")
    def _acc(acc, v):
        """acc += v (a float64 accumulator of bias gradients, summed in the loop
        while the step's gradients are hot in cache instead of a pass after)."""
        for k in range(v.shape[0]):
            acc[k] += v[k]

    # Every kernel reads the schedule the same way: at step s, batch entry b
    # is active while s < lengths[b] and reads time t = s (forward) or
    # t = lengths[b]-1-s (reverse). Inactive entries keep their state; the
    # recurrent GEMM still runs over all B rows (rows are independent, so a
    # stale row cannot leak into an active one), and their results are unused.
    # Saved arrays are indexed by time t, zero at padded steps, so the weight
    # gradients after the loop are plain GEMMs over all T*B rows.

    # Every kernel works on the batch rows [b0, b1) only: rows never interact
    # in the recurrence, so forward and backward can run as independent time
    # loops on two halves of the batch, one per core, without any per-step
    # synchronisation (see _run_rows).

    # ----------------------------------------------------------- the time loops
    # Two skeletons, each a forward and a backward loop, written once:
    # - one recurrent product per step (RNN, LSTM, GRU, diagonal peephole):
    #   a = h Uᵀ + bias for all rows, then each active row's cell function;
    # - two dependent products per step (GRU reset-before: U_n (r ⊙ h); full
    #   peephole: P_o c'): a first row function forms the second product's
    #   input q, the product runs over all rows, a second row function ends
    #   the step.
    # The cell-specific work is done by row functions (below), one call per
    # active (step, batch row), that the skeletons call by role (FWD, FWD2,
    # BWD, BWD2, CARRY, PRE, POST); `_loop` compiles a skeleton for one cell
    # with those names bound to the cell's functions, so each cell gets its own
    # machine code with its row functions inlined.
    #
    # Shared shapes: xg [T,B,G*H] = x W_ihᵀ; state (h,) or (h, c), [B,H] each,
    # updated in place; y [T,B,H]; saved: the cell's arrays for backward,
    # [T,B,.] in training (index ts = t); in inference one step's scratch
    # [1,B,.] (ts = 0) that the rows write only where a later phase reads it;
    # cellw: the cell's extra weights and workspaces; backward's carry: (dh,)
    # plus the cell's other carried gradients, [B,H] each, in place; grads,
    # dbias: the gate-gradient arrays [T,B,G*H] (zero where padded) and their
    # float64 column sums.

    # the roles, bound per cell in each compiled copy of a skeleton (see _loop)
    FWD = FWD2 = BWD = BWD2 = CARRY = PRE = POST = None

    @njit(inline="always")
    def _time(L, s, reverse):
        """The time step row b works on at loop step s (-1: padded, skip)."""
        if s >= L:
            return -1
        return L - 1 - s if reverse else s

    def _fwd1(xg, state, w_hhT, bias, cellw, lengths, reverse, training, y, saved, b0, b1):
        h = state[0]
        T, B, G = xg.shape
        a = np.empty((B, G), xg.dtype)                  # a: [B,G*H] = h Uᵀ + bias
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    FWD(xg[t, b], a[b], a[b], state, cellw, saved, y[t, b],
                         t if training else 0, b, training)

    def _fwd2(xg, state, w_hhT, bias, w2T, bias2, cellw, lengths, reverse, training, y, saved,
              b0, b1):
        h = state[0]
        T, B, _ = xg.shape
        a = np.empty((B, w_hhT.shape[1]), xg.dtype)     # a: first product + bias
        q = np.zeros((B, w2T.shape[0]), xg.dtype)       # q: the second product's input
        a2 = np.empty((B, w2T.shape[1]), xg.dtype)      # a2: = q w2ᵀ + bias2
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            PRE(state, cellw, b0, b1)
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    FWD(xg[t, b], a[b], q[b], state, cellw, saved, y[t, b],
                         t if training else 0, b, training)
            _fill_rows(a2[b0:b1], bias2)
            mm(q[b0:b1], w2T, a2[b0:b1], False, 1.0)
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    FWD2(xg[t, b], a[b], a2[b], q[b], state, cellw, saved, y[t, b],
                          t if training else 0, b, training)

    def _bwd1(saved, w_hh, cellw, lengths, reverse, dy, carry, grads, dbias, b0, b1):
        T, B, H = dy.shape
        g = np.zeros((B, w_hh.shape[0]), dy.dtype)      # g: [B,G*H] this step's gate grads
        u = np.empty((B, H), dy.dtype)                  # u: [B,H] = g U
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    BWD(saved, cellw, dy[t, b], g[b], g[b], carry, grads, dbias, t, b)
            mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
            CARRY(u, carry, lengths, s, b0, b1)

    def _bwd2(saved, w_hh, w2, lo2, cellw, lengths, reverse, dy, carry, grads, dbias, b0, b1):
        # the second product's gradient: q2 = g[:, lo2:lo2+H] w2, before the first
        # product's (g[:, :w_hh.shape[0]] U)
        T, B, H = dy.shape
        G = grads[0].shape[2]
        g = np.zeros((B, G), dy.dtype)
        q2 = np.empty((B, w2.shape[1]), dy.dtype)
        u = np.empty((B, H), dy.dtype)
        n1 = w_hh.shape[0]
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    BWD(saved, cellw, dy[t, b], g[b], g[b], carry, grads, dbias, t, b)
            mm(g[b0:b1, lo2:lo2 + w2.shape[0]], w2, q2[b0:b1], False, 0.0)
            for b in range(b0, b1):
                t = _time(lengths[b], s, reverse)
                if t >= 0:
                    BWD2(saved, cellw, dy[t, b], q2[b], g[b], carry, grads, dbias, t, b)
            POST(g, cellw, carry, lengths, s, b0, b1)
            mm(g[b0:b1, :n1], w_hh, u[b0:b1], False, 0.0)
            CARRY(u, carry, lengths, s, b0, b1)

    # ----------------------------------------------------------- row functions
    # Forward: row(xr [G*H], ar, qr, state, cellw, saved, yr [H], ts, b) with
    # xr, ar this row's input product and first product (+ bias); qr the
    # second product's input (phase 1 of a two-product cell writes it).
    # Phase 2 of a two-product cell: row2(xr, ar, a2r, qr, ...).
    # Backward: grad(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b) with
    # gr [G*H] this row's gate gradients (written), vr the second product's
    # gradient (phase 2 only).
    # They take tuples apart by index (``saved[0]``), never by unpacking
    # (``act, hprev = saved``): with Numba 0.6x's inliner an unpacked argument
    # tuple followed by a nested inline call compiled to code that silently
    # left the saved arrays unwritten (tests/test_cpu_kernels.py caught it).

    @njit(inline="always")
    def _rnn_row(relu, xr, ar, state, saved, yr, ts, b, training):
        # saved: hprev, hout [.,B,H] (h before and after the step)
        hb = state[0][b]
        if training:
            saved[0][ts, b, :] = hb
        for j in range(hb.shape[0]):
            v = xr[j] + ar[j]
            hb[j] = rnn_relu_step(v) if relu else rnn_tanh_step(v)
        yr[:] = hb
        if training:
            saved[1][ts, b, :] = hb

    @njit(inline="always")
    def _rnn_tanh_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        _rnn_row(False, xr, ar, state, saved, yr, ts, b, training)

    @njit(inline="always")
    def _rnn_relu_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        _rnn_row(True, xr, ar, state, saved, yr, ts, b, training)

    @njit(inline="always")
    def _rnn_grad(relu, saved, dyr, gr, carry, grads, dbias, t, b):
        hn = saved[1][t, b]
        dhb = carry[0][b]
        for j in range(gr.shape[0]):
            d = dyr[j] + dhb[j]
            gr[j] = rnn_relu_grad(hn[j], d) if relu else rnn_tanh_grad(hn[j], d)
        grads[0][t, b, :] = gr
        _acc(dbias[0], gr)

    @njit(inline="always")
    def _rnn_tanh_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        _rnn_grad(False, saved, dyr, gr, carry, grads, dbias, t, b)

    @njit(inline="always")
    def _rnn_relu_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        _rnn_grad(True, saved, dyr, gr, carry, grads, dbias, t, b)

    # The LSTM family saves act [.,B,4H] (i,f,g,o), cprev, ctanh (tanh c'),
    # hprev [.,B,H], and the peephole cells cnew (c') after them.
    @njit(inline="always")
    def _lstm_save(state, saved, ts, b, training):
        """Save h and c before the step; this row's gate and tanh c' slots."""
        if training:
            saved[3][ts, b, :] = state[0][b]
            saved[1][ts, b, :] = state[1][b]
        return saved[0][ts, b], saved[2][ts, b]

    @njit(inline="always")
    def _lstm_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        gr, tcb = _lstm_save(state, saved, ts, b, training)
        hb = state[0][b]
        cb = state[1][b]
        H = hb.shape[0]
        for j in range(H):
            i, f, g, o, cn, tc, hn = lstm_step(xr[j] + ar[j], xr[H + j] + ar[H + j],
                                               xr[2 * H + j] + ar[2 * H + j],
                                               xr[3 * H + j] + ar[3 * H + j], cb[j])
            if training:
                gr[j] = i
                gr[H + j] = f
                gr[2 * H + j] = g
                gr[3 * H + j] = o
                tcb[j] = tc
            cb[j] = cn
            hb[j] = hn
            yr[j] = hn

    @njit(inline="always")
    def _lstm_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        ar = saved[0][t, b]
        cp = saved[1][t, b]
        tcb = saved[2][t, b]
        dhb = carry[0][b]
        dcb = carry[1][b]
        H = dhb.shape[0]
        for j in range(H):
            dai, daf, dag, dao, dcp = lstm_grad(ar[j], ar[H + j], ar[2 * H + j], ar[3 * H + j],
                                                tcb[j], cp[j], dyr[j] + dhb[j], dcb[j])
            gr[j] = dai
            gr[H + j] = daf
            gr[2 * H + j] = dag
            gr[3 * H + j] = dao
            dcb[j] = dcp
        grads[0][t, b, :] = gr
        _acc(dbias[0], gr)

    @njit(inline="always")
    def _gru_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        # reset_after: n = tanh(x_n + b_in + r ⊙ (U_n h + b_hn)); cellw: (b_in,)
        # saved: act [.,B,3H] (r,z,n), anh [.,B,H] (U_n h + b_hn), hprev
        b_in = cellw[0]
        hb = state[0][b]
        H = hb.shape[0]
        if training:
            saved[2][ts, b, :] = hb
        gr = saved[0][ts, b]
        anb = saved[1][ts, b]
        for j in range(H):
            an = ar[2 * H + j]
            r, z, n, hn = gru_step(xr[j] + ar[j], xr[H + j] + ar[H + j],
                                   xr[2 * H + j] + b_in[j], an, hb[j])
            if training:
                gr[j] = r
                gr[H + j] = z
                gr[2 * H + j] = n
                anb[j] = an
            hb[j] = hn
            yr[j] = hn

    @njit(inline="always")
    def _gru_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        # carry: (dh, direct) with direct the part of dh_prev not through U
        # grads: (dgx, dgh) input-side (r, z, n_x) and recurrent-side (r, z, n_h)
        ar = saved[0][t, b]
        anb = saved[1][t, b]
        hp = saved[2][t, b]
        dhb = carry[0][b]
        db = carry[1][b]
        gx = grads[0][t, b]
        H = dhb.shape[0]
        for j in range(H):
            dar, daz, danx, danh, dhp = gru_grad(ar[j], ar[H + j], ar[2 * H + j], anb[j], hp[j],
                                                 dyr[j] + dhb[j])
            gr[j] = dar
            gr[H + j] = daz
            gr[2 * H + j] = danh
            gx[j] = dar
            gx[H + j] = daz
            gx[2 * H + j] = danx
            db[j] = dhp
        grads[1][t, b, :] = gr
        _acc(dbias[0], gx)
        _acc(dbias[1], gr)

    @njit(inline="always")
    def _gru_rb_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        # reset_before, phase 1: r, z from a = h [U_r;U_z]ᵀ + b; q = r ⊙ h
        # saved: act [.,B,3H] (r,z,n), rh [.,B,H] (r ⊙ h), hprev
        hb = state[0][b]
        H = hb.shape[0]
        if training:
            saved[2][ts, b, :] = hb
        gr = saved[0][ts, b]
        for j in range(H):
            r, z = gru_reset_before_gates(xr[j] + ar[j], xr[H + j] + ar[H + j])
            if training:
                gr[j] = r
            gr[H + j] = z                   # phase 2 reads z here
            qr[j] = r * hb[j]
        if training:
            saved[1][ts, b, :] = qr

    @njit(inline="always")
    def _gru_rb_fwd2(xr, ar, a2r, qr, state, cellw, saved, yr, ts, b, training):
        # phase 2: n = tanh(x_n + (r ⊙ h) U_nᵀ + b_n), h' = (1 - z) n + z h
        gr = saved[0][ts, b]
        hb = state[0][b]
        H = hb.shape[0]
        for j in range(H):
            n, hn = gru_reset_before_step(xr[2 * H + j] + a2r[j], gr[H + j], hb[j])
            if training:
                gr[2 * H + j] = n
            hb[j] = hn
            yr[j] = hn

    @njit(inline="always")
    def _gru_rb_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        # phase 1: dan (the second product's input), daz, the direct dh_prev
        ar = saved[0][t, b]
        hp = saved[2][t, b]
        dhb = carry[0][b]
        db = carry[1][b]
        H = dhb.shape[0]
        for j in range(H):
            dan, daz, dhp = gru_reset_before_grad_n(ar[H + j], ar[2 * H + j], hp[j],
                                                    dyr[j] + dhb[j])
            gr[2 * H + j] = dan
            gr[H + j] = daz
            db[j] = dhp

    @njit(inline="always")
    def _gru_rb_bwd2(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        # phase 2: vr = dan U_n = dL/d(r ⊙ h) -> dar and the rest of dh_prev
        ar = saved[0][t, b]
        hp = saved[2][t, b]
        db = carry[1][b]
        for j in range(db.shape[0]):
            dar, dhp = gru_reset_before_grad_r(ar[j], hp[j], vr[j])
            gr[j] = dar
            db[j] += dhp
        grads[0][t, b, :] = gr
        _acc(dbias[0], gr)

    @njit(inline="always")
    def _peep_diag_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        # cellw: (peep [3,H] = p_i, p_f, p_o,)
        gr, tcb = _lstm_save(state, saved, ts, b, training)
        p = cellw[0]
        hb = state[0][b]
        cb = state[1][b]
        H = hb.shape[0]
        for j in range(H):
            cj = cb[j]
            i, f, g, cn = peephole_cell(xr[j] + ar[j] + p[0, j] * cj,
                                        xr[H + j] + ar[H + j] + p[1, j] * cj,
                                        xr[2 * H + j] + ar[2 * H + j], cj)
            o, tc, hn = peephole_out(xr[3 * H + j] + ar[3 * H + j] + p[2, j] * cn, cn)
            if training:
                gr[j] = i
                gr[H + j] = f
                gr[2 * H + j] = g
                gr[3 * H + j] = o
                tcb[j] = tc
            cb[j] = cn
            hb[j] = hn
            yr[j] = hn
        if training:
            saved[4][ts, b, :] = cb

    @njit(inline="always")
    def _peep_diag_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        p = cellw[0]
        ar = saved[0][t, b]
        cp = saved[1][t, b]
        tcb = saved[2][t, b]
        dhb = carry[0][b]
        dcb = carry[1][b]
        H = dhb.shape[0]
        for j in range(H):
            dao, dch = peephole_grad_out(ar[3 * H + j], tcb[j], dyr[j] + dhb[j])
            dai, daf, dag, dcp = peephole_grad_cell(ar[j], ar[H + j], ar[2 * H + j], cp[j],
                                                    dcb[j] + dch + dao * p[2, j])
            gr[j] = dai
            gr[H + j] = daf
            gr[2 * H + j] = dag
            gr[3 * H + j] = dao
            dcb[j] = dcp + dai * p[0, j] + daf * p[1, j]
        grads[0][t, b, :] = gr
        _acc(dbias[0], gr)

    @njit(inline="always")
    def _peep_full_pre(state, cellw, b0, b1):
        # pc = c [P_i;P_f]ᵀ: the i, f gates' view of c (forward's cellw: pifT [H,2H], pc [B,2H])
        mm(state[1][b0:b1], cellw[0], cellw[1][b0:b1], False, 0.0)

    @njit(inline="always")
    def _peep_full_fwd(xr, ar, qr, state, cellw, saved, yr, ts, b, training):
        # phase 1: i, f, g and c' (the second product's input q = c')
        gr, _ = _lstm_save(state, saved, ts, b, training)
        pc = cellw[1][b]
        cb = state[1][b]
        H = cb.shape[0]
        for j in range(H):
            i, f, g, cn = peephole_cell(xr[j] + ar[j] + pc[j], xr[H + j] + ar[H + j] + pc[H + j],
                                        xr[2 * H + j] + ar[2 * H + j], cb[j])
            if training:
                gr[j] = i
                gr[H + j] = f
                gr[2 * H + j] = g
            qr[j] = cn

    @njit(inline="always")
    def _peep_full_fwd2(xr, ar, a2r, qr, state, cellw, saved, yr, ts, b, training):
        # phase 2: o sees c' through a2 = c' P_oᵀ
        hb = state[0][b]
        H = hb.shape[0]
        gr = saved[0][ts, b]
        tcb = saved[2][ts, b]
        for j in range(H):
            o, tc, hn = peephole_out(xr[3 * H + j] + ar[3 * H + j] + a2r[j], qr[j])
            if training:
                gr[3 * H + j] = o
                tcb[j] = tc
            hb[j] = hn
            yr[j] = hn
        state[1][b, :] = qr
        if training:
            saved[4][ts, b, :] = qr

    @njit(inline="always")
    def _peep_full_bwd(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        # phase 1: dao (the second product's input) and dL/dc' before the o peephole
        # carry: (dh, dc, dct)
        ar = saved[0][t, b]
        tcb = saved[2][t, b]
        dhb = carry[0][b]
        dcb = carry[1][b]
        dtb = carry[2][b]
        H = dhb.shape[0]
        for j in range(H):
            dao, dch = peephole_grad_out(ar[3 * H + j], tcb[j], dyr[j] + dhb[j])
            gr[3 * H + j] = dao
            dtb[j] = dcb[j] + dch

    @njit(inline="always")
    def _peep_full_bwd2(saved, cellw, dyr, vr, gr, carry, grads, dbias, t, b):
        # phase 2: vr = dao P_o joins dL/dc'; the i, f, g gradients and dc
        ar = saved[0][t, b]
        cp = saved[1][t, b]
        dcb = carry[1][b]
        dtb = carry[2][b]
        H = dcb.shape[0]
        for j in range(H):
            dai, daf, dag, dcp = peephole_grad_cell(ar[j], ar[H + j], ar[2 * H + j], cp[j],
                                                    dtb[j] + vr[j])
            gr[j] = dai
            gr[H + j] = daf
            gr[2 * H + j] = dag
            dcb[j] = dcp
        grads[0][t, b, :] = gr
        _acc(dbias[0], gr)

    @njit(inline="always")
    def _peep_full_post(g, cellw, carry, lengths, s, b0, b1):
        # dc += [dai, daf] [P_i;P_f] (backward's cellw: pif [2H,H], qif [B,H])
        pif = cellw[0]
        qif = cellw[1]
        mm(g[b0:b1, :pif.shape[0]], pif, qif[b0:b1], False, 0.0)
        dc = carry[1]
        for b in range(b0, b1):
            if s < lengths[b]:
                for j in range(dc.shape[1]):
                    dc[b, j] += qif[b, j]

    @njit(inline="always")
    def _no_pre(state, cellw, b0, b1):
        pass

    @njit(inline="always")
    def _no_post(g, cellw, carry, lengths, s, b0, b1):
        pass

    @njit(inline="always")
    def _carry_u(u, carry, lengths, s, b0, b1):
        """dh_prev = g U for the active rows."""
        dh = carry[0]
        for b in range(b0, b1):
            if s < lengths[b]:
                dh[b, :] = u[b]

    @njit(inline="always")
    def _carry_u_direct(u, carry, lengths, s, b0, b1):
        """dh_prev = g U + the part not through U (GRU), for the active rows."""
        dh = carry[0]
        direct = carry[1]
        for b in range(b0, b1):
            if s < lengths[b]:
                for j in range(dh.shape[1]):
                    dh[b, j] = u[b, j] + direct[b, j]

    # cell -> its row functions by role: FWD/BWD (the one-product cells' row, the
    # two-product cells' first phase), FWD2/BWD2 (second phase), CARRY, and the
    # two-product hooks PRE (before phase 1) and POST (before the last backward
    # product)
    _ROWS = {
        "rnn_tanh": dict(FWD=_rnn_tanh_fwd, BWD=_rnn_tanh_bwd, CARRY=_carry_u),
        "rnn_relu": dict(FWD=_rnn_relu_fwd, BWD=_rnn_relu_bwd, CARRY=_carry_u),
        "lstm": dict(FWD=_lstm_fwd, BWD=_lstm_bwd, CARRY=_carry_u),
        "gru": dict(FWD=_gru_fwd, BWD=_gru_bwd, CARRY=_carry_u_direct),
        "peephole_diagonal": dict(FWD=_peep_diag_fwd, BWD=_peep_diag_bwd, CARRY=_carry_u),
        "gru_reset_before": dict(FWD=_gru_rb_fwd, FWD2=_gru_rb_fwd2, BWD=_gru_rb_bwd,
                                 BWD2=_gru_rb_bwd2, CARRY=_carry_u_direct, PRE=_no_pre,
                                 POST=_no_post),
        "peephole_full": dict(FWD=_peep_full_fwd, FWD2=_peep_full_fwd2, BWD=_peep_full_bwd,
                              BWD2=_peep_full_bwd2, CARRY=_carry_u, PRE=_peep_full_pre,
                              POST=_peep_full_post),
    }

    def _loop(skeleton, cell):
        """``skeleton`` compiled for ``cell`` (a registry name): a copy of the
        function whose role names (FWD, BWD, ...) are globals bound to the
        cell's row functions, under its own name, so Numba's on-disk cache
        keeps one file per cell. (A closure over the row functions would
        recompile in every new process: numba issue 6264; dispatching on the
        cell name through @overload cost ~1.4 s more compile per cell.)"""
        fn = _pytypes.FunctionType(skeleton.__code__, {**skeleton.__globals__, **_ROWS[cell]},
                                   f"{skeleton.__name__}_{cell}")
        fn.__qualname__ = fn.__name__
        return njit(**_OPTS)(fn)

    #: cell -> (forward loop, backward loop): the one- or two-product skeleton
    #: (the registry's ``products``) compiled for the cell, on first use
    _LOOPS = {name: ((_loop(_fwd1, name), _loop(_bwd1, name)) if CELLS[name].products == 1
                     else (_loop(_fwd2, name), _loop(_bwd2, name)))
              for name in _ROWS}


# --------------------------------------------------------------------------- Python side
# Batch split (off by default): instead of two BLAS threads meeting inside
# every step's GEMM, run two independent time loops on the two halves of the
# batch (rows never interact; the kernels release the GIL), each with
# single-threaded BLAS. Measured on the 2-core machine, LSTM, float32, quiet:
# slower than one loop at every grid shape with B >= 8 (e.g. (100,32,64,128)
# inference 15.3 vs 10.9 ms; (50,64,256,512) 155 vs 87 ms), so it is only
# used when a loop's total recurrent FLOPs reach this bound. Kept, and tested
# (tests/test_cpu_kernels.py::test_batch_split), as a knob for machines with
# more cores per memory channel.
_SPLIT_MIN_FLOPS = float("inf")
_pool = []


def _executor():
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor
        _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-cpu"))
    return _pool[0]


def _row_ranges(T, B, loop_flops):
    """Batch row ranges to run concurrently: two halves, or all rows at once."""
    if _max_threads >= 2 and B >= 2 and T * loop_flops >= _SPLIT_MIN_FLOPS:
        mid = (B + 1) // 2
        return [(0, mid), (mid, B)]
    return [(0, B)]


def _run_rows(kernel, ranges, args_of, threads, loop_flops):
    """Run ``kernel(*args_of(k), b0, b1)`` for each row range ``k``, concurrently."""
    if len(ranges) == 1:
        threads.use(loop_flops)
        kernel(*args_of(0), *ranges[0])
        return
    threads.use(0)   # each half calls single-threaded BLAS
    fut = _executor().submit(kernel, *args_of(1), *ranges[1])
    try:
        kernel(*args_of(0), *ranges[0])
    finally:
        fut.result()


#: registry cell -> the packed kernels that run it: ``"lstm"`` (the LSTM and
#: the diagonal peephole LSTM), ``"gru"`` (reset_after), ``"rnn"``; None for the cells
#: with a second dependent product per step (BLAS-per-step loops only)
_PACKED = {name: (c.family if c.products == 1 else None) for name, c in CELLS.items()}


class _Cache:
    """What backward needs from a training forward (arrays indexed by time)."""

    __slots__ = ("cell", "x", "w", "lengths", "reverse", "saved", "loop_flops")
    # loop_flops: the FLOPs of one step's recurrent product (picks the loop's thread count)

    def __init__(self, cell, x, w, lengths, reverse, saved, loop_flops):
        self.cell, self.x, self.w, self.lengths = cell, x, w, lengths
        self.reverse, self.saved, self.loop_flops = reverse, saved, loop_flops


def _family(cell):
    """The packed kernels' family of ``cell`` (see _PACKED); a ValueError for a cell
    the backend has no loops for."""
    if getattr(cell, "name", None) not in _LOOPS:
        raise ValueError(f"the cpu backend has no kernel for cell {cell.name!r}")
    return _PACKED[cell.name]


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _check_shapes(cell, x, h0, c0, weights, lens, given):
    """Shapes the compiled loops index with; a mismatch must not reach them.

    The layers check their arguments before calling a backend; this is the
    backend's own cheap guard against an out-of-bounds write, the contract's
    one check (``given``: the caller passed lengths, so their range is checked
    too). Other dtypes and layouts are converted, so the check is not strict."""
    check_forward(cell, x, h0, c0, weights, lens if given else None)


def forward(cell, x, h0, c0, weights, lengths=None, reverse=False, training=True):
    """Run one layer in one direction over the whole sequence (see module doc)."""
    fam = _family(cell)
    x = np.ascontiguousarray(x)
    dtype = x.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must be [T, B, I], got shape {x.shape}")
    T, B, I = x.shape
    lens = (np.full(B, T, np.int64) if lengths is None
            else np.ascontiguousarray(lengths, dtype=np.int64))
    _check_shapes(cell, x, h0, c0, weights, lens, lengths is not None)
    reverse, training = bool(reverse), bool(training)
    # the packed kernels call no BLAS in the forward pass: no thread setting to manage
    if (dtype in packed_dtypes and _packed is not None and use_packed
            and fam == "lstm"):
        return _forward_packed(cell, x, h0, c0, weights, lens, reverse, training)
    if (dtype in packed_dtypes and _packed_cells is not None and use_packed
            and (fam, training) in packed_cells):
        return _forward_packed_cell(fam, cell, x, h0, weights, lens, reverse, training)
    threads = _Threads()
    try:
        return _forward(cell, x, h0, c0, weights, lens, reverse, training, threads)
    finally:
        threads.restore()


# The LSTM and diagonal peephole LSTM run on the packed-weight kernels of
# fastrnn.kernels.packed
# (no BLAS call inside the time loop, padded steps skipped, its own two
# threads); `use_packed = False` selects the BLAS-per-step loops below instead
# (the tests check both, the benchmark can compare them). `packed_dtypes` lists
# the dtypes routed there (float64 runs the same kernels on double vectors with
# accurate float64 activations); a dtype left out runs the loops.
packed_dtypes = {np.dtype(np.float32), np.dtype(np.float64)}
try:
    from fastrnn.kernels import packed as _packed
except Exception:  # pragma: no cover - e.g. a Numba without @intrinsic support
    _packed = None
#: off on a CPU without AVX2/AVX-512 (packed.host_simd), where the packed
#: kernels' wide vectors would be split into slow narrow code
use_packed = _packed is not None and _packed.host_simd() is not None


def describe():
    """One line on which CPU kernels run here (for ``fastrnn info``)."""
    if _packed is None:
        return "BLAS-per-step loops only (the packed kernels did not import)"
    simd = _packed.host_simd()
    if simd is None:
        return ("BLAS-per-step loops (this CPU has no AVX2/AVX-512: "
                "the packed kernels are off)")
    if not use_packed:
        return "BLAS-per-step loops (packed kernels turned off)"
    vw = _packed.vector_width()
    variant = "AVX-512" if vw == 16 else "AVX2"
    dts = " and ".join(sorted(np.dtype(d).name for d in packed_dtypes)) or "no dtype"
    loops = "GRU reset-before and the full peephole" + (
        "" if np.dtype(np.float64) in packed_dtypes else "; float64")
    return (f"packed kernels for {dts} LSTM (and diagonal peephole), GRU and RNN "
            f"({vw}-wide {variant} variant for float32; this CPU: {simd.upper()}); "
            f"BLAS-per-step loops for {loops}")


def matmul(a, b, out=None):
    """``a @ b`` (2-D, float32 or float64) that stays fast on a busy machine.

    NumPy's BLAS hands each large product to worker threads, which stall when
    another process holds a core (measured: 3-41x slower than one thread with
    one competing busy process). Here BLAS runs on one thread per task and a
    large product is split in tasks that the caller and
    fastrnn's own pool thread claim one at a time, so a late partner never
    holds up work it has not started. Used by the training blocks' GEMMs."""
    a = np.asarray(a)
    b = np.asarray(b)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    if _packed is None:
        return np.matmul(a, b, out=out)
    threads = _Threads()
    try:
        threads.use(0)
        return _packed.gemm(a, b, out, _max_threads)
    finally:
        threads.restore()


def _forward_packed(cell, x, h0, c0, weights, lens, reverse, training):
    f = lambda a: np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    peep = None if cell.peephole is None else f(weights.peep)
    w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), peep)
    y, h, c, pc = _packed.lstm_forward(x, f(h0), f(c0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                       reverse, training, _max_threads, peep)
    if not training:
        return y, h, c, None
    return y, h, c, _Cache(cell, x, w, lens, reverse, pc, pc.flops)


# The GRU (reset_after=True) and tanh/ReLU RNN on the packed kernels of
# fastrnn.kernels.packed_cells, for the (family, training) pairs listed here
# (where they measured faster than the loops below); `use_packed = False`
# turns them off too.
packed_cells = {("gru", True), ("gru", False), ("rnn", True), ("rnn", False)}
try:
    from fastrnn.kernels import packed_cells as _packed_cells
except Exception:  # pragma: no cover - e.g. a Numba without @intrinsic support
    _packed_cells = None


def _forward_packed_cell(fam, cell, x, h0, weights, lens, reverse, training):
    f = lambda a: np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), None)
    if fam == "gru":
        y, h, pc = _packed_cells.gru_forward(x, f(h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                             reverse, training, _max_threads)
    else:
        y, h, pc = _packed_cells.rnn_forward(x, f(h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                             reverse, cell.name == "rnn_relu", training,
                                             _max_threads)
    if not training:
        return y, h, None, None
    return y, h, None, _Cache(cell, x, w, lens, reverse, pc, pc.flops)


#: inference computes the input product in chunks of about this many rows of
#: ``x`` (enough for the GEMM to run near its rate), and at least this many
#: steps, so its workspace is O(max(B, 32) * G * H), independent of T (the
#: contract's "inference keeps O(B*H)"); training needs all T steps' gates
_CHUNK_ROWS = 512
_CHUNK_MIN_STEPS = 16


def _chunk_steps(T, B):
    """Steps per input-product chunk in inference."""
    return min(T, max(_CHUNK_MIN_STEPS, -(-_CHUNK_ROWS // B)))


def _forward(cell, x, h0, c0, weights, lens, reverse, training, threads):
    dtype = x.dtype
    T, B, I = x.shape
    G = cell.gates
    H = weights.w_hh.shape[1]
    w_ih, w_hh = _c(weights.w_ih, dtype), _c(weights.w_hh, dtype)
    b_ih, b_hh = _c(weights.b_ih, dtype), _c(weights.b_hh, dtype)
    padded = bool((lens < T).any())
    bias = b_ih + b_hh      # added per step onto the recurrent product (beta=1 GEMM)
    w_hhT = np.ascontiguousarray(w_hh.T)                    # [H,G*H]: NN GEMMs in the loop
    loop_flops = 2.0 * B * G * H * H
    rows = _row_ranges(T, B, loop_flops)

    def run(kernel, *args):
        _run_rows(kernel, rows, lambda k: args, threads, loop_flops)

    h = np.array(h0, dtype=dtype, order="C", copy=True)   # h: [B,H] state
    y = np.zeros((T, B, H), dtype) if padded else np.empty((T, B, H), dtype)

    def keep(*shape, gemm=False):
        """A saved array [T, *shape], zero-filled where padded rows enter the weight
        GEMMs; in inference one step's scratch [1, *shape] (see the loops)."""
        if not training:
            return np.empty((1,) + shape, dtype)
        return (np.zeros if (padded and gemm) else np.empty)((T,) + shape, dtype)

    # the cell's state, extra weights (cellw), saved arrays and, for the cells with
    # two dependent products per step, the second product's weights
    c = None
    state = (h,)
    cellw = ()
    name = cell.name
    if cell.has_cell:
        c = np.array(c0, dtype=dtype, order="C", copy=True)
        state = (h, c)
    if cell.family == "rnn":
        saved = (keep(B, H, gemm=True), keep(B, H))                       # hprev, hout
    elif name == "lstm":  # act, cprev, ctanh, hprev
        saved = (keep(B, G * H), keep(B, H), keep(B, H), keep(B, H, gemm=True))
    elif name == "gru":   # b_in stays outside r ⊙ (U_n h + b_hn)
        bias[2 * H:] = b_hh[2 * H:]
        cellw = (b_ih[2 * H:].copy(),)
        saved = (keep(B, G * H), keep(B, H), keep(B, H, gemm=True))      # act, anh, hprev
    elif name == "gru_reset_before":
        saved = (keep(B, G * H), keep(B, H, gemm=True), keep(B, H, gemm=True))   # act, rh, hprev
        second = (w_hhT[:, 2 * H:].copy(), bias[2 * H:].copy())          # U_nᵀ, b_n
        w_hhT, bias = w_hhT[:, :2 * H].copy(), bias[:2 * H].copy()       # [U_r;U_z]ᵀ, b_rz
    else:                 # peephole: act, cprev, ctanh, hprev, cnew
        peep = _c(weights.peep, dtype)
        saved = (keep(B, G * H), keep(B, H, gemm=True), keep(B, H), keep(B, H, gemm=True),
                 keep(B, H, gemm=True))
        if cell.peephole == "diagonal":
            cellw = (peep,)
        else:             # [P_i;P_f]ᵀ and P_oᵀ: NN GEMMs in the loop
            cellw = (np.ascontiguousarray(np.concatenate([peep[0].T, peep[1].T], axis=1)),
                     np.empty((B, 2 * H), dtype))
            second = (np.ascontiguousarray(peep[2].T), np.zeros(H, dtype))
    fwd = _LOOPS[name][0]

    def call(xg, L, rev, yv):     # one launch over len(xg) steps
        if cell.products == 1:
            run(fwd, xg, state, w_hhT, bias, cellw, L, rev, training, yv, saved)
        else:
            run(fwd, xg, state, w_hhT, bias, second[0], second[1], cellw, L, rev, training, yv,
                saved)

    def input_product(xs):                                  # xs: [n,B,I] -> [n,B,G*H]
        n = xs.shape[0]
        threads.use(2.0 * n * B * I * G * H)
        return (xs.reshape(n * B, I) @ w_ih.T).reshape(n, B, G * H)

    if training:  # one GEMM over all T*B rows
        call(input_product(x), lens, reverse, y)
        w = Weights(w_ih, w_hh, b_ih, b_hh,
                    None if weights.peep is None else _c(weights.peep, dtype))
        return y, h, c, _Cache(cell, x, w, lens, reverse, saved, loop_flops)

    # inference: chunks of steps; the kernels carry h (and c) from chunk to chunk.
    # Reverse reads x in step order (row b at step s reads t = lengths[b]-1-s):
    # gather those rows, run the chunk forwards, scatter y back.
    n_steps = _chunk_steps(T, B)
    cols = np.arange(B)
    for s0 in range(0, T, n_steps):
        s1 = min(T, s0 + n_steps)
        L = np.clip(lens - s0, 0, s1 - s0)                  # steps left per row
        if not L.any():
            break
        if reverse:
            t_idx = lens[None, :] - 1 - np.arange(s0, s1)[:, None]      # [n,B]
            valid = t_idx >= 0
            t_idx = np.where(valid, t_idx, 0)
            ys = np.zeros((s1 - s0, B, H), dtype)
            call(input_product(x[t_idx, cols]), L, False, ys)
            y[t_idx[valid], np.broadcast_to(cols, t_idx.shape)[valid]] = ys[valid]
        else:
            call(input_product(x[s0:s1]), L, False, y[s0:s1])
    return y, h, c, None


def backward(cell, cache, dy, dh_n, dc_n=None):
    """Gradients of one layer and direction from a training ``cache``."""
    if cache is None:
        raise ValueError("backward needs the cache of a forward run with training=True")
    _family(cell)
    T, B, _ = cache.x.shape
    H = cache.w.w_hh.shape[1]
    for name, a, exp in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                         ("dc_n", dc_n, (B, H) if cell.has_cell else None)):
        if exp is not None and np.shape(a) != exp:
            raise ValueError(f"{name} has shape {np.shape(a)}, expected {exp}")
    threads = _Threads()
    try:
        if _packed is not None and isinstance(cache.saved, _packed.PackedCache):
            dt = cache.x.dtype
            dx, dh0, dc0, dw_ih, dw_hh, db, dpeep = _packed.lstm_backward(
                cache.saved, dy, np.asarray(dh_n, dt), np.asarray(dc_n, dt),
                _max_threads, threads.use)
            return dx, dh0, dc0, Weights(dw_ih, dw_hh, db, db.copy(), dpeep)
        if _packed_cells is not None and isinstance(cache.saved, _packed_cells.PackedCellCache):
            dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _packed_cells.backward(
                cache.saved, dy, dh_n, _max_threads, threads.use)
            return dx, dh0, None, Weights(dw_ih, dw_hh, db_ih, db_hh, None)
        return _backward(cell, cache, dy, dh_n, dc_n, threads)
    finally:
        threads.restore()


def _backward(cell, cache, dy, dh_n, dc_n, threads):
    x, w, lens, reverse = cache.x, cache.w, cache.lengths, cache.reverse
    dtype = x.dtype
    T, B, I = x.shape
    G = cell.gates
    H = w.w_hh.shape[1]
    dy = _c(dy, dtype)
    dh = np.array(dh_n, dtype=dtype, order="C", copy=True)   # dh: [B,H] carry
    dc = None
    loop_flops = cache.loop_flops
    rows = _row_ranges(T, B, loop_flops)
    padded = bool((lens < T).any())

    def grad(*shape):  # every active (t, b) row is written; padded rows must be 0
        return np.zeros(shape, dtype) if padded else np.empty(shape, dtype)

    # float64 bias-gradient sums, one per row range (summed below)
    dbs = [np.zeros(G * H) for _ in rows]
    dbhs = dbs
    dpeep = None
    dg = grad(T, B, G * H)
    dgh = dg
    name = cell.name
    saved = cache.saved
    hprev = saved[3] if cell.has_cell else saved[0] if cell.family == "rnn" else saved[2]
    carry = (dh,)
    cellw = ()
    if cell.has_cell:
        dc = np.array(dc_n, dtype=dtype, order="C", copy=True)
        carry = (dh, dc)
    if cell.family == "gru":                           # dh_prev not through U
        carry = (dh, np.zeros((B, H), dtype))
    if name == "gru":
        dgh = grad(T, B, G * H)
        dbhs = [np.zeros(G * H) for _ in rows]
    if cell.peephole == "diagonal":
        cellw = (w.peep,)
    bwd = _LOOPS[name][1]
    if cell.products == 1:
        grads = (dg, dgh) if name == "gru" else (dg,)
        _run_rows(bwd, rows, lambda k: (saved, w.w_hh, cellw, lens, reverse, dy, carry, grads,
                                        (dbs[k], dbhs[k])), threads, loop_flops)
    else:
        if name == "gru_reset_before":                 # second product: dan U_n
            w1, w2, lo2 = w.w_hh[:2 * H], w.w_hh[2 * H:], 2 * H
        else:                                          # dao P_o; post: [dai,daf] [P_i;P_f]
            w1, w2, lo2 = w.w_hh, w.peep[2], 3 * H
            cellw = (np.ascontiguousarray(w.peep[:2].reshape(2 * H, H)), np.empty((B, H), dtype))
            carry = (dh, dc, np.zeros((B, H), dtype))
        _run_rows(bwd, rows, lambda k: (saved, w1, w2, lo2, cellw, lens, reverse, dy, carry,
                                        (dg,), (dbs[k],)), threads, loop_flops)

    # weight gradients: GEMMs over all T*B rows (padded rows are zero)
    threads.use(2.0 * T * B * I * G * H)
    TB = T * B
    dg2 = dg.reshape(TB, G * H)
    hp2 = hprev.reshape(TB, H)
    dx = (dg2 @ w.w_ih).reshape(T, B, I)
    dw_ih = dg2.T @ x.reshape(TB, I)
    if name == "gru_reset_before":                     # U_n acts on r ⊙ h (saved[1])
        dw_hh = np.empty_like(w.w_hh)
        dw_hh[:2 * H] = dg2[:, :2 * H].T @ hp2
        dw_hh[2 * H:] = dg2[:, 2 * H:].T @ saved[1].reshape(TB, H)
    else:
        dw_hh = dgh.reshape(TB, G * H).T @ hp2
    db_ih = np.sum(dbs, axis=0).astype(dtype)
    db_hh = np.sum(dbhs, axis=0).astype(dtype)
    if cell.peephole is not None:                      # saved: act, cprev, ctanh, hprev, cnew
        cp2 = saved[1].reshape(TB, H)
        cn2 = saved[4].reshape(TB, H)
        dpeep = np.empty_like(w.peep)
        if cell.peephole == "full":
            dpeep[0] = dg2[:, :H].T @ cp2
            dpeep[1] = dg2[:, H:2 * H].T @ cp2
            dpeep[2] = dg2[:, 3 * H:].T @ cn2
        else:
            dpeep[0] = np.einsum("nj,nj->j", dg2[:, :H], cp2)
            dpeep[1] = np.einsum("nj,nj->j", dg2[:, H:2 * H], cp2)
            dpeep[2] = np.einsum("nj,nj->j", dg2[:, 3 * H:], cn2)
    return dx, dh, dc, Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep)
