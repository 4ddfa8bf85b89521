"""The packed GRU (reset_after) and tanh/ReLU RNN in the bfloat16 compute mode:
:func:`gru_forward`, :func:`rnn_forward` and :func:`backward`, one layer and
direction, float32 parameters and states, bf16 operands of the products.

The semantics are :mod:`fastrnn.bf16`'s and the reference's bf16 code
(:mod:`fastrnn.reference`): rounded to bf16 are ``W_ih``, ``W_hh``, ``x_t`` and
``h_{t-1}`` as it enters ``U h``; backward the recurrent-side gate gradients
(the GRU's ``(dr, dz, dn r)``, the RNN's ``da``) as they enter ``· W_hh`` and
``dW_hh``, the input-side ones (``(dr, dz, dn)``) as they enter ``· W_ih`` and
``dW_ih``, and ``x``, ``h_{t-1}`` in the weight-gradient sums. The GRU's
``r (U_n h + b_hn)``, the gate math, the states, ``y``, ``h_n``, the bias
gradients and everything saved for backward stay float32.

The design is the bf16 LSTM's (:mod:`fastrnn.kernels.packed_bf16`): the weights
packed once per call in bf16 k pairs, ``x`` converted once per call into the
bf16 operand rows ``[x_t, h_{t-1}]`` (``[n+1,B,Ip+Hp]``, ``Ip`` = ``I`` rounded
up to even; inference runs chunks of steps through a small one), the forward
epilogue writing ``h_t`` float32 (the state) and rounded (the next step's
operand), the backward epilogue writing the recurrent-side gate gradients
float32 and rounded; the GEMMs after the loop run in float32 on the rounded
operands widened back (exact products: the same numbers as bf16 GEMMs up to
the order of the float32 sums). The micro-kernels
(:mod:`fastrnn.kernels.bf16_simd_cells`) run ``vdpbf16ps`` (``native``) or the
emulated float32 products, one source, chosen by the tag; with ``amx`` the time
loops run :mod:`fastrnn.kernels.amx_bf16_cells`' tile products instead (the
operand widths padded to 32 k, the operand buffers 16 rows taller).

Layout (as the float32 packed GRU/RNN, :mod:`fastrnn.kernels.packed_gru_rnn`,
``VW = 16``, ``Hp`` = ``H`` rounded up to 16, ``P = Hp/16``): the GRU's
forward panel ``p`` is ``[(Ip+Hp)/2][3*16]`` words (gates ``[r z n]`` of its 16
units, the input pairs first); the RNN's forward panels and both cells'
backward panels are ``nv`` vectors wide, ``nv`` the largest of 4, 3, 2, 1 that
divides ``P`` (every panel the same width: one compiled variant per call).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastrnn.kernels.bf16_simd_cells import (BF16_MR, EMULATED, NATIVE, VW, uk_gru_bwd,
                                             uk_gru_fwd, uk_rnn_bwd, uk_rnn_fwd)
from fastrnn.kernels.cpu_settings import JIT_OPTIONS, settings
from fastrnn.kernels.packed_bf16 import from_bits, to_bits
from fastrnn.kernels.plan import Plan, Tasks, nthreads
from fastrnn.kernels.schedule import Schedule, infer_chunk
from fastrnn.kernels.simd import rows_switch
from fastrnn.kernels.sync import panel_steps
from fastrnn.kernels.task_gemm import DW_TASKS, splits

__all__ = ["gru_forward", "rnn_forward", "backward", "BF16CellCache"]

#: the micro-kernels by row count (1-6), one switch each
_gf, _gb, _rf, _rb = (rows_switch(k[:7]) for k in (uk_gru_fwd, uk_gru_bwd, uk_rnn_fwd, uk_rnn_bwd))


# --------------------------------------------------------------------------- GRU forward
@njit(inline="always")
def _gru_fwd_mr(mr, tag, x, ldx, h, ldh, w, KI, KH, bias, hin, y, ldy, hb, ldhb, act, ldact,
                training):
    _gf(mr, (tag, x, ldx, h, ldh, w, KI, KH, bias, hin, y, ldy, hb, ldhb, act, ldact, training))


@njit(inline="always")
def _gru_fwd_panel(s, p, tid, P, args, opt):
    """Step ``s``, panel ``p`` of :func:`gru_fwd_kernel` (byte pointers in ``args``)."""
    (tag, xhp, ld, Ip, B, KI, KH, Hp, upp, bp, hsp, ap, nact, training, mrmax, rlo, rhi) = args
    GA = 4 * Hp
    xsp = xhp + 2 * s * B * ld
    hout = xhp + 2 * ((s + 1) * B * ld + Ip)
    hin = hsp + 4 * s * B * Hp
    yp = hin + 4 * B * Hp
    asp = ap + 4 * s * B * GA
    wp = upp + 4 * p * (KI + KH) * 3 * VW
    u0 = p * VW
    hi = min(nact[s], rhi)
    r0 = rlo
    while r0 < hi:
        mr = min(mrmax, hi - r0)
        co = 4 * (r0 * Hp + u0)
        _gru_fwd_mr(mr, tag, xsp + 2 * r0 * ld, ld, xsp + 2 * (r0 * ld + Ip), ld, wp, KI, KH,
                    bp + 4 * 4 * u0, hin + co, yp + co, Hp, hout + 2 * (r0 * ld + u0), ld,
                    asp + 4 * (r0 * GA + 4 * u0), GA, training)
        r0 += mr


@njit(**JIT_OPTIONS)
def gru_fwd_kernel(tag, xh, Ip, n, KI, KH, bias, up, hs, nact, training, act, ctl, tid, nthr,
                   mrmax, rlo, rhi):
    # xh: [>= n+1,B,Ip+Hp] uint16 bf16 operand rows [x_s, h_{s-1}] (row 0's h in;
    #     step s writes the h part of row s+1)
    # bias: [P,4,VW] b_ir + b_hr, b_iz + b_hz, b_in, b_hn;  up: [P,(Ip+Hp)/2,3*VW,2] uint16
    # hs: [n+1,B,Hp] float32 states (hs[0] in; step s writes hs[s+1])
    # act: [n,B,4*Hp] out in training (r, z, n, U_n h + b_hn per panel);  nact: [n]
    # ctl: [P+1] claim counters, then done;  rlo, rhi: this call's rows
    B, ld = xh.shape[1], xh.shape[2]
    Hp = hs.shape[2]
    args = (tag, xh.ctypes.data, ld, Ip, B, KI, KH, Hp, up.ctypes.data, bias.ctypes.data,
            hs.ctypes.data, act.ctypes.data, nact, training, mrmax, rlo, rhi)
    return panel_steps(n, Hp // VW, False, ctl, tid, nthr, _gru_fwd_panel, args, None)


# --------------------------------------------------------------------------- GRU backward
@njit(inline="always")
def _gru_bwd_mr(mr, tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dgh, dgx, dghb, dgxb,
                ldg, dgg):
    _gb(mr, (tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dgh, dgx, dghb, dgxb, ldg,
             dgg))


@njit(inline="always")
def _gru_bwd_panel(s, q, tid, Q, args, ntag):
    """Step ``s``, output panel ``q`` of :func:`gru_bwd_kernel`."""
    (tag, n, B, Hp, ubp, ghp, gxp, gbp, gxbp, ap, hsp, dyp, ddp, nact, mrmax, rlo, rhi) = args
    GH = 3 * Hp
    GA = 4 * Hp
    NB = len(ntag) * VW
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = gbp + 2 * (s + 1) * B * GH          # the rounded (dr, dz, dn r) of step s+1
    j0 = q * NB
    wq = ubp + 2 * q * GH * NB
    dyq = dyp + 4 * (s * B * Hp + j0)
    aq = ap + 4 * (s * B * GA + 4 * j0)
    hpq = hsp + 4 * (s * B * Hp + j0)
    ddq = ddp + 4 * j0
    go = s * B * GH + j0
    # rows active at step s+1 get dh through U; the rest start here (dd = dL/dh_n)
    for part in range(2):
        r0 = rlo if part == 0 else nprod
        r1 = nprod if part == 0 else nb
        KK = GH // 2 if part == 0 else 0
        while r0 < r1:
            mr = min(mrmax, r1 - r0)
            _gru_bwd_mr(mr, tag, ntag, a + 2 * r0 * GH, GH, wq, KK, dyq + 4 * r0 * Hp, Hp,
                        aq + 4 * r0 * GA, GA, hpq + 4 * r0 * Hp, ddq + 4 * r0 * Hp,
                        ghp + 4 * (go + r0 * GH), gxp + 4 * (go + r0 * GH),
                        gbp + 2 * (go + r0 * GH), gxbp + 2 * (go + r0 * GH), GH, Hp)
            r0 += mr


@njit(**JIT_OPTIONS)
def gru_bwd_kernel(tag, ntag, act, hs, ub, dy, dd, dgh, dgx, dghb, dgxb, nact, ctl, tid, nthr,
                   mrmax, rlo, rhi):
    # act: [n,B,4*Hp];  hs: [n+1,B,Hp] (hs[s] = h before step s)
    # ub: uint16 U in bf16 pairs by output panels of NB = len(ntag)*VW units:
    #     panel q at element q*3*Hp*NB, [3*Hp/2][NB][2]
    # dy: [n,B,Hp];  dd: [B,Hp] carry (in: dL/dh_n, out: z dh of step 0)
    # dgh, dgx: [n,B,3*Hp] float32 out (dr, dz, dn r) and (dr, dz, dn), PyTorch's gate
    #     order (column g*Hp + u);  dghb, dgxb: [n,B,3*Hp] uint16 out, dgh, dgx rounded
    n, B, _ = act.shape
    Hp = dy.shape[2]
    NB = len(ntag) * VW
    args = (tag, n, B, Hp, ub.ctypes.data, dgh.ctypes.data, dgx.ctypes.data, dghb.ctypes.data,
            dgxb.ctypes.data, act.ctypes.data, hs.ctypes.data, dy.ctypes.data, dd.ctypes.data,
            nact, mrmax, rlo, rhi)
    return panel_steps(n, Hp // NB, True, ctl, tid, nthr, _gru_bwd_panel, args, ntag)


# --------------------------------------------------------------------------- RNN forward
@njit(inline="always")
def _rnn_fwd_mr(mr, tag, ntag, x, ldx, h, ldh, w, KI, KH, bias, y, ldy, hb, ldhb, relu):
    _rf(mr, (tag, ntag, x, ldx, h, ldh, w, KI, KH, bias, y, ldy, hb, ldhb, relu))


@njit(inline="always")
def _rnn_fwd_panel(s, q, tid, Q, args, ntag):
    """Step ``s``, panel ``q`` of :func:`rnn_fwd_kernel`."""
    (tag, xhp, ld, Ip, B, KI, KH, Hp, upp, bp, hsp, nact, relu, mrmax, rlo, rhi) = args
    NB = len(ntag) * VW
    j0 = q * NB
    xsp = xhp + 2 * s * B * ld
    hout = xhp + 2 * ((s + 1) * B * ld + Ip + j0)
    yp = hsp + 4 * ((s + 1) * B * Hp + j0)
    wq = upp + 4 * q * (KI + KH) * NB
    hi = min(nact[s], rhi)
    r0 = rlo
    while r0 < hi:
        mr = min(mrmax, hi - r0)
        _rnn_fwd_mr(mr, tag, ntag, xsp + 2 * r0 * ld, ld, xsp + 2 * (r0 * ld + Ip), ld, wq, KI,
                    KH, bp + 4 * j0, yp + 4 * r0 * Hp, Hp, hout + 2 * r0 * ld, ld, relu)
        r0 += mr


@njit(**JIT_OPTIONS)
def rnn_fwd_kernel(tag, ntag, xh, Ip, n, KI, KH, bias, up, hs, nact, relu, ctl, tid, nthr,
                   mrmax, rlo, rhi):
    # xh, hs, nact, ctl: as gru_fwd_kernel;  bias: [Hp] b_ih + b_hh
    # up: uint16 panels of NB = len(ntag)*VW units, panel q at element q*(Ip+Hp)*NB:
    #     [(Ip+Hp)/2][NB][2], the input pairs first
    B, ld = xh.shape[1], xh.shape[2]
    Hp = hs.shape[2]
    args = (tag, xh.ctypes.data, ld, Ip, B, KI, KH, Hp, up.ctypes.data, bias.ctypes.data,
            hs.ctypes.data, nact, relu, mrmax, rlo, rhi)
    return panel_steps(n, Hp // (len(ntag) * VW), False, ctl, tid, nthr, _rnn_fwd_panel, args,
                       ntag)


# --------------------------------------------------------------------------- RNN backward
@njit(inline="always")
def _rnn_bwd_mr(mr, tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, hn, dg, dgb, relu):
    _rb(mr, (tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, hn, dg, dgb, relu))


@njit(inline="always")
def _rnn_bwd_panel(s, q, tid, Q, args, ntag):
    """Step ``s``, output panel ``q`` of :func:`rnn_bwd_kernel`."""
    (tag, n, B, Hp, ubp, gp, gbp, hsp, dyp, dhp, zp, nact, relu, mrmax, rlo, rhi) = args
    NB = len(ntag) * VW
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = gbp + 2 * (s + 1) * B * Hp
    j0 = q * NB
    wq = ubp + 2 * q * Hp * NB
    o = s * B * Hp + j0
    hnq = hsp + 4 * ((s + 1) * B * Hp + j0)
    for part in range(2):
        r0 = rlo if part == 0 else nprod
        r1 = nprod if part == 0 else nb
        KK = Hp // 2 if part == 0 else 0
        dhx = zp if part == 0 else dhp + 4 * j0
        lddhx = 0 if part == 0 else Hp
        while r0 < r1:
            mr = min(mrmax, r1 - r0)
            ro = r0 * Hp
            _rnn_bwd_mr(mr, tag, ntag, a + 2 * ro, Hp, wq, KK, dhx + 4 * r0 * lddhx, lddhx,
                        dyp + 4 * (o + ro), Hp, hnq + 4 * ro, gp + 4 * (o + ro),
                        gbp + 2 * (o + ro), relu)
            r0 += mr


@njit(**JIT_OPTIONS)
def rnn_bwd_kernel(tag, ntag, hs, ub, dy, dhn, zrow, dg, dgb, nact, relu, ctl, tid, nthr, mrmax,
                   rlo, rhi):
    # hs: [n+1,B,Hp] (hs[s+1] = h' of step s);  ub: U by output panels, [Hp/2][NB][2] each
    # dy: [n,B,Hp];  dhn: [B,Hp] dL/dh_n;  zrow: [>= NB] zeros
    # dg: [n,B,Hp] float32 out, the pre-activation gradients;  dgb: [n,B,Hp] uint16 out
    n, B, Hp = dy.shape
    NB = len(ntag) * VW
    args = (tag, n, B, Hp, ub.ctypes.data, dg.ctypes.data, dgb.ctypes.data, hs.ctypes.data,
            dy.ctypes.data, dhn.ctypes.data, zrow.ctypes.data, nact, relu, mrmax, rlo, rhi)
    return panel_steps(n, Hp // NB, True, ctl, tid, nthr, _rnn_bwd_panel, args, ntag)


# --------------------------------------------------------------------------- packing
def _nv(P):
    """Vectors per panel: the largest of 4, 3, 2, 1 that divides ``P``."""
    return next(v for v in (4, 3, 2, 1) if P % v == 0)


def _pairs(m, nb):
    """``m`` [K,N] float32 (K even, N a multiple of ``nb``) -> uint16 bf16 panels
    ``[N/nb][K/2][nb][2]``: the word (kk, j) of a panel holds rows 2kk (low half)
    and 2kk+1 of column j."""
    K, N = m.shape
    b = to_bits(m).reshape(K // 2, 2, N // nb, nb)
    return np.ascontiguousarray(b.transpose(2, 0, 3, 1))


class _Packed:
    __slots__ = ("G", "H", "Hp", "I", "Ip", "Kh", "GHp", "nvf", "nvb", "up", "ub", "bias",
                 "w_ih", "w_hh")


def _pack(w_ih, w_hh, b_ih, b_hh, G, backward, kmult=2):
    """The bf16 panels of one call (see the module doc; the x, h and (backward) gate
    widths ``Ip``, ``Kh``, ``GHp`` padded with zeros to multiples of ``kmult``: 2,
    or 32 for AMX) and, with ``backward``, ``U`` by output panels and the rounded
    ``W_ih``, ``W_hh`` (float32 values, PyTorch's gate order, units padded) for the
    GEMMs after the loop."""
    I, H = w_ih.shape[1], w_hh.shape[1]
    Hp = -(-H // VW) * VW
    P = Hp // VW
    Ip = -(-I // kmult) * kmult
    Kh = -(-Hp // kmult) * kmult
    K = Ip + Kh
    pk = _Packed()
    pk.G, pk.H, pk.Hp, pk.I, pk.Ip, pk.Kh = G, H, Hp, I, Ip, Kh
    pk.GHp = -(-G * Hp // kmult) * kmult
    wi = np.zeros((G, Hp, I), np.float32)
    wi[:, :H] = w_ih.reshape(G, H, I)
    wh = np.zeros((G, Hp, Hp), np.float32)
    wh[:, :H, :H] = w_hh.reshape(G, H, H)
    m = np.zeros((K, G, Hp), np.float32)              # [W_ih 0 W_hh 0]ᵀ, gate-major columns
    m[:I] = wi.transpose(2, 0, 1)
    m[Ip:Ip + Hp] = wh.transpose(2, 0, 1)
    if G == 3:       # panel p: the [r z n] columns of its 16 units
        pk.nvf = 1
        m = np.ascontiguousarray(m.reshape(K, 3, P, VW).transpose(0, 2, 1, 3))
        pk.up = _pairs(m.reshape(K, 3 * Hp), 3 * VW)
        bias = np.zeros((4, Hp), np.float32)
        bias[:2, :H] = (b_ih + b_hh).reshape(3, H)[:2]
        bias[2, :H] = b_ih[2 * H:]
        bias[3, :H] = b_hh[2 * H:]
        pk.bias = np.ascontiguousarray(bias.reshape(4, P, VW).transpose(1, 0, 2))
    else:
        pk.nvf = _nv(P)
        pk.up = _pairs(m.reshape(K, Hp), pk.nvf * VW)
        pk.bias = np.zeros(Hp, np.float32)
        pk.bias[:H] = b_ih + b_hh
    pk.nvb = _nv(P)
    pk.ub = pk.w_ih = pk.w_hh = None
    if backward:
        whr = wh.reshape(G * Hp, Hp)
        u = np.zeros((pk.GHp, Hp), np.float32)
        u[:G * Hp] = whr
        pk.ub = _pairs(u, pk.nvb * VW)                # dh = dg U by output panels
        pk.w_ih = from_bits(to_bits(wi.reshape(G * Hp, I)))
        pk.w_hh = from_bits(to_bits(whr))
    return pk


# --------------------------------------------------------------------------- drivers
class BF16CellCache:
    """What :func:`backward` needs from a training :func:`gru_forward` / :func:`rnn_forward`."""

    __slots__ = ("relu", "sched", "pk", "xh", "act", "hs", "flops", "plan", "tag", "amx")


def _forward(x, h0, pk, lens, reverse, training, max_threads, native, amx, run):
    """The driver of both cells: schedule, operand rows, states, thread plan;
    ``run(plan, xh, m, hs, nact, act)`` runs ``m`` steps (``hs`` from the state
    before them). Returns ``(y, h_n, cache)``."""
    T, B, I = x.shape
    H, Hp, Ip, Kh, G = pk.H, pk.Hp, pk.Ip, pk.Kh, pk.G
    sched = Schedule(lens, T, reverse)
    n = sched.n
    lens_sorted = sched.nact_lengths()
    step_flops = 2.0 * B * G * H * (H + I)
    panels = Hp // (VW * pk.nvf)
    plan = Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), panels,
                pk.up.nbytes, lens_sorted)
    # xh: [C+1,B,Ip+Hp] bf16 rows [x_t, h_{t-1}] of C steps (training: every step's,
    # the weight gradients' operands; inference: chunks of C steps through one
    # small buffer, its workspace beyond x and y O(B (I+H)) whatever T is)
    # AMX reads tiles of 16 rows from any row a thread starts at: 16 rows more
    C = n if training else max(1, min(n, infer_chunk(B)))
    xh = np.zeros((C + 1, B + 16 if amx else B, Ip + Kh), np.uint16)
    xs = np.zeros((C, B, I), np.float32)
    padded = sched.tix is not None
    hs = (np.zeros if padded else np.empty)((n + 1, B, Hp), np.float32)
    hs[0] = sched.sort_rows(h0, Hp)
    xh[0, :B, Ip:Ip + Hp] = to_bits(hs[0])
    act = (np.empty((n, B, 4 * Hp), np.float32) if training and G == 3
           else np.empty((1, 1, 1), np.float32))
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        m = s1 - s0
        if s0:
            xh[0, :, Ip:] = xh[C, :, Ip:]                     # h after the last chunk
        sched.gather_into(x, xs[:m], s0, s1)
        xh[:m, :B, :I] = to_bits(xs[:m])
        run(plan, xh, m, hs[s0:s1 + 1], sched.nact[s0:s1],
            act[s0:s1] if training and G == 3 else act)
    ys = hs[1:]
    y = sched.scatter(ys, H, np.float32)
    h_n = sched.unsort_rows(ys[lens_sorted - 1, np.arange(B)], H)
    if not training:
        return y, h_n, None
    cache = BF16CellCache()
    cache.sched, cache.pk, cache.xh, cache.act, cache.hs = sched, pk, xh[:, :B], act, hs
    cache.flops = 2.0 * B * G * H * H
    cache.plan, cache.tag, cache.amx = plan, NATIVE if native else EMULATED, amx
    return y, h_n, cache


def _amx():
    from fastrnn.kernels import amx_bf16, amx_bf16_cells
    if not amx_bf16.available():      # a tile instruction without them is SIGILL
        raise ValueError("amx=True: this CPU or process may not use AMX-BF16 tiles "
                         "(amx_bf16.available() is False)")
    return amx_bf16_cells


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads,
                native=True, amx=False):
    """GRU (reset_after=True) in the bf16 compute mode, one layer and direction:
    ``(y, h_n, cache)``, float32 (every array argument float32; ``lens`` [B] int64
    in [1, T]; ``cache`` None unless ``training``); ``native`` False runs the
    emulated products (any AVX-512 CPU); ``amx`` the time loops' products on AMX
    tiles (:mod:`fastrnn.kernels.amx_bf16_cells`; the CPU must have AMX-BF16)."""
    ax = _amx() if amx else None
    pk = _pack(w_ih, w_hh, b_ih, b_hh, 3, training, 32 if amx else 2)
    tag = NATIVE if native else EMULATED
    P = pk.Hp // VW
    KI, KH = pk.Ip // 2, pk.Kh // 2
    training = bool(training)

    def run(plan, xh, m, hs, nact, act):
        ctl = np.zeros(P + 1, np.int64)
        if amx:
            plan.launch(ax.gru_fwd_amx_kernel, lambda tid, nthr, r0, r1: (
                xh, pk.Ip, m, KI // 16, KH // 16, pk.bias, pk.up, hs, nact, training, act, ctl,
                tid, nthr, r0, r1))
            return
        plan.launch(gru_fwd_kernel, lambda tid, nthr, r0, r1: (
            tag, xh, pk.Ip, m, KI, KH, pk.bias, pk.up, hs, nact, training, act, ctl, tid, nthr,
            BF16_MR, r0, r1))
    y, h_n, cache = _forward(x, h0, pk, lens, reverse, training, max_threads, native, amx, run)
    if cache is not None:
        cache.relu = False
    return y, h_n, cache


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse, relu, training, max_threads,
                native=True, amx=False):
    """tanh (``relu=False``) or ReLU RNN in the bf16 compute mode: as :func:`gru_forward`."""
    ax = _amx() if amx else None
    pk = _pack(w_ih, w_hh, b_ih, b_hh, 1, training, 32 if amx else 2)
    tag = NATIVE if native else EMULATED
    ntag = (0,) * pk.nvf
    Q = pk.Hp // (VW * pk.nvf)
    KI, KH = pk.Ip // 2, pk.Kh // 2
    relu = bool(relu)

    def run(plan, xh, m, hs, nact, act):
        ctl = np.zeros(Q + 1, np.int64)
        if amx:
            plan.launch(ax.rnn_fwd_amx_kernel, lambda tid, nthr, r0, r1: (
                ntag, xh, pk.Ip, m, KI // 16, KH // 16, pk.bias, pk.up, hs, nact, relu, ctl,
                tid, nthr, r0, r1))
            return
        plan.launch(rnn_fwd_kernel, lambda tid, nthr, r0, r1: (
            tag, ntag, xh, pk.Ip, m, KI, KH, pk.bias, pk.up, hs, nact, relu, ctl, tid, nthr,
            BF16_MR, r0, r1))
    y, h_n, cache = _forward(x, h0, pk, lens, reverse, training, max_threads, native, amx, run)
    if cache is not None:
        cache.relu = relu
    return y, h_n, cache


def backward(cache, dy, dh_n, max_threads, blas_threads):
    """Gradients from a training forward's cache: ``(dx, dh0, dw_ih, dw_hh, db_ih,
    db_hh)`` in PyTorch's layout (``blas_threads`` as in
    :func:`fastrnn.kernels.packed.lstm_backward`, called with 0)."""
    sched, pk = cache.sched, cache.pk
    n, B = sched.n, sched.B
    G, H, Hp, I, Ip = pk.G, pk.H, pk.Hp, pk.I, pk.Ip
    GH = G * Hp
    f32 = np.float32
    ntag = (0,) * pk.nvb
    Q = Hp // (VW * pk.nvb)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < settings.two_thread_step_flops):
        plan = Plan(1, B, 0, 0, 1, 0, None)             # too few output panels to share
    gthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, f32), Hp)
    dhn = sched.sort_rows(np.asarray(dh_n, f32), Hp)
    zero = np.zeros if sched.tix is not None else np.empty
    ctl = np.zeros(Q + 1, np.int64)
    hs = cache.hs
    dgh = zero((n, B, GH), f32)
    if cache.amx:       # the products read tiles of 16 rows from any row: 16 rows more
        from fastrnn.kernels import amx_bf16_cells as ax
        dgb = np.zeros((n, B + 16, pk.GHp), np.uint16)
    else:
        dgb = zero((n, B, GH), np.uint16)
    if G == 3:
        dgx = zero((n, B, GH), f32)
        dgxb = zero((n, B, GH), np.uint16)
        dd = dhn
        if cache.amx:
            plan.launch(ax.gru_bwd_amx_kernel, lambda tid, nthr, r0, r1: (
                ntag, cache.act, hs, pk.ub, dys, dd, dgh, dgx, dgb, dgxb, sched.nact, ctl, tid,
                nthr, r0, r1))
        else:
            plan.launch(gru_bwd_kernel, lambda tid, nthr, r0, r1: (
                cache.tag, ntag, cache.act, hs, pk.ub, dys, dd, dgh, dgx, dgb, dgxb, sched.nact,
                ctl, tid, nthr, BF16_MR, r0, r1))
        dgxr = from_bits(dgxb).reshape(n * B, GH)
    else:
        dgx = dgh
        zrow = np.zeros(VW * pk.nvb, f32)
        if cache.amx:
            plan.launch(ax.rnn_bwd_amx_kernel, lambda tid, nthr, r0, r1: (
                ntag, hs, pk.ub, dys, dhn, zrow, dgh, dgb, sched.nact, cache.relu, ctl, tid,
                nthr, r0, r1))
        else:
            plan.launch(rnn_bwd_kernel, lambda tid, nthr, r0, r1: (
                cache.tag, ntag, hs, pk.ub, dys, dhn, zrow, dgh, dgb, sched.nact, cache.relu,
                ctl, tid, nthr, BF16_MR, r0, r1))
        dgxr = None
    dgb = dgb[:, :B, :GH]
    # after the loop: float32 GEMMs on the rounded operands (exact products)
    dghr = from_bits(dgb).reshape(n * B, GH)
    dgxr = dghr if dgxr is None else dgxr
    xr = from_bits(cache.xh[:n, :, :I]).reshape(n * B, I)
    hr = from_bits(cache.xh[:n, :, Ip:Ip + Hp]).reshape(n * B, Hp)
    dw_hh_p = np.empty((GH, Hp), f32)
    dw_ih_p = np.empty((GH, I), f32)
    dxs = np.empty((n * B, I), f32)
    dh0 = np.empty((B, Hp), f32)
    split = 2.0 * n * B * GH * (2 * I + Hp) >= settings.split_gemm_flops
    tasks = []
    for r0, r1 in splits(GH, DW_TASKS if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dghr[:, r0:r1].T, hr, out=dw_hh_p[r0:r1]))
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgxr[:, r0:r1].T, xr, out=dw_ih_p[r0:r1]))
    for r0, r1 in splits(n * B, min(4, max(1, n * B // 64)) if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgxr[r0:r1], pk.w_ih, out=dxs[r0:r1]))
    tasks.append(lambda: np.matmul(dghr[:B], pk.w_hh, out=dh0))
    Tasks(tasks).run(gthr if split else 1)
    if G == 3:
        dh0 += dd
    dbx = dgx.reshape(n * B, GH).sum(axis=0)
    dbh = dbx if dgx is dgh else dgh.reshape(n * B, GH).sum(axis=0)
    dx = sched.scatter(dxs.reshape(n, B, I), I, f32)
    dw_ih = np.ascontiguousarray(dw_ih_p.reshape(G, Hp, I)[:, :H]).reshape(G * H, I)
    dw_hh = np.ascontiguousarray(dw_hh_p.reshape(G, Hp, Hp)[:, :H, :H]).reshape(G * H, H)
    db_ih = np.ascontiguousarray(dbx.reshape(G, Hp)[:, :H]).reshape(G * H)
    db_hh = np.ascontiguousarray(dbh.reshape(G, Hp)[:, :H]).reshape(G * H)
    return dx, sched.unsort_rows(dh0, H), dw_ih, dw_hh, db_ih, db_hh
