"""Latency kernels: one compiled call runs one time step of a whole stack.

Used by :class:`fastrnn.stream.Stream` (one step per call, the state kept
between calls) and by the layers' eval-mode path for small batches
(:mod:`fastrnn.prepared`). Small work per call (B = 1..8 rows, H up to a few
hundred) is bounded by fixed costs, so everything here is built to keep them
out of the call: the weights are prepared once (:func:`prepare`), every buffer
is owned by the caller, the call takes six arrays, runs every layer without
returning to Python and uses the calling thread only (no BLAS, no pool).

Notation: ``L`` layers, ``B`` batch rows, ``I`` inputs of layer 0, ``H``
hidden units, ``G`` gates, ``GH = G*H``.

Prepared layout (:func:`prepare`)
---------------------------------
One flat weight buffer ``w`` per stack, each layer's pieces at the offsets
of its ``meta`` row:

- ``Wx`` ``[I_l, GH]``: ``Wx[k, q] = weight_ih[q, k]`` (transposed), so the
  input product is ``ax[b, :] = b_ih + sum_k x[b, k] * Wx[k, :]``: every
  ``k`` adds one contiguous row of ``GH`` floats, a loop over ``q`` that
  vectorises with no gather and reads the weights once, front to back.
- ``Wh`` ``[H, GH]`` the same for ``weight_hh`` into ``ah`` (``b_hh``).
- ``bx``, ``bh`` ``[GH]``: the biases (zeros for ``bias=False``).
- peepholes: ``[3, H]`` (diagonal) or ``[3, H, H]`` transposed (full: row
  ``k`` of gate ``g`` holds ``P_g[:, k]``), in the order ``p_i, p_f, p_o``.

float32 LSTM, diagonal-peephole LSTM and GRU (reset_after) layers whose
``H`` is a multiple of the SIMD width ``VW`` (:func:`uses_panels`) instead
keep the panel layout of the sequence kernels (:mod:`fastrnn.kernels.packed`,
``_pack``: per panel of ``VW`` units, ``[W_ih W_hh]ᵀ`` rows of ``G*VW`` gate
columns) and run their register-blocked micro-kernels
(:mod:`fastrnn.kernels.simd`) with the gate math on the accumulators: the
weights are read once per step for all rows, with no pass over an
accumulator array, and the results equal the sequence kernels' bit for bit.

``ax`` and ``ah`` are kept apart (rather than one sum) because the GRU needs
``U_n h + b_hn`` on its own; the gate math then reads both, per gate, through
slice views indexed by plain ``j`` (the form LLVM vectorises).

``meta`` (int64 ``[L + 2, 12]``; int32 for 8-lane panels, which selects
those micro-kernels at compile time, so that a process compiles only the
width it runs): row 0 ``[cell code, L, B, H, I, ...]``;
row ``1 + l`` (plain loops): ``[I_l, off_Wx, off_Wh, off_bx, off_bh, off_p,
0, 0, 0, ...]``; (panels): ``[I_l, ., ., ., ., off_p (panel-ordered
peepholes), off_up (the panels [P, I_l + H, G*VW]), off_pb (their biases),
VW, rows per micro-kernel call, off_uh (the recurrent rows alone [P, H,
G*VW]), off_wx (the input rows [I_l, P*G*VW])]`` (the last two for
:func:`run_rows1`; not for the GRU); row ``L + 1`` the optional head of a
model (:func:`prepare_head`): ``[mode, off_E, V, off_headT, off_headb, O,
...]`` (mode 0 none, 1 linear, 2 linear then softmax; ``E`` ``[V, I]`` an
embedding table for :func:`lm_step`, ``headT`` ``[H, O]`` the transposed
head weight).

State ``st`` ``[2, L, B, H]``: ``st[0]`` the hidden states, ``st[1]`` the
cells (LSTM family; unused otherwise). Workspace ``ws`` ``[4, B, >= GH]``
(``ax``, ``ah``, a scratch row, and the embedded tokens of :func:`lm_step`).
Layer ``l + 1`` reads layer ``l``'s new ``h`` straight from the state.

The plain loops' gate math is :mod:`fastrnn.kernels.pointwise`'s, with the
fast float32 ``tanh``/``sigmoid`` of :mod:`fastrnn.kernels.activations`
(exactly saturating) and libm in float64: the same functions as the
sequence kernels, so those stacks agree with ``layer(x)`` within the
kernels' tolerance (the sums run in another order, so not bitwise).

:func:`read_sum` and :func:`step_weights` give a step's memory floor (for
``fastrnn bench --latency``): a step whose weights no longer fit one core's
L2 reads them from L3 every step and cannot be faster than reading them.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastrnn.cells import get_cell
from fastrnn.kernels import packed_gru_rnn as _pgru
from fastrnn.kernels import packed_lstm as _plstm
from fastrnn.kernels import pointwise as _pointwise
from fastrnn.kernels import simd as _simd
from fastrnn.kernels import vector as _vector
from fastrnn.kernels.activations import sigmoid as _sigmoid
from fastrnn.kernels.activations import tanh as _tanh

__all__ = ["CELL_CODES", "uses_panels", "prepare", "prepare_head", "step", "run", "head_step",
           "lm_step", "run_rows1", "input_weights", "new_state", "new_workspace", "read_sum",
           "step_weights"]

_OPTS = dict(cache=True, fastmath=True, error_model="numpy", nogil=True, boundscheck=False)

#: cell registry name -> the code the kernels branch on (meta[0, 0])
CELL_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "gru_reset_before": 4,
              "peephole_diagonal": 5, "peephole_full": 6}

_PW = _pointwise.build(njit(inline="always"), _tanh, _sigmoid)
_rnn_tanh_step = _PW.rnn_tanh_step
_rnn_relu_step = _PW.rnn_relu_step
_lstm_step = _PW.lstm_step
_gru_step = _PW.gru_step
_gru_rb_gates = _PW.gru_reset_before_gates
_gru_rb_step = _PW.gru_reset_before_step
_peep_cell = _PW.peephole_cell
_peep_out = _PW.peephole_out


# --------------------------------------------------------------------------- preparation
def uses_panels(cell, dtype, H):
    """Whether :func:`prepare` gives a stack of ``cell`` the micro-kernels'
    panel layout (float32 LSTM, diagonal peephole LSTM, GRU with reset_after,
    ``H`` a multiple of the SIMD width) rather than the plain loops."""
    return (np.dtype(dtype) == np.float32 and H % _vector.vector_width() == 0
            and get_cell(cell).name in ("lstm", "peephole_diagonal", "gru"))


def prepare(cell, layers, dtype):
    """The flat weight buffer and ``meta`` of a stack (see the module doc).

    Parameters
    ----------
    cell : CellSpec or registry name
    layers : list of :class:`fastrnn.contract.Weights`, one per layer (bottom
        first), host arrays in PyTorch's layout (``peep`` stacked ``p_i, p_f,
        p_o``).
    dtype : float32 or float64

    Returns
    -------
    w : 1-d array of ``dtype``; meta : int64 ``[L + 2, 8]`` (``meta[0, 2]``,
    the batch, is left 0 for the caller to set; no head).
    """
    cell = get_cell(cell)
    dtype = np.dtype(dtype)
    L = len(layers)
    H = layers[0].w_hh.shape[1]
    GH = cell.gates * H
    VW = _vector.vector_width()
    fast = uses_panels(cell, dtype, H)
    # meta's integer type selects the micro-kernels' width at compile time:
    # int32 for 8 lanes, int64 for 16 lanes (and for the plain loops)
    meta = np.zeros((L + 2, 12), np.int32 if fast and VW == 8 else np.int64)
    meta[0, :5] = (CELL_CODES[cell.name], L, 0, H, layers[0].w_ih.shape[1])
    parts, off = [], 0

    def put(a):
        nonlocal off
        a = np.ascontiguousarray(a, dtype=dtype).ravel()
        parts.append(a)
        start, off = off, off + a.size
        return start

    mrmax = _vector.micro_rows(VW, 4) if cell.name != "gru" or VW == 16 else _pgru.GRU_FWD_MR8

    def put_aligned(a):
        nonlocal off
        pad = (-off) % 16                     # panels start on 64-byte lines
        if pad:
            parts.append(np.zeros(pad, dtype))
            off += pad
        return put(a)

    for l, wt in enumerate(layers):
        I_l = wt.w_ih.shape[1]
        meta[1 + l, 0] = I_l
        if fast:
            meta[1 + l, 8], meta[1 + l, 9] = VW, mrmax
            f = lambda a: np.ascontiguousarray(a, dtype=np.float32)   # noqa: E731
            peep = None if cell.peephole is None else f(wt.peep)
            pk = _vector.pack(f(wt.w_ih), f(wt.w_hh), f(wt.b_ih), f(wt.b_hh), VW,
                               cell.gates, peep=peep)
            meta[1 + l, 6] = put_aligned(pk.up)                 # [P, I_l + H, G*VW]
            if cell.name == "gru":        # per panel: b_ir + b_hr, b_iz + b_hz, b_in, b_hn
                P = H // VW
                pb = np.zeros((P, 4, VW), np.float32)
                pb[:, :2] = pk.bias.reshape(P, 3, VW)[:, :2]
                pb[:, 2] = f(wt.b_ih)[2 * H:].reshape(P, VW)
                pb[:, 3] = f(wt.b_hh)[2 * H:].reshape(P, VW)
                meta[1 + l, 7] = put_aligned(pb)
            else:
                meta[1 + l, 7] = put_aligned(pk.bias)             # [P, G, VW]
            if peep is not None:
                meta[1 + l, 5] = put_aligned(pk.peep)             # [P, 3, VW]
            if cell.name != "gru":        # the one-row sequence path (run_rows1)
                meta[1 + l, 10] = put_aligned(pk.up[:, I_l:])     # [P, H, G*VW]
                meta[1 + l, 11] = put_aligned(                    # [I_l, P*G*VW]
                    pk.up[:, :I_l].transpose(1, 0, 2).reshape(I_l, -1))
            continue
        meta[1 + l, 1] = put(np.asarray(wt.w_ih).T)            # [I_l, GH]
        meta[1 + l, 2] = put(np.asarray(wt.w_hh).T)            # [H, GH]
        meta[1 + l, 3] = put(wt.b_ih)                          # [GH]
        meta[1 + l, 4] = put(wt.b_hh)                          # [GH]
        if cell.peephole == "diagonal":
            meta[1 + l, 5] = put(wt.peep)                      # [3, H]
        elif cell.peephole == "full":
            meta[1 + l, 5] = put(np.asarray(wt.peep).transpose(0, 2, 1))  # [3, H(k), H(j)]
        assert wt.w_ih.shape[0] == GH and wt.w_hh.shape == (GH, H)
    return _aligned_concat(parts, dtype), meta


def _aligned_concat(parts, dtype):
    """``np.concatenate(parts)`` in a buffer that starts on a 64-byte line (the
    panels' offsets are multiples of 16 floats, so each starts on one too)."""
    n = sum(a.size for a in parts)
    buf = np.empty(n + 16, dtype)
    start = (-(buf.ctypes.data // dtype.itemsize)) % (64 // dtype.itemsize)
    w = buf[start:start + n]
    if parts:
        np.concatenate(parts, out=w)
    return w


def new_state(L, B, H, dtype):
    """A zero state ``[2, L, B, H]``."""
    return np.zeros((2, L, B, H), dtype)


def new_workspace(B, GH, dtype, I=0):
    """The workspace ``[4, B, max(GH, I)]`` of :func:`step` (``I``: the
    embedding width of :func:`lm_step`)."""
    return np.zeros((4, B, max(GH, I)), dtype)


def prepare_head(w, meta, weight, bias, softmax=False, embedding=None):
    """Append a model's head (and embedding table) to a prepared stack.

    ``weight`` ``[O, H]`` and ``bias`` ``[O]`` (or None) of a linear layer on
    the top layer's ``h``; ``softmax``: the kernels return probabilities;
    ``embedding`` ``[V, I]``: the table :func:`lm_step` looks tokens up in.
    Returns the new ``(w, meta)``."""
    dtype = w.dtype
    L = int(meta[0, 1])
    O = weight.shape[0]
    parts = [w]
    off = w.size
    row = meta[L + 1]
    row[0] = 2 if softmax else 1
    if embedding is not None:
        e = np.ascontiguousarray(embedding, dtype=dtype)
        row[1], row[2] = off, e.shape[0]
        parts.append(e.ravel())
        off += e.size
    row[3] = off
    parts.append(np.ascontiguousarray(np.asarray(weight).T, dtype=dtype).ravel())
    off += weight.size
    row[4] = off
    parts.append(np.zeros(O, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype))
    row[5] = O
    return _aligned_concat(parts, dtype), meta


# --------------------------------------------------------------------------- kernels
@njit(inline="always")
def ax_width(code, H):
    """``G*H`` of the cell with code ``code``."""
    if code <= 1:
        return H
    if code == 3 or code == 4:
        return 3 * H
    return 4 * H


@njit(inline="always")
def _mv(w, off, K, N, src, B, acc, c0, c1):
    """``acc[b, c0:c1] += sum_k src[b, k] * W[k, c0:c1]`` for ``W = w[off:]``
    viewed ``[K, N]``: contiguous row slices of ``W`` (vectorised over the
    columns, read once for all ``B`` rows), four rows of ``k`` per pass so
    that ``acc`` is loaded and stored once per four multiply-adds (at H=256
    the pass over ``acc`` otherwise costs as much as the weights)."""
    n = c1 - c0
    k = 0
    while k + 4 <= K:
        base = off + k * N + c0
        r0 = w[base: base + n]
        r1 = w[base + N: base + N + n]
        r2 = w[base + 2 * N: base + 2 * N + n]
        r3 = w[base + 3 * N: base + 3 * N + n]
        for b in range(B):
            v0 = src[b, k]
            v1 = src[b, k + 1]
            v2 = src[b, k + 2]
            v3 = src[b, k + 3]
            a = acc[b, c0:c1]
            for q in range(n):
                a[q] += (v0 * r0[q] + v1 * r1[q]) + (v2 * r2[q] + v3 * r3[q])
        k += 4
    while k < K:
        row = w[off + k * N + c0: off + k * N + c1]
        for b in range(B):
            v = src[b, k]
            a = acc[b, c0:c1]
            for q in range(n):
                a[q] += v * row[q]
        k += 1


@njit(inline="always")
def _init(acc, bias, B, N):
    for b in range(B):
        a = acc[b]
        for q in range(N):
            a[q] = bias[q]


_T16 = (0,) * 16
_T8 = (0,) * 8
_PAIR_MR = _simd.PAIR_MR
# one row, four neighbouring panels per call (AVX-512 only: 16 accumulators):
# a row's step is a chain of K dependent FMAs per accumulator, so more panels
# per call keep more chains in flight
_LF1Q = _simd._make_lstm_fwd(1, False, 4)
_PF1Q = _simd._make_lstm_fwd(1, True, 4)


@njit(inline="always")
def _lstm_row(np_, peep, tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, wn):
    """One row of ``np_`` (1, 2 or 4) neighbouring LSTM panels from ``w``."""
    if np_ == 4:
        if peep:
            _PF1Q(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, h, 0, False, wn)
        else:
            _LF1Q(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, h, 0, False, wn)
    elif peep:
        _plstm.lstm_fwd_mr(1, np_ == 2, 1, tag, x, ldx, h, ldh, w, I, H, bias, pp, cin,
                             cout, ldc, y, h, 0, False, wn)
    else:
        _plstm.lstm_fwd_mr(1, np_ == 2, None, tag, x, ldx, h, ldh, w, I, H, bias, pp, cin,
                             cout, ldc, y, h, 0, False, wn)


@njit(inline="always")
def _fast(tag, code, mrmax, meta_l, w, src, h, c, ws, B, H):
    """One layer's step on the micro-kernels (see the module doc): ``h`` is
    copied to a scratch row (every panel reads the old ``h``), each panel
    writes its ``VW`` units of the new ``h`` (and ``c``) in place."""
    VW = len(tag)
    I_l = meta_l[0]
    hold = ws[2].reshape(ws.shape[1] * ws.shape[2])
    for b in range(B):                      # old h, rows of H, at the scratch's start
        for j in range(H):
            hold[b * H + j] = h[b, j]
    xa = src.ctypes.data
    ha = hold.ctypes.data
    ya = h.ctypes.data
    ca = c.ctypes.data
    wa = w.ctypes.data
    up = wa + 4 * meta_l[6]
    pb = wa + 4 * meta_l[7]
    pp = wa + 4 * meta_l[5]
    P = H // VW
    G = 3 if code == 3 else 4
    KW = (I_l + H) * G * VW
    pair = code != 3 and B <= _PAIR_MR and P % 2 == 0   # two panels per call: twice
    step = 2 if pair else 1                             # the FMA chains for 1-2 rows
    if code != 3 and B == 1 and VW == 16 and P % 4 == 0:
        for p in range(0, P, 4):                        # one row: four panels per call
            wp = up + 4 * p * KW
            u0 = 4 * p * VW
            _lstm_row(4, code == 5, tag, xa, I_l, ha, H, wp, I_l, H, pb + 4 * u0, pp + 3 * u0,
                      ca + u0, ca + u0, H, ya + u0, up + 4 * ((p + 4) % P) * KW)
        return
    for p in range(0, P, step):
        wp = up + 4 * p * KW
        wn = up + 4 * ((p + step) % P) * KW
        u0 = p * VW
        r0 = 0
        while r0 < B:
            mr = min(mrmax, B - r0)
            ro = 4 * (r0 * H + u0)
            if code == 3:
                _pgru.gru_fwd_mr(mr, tag, xa + 4 * r0 * I_l, I_l, ha + 4 * r0 * H, H,
                                          wp, I_l, H, pb + 16 * p * VW, ha + ro, ya + ro,
                                          ha, 0, False)
            elif code == 5:
                _plstm.lstm_fwd_mr(mr, pair, 1, tag, xa + 4 * r0 * I_l, I_l,
                                     ha + 4 * r0 * H, H, wp, I_l, H, pb + 16 * p * VW,
                                     pp + 12 * p * VW, ca + ro, ca + ro, H, ya + ro, ha, 0,
                                     False, wn)
            else:
                _plstm.lstm_fwd_mr(mr, pair, None, tag, xa + 4 * r0 * I_l, I_l,
                                     ha + 4 * r0 * H, H, wp, I_l, H, pb + 16 * p * VW,
                                     pp, ca + ro, ca + ro, H, ya + ro, ha, 0, False, wn)
            r0 += mr


def _fast_step(code, meta_l, w, src, h, c, ws, B, H):
    """Run the layer on the micro-kernels if it was prepared for them (float32
    panels); returns whether it did."""


@overload(_fast_step, inline="always")
def _ol_fast_step(code, meta_l, w, src, h, c, ws, B, H):
    if w.dtype != types.float32:      # typed away: a float64 stack compiles no intrinsics
        return lambda code, meta_l, w, src, h, c, ws, B, H: False

    # the SIMD width is chosen at compile time by meta's integer type (see
    # prepare), so a process compiles only the micro-kernels it runs
    if meta_l.dtype == types.int32:
        def impl8(code, meta_l, w, src, h, c, ws, B, H):
            if meta_l[8] == 0:
                return False
            _fast(_T8, code, meta_l[9], meta_l, w, src, h, c, ws, B, H)
            return True
        return impl8

    def impl16(code, meta_l, w, src, h, c, ws, B, H):
        if meta_l[8] == 0:
            return False
        _fast(_T16, code, meta_l[9], meta_l, w, src, h, c, ws, B, H)
        return True
    return impl16


@njit(**_OPTS)
def _layer(code, meta_l, w, src, h, c, ws, B, H):
    """One step of one layer: ``src`` ``[B, I_l]`` in, ``h``/``c`` ``[B, H]``
    updated in place."""
    I_l = meta_l[0]
    ox, oh, obx, obh, op = meta_l[1], meta_l[2], meta_l[3], meta_l[4], meta_l[5]
    GH = ax_width(code, H)
    if _fast_step(code, meta_l, w, src, h, c, ws, B, H):
        return
    ax = ws[0]
    ah = ws[1]
    tmp = ws[2]
    _init(ax, w[obx:obx + GH], B, GH)
    _init(ah, w[obh:obh + GH], B, GH)
    _mv(w, ox, I_l, GH, src, B, ax, 0, GH)
    if code == 4:                     # GRU reset-before: U_n needs r first
        _mv(w, oh, H, GH, h, B, ah, 0, 2 * H)
    else:
        _mv(w, oh, H, GH, h, B, ah, 0, GH)
    if code == 0 or code == 1:
        for b in range(B):
            xa = ax[b]
            ha = ah[b]
            hb = h[b]
            if code == 0:
                for j in range(H):
                    hb[j] = _rnn_tanh_step(xa[j] + ha[j])
            else:
                for j in range(H):
                    hb[j] = _rnn_relu_step(xa[j] + ha[j])
    elif code == 2:
        for b in range(B):
            xi, xf, xg, xo = ax[b, :H], ax[b, H:2 * H], ax[b, 2 * H:3 * H], ax[b, 3 * H:]
            hi, hf, hg, ho = ah[b, :H], ah[b, H:2 * H], ah[b, 2 * H:3 * H], ah[b, 3 * H:]
            hb = h[b]
            cb = c[b]
            for j in range(H):
                i, f, g, o, cn, tc, hn = _lstm_step(xi[j] + hi[j], xf[j] + hf[j],
                                                    xg[j] + hg[j], xo[j] + ho[j], cb[j])
                cb[j] = cn
                hb[j] = hn
    elif code == 3:
        for b in range(B):
            xr, xz, xn = ax[b, :H], ax[b, H:2 * H], ax[b, 2 * H:]
            hr, hz, hn_ = ah[b, :H], ah[b, H:2 * H], ah[b, 2 * H:]
            hb = h[b]
            for j in range(H):
                r, z, n, hnew = _gru_step(xr[j] + hr[j], xz[j] + hz[j], xn[j], hn_[j], hb[j])
                hb[j] = hnew
    elif code == 4:
        for b in range(B):
            xr, xz = ax[b, :H], ax[b, H:2 * H]
            hr, hz = ah[b, :H], ah[b, H:2 * H]
            zb = tmp[b, :H]
            rh = tmp[b, H:2 * H]
            hb = h[b]
            for j in range(H):
                r, z = _gru_rb_gates(xr[j] + hr[j], xz[j] + hz[j])
                zb[j] = z
                rh[j] = r * hb[j]
        # an_h = U_n (r * h) + b_hn: the second product, from the scratch rows
        for k in range(H):
            row = w[oh + k * GH + 2 * H: oh + k * GH + 3 * H]
            for b in range(B):
                v = tmp[b, H + k]
                a = ah[b, 2 * H:]
                for q in range(H):
                    a[q] += v * row[q]
        for b in range(B):
            xn, hn_ = ax[b, 2 * H:], ah[b, 2 * H:]
            zb = tmp[b, :H]
            hb = h[b]
            for j in range(H):
                n, hnew = _gru_rb_step(xn[j] + hn_[j], zb[j], hb[j])
                hb[j] = hnew
    elif code == 5:
        pi, pf, po = w[op:op + H], w[op + H:op + 2 * H], w[op + 2 * H:op + 3 * H]
        for b in range(B):
            xi, xf, xg, xo = ax[b, :H], ax[b, H:2 * H], ax[b, 2 * H:3 * H], ax[b, 3 * H:]
            hi, hf, hg, ho = ah[b, :H], ah[b, H:2 * H], ah[b, 2 * H:3 * H], ah[b, 3 * H:]
            hb = h[b]
            cb = c[b]
            for j in range(H):
                cp = cb[j]
                i, f, g, cn = _peep_cell(xi[j] + hi[j] + pi[j] * cp, xf[j] + hf[j] + pf[j] * cp,
                                         xg[j] + hg[j], cp)
                o, tc, hn = _peep_out(xo[j] + ho[j] + po[j] * cn, cn)
                cb[j] = cn
                hb[j] = hn
    else:                              # full peepholes: P_i c, P_f c, then P_o c'
        HH = H * H
        for k in range(H):
            ri = w[op + k * H: op + k * H + H]
            rf = w[op + HH + k * H: op + HH + k * H + H]
            for b in range(B):
                v = c[b, k]
                ai = ah[b, :H]
                af = ah[b, H:2 * H]
                for q in range(H):
                    ai[q] += v * ri[q]
                    af[q] += v * rf[q]
        for b in range(B):
            xi, xf, xg = ax[b, :H], ax[b, H:2 * H], ax[b, 2 * H:3 * H]
            hi, hf, hg = ah[b, :H], ah[b, H:2 * H], ah[b, 2 * H:3 * H]
            cb = c[b]
            for j in range(H):
                i, f, g, cn = _peep_cell(xi[j] + hi[j], xf[j] + hf[j], xg[j] + hg[j], cb[j])
                cb[j] = cn
        for k in range(H):
            ro = w[op + 2 * HH + k * H: op + 2 * HH + k * H + H]
            for b in range(B):
                v = c[b, k]
                ao = ah[b, 3 * H:]
                for q in range(H):
                    ao[q] += v * ro[q]
        for b in range(B):
            xo, ho = ax[b, 3 * H:], ah[b, 3 * H:]
            hb = h[b]
            cb = c[b]
            for j in range(H):
                o, tc, hn = _peep_out(xo[j] + ho[j], cb[j])
                hb[j] = hn


@njit(**_OPTS)
def step(meta, w, st, ws, x, y):
    """One time step of every layer: ``x`` ``[B, I]`` in, ``y`` ``[B, H]``
    (the top layer's new ``h``) out; ``st`` ``[2, L, B, H]`` updated in place."""
    code, L, B, H = meta[0, 0], meta[0, 1], meta[0, 2], meta[0, 3]
    _layer(code, meta[1], w, x, st[0, 0], st[1, 0], ws, B, H)
    for l in range(1, L):
        _layer(code, meta[1 + l], w, st[0, l - 1], st[0, l], st[1, l], ws, B, H)
    hb = st[0, L - 1]
    for b in range(B):
        for j in range(H):
            y[b, j] = hb[b, j]


@njit(**_OPTS)
def run(meta, w, st, ws, x, y):
    """:func:`step` over a chunk: ``x`` ``[T, B, I]``, ``y`` ``[T, B, H]``."""
    code, L, B, H = meta[0, 0], meta[0, 1], meta[0, 2], meta[0, 3]
    for t in range(x.shape[0]):
        _layer(code, meta[1], w, x[t], st[0, 0], st[1, 0], ws, B, H)
        for l in range(1, L):
            _layer(code, meta[1 + l], w, st[0, l - 1], st[0, l], st[1, l], ws, B, H)
        hb = st[0, L - 1]
        yt = y[t]
        for b in range(B):
            for j in range(H):
                yt[b, j] = hb[b, j]


@njit(**_OPTS)
def _stack(meta, w, st, ws, x):
    code, L, B, H = meta[0, 0], meta[0, 1], meta[0, 2], meta[0, 3]
    _layer(code, meta[1], w, x, st[0, 0], st[1, 0], ws, B, H)
    for l in range(1, L):
        _layer(code, meta[1 + l], w, st[0, l - 1], st[0, l], st[1, l], ws, B, H)


@njit(**_OPTS)
def _head(meta, w, st, out):
    """``out [B, O] = head(h_top)`` (softmax over ``O`` in mode 2)."""
    L, B, H = meta[0, 1], meta[0, 2], meta[0, 3]
    row = meta[L + 1]
    mode, oT, ob, O = row[0], row[3], row[4], row[5]
    _init(out, w[ob:ob + O], B, O)
    _mv(w, oT, H, O, st[0, L - 1], B, out, 0, O)
    if mode == 2:
        for b in range(B):
            ob_ = out[b]
            m = ob_[0]
            for q in range(1, O):
                m = max(m, ob_[q])
            s = ob_[0] - ob_[0]
            for q in range(O):
                e = np.exp(ob_[q] - m)
                ob_[q] = e
                s += e
            inv = (s - s + 1) / s
            for q in range(O):
                ob_[q] *= inv


@njit(**_OPTS)
def head_step(meta, w, st, ws, x, out):
    """One step of the stack on ``x`` ``[B, I]``, then the head: ``out`` ``[B, O]``."""
    _stack(meta, w, st, ws, x)
    _head(meta, w, st, out)


@njit(**_OPTS)
def lm_step(meta, w, st, ws, tok, out):
    """A language model's step: embed the token ids ``tok`` ``[B]`` (int64,
    checked by the caller to lie in ``[0, V)``), run the stack, then the head:
    ``out`` ``[B, V]`` logits."""
    L, B, I = meta[0, 1], meta[0, 2], meta[0, 4]
    oE = meta[L + 1, 1]
    xe = ws[3].reshape(ws.shape[1] * ws.shape[2])[:B * I].reshape(B, I)   # rows of I
    for b in range(B):
        r = w[oE + tok[b] * I: oE + tok[b] * I + I]
        xb = xe[b]
        for k in range(I):
            xb[k] = r[k]
    _stack(meta, w, st, ws, xe)
    _head(meta, w, st, out)


# --------------------------------------------------------------------------- one-row sequences
def input_weights(meta, w, l):
    """Layer ``l``'s input weights ``[I_l, P*G*VW]`` in panel order (a view of
    ``w``), for :func:`run_rows1`'s input product; None where the layer has no
    such layout."""
    row = meta[1 + l]
    if row[8] == 0 or row[10] == 0 or meta[0, 0] == CELL_CODES["gru"]:
        return None
    I_l, GH = int(row[0]), int(meta[0, 3]) * 4
    return w[row[11]: row[11] + I_l * GH].reshape(I_l, GH)


@njit(inline="always")
def _rows1(tag, meta_l, w, xg, h, c, y):
    VW = len(tag)
    H = h.shape[1]
    P = H // VW
    KH = H * 4 * VW
    wa = w.ctypes.data
    uh = wa + 4 * meta_l[10]
    pp = wa + 4 * meta_l[5]
    peep = meta_l[5] != 0
    ca = c.ctypes.data
    # four panels per call from eight panels on (16 FMA chains); below, pairs,
    # so that the backwards walk of every other step finds half of U in L1
    step = 4 if VW == 16 and P % 4 == 0 and P >= 8 else (2 if P % 2 == 0 else 1)
    ng = P // step
    T = xg.shape[0]
    GH = xg.shape[1]
    ob = meta_l[7]
    bias = w[ob:ob + GH]
    for t in range(T):
        xr = xg[t]
        for q in range(GH):
            xr[q] += bias[q]
        ha = h.ctypes.data if t == 0 else y[t - 1].ctypes.data
        ya = y[t].ctypes.data
        xa = xr.ctypes.data
        for gi in range(ng):
            # every other step walks the panels backwards: the panels used last
            # are used first, while still in L1
            g = gi if t % 2 == 0 else ng - 1 - gi
            gn = (g + 1) % ng if t % 2 == 0 else (g + ng - 1) % ng
            p = g * step
            wp = uh + 4 * p * KH
            wn = uh + 4 * gn * step * KH
            u0 = 4 * p * VW
            _lstm_row(step, peep, tag, xa, 0, ha, H, wp, 0, H, xa + 4 * u0, pp + 3 * u0,
                      ca + u0, ca + u0, H, ya + u0, wn)
    for j in range(H):
        h[0, j] = y[T - 1, 0, j]


@njit(**_OPTS)
def run_rows1(meta_l, w, xg, h, c, y):
    """One float32 LSTM / peephole-LSTM layer over a one-row sequence, its
    input product given: ``xg`` ``[T, P*G*VW]`` (``x W_ihᵀ`` in panel order,
    from one GEMM over all steps; the biases are added here, in place), so
    each step's dependent chain is
    the ``H`` rows of ``U`` only. ``h``, ``c`` ``[1, H]`` in (the initial
    state) and out (the final one); ``y`` ``[T, 1, H]`` out."""
    _rows1_width(meta_l, w, xg, h, c, y)


def _rows1_width(meta_l, w, xg, h, c, y):
    """:func:`_rows1` with the SIMD width of ``meta_l``'s integer type."""


@overload(_rows1_width, inline="always")
def _ol_rows1_width(meta_l, w, xg, h, c, y):
    tag = _T8 if meta_l.dtype == types.int32 else _T16
    return lambda meta_l, w, xg, h, c, y: _rows1(tag, meta_l, w, xg, h, c, y)


# --------------------------------------------------------------------------- memory floor
def step_weights(meta):
    """How many weights one :func:`step` (or :func:`lm_step`, :func:`head_step`)
    of a prepared stack reads: every layer's input and recurrent weights,
    biases and peepholes, and the head's weight and bias (and one embedding
    row). Times the item size, the bytes :func:`read_sum` is timed over."""
    L, H, code = int(meta[0, 1]), int(meta[0, 3]), int(meta[0, 0])
    GH = int(ax_width.py_func(code, H))
    n = 0
    for l in range(L):
        m = meta[1 + l]
        n += (int(m[0]) + H) * GH
        if not m[8]:
            n += 2 * GH                   # b_ih, b_hh
        else:                             # panels: the summed biases (GRU: r, z; n's two)
            n += 4 * H if code == CELL_CODES["gru"] else GH
        if code == CELL_CODES["peephole_diagonal"]:
            n += 3 * H
        elif code == CELL_CODES["peephole_full"]:
            n += 3 * H * H
    row = meta[L + 1]
    if row[0]:
        n += (H + 1) * int(row[5]) + (int(meta[0, 4]) if row[1] else 0)
    return n


_RS_ACCS = 8          # independent vector sums: enough loads in flight to be bandwidth-bound


@intrinsic
def _vsum16(typingctx, addr, nblocks):
    """The sum of ``nblocks * 8`` float32 vectors of 16 lanes at byte address
    ``addr``: plain vector loads into 8 independent accumulators."""
    sig = types.float32(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        addr, nblocks = args
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vty = ir.VectorType(ir.FloatType(), 16)
        p = builder.inttoptr(addr, vty.as_pointer())
        accs = [cgutils.alloca_once(builder, vty) for _ in range(_RS_ACCS)]
        for a in accs:
            builder.store(ir.Constant(vty, [0.0] * 16), a)
        with cgutils.for_range(builder, nblocks) as loop:
            base = builder.mul(loop.index, ir.Constant(i64, _RS_ACCS))
            for j, a in enumerate(accs):
                v = builder.load(builder.gep(p, [builder.add(base, ir.Constant(i64, j))]), align=4)
                builder.store(builder.fadd(builder.load(a), v), a)
        tot = builder.load(accs[0])
        for a in accs[1:]:
            tot = builder.fadd(tot, builder.load(a))
        s = builder.extract_element(tot, ir.Constant(i32, 0))
        for i in range(1, 16):
            s = builder.fadd(s, builder.extract_element(tot, ir.Constant(i32, i)))
        return s
    return sig, codegen


def read_sum(a):
    """The sum of a contiguous 1-d float32 array, read once front to back with
    vector loads and nothing else: timed over a buffer of a step's weight
    bytes, the floor a step that reads that many weights cannot beat on this
    core (the step's FMAs overlap the loads; its weights live where the
    buffer's do: L2 when they fit, else L3)."""
    if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1
            or not a.flags.c_contiguous):
        raise ValueError("read_sum: a must be a contiguous 1-d float32 array, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {np.shape(a)}")
    return _read_sum(a)


@njit(cache=True, nogil=True, boundscheck=False)
def _read_sum(a):
    blk = 16 * _RS_ACCS
    nb = a.size // blk
    s = _vsum16(a.ctypes.data, nb)
    for i in range(nb * blk, a.size):
        s += a[i]
    return s
