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

    # ----------------------------------------------------------- RNN
    @njit(**_OPTS)
    def _rnn_fwd(xg, h, w_hhT, bias, lengths, reverse, relu, training, y, hprev, hout, b0, b1):
        # xg: [T,B,H] = x W_ihᵀ;  h: [B,H] state (in/out);  w_hhT: [H,H] = U^T
        # bias: [H] = b_ih + b_hh
        # y: [T,B,H] zeros;  training: hprev, hout [T,B,H] (h before / after each step)
        T, B, H = xg.shape
        a = np.empty((B, H), xg.dtype)                  # a: [B,H] = h U^T + bias
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xr = xg[t, b]
                ar = a[b]
                hb = h[b]
                if training:
                    hprev[t, b, :] = hb
                if relu:
                    for j in range(H):
                        hb[j] = rnn_relu_step(xr[j] + ar[j])
                else:
                    for j in range(H):
                        hb[j] = rnn_tanh_step(xr[j] + ar[j])
                y[t, b, :] = hb
                if training:
                    hout[t, b, :] = hb

    @njit(**_OPTS)
    def _rnn_bwd(hout, w_hh, lengths, reverse, relu, dy, dh, dg, dbias, b0, b1):
        # hout: [T,B,H] saved h';  dy: [T,B,H];  dh: [B,H] carry (in: dh_n, out: dh0)
        # dg: [T,B,H] out: gradient of the pre-activation (zero where padded);  dbias: [H] f8 acc
        T, B, H = hout.shape
        g = np.zeros((B, H), hout.dtype)                # g: [B,H] this step's da
        u = np.empty((B, H), hout.dtype)                # u: [B,H] = g U
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                hn = hout[t, b]
                dyr = dy[t, b]
                dhb = dh[b]
                gb = g[b]
                if relu:
                    for j in range(H):
                        gb[j] = rnn_relu_grad(hn[j], dyr[j] + dhb[j])
                else:
                    for j in range(H):
                        gb[j] = rnn_tanh_grad(hn[j], dyr[j] + dhb[j])
                dg[t, b, :] = gb
                _acc(dbias, gb)
            mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
            for b in range(b0, b1):
                if s < lengths[b]:
                    dh[b, :] = u[b]

    # ----------------------------------------------------------- LSTM
    @njit(**_OPTS)
    def _lstm_fwd(xg, h, c, w_hhT, bias, lengths, reverse, training, y, act, cprev, ctanh, hprev,
                  b0, b1):
        # xg: [T,B,4H] = x W_ihᵀ (gates i,f,g,o);  h, c: [B,H] state
        # w_hhT: [H,4H] = U^T;  bias: [4H] = b_ih + b_hh;  y: [T,B,H] (zero where padded)
        # training: act [T,B,4H] (i,f,g,o), cprev, ctanh (tanh c'), hprev [T,B,H]
        T, B, G = xg.shape
        H = G // 4
        a = np.empty((B, G), xg.dtype)                  # a: [B,4H] = h U^T + bias
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xr = xg[t, b]
                ar = a[b]
                xi, xf, xc, xo = xr[:H], xr[H:2 * H], xr[2 * H:3 * H], xr[3 * H:]
                ai, af, ac, ao = ar[:H], ar[H:2 * H], ar[2 * H:3 * H], ar[3 * H:]
                hb = h[b]
                cb = c[b]
                yb = y[t, b]
                if training:
                    hprev[t, b, :] = hb
                    cprev[t, b, :] = cb
                    gr = act[t, b]
                    gi, gf, gc, go = gr[:H], gr[H:2 * H], gr[2 * H:3 * H], gr[3 * H:]
                    tcb = ctanh[t, b]
                    for j in range(H):
                        i, f, g, o, cn, tc, hn = lstm_step(
                            xi[j] + ai[j], xf[j] + af[j], xc[j] + ac[j], xo[j] + ao[j], cb[j])
                        gi[j] = i
                        gf[j] = f
                        gc[j] = g
                        go[j] = o
                        tcb[j] = tc
                        cb[j] = cn
                        hb[j] = hn
                        yb[j] = hn
                else:
                    for j in range(H):
                        i, f, g, o, cn, tc, hn = lstm_step(
                            xi[j] + ai[j], xf[j] + af[j], xc[j] + ac[j], xo[j] + ao[j], cb[j])
                        cb[j] = cn
                        hb[j] = hn
                        yb[j] = hn

    @njit(**_OPTS)
    def _lstm_bwd(act, cprev, ctanh, w_hh, lengths, reverse, dy, dh, dc, dg, dbias, b0, b1):
        # act: [T,B,4H];  cprev, ctanh: [T,B,H];  w_hh: [4H,H];  dy: [T,B,H]
        # dh, dc: [B,H] carries (in: dh_n, dc_n; out: dh0, dc0)
        # dg: [T,B,4H] out (zero where padded);  dbias: [4H] float64 accumulator
        T, B, G = act.shape
        H = G // 4
        g = np.zeros((B, G), act.dtype)                 # g: [B,4H] this step's gate grads
        u = np.empty((B, H), act.dtype)                 # u: [B,H] = g U
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                gr = act[t, b]
                ri, rf, rc, ro = gr[:H], gr[H:2 * H], gr[2 * H:3 * H], gr[3 * H:]
                cp = cprev[t, b]
                tcb = ctanh[t, b]
                dyr = dy[t, b]
                dhb = dh[b]
                dcb = dc[b]
                gb = g[b]
                di, df, dcg, do = gb[:H], gb[H:2 * H], gb[2 * H:3 * H], gb[3 * H:]
                for j in range(H):
                    dai, daf, dag, dao, dcp = lstm_grad(
                        ri[j], rf[j], rc[j], ro[j], tcb[j], cp[j], dyr[j] + dhb[j], dcb[j])
                    di[j] = dai
                    df[j] = daf
                    dcg[j] = dag
                    do[j] = dao
                    dcb[j] = dcp
                dg[t, b, :] = gb
                _acc(dbias, gb)
            mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
            for b in range(b0, b1):
                if s < lengths[b]:
                    dh[b, :] = u[b]

    # ----------------------------------------------------------- GRU, reset_after=True
    @njit(**_OPTS)
    def _gru_fwd(xg, h, w_hhT, bias, b_in, lengths, reverse, training, y, act, anh, hprev,
                 b0, b1):
        # xg: [T,B,3H] = x W_ihᵀ;  h: [B,H];  w_hhT: [H,3H] = U^T
        # bias: [3H] = (b_ir + b_hr, b_iz + b_hz, b_hn), added to U h;  b_in: [H]
        # y: [T,B,H] (zero where padded)
        # training: act [T,B,3H] (r,z,n), anh [T,B,H] (U_n h + b_hn), hprev [T,B,H]
        T, B, G = xg.shape
        H = G // 3
        a = np.empty((B, G), xg.dtype)                  # a: [B,3H] = h U^T + bias
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xr = xg[t, b]
                ar = a[b]
                xrr, xz, xn = xr[:H], xr[H:2 * H], xr[2 * H:]
                arr, az, an = ar[:H], ar[H:2 * H], ar[2 * H:]
                hb = h[b]
                yb = y[t, b]
                if training:
                    hprev[t, b, :] = hb
                    gr = act[t, b]
                    r_out, z_out, n_out = gr[:H], gr[H:2 * H], gr[2 * H:]
                    anb = anh[t, b]
                    for j in range(H):
                        anj = an[j]
                        r, z, n, hn = gru_step(xrr[j] + arr[j], xz[j] + az[j], xn[j] + b_in[j],
                                               anj, hb[j])
                        r_out[j] = r
                        z_out[j] = z
                        n_out[j] = n
                        anb[j] = anj
                        hb[j] = hn
                        yb[j] = hn
                else:
                    for j in range(H):
                        r, z, n, hn = gru_step(xrr[j] + arr[j], xz[j] + az[j], xn[j] + b_in[j],
                                               an[j], hb[j])
                        hb[j] = hn
                        yb[j] = hn

    @njit(**_OPTS)
    def _gru_bwd(act, anh, hprev, w_hh, lengths, reverse, dy, dh, dgx, dgh, dbx, dbh, b0, b1):
        # act: [T,B,3H];  anh, hprev: [T,B,H];  w_hh: [3H,H];  dy: [T,B,H]
        # dh: [B,H] carry (in: dh_n, out: dh0)
        # dgx: [T,B,3H] zeros, out: grads of the input-side pre-activations (r, z, n_x)
        # dgh: [T,B,3H] zeros, out: grads of the recurrent-side ones (r, z, n_h)
        # dbx, dbh: [3H] float64 accumulators of their sums (db_ih, db_hh)
        T, B, G = act.shape
        H = G // 3
        g = np.zeros((B, G), act.dtype)                 # g: [B,3H] recurrent-side grads
        direct = np.zeros((B, H), act.dtype)            # dh_prev not through U
        u = np.empty((B, H), act.dtype)                 # u: [B,H] = g U
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                gr = act[t, b]
                rr, rz, rn = gr[:H], gr[H:2 * H], gr[2 * H:]
                anb = anh[t, b]
                hp = hprev[t, b]
                dyr = dy[t, b]
                dhb = dh[b]
                db = direct[b]
                gb = g[b]
                gxr = dgx[t, b]
                dr, dz, dnh = gb[:H], gb[H:2 * H], gb[2 * H:]
                dnx = gxr[2 * H:]
                for j in range(H):
                    dar, daz, danx, danh, dhp = gru_grad(
                        rr[j], rz[j], rn[j], anb[j], hp[j], dyr[j] + dhb[j])
                    dr[j] = dar
                    dz[j] = daz
                    dnh[j] = danh
                    dnx[j] = danx
                    db[j] = dhp
                gxr[:2 * H] = gb[:2 * H]
                dgh[t, b, :] = gb
                _acc(dbx, gxr)
                _acc(dbh, gb)
            mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
            for b in range(b0, b1):
                if s < lengths[b]:
                    dhb = dh[b]
                    ub = u[b]
                    db = direct[b]
                    for j in range(H):
                        dhb[j] = ub[j] + db[j]

    # ----------------------------------------------------------- GRU, reset_after=False
    @njit(**_OPTS)
    def _grurb_fwd(xg, h, w_rzT, w_nT, bias, lengths, reverse, training, y, act, rh, hprev,
                   b0, b1):
        # xg: [T,B,3H] = x W_ihᵀ;  h: [B,H];  bias: [3H] = b_ih + b_hh (all additive)
        # w_rzT: [H,2H] = [U_r;U_z]^T;  w_nT: [H,H] = U_n^T;  y: [T,B,H] (zero where padded)
        # training: act [T,B,3H] (r,z,n), rh [T,B,H] (r ⊙ h), hprev [T,B,H]
        T, B, G = xg.shape
        H = G // 3
        a = np.empty((B, 2 * H), xg.dtype)              # a: [B,2H] = h [U_r;U_z]^T + b
        q = np.zeros((B, H), xg.dtype)                  # q: [B,H] = r ⊙ h
        zb_ = np.empty((B, H), xg.dtype)                # z this step
        an = np.empty((B, H), xg.dtype)                 # an: [B,H] = (r h) U_n^T + b_n
        b_rz, b_n = bias[:2 * H], bias[2 * H:]
        for s in range(T):
            _fill_rows(a[b0:b1], b_rz)
            mm(h[b0:b1], w_rzT, a[b0:b1], False, 1.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xr = xg[t, b]
                xrr, xz = xr[:H], xr[H:2 * H]
                ar = a[b]
                arr, az = ar[:H], ar[H:]
                hb = h[b]
                qb = q[b]
                zr = zb_[b]
                if training:
                    hprev[t, b, :] = hb
                    gr = act[t, b]
                    r_out = gr[:H]
                    for j in range(H):
                        r, z = gru_reset_before_gates(xrr[j] + arr[j], xz[j] + az[j])
                        r_out[j] = r
                        zr[j] = z
                        qb[j] = r * hb[j]
                    gr[H:2 * H] = zr
                    rh[t, b, :] = qb
                else:
                    for j in range(H):
                        r, z = gru_reset_before_gates(xrr[j] + arr[j], xz[j] + az[j])
                        zr[j] = z
                        qb[j] = r * hb[j]
            _fill_rows(an[b0:b1], b_n)
            mm(q[b0:b1], w_nT, an[b0:b1], False, 1.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xn = xg[t, b, 2 * H:]
                anr = an[b]
                zr = zb_[b]
                hb = h[b]
                yb = y[t, b]
                if training:
                    n_out = act[t, b, 2 * H:]
                    for j in range(H):
                        n, hn = gru_reset_before_step(xn[j] + anr[j], zr[j], hb[j])
                        n_out[j] = n
                        hb[j] = hn
                        yb[j] = hn
                else:
                    for j in range(H):
                        n, hn = gru_reset_before_step(xn[j] + anr[j], zr[j], hb[j])
                        hb[j] = hn
                        yb[j] = hn

    @njit(**_OPTS)
    def _grurb_bwd(act, hprev, w_rz, w_n, lengths, reverse, dy, dh, dg, dbias, b0, b1):
        # act: [T,B,3H] (r,z,n);  hprev: [T,B,H];  w_rz: [2H,H];  w_n: [H,H];  dy: [T,B,H]
        # dh: [B,H] carry (in: dh_n, out: dh0);  dg: [T,B,3H] out (dar, daz, dan), zero
        # where padded;  dbias: [3H] float64 accumulator
        T, B, G = act.shape
        H = G // 3
        grz = np.zeros((B, 2 * H), act.dtype)           # grz: [B,2H] (dar, daz)
        gn = np.zeros((B, H), act.dtype)                # gn: [B,H] dan
        drh = np.empty((B, H), act.dtype)               # drh: [B,H] = gn U_n
        direct = np.zeros((B, H), act.dtype)
        u = np.empty((B, H), act.dtype)                 # u: [B,H] = grz [U_r;U_z]
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                gr = act[t, b]
                rz, rn = gr[H:2 * H], gr[2 * H:]
                hp = hprev[t, b]
                dyr = dy[t, b]
                dhb = dh[b]
                gnb = gn[b]
                dz = grz[b, H:]
                db = direct[b]
                for j in range(H):
                    dan, daz, dhp = gru_reset_before_grad_n(rz[j], rn[j], hp[j], dyr[j] + dhb[j])
                    gnb[j] = dan
                    dz[j] = daz
                    db[j] = dhp
            mm(gn[b0:b1], w_n, drh[b0:b1], False, 0.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                rr = act[t, b, :H]
                hp = hprev[t, b]
                dq = drh[b]
                dr = grz[b, :H]
                db = direct[b]
                for j in range(H):
                    dar, dhp = gru_reset_before_grad_r(rr[j], hp[j], dq[j])
                    dr[j] = dar
                    db[j] += dhp
                dg[t, b, :2 * H] = grz[b]
                dg[t, b, 2 * H:] = gn[b]
                _acc(dbias, dg[t, b])
            mm(grz[b0:b1], w_rz, u[b0:b1], False, 0.0)
            for b in range(b0, b1):
                if s < lengths[b]:
                    dhb = dh[b]
                    ub = u[b]
                    db = direct[b]
                    for j in range(H):
                        dhb[j] = ub[j] + db[j]

    # ----------------------------------------------------------- peephole LSTM
    @njit(**_OPTS)
    def _peep_fwd(xg, h, c, w_hhT, bias, pif, po, full, lengths, reverse, training, y,
                  act, cprev, cnew, ctanh, hprev, b0, b1):
        # xg: [T,B,4H] = x W_ihᵀ (i,f,g,o);  h, c: [B,H];  w_hhT: [H,4H] = U^T;  bias: [4H]
        # diagonal: pif [3,H] = p_i, p_f, p_o (po unused)
        # full: pif [H,2H] = [P_i;P_f]^T, po [H,H] = P_o^T;  y: [T,B,H] (zero where padded)
        # training: act [T,B,4H]; cprev, cnew, ctanh, hprev [T,B,H]
        T, B, G = xg.shape
        H = G // 4
        a = np.empty((B, G), xg.dtype)                  # a: [B,4H] = h U^T + bias
        pc = np.zeros((B, 2 * H), xg.dtype)             # full: [B,2H] = c [P_i;P_f]^T
        pco = np.zeros((B, H), xg.dtype)                # full: [B,H] = c' P_o^T
        cn = c.copy()                                   # cn: [B,H] c' this step
        gbuf = np.empty((B, G), xg.dtype)               # gates when not training
        for s in range(T):
            _fill_rows(a[b0:b1], bias)
            mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
            if full:
                mm(c[b0:b1], pif, pc[b0:b1], False, 0.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xr = xg[t, b]
                ar = a[b]
                xi, xf, xc = xr[:H], xr[H:2 * H], xr[2 * H:3 * H]
                ai, af, ac = ar[:H], ar[H:2 * H], ar[2 * H:3 * H]
                cb = c[b]
                cnb = cn[b]
                gr = act[t, b] if training else gbuf[b]
                gi, gf, gc = gr[:H], gr[H:2 * H], gr[2 * H:3 * H]
                if training:
                    hprev[t, b, :] = h[b]
                    cprev[t, b, :] = cb
                if full:
                    pcb = pc[b]
                    pci, pcf = pcb[:H], pcb[H:]
                    for j in range(H):
                        i, f, g, cj = peephole_cell(xi[j] + ai[j] + pci[j],
                                                    xf[j] + af[j] + pcf[j], xc[j] + ac[j], cb[j])
                        gi[j] = i
                        gf[j] = f
                        gc[j] = g
                        cnb[j] = cj
                else:
                    p_i, p_f = pif[0], pif[1]
                    for j in range(H):
                        i, f, g, cj = peephole_cell(xi[j] + ai[j] + p_i[j] * cb[j],
                                                    xf[j] + af[j] + p_f[j] * cb[j],
                                                    xc[j] + ac[j], cb[j])
                        gi[j] = i
                        gf[j] = f
                        gc[j] = g
                        cnb[j] = cj
            if full:
                mm(cn[b0:b1], po, pco[b0:b1], False, 0.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                xo = xg[t, b, 3 * H:]
                ao = a[b, 3 * H:]
                cnb = cn[b]
                hb = h[b]
                yb = y[t, b]
                go = act[t, b, 3 * H:] if training else gbuf[b, 3 * H:]
                tcb = ctanh[t, b] if training else gbuf[b, :H]
                if full:
                    pob = pco[b]
                    for j in range(H):
                        o, tc, hn = peephole_out(xo[j] + ao[j] + pob[j], cnb[j])
                        go[j] = o
                        tcb[j] = tc
                        hb[j] = hn
                        yb[j] = hn
                else:
                    p_o = pif[2]
                    for j in range(H):
                        o, tc, hn = peephole_out(xo[j] + ao[j] + p_o[j] * cnb[j], cnb[j])
                        go[j] = o
                        tcb[j] = tc
                        hb[j] = hn
                        yb[j] = hn
                c[b, :] = cnb
                if training:
                    cnew[t, b, :] = cnb

    @njit(**_OPTS)
    def _peep_bwd(act, cprev, ctanh, w_hh, peep, full, lengths, reverse, dy, dh, dc, dg, dbias,
                  b0, b1):
        # act: [T,B,4H];  cprev, ctanh: [T,B,H];  w_hh: [4H,H];  peep: [3,H] | [3,H,H]
        # dy: [T,B,H];  dh, dc: [B,H] carries;  dg: [T,B,4H] out (zero where padded)
        # dbias: [4H] float64 accumulator
        T, B, G = act.shape
        H = G // 4
        g = np.zeros((B, G), act.dtype)                 # g: [B,4H] gate grads
        dct = np.zeros((B, H), act.dtype)               # dL/dc' before the o peephole (full)
        qo = np.zeros((B, H), act.dtype)                # full: [B,H] = dao P_o
        qif = np.zeros((B, H), act.dtype)               # full: [B,H] = [dai,daf] [P_i;P_f]
        u = np.empty((B, H), act.dtype)                 # u: [B,H] = g U
        pd = peep.reshape((3, -1))
        for s in range(T - 1, -1, -1):
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                ro = act[t, b, 3 * H:]
                tcb = ctanh[t, b]
                dyr = dy[t, b]
                dhb = dh[b]
                dcb = dc[b]
                do = g[b, 3 * H:]
                dtb = dct[b]
                for j in range(H):
                    dao, dch = peephole_grad_out(ro[j], tcb[j], dyr[j] + dhb[j])
                    do[j] = dao
                    dtb[j] = dcb[j] + dch
            if full:
                mm(g[b0:b1, 3 * H:], pd[2].reshape((H, H)), qo[b0:b1], False, 0.0)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                t = L - 1 - s if reverse else s
                gr = act[t, b]
                ri, rf, rc = gr[:H], gr[H:2 * H], gr[2 * H:3 * H]
                cp = cprev[t, b]
                gb = g[b]
                di, df, dcg, do = gb[:H], gb[H:2 * H], gb[2 * H:3 * H], gb[3 * H:]
                dtb = dct[b]
                dcb = dc[b]
                if full:
                    qob = qo[b]
                    for j in range(H):
                        dai, daf, dag, dcp = peephole_grad_cell(ri[j], rf[j], rc[j], cp[j],
                                                                dtb[j] + qob[j])
                        di[j] = dai
                        df[j] = daf
                        dcg[j] = dag
                        dcb[j] = dcp
                else:
                    p_i, p_f, p_o = pd[0], pd[1], pd[2]
                    for j in range(H):
                        dai, daf, dag, dcp = peephole_grad_cell(ri[j], rf[j], rc[j], cp[j],
                                                                dtb[j] + do[j] * p_o[j])
                        di[j] = dai
                        df[j] = daf
                        dcg[j] = dag
                        dcb[j] = dcp + dai * p_i[j] + daf * p_f[j]
                dg[t, b, :] = gb
                _acc(dbias, gb)
            if full:
                mm(g[b0:b1, :2 * H], pd[:2].reshape((2 * H, H)), qif[b0:b1], False, 0.0)
                for b in range(b0, b1):
                    if s < lengths[b]:
                        dcb = dc[b]
                        qb = qif[b]
                        for j in range(H):
                            dcb[j] += qb[j]
            mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
            for b in range(b0, b1):
                if s < lengths[b]:
                    dh[b, :] = u[b]


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


#: registry cell -> the loops it runs on: its family, except the GRU with a second
#: dependent product (reset-before, ``"grurb"``) and the peephole LSTMs (``"peep"``)
_FAMILY = {name: ("peep" if c.peephole else "grurb" if c.family == "gru" and c.products == 2
                  else c.family) for name, c in CELLS.items()}


class _Cache:
    """What backward needs from a training forward (arrays indexed by time)."""

    __slots__ = ("cell", "x", "w", "lengths", "reverse", "saved", "loop_flops")
    # loop_flops: the FLOPs of one step's recurrent product (picks the loop's thread count)

    def __init__(self, cell, x, w, lengths, reverse, saved, loop_flops):
        self.cell, self.x, self.w, self.lengths = cell, x, w, lengths
        self.reverse, self.saved, self.loop_flops = reverse, saved, loop_flops


def _family(cell):
    try:
        return _FAMILY[cell.name]
    except KeyError:
        raise ValueError(f"the cpu backend has no kernel for cell {cell.name!r}") from None


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
    if (dtype == np.float32 and _packed is not None and use_packed
            and (fam == "lstm" or cell.peephole == "diagonal")):
        return _forward_packed(cell, x, h0, c0, weights, lens, reverse, training)
    if (dtype == np.float32 and _packed_cells is not None and use_packed
            and (fam, training) in packed_cells):
        return _forward_packed_cell(fam, cell, x, h0, weights, lens, reverse, training)
    threads = _Threads()
    try:
        return _forward(fam, cell, x, h0, c0, weights, lens, reverse, training, threads)
    finally:
        threads.restore()


# The float32 LSTM and diagonal peephole LSTM run on the packed-weight kernels of
# fastrnn.kernels.packed
# (no BLAS call inside the time loop, padded steps skipped, its own two
# threads); `use_packed = False` selects the BLAS-per-step loops below instead
# (the tests check both, the benchmark can compare them).
use_packed = True
try:
    from fastrnn.kernels import packed as _packed
except Exception:  # pragma: no cover - e.g. a Numba without @intrinsic support
    _packed = None


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
    f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    peep = None if cell.peephole is None else f(weights.peep)
    w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), peep)
    y, h, c, pc = _packed.lstm_forward(x, f(h0), f(c0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                       reverse, training, _max_threads, peep)
    if not training:
        return y, h, c, None
    return y, h, c, _Cache(cell, x, w, lens, reverse, pc, pc.flops)


# The float32 GRU (reset_after=True) and tanh/ReLU RNN on the packed kernels of
# fastrnn.kernels.packed_cells, for the (family, training) pairs listed here
# (where they measured faster than the loops below); `use_packed = False`
# turns them off too.
packed_cells = {("gru", True), ("gru", False), ("rnn", True), ("rnn", False)}
try:
    from fastrnn.kernels import packed_cells as _packed_cells
except Exception:  # pragma: no cover - e.g. a Numba without @intrinsic support
    _packed_cells = None


def _forward_packed_cell(fam, cell, x, h0, weights, lens, reverse, training):
    f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
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


def _forward(fam, cell, x, h0, c0, weights, lens, reverse, training, threads):
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
        """A saved array; zero-filled where padded rows enter the weight GEMMs."""
        if not training:
            return np.empty((1,) * len(shape), dtype)
        return np.zeros(shape, dtype) if (padded and gemm) else np.empty(shape, dtype)

    # call(xg, lengths, reverse, y): one kernel launch over len(xg) steps
    c = None
    relu = cell.name == "rnn_relu"
    if fam == "rnn":
        hprev, hout = keep(T, B, H, gemm=True), keep(T, B, H)
        saved = (hprev, hout)

        def call(xg, L, rev, yv):
            run(_rnn_fwd, xg, h, w_hhT, bias, L, rev, relu, training, yv, hprev, hout)
    elif fam == "lstm":
        c = np.array(c0, dtype=dtype, order="C", copy=True)
        act, cprev, ctanh = keep(T, B, G * H), keep(T, B, H), keep(T, B, H)
        hprev = keep(T, B, H, gemm=True)
        saved = (act, cprev, ctanh, hprev)

        def call(xg, L, rev, yv):
            run(_lstm_fwd, xg, h, c, w_hhT, bias, L, rev, training, yv, act, cprev, ctanh, hprev)
    elif fam == "gru":  # b_in stays outside r ⊙ (U_n h + b_hn)
        bias[2 * H:] = b_hh[2 * H:]
        b_in = b_ih[2 * H:].copy()
        act, anh, hprev = keep(T, B, G * H), keep(T, B, H), keep(T, B, H, gemm=True)
        saved = (act, anh, hprev)

        def call(xg, L, rev, yv):
            run(_gru_fwd, xg, h, w_hhT, bias, b_in, L, rev, training, yv, act, anh, hprev)
    elif fam == "grurb":
        act, rh, hprev = keep(T, B, G * H), keep(T, B, H, gemm=True), keep(T, B, H, gemm=True)
        w_rzT, w_nT = w_hhT[:, :2 * H].copy(), w_hhT[:, 2 * H:].copy()
        saved = (act, rh, hprev)

        def call(xg, L, rev, yv):
            run(_grurb_fwd, xg, h, w_rzT, w_nT, bias, L, rev, training, yv, act, rh, hprev)
    else:  # peephole
        c = np.array(c0, dtype=dtype, order="C", copy=True)
        full = cell.peephole == "full"
        peep = _c(weights.peep, dtype)
        act, ctanh = keep(T, B, G * H), keep(T, B, H)
        cprev, cnew, hprev = (keep(T, B, H, gemm=True), keep(T, B, H, gemm=True),
                              keep(T, B, H, gemm=True))
        saved = (act, cprev, cnew, ctanh, hprev)
        if full:  # [P_i;P_f]^T and P_o^T: NN GEMMs in the loop
            pif = np.ascontiguousarray(np.concatenate([peep[0].T, peep[1].T], axis=1))
            po = np.ascontiguousarray(peep[2].T)
        else:
            pif, po = peep, np.zeros((1, 1), dtype)

        def call(xg, L, rev, yv):
            run(_peep_fwd, xg, h, c, w_hhT, bias, pif, po, full, L, rev, training, yv,
                act, cprev, cnew, ctanh, hprev)

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
    fam = _family(cell)
    T, B, _ = cache.x.shape
    H = cache.w.w_hh.shape[1]
    for name, a, exp in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                         ("dc_n", dc_n, (B, H) if cell.has_cell else None)):
        if exp is not None and np.shape(a) != exp:
            raise ValueError(f"{name} has shape {np.shape(a)}, expected {exp}")
    threads = _Threads()
    try:
        if _packed is not None and isinstance(cache.saved, _packed.PackedCache):
            dx, dh0, dc0, dw_ih, dw_hh, db, dpeep = _packed.lstm_backward(
                cache.saved, dy, np.asarray(dh_n, np.float32), np.asarray(dc_n, np.float32),
                _max_threads, threads.use)
            return dx, dh0, dc0, Weights(dw_ih, dw_hh, db, db.copy(), dpeep)
        if _packed_cells is not None and isinstance(cache.saved, _packed_cells.PackedCellCache):
            dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _packed_cells.backward(
                cache.saved, dy, dh_n, _max_threads, threads.use)
            return dx, dh0, None, Weights(dw_ih, dw_hh, db_ih, db_hh, None)
        return _backward(fam, cell, cache, dy, dh_n, dc_n, threads)
    finally:
        threads.restore()


def _backward(fam, cell, cache, dy, dh_n, dc_n, threads):
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
    if fam == "rnn":
        hprev, hout = cache.saved
        relu = cell.name == "rnn_relu"
        _run_rows(_rnn_bwd, rows, lambda k: (hout, w.w_hh, lens, reverse, relu, dy, dh, dg,
                                             dbs[k]), threads, loop_flops)
    elif fam == "lstm":
        act, cprev, ctanh, hprev = cache.saved
        dc = np.array(dc_n, dtype=dtype, order="C", copy=True)
        _run_rows(_lstm_bwd, rows, lambda k: (act, cprev, ctanh, w.w_hh, lens, reverse, dy, dh,
                                              dc, dg, dbs[k]), threads, loop_flops)
    elif fam == "gru":
        act, anh, hprev = cache.saved
        dgh = grad(T, B, G * H)
        dbhs = [np.zeros(G * H) for _ in rows]
        _run_rows(_gru_bwd, rows, lambda k: (act, anh, hprev, w.w_hh, lens, reverse, dy, dh, dg,
                                             dgh, dbs[k], dbhs[k]), threads, loop_flops)
    elif fam == "grurb":
        act, rh, hprev = cache.saved
        w_rz, w_n = w.w_hh[:2 * H], w.w_hh[2 * H:]
        _run_rows(_grurb_bwd, rows, lambda k: (act, hprev, w_rz, w_n, lens, reverse, dy, dh, dg,
                                               dbs[k]), threads, loop_flops)
    else:
        act, cprev, cnew, ctanh, hprev = cache.saved
        dc = np.array(dc_n, dtype=dtype, order="C", copy=True)
        full = cell.peephole == "full"
        _run_rows(_peep_bwd, rows, lambda k: (act, cprev, ctanh, w.w_hh, w.peep, full, lens,
                                              reverse, dy, dh, dc, dg, dbs[k]), threads, loop_flops)

    # weight gradients: GEMMs over all T*B rows (padded rows are zero)
    threads.use(2.0 * T * B * I * G * H)
    TB = T * B
    dg2 = dg.reshape(TB, G * H)
    hp2 = hprev.reshape(TB, H)
    dx = (dg2 @ w.w_ih).reshape(T, B, I)
    dw_ih = dg2.T @ x.reshape(TB, I)
    if fam == "grurb":
        dw_hh = np.empty_like(w.w_hh)
        dw_hh[:2 * H] = dg2[:, :2 * H].T @ hp2
        dw_hh[2 * H:] = dg2[:, 2 * H:].T @ rh.reshape(TB, H)
    else:
        dw_hh = dgh.reshape(TB, G * H).T @ hp2
    db_ih = np.sum(dbs, axis=0).astype(dtype)
    db_hh = np.sum(dbhs, axis=0).astype(dtype)
    if fam == "peep":
        cp2 = cprev.reshape(TB, H)
        cn2 = cnew.reshape(TB, H)
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
