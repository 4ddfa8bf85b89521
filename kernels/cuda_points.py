"""The CUDA backend's per-cell device functions ("points") and the per-step
kernels that launch them.

A point applies one cell to one hidden unit ``j`` of one batch entry ``b`` at
step ``s`` (time ``t``, -1 when padded), given the recurrent products of the
step; the skeletons (the per-step drivers of :mod:`fastrnn.kernels.cuda` and
the persistent kernels of :mod:`fastrnn.kernels.cuda_persistent`) compute
those products and call the points. A cell with one recurrent product per
step (``CellSpec.products == 1``) has one forward and one backward point; a
cell whose step holds a second, dependent product (GRU reset-before:
``U_n (r ⊙ h)``; full peephole: ``P_o c'``) has two of each, one per phase,
with that product between them. :data:`FORWARD_STEPS` and :data:`BACKWARD_STEPS` list them per
registry name, in the order they run.

The arrays travel in tuples (numba passes tuples of arrays to kernels and
device functions alike; the device functions are inlined, so a tuple costs
nothing on the GPU):

forward ``point(b, j, s, t, slot, pre, state, out, peep)``
    ``pre = (xw, hw, aux)``: ``xw [T,B,GH]`` = x W_ihᵀ + b_ih, ``hw [B,GH]`` =
    h W_hhᵀ + b_hh, ``aux [B,*]`` the second product's operand or result;
    ``state = (h_in, h_out, c_in, c_out)`` ``[B,H]`` (one array twice in the
    per-step path, double buffers in the persistent kernels);
    ``out = (y, acts, hs, cs)``: ``y [T,B,H]`` by time; ``acts [S,B,K*H]``
    (``K = SAVED[cell.name]``), ``hs, cs [S,B,H]`` by ``slot`` (``S = T`` and
    ``slot = s`` in training, ``S = 1`` and ``slot = 0`` in inference);
    ``peep [3,H]`` (diagonal peephole; unused otherwise).
backward ``point(b, j, s, t, dy, carry, saved, da, peep)``
    ``dy [T,B,H]``; ``carry = (dh, dc, aux)``: ``dh, dc [B,H]`` the gradients
    carried into step ``s`` (updated in place), ``aux [B,H]`` the second
    product's work; ``saved = (acts, hs, cs)`` as forward wrote them;
    ``da = (dax, dah)``: the gate pre-activation gradients ``[T,B,GH]``, by
    time and by step (padded slots: zero, written through slot ``s``).
"""
from __future__ import annotations

import math
from functools import lru_cache

from . import pointwise
from .cuda_base import _dummy, _work, cuda

#: registry name -> ``K``, the ``H``-wide blocks of ``acts [S,B,K*H]`` that the
#: forward points save per step and batch row for the backward points: RNN h';
#: LSTM i, f, g, o, tanh c'; GRU r, z, n and U_n h + b_hn (reset-before: r ⊙ h);
#: peephole LSTM i, f, g, o, tanh c', c'
SAVED = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 5, "gru": 4, "gru_reset_before": 4,
         "peephole_diagonal": 6, "peephole_full": 6}

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

    @cuda.jit(device=True)
    def _preact(pre, t, b, k):
        """Column ``k`` of the pre-activation: x W_ihᵀ + b_ih + h W_hhᵀ + b_hh."""
        return pre[0][t, b, k] + pre[1][b, k]

    # ------------------------------------------------------------- forward points
    @cuda.jit(device=True)
    def _pad(b, j, s, slot, state, out, has_c):
        """A padded step: zero output, state carried, saved entries zeroed."""
        h_in, h_out, c_in, c_out = state
        y, acts, hs, cs = out
        H = h_in.shape[1]
        y[s, b, j] = 0
        h_out[b, j] = h_in[b, j]
        hs[slot, b, j] = 0
        k = j               # the K saved blocks; a while loop: no division for a trip count
        while k < acts.shape[2]:
            acts[slot, b, k] = 0
            k += H
        if has_c:
            c_out[b, j] = c_in[b, j]
            cs[slot, b, j] = 0

    @cuda.jit(device=True)
    def _emit(b, j, t, slot, state, out, hn):
        """Write the new hidden state ``hn``: next state, output, and the saved
        state before the step."""
        h_in, h_out, c_in, c_out = state
        y, acts, hs, cs = out
        hs[slot, b, j] = h_in[b, j]
        h_out[b, j] = hn
        y[t, b, j] = hn

    def _rnn_fwd_point(step):
        """The RNN step for one unit, with ``step`` = tanh or relu (pointwise)."""
        @cuda.jit(device=True)
        def fwd(b, j, s, t, slot, pre, state, out, peep):
            if t < 0:
                _pad(b, j, s, slot, state, out, False)
                return
            hn = step(_preact(pre, t, b, j))
            out[1][slot, b, j] = hn
            _emit(b, j, t, slot, state, out, hn)
        return fwd

    _rnn_tanh_fwd = _rnn_fwd_point(_pw_rnn_tanh_step)
    _rnn_relu_fwd = _rnn_fwd_point(_pw_rnn_relu_step)

    @cuda.jit(device=True)
    def _save_lstm(b, j, slot, out, H, cp, i, f, g, o, tc):
        """Save an LSTM-family step: c before it and the activations i, f, g, o, tanh c'."""
        acts = out[1]
        out[3][slot, b, j] = cp
        acts[slot, b, j] = i
        acts[slot, b, H + j] = f
        acts[slot, b, 2 * H + j] = g
        acts[slot, b, 3 * H + j] = o
        acts[slot, b, 4 * H + j] = tc

    @cuda.jit(device=True)
    def _lstm_fwd(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            _pad(b, j, s, slot, state, out, True)
            return
        c_in, c_out = state[2], state[3]
        H = c_in.shape[1]
        cp = c_in[b, j]
        i, f, g, o, c, tc, hn = _pw_lstm_step(
            _preact(pre, t, b, j), _preact(pre, t, b, H + j), _preact(pre, t, b, 2 * H + j),
            _preact(pre, t, b, 3 * H + j), cp)
        _save_lstm(b, j, slot, out, H, cp, i, f, g, o, tc)
        c_out[b, j] = c
        _emit(b, j, t, slot, state, out, hn)

    @cuda.jit(device=True)
    def _gru_fwd(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            _pad(b, j, s, slot, state, out, False)
            return
        xw, hw, aux = pre
        acts = out[1]
        H = state[0].shape[1]
        anh = hw[b, 2 * H + j]
        r, z, n, hn = _pw_gru_step(_preact(pre, t, b, j), _preact(pre, t, b, H + j),
                                   xw[t, b, 2 * H + j], anh, state[0][b, j])
        acts[slot, b, j] = r
        acts[slot, b, H + j] = z
        acts[slot, b, 2 * H + j] = n
        acts[slot, b, 3 * H + j] = anh
        _emit(b, j, t, slot, state, out, hn)

    @cuda.jit(device=True)
    def _peephole_diagonal_fwd(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            _pad(b, j, s, slot, state, out, True)
            return
        c_in, c_out = state[2], state[3]
        H = c_in.shape[1]
        cp = c_in[b, j]
        i, f, g, c = _pw_peephole_cell(_preact(pre, t, b, j) + peep[0, j] * cp,
                                       _preact(pre, t, b, H + j) + peep[1, j] * cp,
                                       _preact(pre, t, b, 2 * H + j), cp)
        o, tc, hn = _pw_peephole_out(_preact(pre, t, b, 3 * H + j) + peep[2, j] * c, c)
        _save_lstm(b, j, slot, out, H, cp, i, f, g, o, tc)
        out[1][slot, b, 5 * H + j] = c
        c_out[b, j] = c
        _emit(b, j, t, slot, state, out, hn)

    # peephole "full": aux [B,2H] holds (P_i c, P_f c) for the cell phase, then
    # P_o c' in aux[:, 0:H] for the output phase (written by the products between)
    @cuda.jit(device=True)
    def _peephole_full_fwd_cell(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            _pad(b, j, s, slot, state, out, True)
            return
        aux = pre[2]
        h_in, h_out, c_in, c_out = state
        y, acts, hs, cs = out
        H = h_in.shape[1]
        cp = c_in[b, j]
        i, f, g, c = _pw_peephole_cell(_preact(pre, t, b, j) + aux[b, j],
                                       _preact(pre, t, b, H + j) + aux[b, H + j],
                                       _preact(pre, t, b, 2 * H + j), cp)
        hs[slot, b, j] = h_in[b, j]
        cs[slot, b, j] = cp
        acts[slot, b, j] = i
        acts[slot, b, H + j] = f
        acts[slot, b, 2 * H + j] = g
        acts[slot, b, 5 * H + j] = c
        c_out[b, j] = c

    @cuda.jit(device=True)
    def _peephole_full_fwd_out(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            return
        h_out, c_out = state[1], state[3]
        y, acts = out[0], out[1]
        H = h_out.shape[1]
        o, tc, hn = _pw_peephole_out(_preact(pre, t, b, 3 * H + j) + pre[2][b, j], c_out[b, j])
        acts[slot, b, 3 * H + j] = o
        acts[slot, b, 4 * H + j] = tc
        h_out[b, j] = hn
        y[t, b, j] = hn

    # gru_reset_before: aux [B,H] receives r ⊙ h (the input of U_n), saved as
    # acts[:, :, 3H:4H] so that dW_hh's candidate rows see it
    @cuda.jit(device=True)
    def _gru_reset_before_fwd_gates(b, j, s, t, slot, pre, state, out, peep):
        aux = pre[2]
        if t < 0:
            _pad(b, j, s, slot, state, out, False)
            aux[b, j] = 0
            return
        h_in = state[0]
        y, acts, hs, cs = out
        H = h_in.shape[1]
        hp = h_in[b, j]
        r, z = _pw_gru_reset_before_gates(_preact(pre, t, b, j), _preact(pre, t, b, H + j))
        hs[slot, b, j] = hp
        acts[slot, b, j] = r
        acts[slot, b, H + j] = z
        acts[slot, b, 3 * H + j] = r * hp
        aux[b, j] = r * hp

    @cuda.jit(device=True)
    def _gru_reset_before_fwd_candidate(b, j, s, t, slot, pre, state, out, peep):
        if t < 0:
            return
        h_in, h_out = state[0], state[1]
        y, acts = out[0], out[1]
        H = h_in.shape[1]
        n, hn = _pw_gru_reset_before_step(_preact(pre, t, b, 2 * H + j), acts[slot, b, H + j],
                                          h_in[b, j])
        acts[slot, b, 2 * H + j] = n
        h_out[b, j] = hn
        y[t, b, j] = hn

    # ------------------------------------------------------------- backward points
    @cuda.jit(device=True)
    def _zero_da(b, j, s, H, da):
        """A padded step: every gate gradient of unit j zero (slot s)."""
        dax, dah = da
        k = j
        while k < dax.shape[2]:
            dax[s, b, k] = 0
            dah[s, b, k] = 0
            k += H

    @cuda.jit(device=True)
    def _put_da(t, s, b, k, da, v):
        """Gate gradient ``v`` of column ``k``: into dax by time, dah by step."""
        da[0][t, b, k] = v
        da[1][s, b, k] = v

    def _rnn_bwd_point(grad):
        """Back through the RNN step of one unit, ``grad`` from the pointwise table."""
        @cuda.jit(device=True)
        def bwd(b, j, s, t, dy, carry, saved, da, peep):
            dh = carry[0]
            if t < 0:
                _zero_da(b, j, s, dh.shape[1], da)
                return
            _put_da(t, s, b, j, da, grad(saved[0][s, b, j], dy[t, b, j] + dh[b, j]))
            dh[b, j] = 0
        return bwd

    _rnn_tanh_bwd = _rnn_bwd_point(_pw_rnn_tanh_grad)
    _rnn_relu_bwd = _rnn_bwd_point(_pw_rnn_relu_grad)

    @cuda.jit(device=True)
    def _put_da4(t, s, b, j, H, da, d0, d1, d2, d3):
        """The gradients of the four LSTM gate blocks i, f, g, o of unit j."""
        _put_da(t, s, b, j, da, d0)
        _put_da(t, s, b, H + j, da, d1)
        _put_da(t, s, b, 2 * H + j, da, d2)
        _put_da(t, s, b, 3 * H + j, da, d3)

    @cuda.jit(device=True)
    def _lstm_bwd(b, j, s, t, dy, carry, saved, da, peep):
        dh, dc = carry[0], carry[1]
        H = dh.shape[1]
        if t < 0:
            _zero_da(b, j, s, H, da)
            return
        acts, cs = saved[0], saved[2]
        dai, daf, dag, dao, dcp = _pw_lstm_grad(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], acts[s, b, 3 * H + j],
            acts[s, b, 4 * H + j], cs[s, b, j], dy[t, b, j] + dh[b, j], dc[b, j])
        _put_da4(t, s, b, j, H, da, dai, daf, dag, dao)
        dc[b, j] = dcp
        dh[b, j] = 0

    @cuda.jit(device=True)
    def _gru_bwd(b, j, s, t, dy, carry, saved, da, peep):
        dh = carry[0]
        H = dh.shape[1]
        if t < 0:
            _zero_da(b, j, s, H, da)
            return
        acts = saved[0]
        dar, daz, dnx, dnh, dhp = _pw_gru_grad(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], acts[s, b, 3 * H + j],
            saved[1][s, b, j], dy[t, b, j] + dh[b, j])
        # the candidate's input and recurrent parts differ (r scales the latter)
        dax, dah = da
        _put_da(t, s, b, j, da, dar)
        _put_da(t, s, b, H + j, da, daz)
        dax[t, b, 2 * H + j] = dnx
        dah[s, b, 2 * H + j] = dnh
        dh[b, j] = dhp

    @cuda.jit(device=True)
    def _peephole_diagonal_bwd(b, j, s, t, dy, carry, saved, da, peep):
        dh, dc = carry[0], carry[1]
        H = dh.shape[1]
        if t < 0:
            _zero_da(b, j, s, H, da)
            return
        acts, cs = saved[0], saved[2]
        dao, dch = _pw_peephole_grad_out(acts[s, b, 3 * H + j], acts[s, b, 4 * H + j],
                                         dy[t, b, j] + dh[b, j])
        dai, daf, dag, dcd = _pw_peephole_grad_cell(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], cs[s, b, j],
            dc[b, j] + dch + dao * peep[2, j])
        _put_da4(t, s, b, j, H, da, dai, daf, dag, dao)
        dc[b, j] = dcd + dai * peep[0, j] + daf * peep[1, j]
        dh[b, j] = 0

    # peephole "full": aux [B,H] holds dL/dc' (carried + through h'), then the
    # product between the phases adds P_oᵀ dao
    @cuda.jit(device=True)
    def _peephole_full_bwd_out(b, j, s, t, dy, carry, saved, da, peep):
        dh, dc, aux = carry
        H = dh.shape[1]
        if t < 0:
            _zero_da(b, j, s, H, da)
            return
        acts = saved[0]
        dao, dch = _pw_peephole_grad_out(acts[s, b, 3 * H + j], acts[s, b, 4 * H + j],
                                         dy[t, b, j] + dh[b, j])
        _put_da(t, s, b, 3 * H + j, da, dao)
        aux[b, j] = dc[b, j] + dch
        dh[b, j] = 0

    @cuda.jit(device=True)
    def _peephole_full_bwd_cell(b, j, s, t, dy, carry, saved, da, peep):
        if t < 0:
            return
        dh, dc, aux = carry
        acts, cs = saved[0], saved[2]
        H = dh.shape[1]
        dai, daf, dag, dcd = _pw_peephole_grad_cell(
            acts[s, b, j], acts[s, b, H + j], acts[s, b, 2 * H + j], cs[s, b, j], aux[b, j])
        _put_da(t, s, b, j, da, dai)
        _put_da(t, s, b, H + j, da, daf)
        _put_da(t, s, b, 2 * H + j, da, dag)
        dc[b, j] = dcd

    # gru_reset_before: aux [B,H] receives dL/d(r ⊙ h) = dan U_n from the
    # product between the phases
    @cuda.jit(device=True)
    def _gru_reset_before_bwd_candidate(b, j, s, t, dy, carry, saved, da, peep):
        dh, dc, aux = carry
        H = dh.shape[1]
        aux[b, j] = 0        # the persistent kernel accumulates dL/d(r ⊙ h) into it
        if t < 0:
            _zero_da(b, j, s, H, da)
            return
        acts = saved[0]
        dan, daz, dhp = _pw_gru_reset_before_grad_n(acts[s, b, H + j], acts[s, b, 2 * H + j],
                                                    saved[1][s, b, j], dy[t, b, j] + dh[b, j])
        _put_da(t, s, b, H + j, da, daz)
        _put_da(t, s, b, 2 * H + j, da, dan)
        dh[b, j] = dhp

    @cuda.jit(device=True)
    def _gru_reset_before_bwd_reset(b, j, s, t, dy, carry, saved, da, peep):
        if t < 0:
            return
        dh, dc, aux = carry
        dar, dhp = _pw_gru_reset_before_grad_r(saved[0][s, b, j], saved[1][s, b, j], aux[b, j])
        _put_da(t, s, b, j, da, dar)
        dh[b, j] += dhp

    #: registry name -> the forward points, one per dependent product, in step order
    FORWARD_STEPS = {"rnn_tanh": (_rnn_tanh_fwd,), "rnn_relu": (_rnn_relu_fwd,), "lstm": (_lstm_fwd,),
            "gru": (_gru_fwd,), "peephole_diagonal": (_peephole_diagonal_fwd,),
            "gru_reset_before": (_gru_reset_before_fwd_gates, _gru_reset_before_fwd_candidate),
            "peephole_full": (_peephole_full_fwd_cell, _peephole_full_fwd_out)}
    #: registry name -> the backward points, in the order they run (reverse of the step)
    BACKWARD_STEPS = {"rnn_tanh": (_rnn_tanh_bwd,), "rnn_relu": (_rnn_relu_bwd,), "lstm": (_lstm_bwd,),
            "gru": (_gru_bwd,), "peephole_diagonal": (_peephole_diagonal_bwd,),
            "gru_reset_before": (_gru_reset_before_bwd_candidate, _gru_reset_before_bwd_reset),
            "peephole_full": (_peephole_full_bwd_out, _peephole_full_bwd_cell)}


@lru_cache(maxsize=None)
def _step_kernel(point):
    """A per-step launch of ``point`` (forward or backward) over all (b, j):
    ``kernel[grid, threads](s, reverse, lengths, H, *args)`` calls
    ``point(b, j, s, t, *args)`` with the point's own five arguments
    (forward: ``slot, pre, state, out, peep`` with ``state = (h, h, c, c)``,
    updated in place; backward: ``dy, carry, saved, da, peep``)."""

    @cuda.jit
    def kernel(s, reverse, lengths, H, a0, a1, a2, a3, a4):
        # one thread per (b, j); lengths [B]
        idx = cuda.grid(1)
        if idx < lengths.shape[0] * H:
            b = idx // H
            j = idx - b * H
            point(b, j, s, _time(s, b, lengths, reverse), a0, a1, a2, a3, a4)

    return kernel


def _second_product_operands(cell, peep, B, H, dtype):
    """``(aux, p_if, p_o)`` of a two-product cell's forward step: the work
    array the points and the second product share, and the peephole matrices
    ``[P_i; P_f] [2H,H]`` and ``P_o [H,H]`` (full peephole: aux [B,2H] holds
    (P_i c, P_f c), then P_o c'; GRU reset-before: aux [B,H] holds r ⊙ h, and
    the matrices are unused dummies)."""
    if cell.peephole == "full":
        return _work("aux2", (B, 2 * H), dtype), peep[:2].reshape(2 * H, H), peep[2]
    dummy = _dummy((1, 1), dtype)
    return _work("aux", (B, H), dtype), dummy, dummy
