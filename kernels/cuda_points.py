"""The CUDA backend's per-cell device functions ("points") and the per-step
kernels that launch them: each point applies one cell to one hidden unit of
one batch entry at one step, given the step's recurrent products.
"""
from __future__ import annotations

import math
from functools import lru_cache

from . import pointwise
from .cuda_base import cuda

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

    @cuda.jit(device=True)
    def _time(s, b, lengths, reverse):
        """The time index step ``s`` of entry ``b`` reads, or -1 past its length."""
        n = lengths[b]
        if s >= n:
            return -1
        if reverse:
            return n - 1 - s
        return s

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


# --------------------------------------------------------------------------- cells
#: cells the persistent kernel runs (one recurrent product per step)
PERSISTENT_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "peephole_diagonal",
                    "gru_reset_before", "peephole_full")
#: of those, the cells whose step holds a second, dependent product
TWO_PHASE_CELLS = ("gru_reset_before", "peephole_full")

#: number of H-wide activation blocks saved per (step, entry)
_SAVED = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 5, "gru": 4, "gru_reset_before": 4,
          "peephole_diagonal": 6, "peephole_full": 6}

if cuda is not None:
    _FWD = {"rnn_tanh": _rnn_tanh_fwd, "rnn_relu": _rnn_relu_fwd, "lstm": _lstm_fwd,
            "gru": _gru_fwd, "peephole_diagonal": _peep_diag_fwd}
    _BWD = {"rnn_tanh": _rnn_tanh_bwd, "rnn_relu": _rnn_relu_bwd, "lstm": _lstm_bwd,
            "gru": _gru_bwd, "peephole_diagonal": _peep_diag_bwd}


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

