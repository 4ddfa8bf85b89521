"""Packed-weight CPU kernels (compiled) for the GRU (reset_after=True) and the tanh/ReLU RNN;
their drivers are :mod:`fastrnn.kernels.packed_cells`.

The machinery of the packed LSTM (panel-order packing, :mod:`~fastrnn.kernels.vector`;
the length-sorted step schedule, :mod:`~fastrnn.kernels.schedule`; the
two-thread panel-claiming step loop with its back-off, :mod:`~fastrnn.kernels.sync`
and :mod:`~fastrnn.kernels.plan`; the weight-gradient GEMMs split in tasks), applied to the other
cells, float32 and float64, one layer and direction. Notation as there: ``VW``
the SIMD width in elements, ``Hp`` = ``H`` rounded up to a multiple of ``VW``, ``P =
Hp / VW``.

GRU
---
Panel ``p`` holds the ``3*VW`` gate columns ``[r z n]`` of its ``VW`` units
(``vector.pack`` with ``G = 3``); the forward micro-kernel
(:data:`fastrnn.kernels.simd_cells.uk_gru_fwd`) runs the panel's ``I`` input
rows and ``Hp`` recurrent rows into four accumulators per row, ``r`` and
``z`` shared by both segments, ``n`` kept apart (``W_n x`` and ``U_n h``), so
no FLOP is spent on zero blocks and ``n = tanh(W_n x + b_in + r (U_n h + b_hn))``
comes out of registers. Training saves ``(r, z, n, U_n h + b_hn)`` per panel
(``act``: ``[n,B,4*Hp]``).

Backward, per step (``s = n-1 .. 0``) and output panel (``nvb`` vectors of
units): ``dh = [dr dz dn r]_{s+1} U + dy + dd`` with ``dd`` the carried part of
``dL/dh`` that does not pass through ``U`` (``z dh``, initialised to
``dL/dh_n``), then the step's derivative; it writes both the recurrent-side
gradients ``dgh = (dr, dz, dn r)`` (for the next product, ``dW_hh`` and
``db_hh``) and the input-side ones ``dgx = (dr, dz, dn)`` (``dx``,
``dW_ih``, ``db_ih``).

RNN
---
``G = 1``: a panel of one vector would leave the micro-kernel latency-bound,
so forward panels are ``nvb`` vectors wide (``NB = nvb*VW`` units, the last
one narrower), each ``[I+Hp][w]`` with the input rows first; backward packs
``U`` by the same output panels. ReLU or tanh is a run-time flag of the
micro-kernels.
"""
from __future__ import annotations

from numba import njit

from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.simd import esize, rows_switch
from fastrnn.kernels.simd_cells import uk_gru_bwd, uk_gru_fwd, uk_rnn_bwd, uk_rnn_fwd
from fastrnn.kernels.sync import panel_steps

__all__ = ["gru_fwd_kernel", "gru_bwd_kernel", "rnn_fwd_kernel", "rnn_bwd_kernel", "gru_fwd_mr",
           "NVB", "GRU_FWD_MR8"]

#: the micro-kernels by row count (1-6), one switch each
_gf, _gb, _rf, _rb = (rows_switch(k[:7]) for k in (uk_gru_fwd, uk_gru_bwd, uk_rnn_fwd, uk_rnn_bwd))

#: vectors per backward output panel (GRU and RNN) and per RNN forward panel
NVB = 4
#: GRU forward rows per micro-kernel call with 256-bit vectors
GRU_FWD_MR8 = 4   # 16 accumulators + 4 more > 16 ymm: some spills, yet 5-10% faster than 3


# --------------------------------------------------------------------------- GRU forward
@njit(inline="always")
def gru_fwd_mr(mr, tag, x, ldx, h, ldh, w, I, H, bias, hin, y, act, ldact, training):
    _gf(mr, (tag, x, ldx, h, ldh, w, I, H, bias, hin, y, act, ldact, training))


@njit(inline="always")
def _gru_fwd_panel(s, p, tid, P, args, opt):
    """Step ``s``, panel ``p`` of :func:`gru_fwd_kernel`."""
    (tag, xp, B, I, Hp, upp, bp, hsp, ap, nact, training, mrmax, rlo, rhi) = args
    ES = esize(tag)      # bytes per element
    VW = len(tag)
    KW = (I + Hp) * 3 * VW
    GA = 4 * Hp
    nb = nact[s]
    hp = hsp + ES * s * B * Hp
    yp = hp + ES * B * Hp
    xsp = xp + ES * s * B * I
    asp = ap + ES * s * B * GA
    wp = upp + ES * p * KW
    u0 = p * VW
    r0 = rlo
    while r0 < min(nb, rhi):
        mr = min(mrmax, min(nb, rhi) - r0)
        ro = ES * (r0 * Hp + u0)
        gru_fwd_mr(mr, tag, xsp + ES * r0 * I, I, hp + ES * r0 * Hp, Hp, wp, I, Hp,
                    bp + ES * 4 * p * VW, hp + ro, yp + ro, asp + ES * (r0 * GA + 4 * u0),
                    GA, training)
        r0 += mr


@njit(**JIT_OPTIONS)
def gru_fwd_kernel(tag, xs, bias, up, hs, nact, training, act, ctl, tid, nthr, mrmax, rlo, rhi):
    # xs: [n,B,I] input in step order
    # bias: [P,4,VW] per panel: b_ir + b_hr, b_iz + b_hz, b_in, b_hn
    # up: [P,I+Hp,3*VW] each panel's W_ihᵀ rows, then its W_hhᵀ rows ([r z n] columns)
    # hs: [n+1,B,Hp] hs[0] = h0 (in); hs[s+1] = h after step s (rows >= nact[s] untouched)
    # nact: [n] active rows per step (non-increasing)
    # act: [n,B,4*Hp] out in training: r, z, n, U_n h + b_hn per panel
    # ctl: [P+1] int64 panel claim counters, then the done counter
    # rlo, rhi: the batch rows this call works on (see packed_lstm.lstm_fwd_kernel)
    n, B, I = xs.shape
    Hp = hs.shape[2]
    args = (tag, xs.ctypes.data, B, I, Hp, up.ctypes.data, bias.ctypes.data, hs.ctypes.data,
            act.ctypes.data, nact, training, mrmax, rlo, rhi)
    return panel_steps(n, Hp // len(tag), False, ctl, tid, nthr, _gru_fwd_panel, args, None)


# --------------------------------------------------------------------------- GRU backward
@njit(inline="always")
def _gru_bwd_mr(mr, tag, ntag, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg, dgg):
    _gb(mr, (tag, ntag, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg, dgg))


@njit(inline="always")
def _gru_bwd_rows(r0, r1, mrmax, tag, ntag, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh,
                  dgx, ldg):
    # dgh, dgx in PyTorch's gate order: gate g of the panel's units at g * ldg / 3
    """Rows [r0, r1) of one output panel (byte pointers at row 0 of the panel)."""
    ES = esize(tag)
    while r0 < r1:
        mr = min(mrmax, r1 - r0)
        _gru_bwd_mr(mr, tag, ntag, a + ES * r0 * lda, lda, w, K, dy + ES * r0 * ldh, ldh,
                    act + ES * r0 * ldact, ldact, hp + ES * r0 * ldh, dd + ES * r0 * ldh,
                    dgh + ES * r0 * ldg, dgx + ES * r0 * ldg, ldg, ldg // 3)
        r0 += mr


@njit(inline="always")
def _gru_bwd_panel(nv, lo, nprod, nb, mrmax, tag, a, GH, wq, dy, Hp, act, GA, hp, dd, dgh,
                   dgx):
    # rows active at step s+1 get dh through U (K = 3*Hp); the rest start here (K = 0):
    # one inlined call site per panel width
    for part in range(2):
        r0 = lo if part == 0 else nprod
        r1 = nprod if part == 0 else nb
        K = GH if part == 0 else 0
        if nv == 4:
            _gru_bwd_rows(r0, r1, mrmax, tag, (0, 0, 0, 0), a, GH, wq, K, dy, Hp, act, GA, hp,
                          dd, dgh, dgx, GH)
        elif nv == 3:
            _gru_bwd_rows(r0, r1, mrmax, tag, (0, 0, 0), a, GH, wq, K, dy, Hp, act, GA, hp,
                          dd, dgh, dgx, GH)
        elif nv == 2:
            _gru_bwd_rows(r0, r1, mrmax, tag, (0, 0), a, GH, wq, K, dy, Hp, act, GA, hp,
                          dd, dgh, dgx, GH)
        else:
            _gru_bwd_rows(r0, r1, mrmax, tag, (0,), a, GH, wq, K, dy, Hp, act, GA, hp,
                          dd, dgh, dgx, GH)


@njit(inline="always")
def _gru_bwd_step_panel(s, q, tid, Q, args, opt):
    """Step ``s``, output panel ``q`` of :func:`gru_bwd_kernel`."""
    (tag, n, B, Hp, GA, nvb, ubp, ghp, gxp, ap, hsp, dyp, ddp, nact, mrmax, rlo, rhi) = args
    ES = esize(tag)
    GH = 3 * Hp
    VW = len(tag)
    NB = nvb * VW
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = ghp + ES * (s + 1) * B * GH
    j0 = q * NB
    nv = min(NB, Hp - j0) // VW
    _gru_bwd_panel(nv, rlo, nprod, nb, mrmax, tag, a, GH, ubp + ES * q * GH * NB,
                   dyp + ES * (s * B * Hp + j0), Hp, ap + ES * (s * B * GA + 4 * j0), GA,
                   hsp + ES * (s * B * Hp + j0), ddp + ES * j0,
                   ghp + ES * (s * B * GH + j0), gxp + ES * (s * B * GH + j0))


@njit(**JIT_OPTIONS)
def gru_bwd_kernel(tag, act, hs, ub, nvb, dy, dd, dgh, dgx, nact, ctl, tid, nthr, mrmax, rlo, rhi):
    # act: [n,B,4*Hp] r, z, n, U_n h + b_hn (per panel);  hs: [n+1,B,Hp] (hs[s] = h before s)
    # ub: flat packed U for dh = dgh U: output panel q (units [q*NB, q*NB+w),
    #     NB = nvb*VW, w = min(NB, Hp - q*NB)) at offset q*3*Hp*NB, [3*Hp][w]
    # dy: [n,B,Hp];  dd: [B,Hp] carry (in: dL/dh_n, out: z dh of step 0)
    # dgh, dgx: [n,B,3*Hp] out, (dr, dz, dn r) and (dr, dz, dn) in PyTorch's gate order
    #     (column g*Hp + u; rows >= nact[s] untouched), so the weight gradients come out
    #     in PyTorch's layout;  nact: [n];  ctl: [Q+1] claim counters, then done
    n, B, GA = act.shape
    Hp = dy.shape[2]
    NB = nvb * len(tag)
    args = (tag, n, B, Hp, GA, nvb, ub.ctypes.data, dgh.ctypes.data, dgx.ctypes.data,
            act.ctypes.data, hs.ctypes.data, dy.ctypes.data, dd.ctypes.data, nact, mrmax, rlo,
            rhi)
    return panel_steps(n, (Hp + NB - 1) // NB, True, ctl, tid, nthr, _gru_bwd_step_panel, args,
                        None)


# --------------------------------------------------------------------------- RNN forward
@njit(inline="always")
def _rnn_fwd_mr(mr, tag, ntag, x, ldx, h, ldh, w, I, H, bias, y, relu):
    _rf(mr, (tag, ntag, x, ldx, h, ldh, w, I, H, bias, y, relu))


@njit(inline="always")
def _rnn_fwd_rows(r0, nb, mrmax, tag, ntag, x, I, h, Hp, w, bias, y, relu):
    ES = esize(tag)
    while r0 < nb:
        mr = min(mrmax, nb - r0)
        _rnn_fwd_mr(mr, tag, ntag, x + ES * r0 * I, I, h + ES * r0 * Hp, Hp, w, I, Hp, bias,
                    y + ES * r0 * Hp, relu)
        r0 += mr


@njit(inline="always")
def _rnn_fwd_panel(s, q, tid, Q, args, opt):
    """Step ``s``, panel ``q`` of :func:`rnn_fwd_kernel`."""
    (tag, xp, B, I, Hp, nvb, upp, bp, hsp, nact, relu, mrmax, rlo, rhi) = args
    ES = esize(tag)
    VW = len(tag)
    NB = nvb * VW
    KW = (I + Hp) * NB
    nb = min(nact[s], rhi)
    hp = hsp + ES * s * B * Hp
    yp = hp + ES * B * Hp
    xsp = xp + ES * s * B * I
    j0 = q * NB
    nv = min(NB, Hp - j0) // VW
    wq = upp + ES * q * KW
    if nv == 4:
        _rnn_fwd_rows(rlo, nb, mrmax, tag, (0, 0, 0, 0), xsp, I, hp, Hp, wq, bp + ES * j0,
                      yp + ES * j0, relu)
    elif nv == 3:
        _rnn_fwd_rows(rlo, nb, mrmax, tag, (0, 0, 0), xsp, I, hp, Hp, wq, bp + ES * j0,
                      yp + ES * j0, relu)
    elif nv == 2:
        _rnn_fwd_rows(rlo, nb, mrmax, tag, (0, 0), xsp, I, hp, Hp, wq, bp + ES * j0,
                      yp + ES * j0, relu)
    else:
        _rnn_fwd_rows(rlo, nb, mrmax, tag, (0,), xsp, I, hp, Hp, wq, bp + ES * j0,
                      yp + ES * j0, relu)


@njit(**JIT_OPTIONS)
def rnn_fwd_kernel(tag, xs, bias, up, nvb, hs, nact, relu, ctl, tid, nthr, mrmax, rlo, rhi):
    # xs: [n,B,I] step order;  bias: [Hp] b_ih + b_hh
    # up: flat, panel q (units [q*NB, q*NB+w), NB = nvb*VW) at offset q*(I+Hp)*NB:
    #     [I+Hp][w], W_ihᵀ rows then W_hhᵀ rows
    # hs: [n+1,B,Hp] hs[0] = h0, hs[s+1] = h after step s;  nact: [n];  ctl: [Q+1]
    n, B, I = xs.shape
    Hp = hs.shape[2]
    NB = nvb * len(tag)
    args = (tag, xs.ctypes.data, B, I, Hp, nvb, up.ctypes.data, bias.ctypes.data,
            hs.ctypes.data, nact, relu, mrmax, rlo, rhi)
    return panel_steps(n, (Hp + NB - 1) // NB, False, ctl, tid, nthr, _rnn_fwd_panel, args,
                        None)


# --------------------------------------------------------------------------- RNN backward
@njit(inline="always")
def _rnn_bwd_mr(mr, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, hn, dg, relu):
    _rb(mr, (tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, hn, dg, relu))


@njit(inline="always")
def _rnn_bwd_rows(r0, r1, mrmax, tag, ntag, a, w, K, dhx, lddhx, dy, Hp, hn, dg, relu):
    """Rows [r0, r1) of one output panel; every operand has row stride Hp except dhx."""
    ES = esize(tag)
    while r0 < r1:
        mr = min(mrmax, r1 - r0)
        _rnn_bwd_mr(mr, tag, ntag, a + ES * r0 * Hp, Hp, w, K, dhx + ES * r0 * lddhx, lddhx,
                    dy + ES * r0 * Hp, Hp, hn + ES * r0 * Hp, dg + ES * r0 * Hp, relu)
        r0 += mr


@njit(inline="always")
def _rnn_bwd_panel(nv, lo, nprod, nb, mrmax, tag, a, wq, Hp, zp, dhq, dyq, hnq, dgq, relu):
    # rows active at step s+1 get dh through U; the rest start here with dL/dh_n:
    # one inlined call site per panel width
    for part in range(2):
        r0 = lo if part == 0 else nprod
        r1 = nprod if part == 0 else nb
        K = Hp if part == 0 else 0
        dhx = zp if part == 0 else dhq
        lddhx = 0 if part == 0 else Hp
        if nv == 4:
            _rnn_bwd_rows(r0, r1, mrmax, tag, (0, 0, 0, 0), a, wq, K, dhx, lddhx, dyq, Hp, hnq,
                          dgq, relu)
        elif nv == 3:
            _rnn_bwd_rows(r0, r1, mrmax, tag, (0, 0, 0), a, wq, K, dhx, lddhx, dyq, Hp, hnq,
                          dgq, relu)
        elif nv == 2:
            _rnn_bwd_rows(r0, r1, mrmax, tag, (0, 0), a, wq, K, dhx, lddhx, dyq, Hp, hnq,
                          dgq, relu)
        else:
            _rnn_bwd_rows(r0, r1, mrmax, tag, (0,), a, wq, K, dhx, lddhx, dyq, Hp, hnq,
                          dgq, relu)


@njit(inline="always")
def _rnn_bwd_step_panel(s, q, tid, Q, args, opt):
    """Step ``s``, output panel ``q`` of :func:`rnn_bwd_kernel`."""
    (tag, n, B, Hp, nvb, ubp, gp, hsp, dyp, dhp, zp, nact, relu, mrmax, rlo, rhi) = args
    ES = esize(tag)
    NB = nvb * len(tag)
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = gp + ES * (s + 1) * B * Hp
    j0 = q * NB
    nv = min(NB, Hp - j0) // len(tag)
    _rnn_bwd_panel(nv, rlo, nprod, nb, mrmax, tag, a, ubp + ES * q * Hp * NB, Hp, zp,
                   dhp + ES * j0, dyp + ES * (s * B * Hp + j0),
                   hsp + ES * ((s + 1) * B * Hp + j0), gp + ES * (s * B * Hp + j0), relu)


@njit(**JIT_OPTIONS)
def rnn_bwd_kernel(tag, hs, ub, nvb, dy, dhn, zrow, dg, nact, relu, ctl, tid, nthr, mrmax, rlo, rhi):
    # hs: [n+1,B,Hp] (hs[s+1] = h' of step s);  ub: U packed by output panels, [Hp][w] each
    # dy: [n,B,Hp];  dhn: [B,Hp] dL/dh_n;  zrow: [>= NB] zeros
    # dg: [n,B,Hp] out, pre-activation gradients (rows >= nact[s] untouched)
    n, B, Hp = dy.shape
    NB = nvb * len(tag)
    args = (tag, n, B, Hp, nvb, ub.ctypes.data, dg.ctypes.data, hs.ctypes.data, dy.ctypes.data,
            dhn.ctypes.data, zrow.ctypes.data, nact, relu, mrmax, rlo, rhi)
    return panel_steps(n, (Hp + NB - 1) // NB, True, ctl, tid, nthr, _rnn_bwd_step_panel, args,
                        None)
