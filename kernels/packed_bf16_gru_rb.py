"""The packed reset-before GRU (``reset_after=False``) in the bfloat16 compute mode:
:func:`gru_rb_forward` and :func:`gru_rb_backward`, one layer and direction,
float32 parameters and states, bf16 operands of the products.

The cell's step has two dependent recurrent products: ``n = tanh(W_n x + b_in +
U_n rd(r ⊙ h) + b_hn)`` needs the reset gate of every unit first. So each time
step runs as two half-steps of the panel loop (:func:`fastrnn.kernels.sync.panel_steps`
over ``2n`` half-steps, a barrier between them): (a) ``r``, ``z`` and ``W_n x +
b_in`` from the operand rows ``[x_t, h_{t-1}]`` (the x pairs against ``[r z n]``
of ``W_ih``, the h pairs against ``[r z]`` of ``W_hh``), writing ``r ⊙ h``
rounded; (b) ``n`` from ``rd(r ⊙ h) U_nᵀ``, then ``h'`` float32 and rounded.
Backward likewise: (x) ``dh = rd(dr, dz)_{t+1} U_rz + dy + carry``, then ``dn``,
``dz`` (float32 and rounded); (y) ``drh = rd(dn) U_n``, ``dr``, and the carry
``dh z + drh r``. The roundings are the reference's (:mod:`fastrnn.reference`):
``W``, ``x_t``, ``h_{t-1}``, ``r ⊙ h`` where they enter products; backward
``(dr, dz)``, ``dn`` where they enter products and both operands of the weight
gradient sums (``dW_hh``'s n rows take ``rd(dn)ᵀ rd(r ⊙ h)``).

Everything else is :mod:`fastrnn.kernels.packed_bf16_cells`' design (its
schedule, operand rows, inference chunks, GEMMs after the loop); the
micro-kernels are :mod:`fastrnn.kernels.bf16_simd_cells`' ``uk_rb_*``.
Layout (``VW = 16``, ``P = Hp/16``): forward panel ``p`` of half-step (a)
``[Ip/2][3*16]`` then ``[Hp/2][2*16]`` words, of (b) ``[Hp/2][16]``; saved
``act`` ``[n,B,3*Hp]`` (r, z, n per panel) and ``rhb`` ``[n,B,Hp]`` (rd(r h));
backward ``U_rz``, ``U_n`` by output panels of ``nv`` vectors.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastrnn.kernels.bf16_simd_cells import (BF16_MR, EMULATED, NATIVE, VW, uk_rb_bwd_x,
                                             uk_rb_bwd_y, uk_rb_fwd_a, uk_rb_fwd_b)
from fastrnn.kernels.cpu_settings import JIT_OPTIONS, settings
from fastrnn.kernels.packed_bf16 import from_bits, to_bits
from fastrnn.kernels.packed_bf16_cells import _nv, _pairs
from fastrnn.kernels.plan import Plan, Tasks, nthreads
from fastrnn.kernels.schedule import Schedule, infer_chunk
from fastrnn.kernels.simd import rows_switch
from fastrnn.kernels.sync import panel_steps
from fastrnn.kernels.task_gemm import DW_TASKS, splits

__all__ = ["gru_rb_forward", "gru_rb_backward", "RBCache"]

#: the micro-kernels by row count (1-6), one switch each
_a, _n, _x, _y = (rows_switch(k[:7]) for k in (uk_rb_fwd_a, uk_rb_fwd_b, uk_rb_bwd_x, uk_rb_bwd_y))


# --------------------------------------------------------------------------- forward
@njit(inline="always")
def _fwd_a(mr, tag, x, ldx, h, ldh, w, KI, KH, bias, hin, ldhin, act, ldact, rhb, ldrh):
    _a(mr, (tag, x, ldx, h, ldh, w, KI, KH, bias, hin, ldhin, act, ldact, rhb, ldrh))


@njit(inline="always")
def _fwd_b(mr, tag, rh, ldrh, w, KH, bhn, act, ldact, hin, y, ldy, hb, ldhb):
    _n(mr, (tag, rh, ldrh, w, KH, bhn, act, ldact, hin, y, ldy, hb, ldhb))


@njit(inline="always")
def _fwd_panel(s2, p, tid, P, args, opt):
    """Half-step ``s2`` (step ``s2 // 2``, half (a) or (b)), panel ``p``."""
    (tag, xhp, ld, Ip, B, KI, KH, Hp, upa, upb, bp, hsp, ap, aring, rhp, rring, nact, mrmax,
     rlo, rhi) = args
    s = s2 // 2
    GA = 3 * Hp
    u0 = p * VW
    xsp = xhp + 2 * s * B * ld
    hin = hsp + 4 * (s * B * Hp + u0)
    asp = ap + 4 * ((s % aring) * B * GA + 3 * u0)
    rsp = rhp + 2 * (s % rring) * B * Hp
    hi = min(nact[s], rhi)
    r0 = rlo
    if s2 % 2 == 0:
        wp = upa + 4 * p * (KI * 3 + KH * 2) * VW
        while r0 < hi:
            mr = min(mrmax, hi - r0)
            _fwd_a(mr, tag, xsp + 2 * r0 * ld, ld, xsp + 2 * (r0 * ld + Ip), ld, wp, KI, KH,
                   bp + 4 * 4 * u0, hin + 4 * r0 * Hp, Hp, asp + 4 * r0 * GA, GA,
                   rsp + 2 * (r0 * Hp + u0), Hp)
            r0 += mr
    else:
        wp = upb + 4 * p * KH * VW
        hout = xhp + 2 * ((s + 1) * B * ld + Ip + u0)
        yp = hin + 4 * B * Hp
        while r0 < hi:
            mr = min(mrmax, hi - r0)
            _fwd_b(mr, tag, rsp + 2 * r0 * Hp, Hp, wp, KH, bp + 4 * (4 * u0 + 3 * VW),
                   asp + 4 * r0 * GA, GA, hin + 4 * r0 * Hp, yp + 4 * r0 * Hp, Hp,
                   hout + 2 * r0 * ld, ld)
            r0 += mr


@njit(**JIT_OPTIONS)
def gru_rb_fwd_kernel(tag, xh, Ip, n, KI, KH, bias, upa, upb, hs, act, rhb, nact, ctl, tid, nthr,
                      mrmax, rlo, rhi):
    # xh: [>= n+1,B,Ip+Hp] uint16 operand rows [x_s, h_{s-1}] (step s writes row s+1's h)
    # bias: [P,4,VW] b_ir + b_hr, b_iz + b_hz, b_in, b_hn
    # upa: [P, KI*3*VW + KH*2*VW] words;  upb: [P, KH*VW] words (U_nᵀ)
    # hs: [n+1,B,Hp] float32 states;  act: [ring,B,3*Hp] r, z, n per panel (ring n in
    #     training, else 1);  rhb: [ring,B,Hp] uint16 rd(r h);  nact: [n];  ctl: [P+1]
    B, ld = xh.shape[1], xh.shape[2]
    Hp = hs.shape[2]
    args = (tag, xh.ctypes.data, ld, Ip, B, KI, KH, Hp, upa.ctypes.data, upb.ctypes.data,
            bias.ctypes.data, hs.ctypes.data, act.ctypes.data, act.shape[0], rhb.ctypes.data,
            rhb.shape[0], nact, mrmax, rlo, rhi)
    return panel_steps(2 * n, Hp // VW, False, ctl, tid, nthr, _fwd_panel, args, None)


# --------------------------------------------------------------------------- backward
@njit(inline="always")
def _bwd_x(mr, tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dg, dgb, ldg, dgg):
    _x(mr, (tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dg, dgb, ldg, dgg))


@njit(inline="always")
def _bwd_y(mr, tag, ntag, a, lda, w, KK, ldh, act, ldact, hp, dd, dg, dgb, ldg):
    _y(mr, (tag, ntag, a, lda, w, KK, ldh, act, ldact, hp, dd, dg, dgb, ldg))


@njit(inline="always")
def _bwd_panel(s2, q, tid, Q, args, ntag):
    """Half-step ``s2`` (step ``s2 // 2``: (x) when odd, run first, then (y)), output
    panel ``q``."""
    (tag, n, B, Hp, ubrz, ubn, gp, gbp, ap, hsp, dyp, ddp, nact, mrmax, rlo, rhi) = args
    s = s2 // 2
    GH = 3 * Hp
    NB = len(ntag) * VW
    j0 = q * NB
    nb = min(nact[s], rhi)
    go = s * B * GH + j0
    aq = ap + 4 * (s * B * GH + 3 * j0)
    hpq = hsp + 4 * (s * B * Hp + j0)
    ddq = ddp + 4 * j0
    if s2 % 2 == 1:
        nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
        a = gbp + 2 * (s + 1) * B * GH            # the rounded (dr, dz) of step s+1
        wq = ubrz + 2 * q * 2 * Hp * NB
        dyq = dyp + 4 * (s * B * Hp + j0)
        for part in range(2):
            r0 = rlo if part == 0 else nprod
            r1 = nprod if part == 0 else nb
            KK = Hp if part == 0 else 0
            while r0 < r1:
                mr = min(mrmax, r1 - r0)
                _bwd_x(mr, tag, ntag, a + 2 * r0 * GH, GH, wq, KK, dyq + 4 * r0 * Hp, Hp,
                       aq + 4 * r0 * GH, GH, hpq + 4 * r0 * Hp, ddq + 4 * r0 * Hp,
                       gp + 4 * (go + r0 * GH), gbp + 2 * (go + r0 * GH), GH, Hp)
                r0 += mr
    else:
        a = gbp + 2 * (s * B * GH + 2 * Hp)           # the rounded dn of this step
        wq = ubn + 2 * q * Hp * NB
        r0 = rlo
        while r0 < nb:
            mr = min(mrmax, nb - r0)
            _bwd_y(mr, tag, ntag, a + 2 * r0 * GH, GH, wq, Hp // 2, Hp, aq + 4 * r0 * GH, GH,
                   hpq + 4 * r0 * Hp, ddq + 4 * r0 * Hp, gp + 4 * (go + r0 * GH),
                   gbp + 2 * (go + r0 * GH), GH)
            r0 += mr


@njit(**JIT_OPTIONS)
def gru_rb_bwd_kernel(tag, ntag, act, hs, ubrz, ubn, dy, dd, dg, dgb, nact, ctl, tid, nthr, mrmax,
                      rlo, rhi):
    # act: [n,B,3*Hp] (r, z, n per panel);  hs: [n+1,B,Hp]
    # ubrz: U_rz by output panels of NB = len(ntag)*VW units, [2*Hp/2][NB][2] each;
    # ubn: U_n likewise, [Hp/2][NB][2];  dy: [n,B,Hp];  dd: [B,Hp] carry (in dL/dh_n)
    # dg: [n,B,3*Hp] float32 out (dr, dz, dn), PyTorch's gate order;  dgb: uint16, rounded
    n, B, GH = act.shape
    Hp = dy.shape[2]
    NB = len(ntag) * VW
    args = (tag, n, B, Hp, ubrz.ctypes.data, ubn.ctypes.data, dg.ctypes.data, dgb.ctypes.data,
            act.ctypes.data, hs.ctypes.data, dy.ctypes.data, dd.ctypes.data, nact, mrmax, rlo,
            rhi)
    return panel_steps(2 * n, Hp // NB, True, ctl, tid, nthr, _bwd_panel, args, ntag)


# --------------------------------------------------------------------------- drivers
class _Packed:
    __slots__ = ("H", "Hp", "I", "Ip", "nvb", "upa", "upb", "ubrz", "ubn", "bias", "w_ih",
                 "w_hh")


def _pack(w_ih, w_hh, b_ih, b_hh, backward):
    I, H = w_ih.shape[1], w_hh.shape[1]
    Hp = -(-H // VW) * VW
    P = Hp // VW
    Ip = I + I % 2
    pk = _Packed()
    pk.H, pk.Hp, pk.I, pk.Ip = H, Hp, I, Ip
    wi = np.zeros((3, Hp, I), np.float32)
    wi[:, :H] = w_ih.reshape(3, H, I)
    wh = np.zeros((3, Hp, Hp), np.float32)
    wh[:, :H, :H] = w_hh.reshape(3, H, H)
    mx = np.zeros((Ip, 3, P, VW), np.float32)            # W_ihᵀ, [r z n] of each panel
    mx[:I] = wi.transpose(2, 0, 1).reshape(I, 3, P, VW)
    mx = np.ascontiguousarray(mx.transpose(0, 2, 1, 3)).reshape(Ip, 3 * Hp)
    mh = wh[:2].transpose(2, 0, 1).reshape(Hp, 2, P, VW)  # U_rzᵀ, [r z] of each panel
    mh = np.ascontiguousarray(mh.transpose(0, 2, 1, 3)).reshape(Hp, 2 * Hp)
    pk.upa = np.ascontiguousarray(np.concatenate(
        [_pairs(mx, 3 * VW).reshape(P, -1), _pairs(mh, 2 * VW).reshape(P, -1)], axis=1))
    pk.upb = _pairs(np.ascontiguousarray(wh[2].T), VW)
    bias = np.zeros((4, Hp), np.float32)
    bias[:2, :H] = (b_ih + b_hh).reshape(3, H)[:2]
    bias[2, :H] = b_ih[2 * H:]
    bias[3, :H] = b_hh[2 * H:]
    pk.bias = np.ascontiguousarray(bias.reshape(4, P, VW).transpose(1, 0, 2))
    pk.nvb = _nv(P)
    pk.ubrz = pk.ubn = pk.w_ih = pk.w_hh = None
    if backward:
        pk.ubrz = _pairs(wh[:2].reshape(2 * Hp, Hp), pk.nvb * VW)
        pk.ubn = _pairs(wh[2], pk.nvb * VW)
        pk.w_ih = from_bits(to_bits(wi.reshape(3 * Hp, I)))
        pk.w_hh = from_bits(to_bits(wh.reshape(3 * Hp, Hp)))
    return pk


class RBCache:
    """What :func:`gru_rb_backward` needs from a training :func:`gru_rb_forward`."""

    __slots__ = ("sched", "pk", "xh", "act", "rhb", "hs", "flops", "plan", "tag")


def gru_rb_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads,
                   native=True):
    """Reset-before GRU in the bf16 compute mode, one layer and direction:
    ``(y, h_n, cache)`` as :func:`fastrnn.kernels.packed_bf16_cells.gru_forward`."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    pk = _pack(w_ih, w_hh, b_ih, b_hh, training)
    Hp, Ip = pk.Hp, pk.Ip
    P = Hp // VW
    tag = NATIVE if native else EMULATED
    sched = Schedule(lens, T, reverse)
    n = sched.n
    lens_sorted = sched.nact_lengths()
    step_flops = 2.0 * B * 3 * H * (H + I)
    plan = Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), P,
                pk.upa.nbytes + pk.upb.nbytes, lens_sorted)
    C = n if training else max(1, min(n, infer_chunk(B)))
    xh = np.zeros((C + 1, B, Ip + Hp), np.uint16)        # as packed_bf16_cells._forward
    xs = np.zeros((C, B, I), np.float32)
    padded = sched.tix is not None
    hs = (np.zeros if padded else np.empty)((n + 1, B, Hp), np.float32)
    hs[0] = sched.sort_rows(h0, Hp)
    xh[0, :, Ip:] = to_bits(hs[0])
    ring = n if training else 1
    act = np.empty((ring, B, 3 * Hp), np.float32)
    rhb = (np.zeros if padded else np.empty)((ring, B, Hp), np.uint16)
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        m = s1 - s0
        if s0:
            xh[0, :, Ip:] = xh[C, :, Ip:]
        sched.gather_into(x, xs[:m], s0, s1)
        xh[:m, :, :I] = to_bits(xs[:m])
        ctl = np.zeros(P + 1, np.int64)
        a_c = act[s0:s1] if training else act
        r_c = rhb[s0:s1] if training else rhb
        hs_c = hs[s0:s1 + 1]
        nact = sched.nact[s0:s1]
        plan.launch(gru_rb_fwd_kernel, lambda tid, nthr, r0, r1: (
            tag, xh, Ip, m, Ip // 2, Hp // 2, pk.bias, pk.upa, pk.upb, hs_c, a_c, r_c, nact,
            ctl, tid, nthr, BF16_MR, r0, r1))
    ys = hs[1:]
    y = sched.scatter(ys, H, np.float32)
    h_n = sched.unsort_rows(ys[lens_sorted - 1, np.arange(B)], H)
    if not training:
        return y, h_n, None
    cache = RBCache()
    cache.sched, cache.pk, cache.xh, cache.act, cache.rhb, cache.hs = sched, pk, xh, act, rhb, hs
    cache.flops = 2.0 * B * 3 * H * H
    cache.plan, cache.tag = plan, tag
    return y, h_n, cache


def gru_rb_backward(cache, dy, dh_n, max_threads, blas_threads):
    """Gradients from :func:`gru_rb_forward`'s cache: ``(dx, dh0, dw_ih, dw_hh, db_ih,
    db_hh)`` in PyTorch's layout (``blas_threads`` called with 0)."""
    sched, pk = cache.sched, cache.pk
    n, B = sched.n, sched.B
    H, Hp, I, Ip = pk.H, pk.Hp, pk.I, pk.Ip
    GH = 3 * Hp
    f32 = np.float32
    ntag = (0,) * pk.nvb
    Q = Hp // (VW * pk.nvb)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < settings.two_thread_step_flops):
        plan = Plan(1, B, 0, 0, 1, 0, None)
    gthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, f32), Hp)
    dd = sched.sort_rows(np.asarray(dh_n, f32), Hp)
    zero = np.zeros if sched.tix is not None else np.empty
    dg = zero((n, B, GH), f32)
    dgb = zero((n, B, GH), np.uint16)
    ctl = np.zeros(Q + 1, np.int64)
    plan.launch(gru_rb_bwd_kernel, lambda tid, nthr, r0, r1: (
        cache.tag, ntag, cache.act, cache.hs, pk.ubrz, pk.ubn, dys, dd, dg, dgb, sched.nact, ctl,
        tid, nthr, BF16_MR, r0, r1))
    # after the loop: float32 GEMMs on the rounded operands (exact products)
    dgr = from_bits(dgb).reshape(n * B, GH)
    xr = from_bits(cache.xh[:n, :, :I]).reshape(n * B, I)
    hr = from_bits(cache.xh[:n, :, Ip:]).reshape(n * B, Hp)
    rhr = from_bits(cache.rhb).reshape(n * B, Hp)
    dw_hh_p = np.empty((GH, Hp), f32)
    dw_ih_p = np.empty((GH, I), f32)
    dxs = np.empty((n * B, I), f32)
    dh0 = np.empty((B, Hp), f32)
    split = 2.0 * n * B * GH * (2 * I + Hp) >= settings.split_gemm_flops
    tasks = []
    for r0, r1 in splits(GH, DW_TASKS if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgr[:, r0:r1].T, xr, out=dw_ih_p[r0:r1]))
        for c0, c1, h in ((r0, min(r1, 2 * Hp), hr), (max(r0, 2 * Hp), r1, rhr)):
            if c0 < c1:
                tasks.append(lambda c0=c0, c1=c1, h=h: np.matmul(dgr[:, c0:c1].T, h,
                                                                 out=dw_hh_p[c0:c1]))
    for r0, r1 in splits(n * B, min(4, max(1, n * B // 64)) if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgr[r0:r1], pk.w_ih, out=dxs[r0:r1]))
    tasks.append(lambda: np.matmul(dgr[:B, :2 * Hp], pk.w_hh[:2 * Hp], out=dh0))
    Tasks(tasks).run(gthr if split else 1)
    dh0 += dd
    db = dg.reshape(n * B, GH).sum(axis=0)
    dx = sched.scatter(dxs.reshape(n, B, I), I, f32)
    dw_ih = np.ascontiguousarray(dw_ih_p.reshape(3, Hp, I)[:, :H]).reshape(3 * H, I)
    dw_hh = np.ascontiguousarray(dw_hh_p.reshape(3, Hp, Hp)[:, :H, :H]).reshape(3 * H, H)
    db_ih = np.ascontiguousarray(db.reshape(3, Hp)[:, :H]).reshape(3 * H)
    return dx, sched.unsort_rows(dh0, H), dw_ih, dw_hh, db_ih, db_ih.copy()
