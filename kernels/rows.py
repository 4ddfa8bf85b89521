"""The per-cell row functions of the BLAS-per-step loops, and each cell's
:class:`Layout`: the arrays it saves for backward, its carries, and how its
extra weights are prepared, as data the drivers (:mod:`fastrnn.kernels.loops_driver`)
read instead of branching on the cell.

A row function does one cell's work for one active (step, batch row); the loop
skeletons of :mod:`fastrnn.kernels.loops` call them by role (``FWD``, ``FWD2``,
``BWD``, ``BWD2``, ``CARRY``, ``PRE``, ``POST``), and each cell's copy of a
skeleton is compiled with its own row functions inlined. Adding a cell's
CPU loop path means adding its row functions and its entry in :data:`LAYOUTS`.

The cell equations live once, in :mod:`fastrnn.kernels.pointwise`, compiled
here with ``njit(inline="always")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from numba import njit

from fastrnn.kernels import pointwise as _pointwise
from fastrnn.kernels.activations import sigmoid as _sigmoid
from fastrnn.kernels.activations import tanh as _tanh
from fastrnn.kernels.blas import mm

__all__ = ["Layout", "LAYOUTS", "fill_rows"]

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


@njit(inline="always")
def fill_rows(a, v):
    """a[b, :] = v for every row: the bias a beta=1 GEMM then adds onto."""
    for b in range(a.shape[0]):
        a[b, :] = v


@njit(inline="always")
def _acc(acc, v):
    """acc += v (a float64 accumulator of bias gradients, summed in the loop
    while the step's gradients are hot in cache instead of a pass after)."""
    for k in range(v.shape[0]):
        acc[k] += v[k]


# --------------------------------------------------------------------------- row functions
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


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """One cell's side of the BLAS-per-step loops, read by the drivers.

    rows : role -> row function (``FWD``, ``BWD``, ``CARRY``; the cells with two
        dependent products per step also ``FWD2``, ``BWD2``, ``PRE``, ``POST``).
    saved : the arrays saved for backward, in the row functions' order:
        ``(name, gate_wide, zero)``, each ``[T,B,G*H]`` if ``gate_wide`` else
        ``[T,B,H]``; ``zero``: zero-filled where padded rows enter a weight GEMM.
    hprev : the index in ``saved`` of h before the step (``dW_hh``'s GEMM rows).
    carry_extra : ``[B,H]`` zero carries of backward after ``dh`` (and ``dc``).
    split_grads : recurrent-side gate gradients apart from the input side's
        (and their own bias-gradient sums): ``grads = (dgx, dgh)``.
    forward_weights : ``(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype) -> (w_hhT,
        bias, cellw, second)``: the first product's weights and bias, the
        cell's extra weights, and ``(w2T, bias2)`` of the second product (None).
    backward_weights : ``(w, B, H, dtype) -> (cellw, second)``, ``second`` =
        ``(w1, w2, lo2)`` for the two-product cells: the first product's
        weights, the second's, and the gate column where its gradients start.
    dw_hh : ``(dg2, dgh2, hp2, saved, w, H) -> dW_hh``; None: ``dgh2ᵀ hp2``.
    dpeep : ``(dg2, saved, w, H) -> dpeep`` for the peephole cells.
    """

    rows: dict
    saved: tuple
    hprev: int
    carry_extra: int = 0
    split_grads: bool = False
    forward_weights: Optional[Callable] = None
    backward_weights: Optional[Callable] = None
    dw_hh: Optional[Callable] = None
    dpeep: Optional[Callable] = None


def _gru_forward_weights(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype):
    # b_in stays outside r ⊙ (U_n h + b_hn): cellw = (b_in,)
    bias[2 * H:] = b_hh[2 * H:]
    return w_hhT, bias, (b_ih[2 * H:].copy(),), None


def _gru_rb_forward_weights(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype):
    second = (w_hhT[:, 2 * H:].copy(), bias[2 * H:].copy())            # U_nᵀ, b_n
    return w_hhT[:, :2 * H].copy(), bias[:2 * H].copy(), (), second  # [U_r;U_z]ᵀ, b_rz


def _gru_rb_backward_weights(w, B, H, dtype):
    return (), (w.w_hh[:2 * H], w.w_hh[2 * H:], 2 * H)      # second product: dan U_n


def _gru_rb_dw_hh(dg2, dgh2, hp2, saved, w, H):
    # U_n acts on r ⊙ h (saved[1])
    dw_hh = np.empty_like(w.w_hh)
    dw_hh[:2 * H] = dg2[:, :2 * H].T @ hp2
    dw_hh[2 * H:] = dg2[:, 2 * H:].T @ saved[1].reshape(hp2.shape[0], H)
    return dw_hh


def _peep_diag_forward_weights(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype):
    return w_hhT, bias, (peep,), None


def _peep_diag_backward_weights(w, B, H, dtype):
    return (w.peep,), None


def _peep_full_forward_weights(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype):
    # [P_i;P_f]ᵀ and P_oᵀ: NN GEMMs in the loop; cellw: (pifT [H,2H], pc [B,2H])
    cellw = (np.ascontiguousarray(np.concatenate([peep[0].T, peep[1].T], axis=1)),
             np.empty((B, 2 * H), dtype))
    return w_hhT, bias, cellw, (np.ascontiguousarray(peep[2].T), np.zeros(H, dtype))


def _peep_full_backward_weights(w, B, H, dtype):
    # dao P_o; post: [dai,daf] [P_i;P_f]; cellw: (pif [2H,H], qif [B,H])
    cellw = (np.ascontiguousarray(w.peep[:2].reshape(2 * H, H)), np.empty((B, H), dtype))
    return cellw, (w.w_hh, w.peep[2], 3 * H)


def _peep_grads(full):
    def dpeep(dg2, saved, w, H):
        # saved: act, cprev, ctanh, hprev, cnew
        TB = dg2.shape[0]
        cp2 = saved[1].reshape(TB, H)
        cn2 = saved[4].reshape(TB, H)
        out = np.empty_like(w.peep)
        if full:
            out[0] = dg2[:, :H].T @ cp2
            out[1] = dg2[:, H:2 * H].T @ cp2
            out[2] = dg2[:, 3 * H:].T @ cn2
        else:
            out[0] = np.einsum("nj,nj->j", dg2[:, :H], cp2)
            out[1] = np.einsum("nj,nj->j", dg2[:, H:2 * H], cp2)
            out[2] = np.einsum("nj,nj->j", dg2[:, 3 * H:], cn2)
        return out
    return dpeep


_RNN_SAVED = (("hprev", False, True), ("hout", False, False))
_LSTM_SAVED = (("act", True, False), ("cprev", False, False), ("ctanh", False, False),
               ("hprev", False, True))
_PEEP_SAVED = (("act", True, False), ("cprev", False, True), ("ctanh", False, False),
               ("hprev", False, True), ("cnew", False, True))

#: registry cell name -> its Layout
LAYOUTS = {
    "rnn_tanh": Layout(dict(FWD=_rnn_tanh_fwd, BWD=_rnn_tanh_bwd, CARRY=_carry_u),
                       _RNN_SAVED, hprev=0),
    "rnn_relu": Layout(dict(FWD=_rnn_relu_fwd, BWD=_rnn_relu_bwd, CARRY=_carry_u),
                       _RNN_SAVED, hprev=0),
    "lstm": Layout(dict(FWD=_lstm_fwd, BWD=_lstm_bwd, CARRY=_carry_u), _LSTM_SAVED, hprev=3),
    "gru": Layout(dict(FWD=_gru_fwd, BWD=_gru_bwd, CARRY=_carry_u_direct),
                  (("act", True, False), ("anh", False, False), ("hprev", False, True)),
                  hprev=2, carry_extra=1, split_grads=True,
                  forward_weights=_gru_forward_weights),
    "peephole_diagonal": Layout(dict(FWD=_peep_diag_fwd, BWD=_peep_diag_bwd, CARRY=_carry_u),
                                _PEEP_SAVED, hprev=3,
                                forward_weights=_peep_diag_forward_weights,
                                backward_weights=_peep_diag_backward_weights,
                                dpeep=_peep_grads(False)),
    "gru_reset_before": Layout(dict(FWD=_gru_rb_fwd, FWD2=_gru_rb_fwd2, BWD=_gru_rb_bwd,
                                    BWD2=_gru_rb_bwd2, CARRY=_carry_u_direct, PRE=_no_pre,
                                    POST=_no_post),
                               (("act", True, False), ("rh", False, True),
                                ("hprev", False, True)),
                               hprev=2, carry_extra=1,
                               forward_weights=_gru_rb_forward_weights,
                               backward_weights=_gru_rb_backward_weights,
                               dw_hh=_gru_rb_dw_hh),
    "peephole_full": Layout(dict(FWD=_peep_full_fwd, FWD2=_peep_full_fwd2, BWD=_peep_full_bwd,
                                 BWD2=_peep_full_bwd2, CARRY=_carry_u, PRE=_peep_full_pre,
                                 POST=_peep_full_post),
                            _PEEP_SAVED, hprev=3, carry_extra=1,
                            forward_weights=_peep_full_forward_weights,
                            backward_weights=_peep_full_backward_weights,
                            dpeep=_peep_grads(True)),
}
