"""The bf16 GRU's (reset_after) and tanh/ReLU RNN's time-loop products on AMX tiles
(CPUs with AMX-BF16): the AMX variant of :mod:`fastrnn.kernels.packed_bf16_cells`.

As for the LSTM (:mod:`fastrnn.kernels.amx_bf16`): ``tdpbf16ps`` multiplies a
tile of 16 operand rows x 32 bf16 (tile 4) by a tile of 16 k pairs x 16 columns
x 2 of a weight panel (tiles 5, 6, alternating; the k-pair layout of
:mod:`fastrnn.kernels.packed_bf16_cells`, each 16-column vector at a 64-byte
offset of a panel row) into 16 x 16 float32 accumulators (tiles 0-3), stored
to a 4 KiB scratch; the cell's float32 epilogue then runs on its rows
(the same gate math as :mod:`fastrnn.kernels.bf16_simd_cells`). The GRU's
forward block keeps ``W_n x`` and ``U_n h`` in tiles 2 and 3; backward blocks
are output panels of up to 64 units (``dh = dgates U``).

The operand widths are multiples of 32 k (zero padded: the drivers pack with
``kmult=32``), every operand buffer a tile reads has 16 rows more than the
batch (a block reads whole tiles from any row a thread starts at), and each
thread configures its tiles (``ldtilecfg``) at the start of a kernel call and
releases them at its end; :func:`fastrnn.kernels.amx_bf16.available` tells
whether the process may use them.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.amx_bf16 import _fn, _i8, _i8p, _t, amx_begin, amx_end, tile_config
from fastrnn.kernels.bf16_simd import round_bits
from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.simd import (I64, VMath, gru_cell, gru_cell_back, ptrs, rnn_act, rnn_act_back,
                                  vload, vstore)
from fastrnn.kernels.sync import panel_steps

__all__ = ["gru_fwd_amx_kernel", "gru_bwd_amx_kernel", "rnn_fwd_amx_kernel",
           "rnn_bwd_amx_kernel"]

VW = 16
_f32 = ir.FloatType()
F32X = ir.VectorType(_f32, VW)
I16X = ir.VectorType(ir.IntType(16), VW)


def _C(v):
    return ir.Constant(I64, v)


def _products(b, segments, nacc):
    """Tiles ``0..nacc-1`` = the sum over the segments ``(a, lda, w, ldw, nc, accs)``
    (byte addresses; ``nc`` chunks of 32 k; ``a`` advances 64 bytes, ``w`` 16
    rows of ``ldw`` bytes per chunk) of A(a) times the B tiles at ``w + 64 v``
    added to tile ``accs[v]``; then stored to the scratch at ``scr`` (row stride
    256 bytes, tile t at byte 64 t) by the caller via :func:`_store`."""
    load = _fn(b, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
    dp = _fn(b, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
    for v in range(nacc):
        b.call(_fn(b, "llvm.x86.tilezero", [_i8]), [_t(v)])
    k = 0
    for a, lda, w, ldw, nc, accs in segments:
        with cgutils.for_range(b, nc) as loop:
            c = loop.index
            b.call(load, [_t(4), b.inttoptr(b.add(a, b.mul(c, _C(64))), _i8p), lda])
            wc = b.add(w, b.mul(b.mul(c, _C(16)), ldw))
            for v, acc in enumerate(accs):
                tb = 5 + (k + v) % 2
                b.call(load, [_t(tb), b.inttoptr(b.add(wc, _C(64 * v)), _i8p), ldw])
                b.call(dp, [_t(acc), _t(4), _t(tb)])
        k += len(accs)


def _store(b, scr, nacc):
    store = _fn(b, "llvm.x86.tilestored64", [_i8, _i8p, I64])
    for v in range(nacc):
        b.call(store, [_t(v), b.inttoptr(b.add(scr, _C(64 * v)), _i8p), _C(256)])


def _st16(b, v, base16, off):
    p = b.gep(base16, [off])
    b.store(round_bits(b, v), b.bitcast(p, I16X.as_pointer()), align=2)


def _acc(b, s, r, v):
    """Row ``r``, vector ``v`` of the scratch (float pointer ``s``)."""
    return vload(b, F32X, s, b.add(b.mul(r, _C(64)), _C(16 * v)))


# --------------------------------------------------------------------------- GRU
@intrinsic
def uk_gru_fwd_amx(typingctx, x, ldb, h, w, KIc, KHc, scr, nr, bias, hin, y, ldy, hb, ldhb, act,
                   ldact, training):
    """One GRU panel (16 units), ``nr <= 16`` rows from ``x``/``h`` (bf16 rows of
    ``ldb`` bytes; ``KIc``/``KHc`` chunks of 32 k), panel ``w`` (``[(KIc + KHc)*16]``
    pair rows of ``[r z n]`` x 16 words, 192 bytes); then the step of
    :data:`fastrnn.kernels.bf16_simd_cells.uk_gru_fwd` on its rows."""
    i8 = types.int64
    sig = types.void(i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                     types.boolean)

    def codegen(context, builder, signature, args):
        (x, ldb, h, w, KIc, KHc, scr, nr, bias, hin, y, ldy, hb, ldhb, act, ldact,
         training) = args
        b = builder
        wh = b.add(w, b.mul(KIc, _C(16 * 192)))
        _products(b, [(x, ldb, w, _C(192), KIc, (0, 1, 2)),
                      (h, ldb, wh, _C(192), KHc, (0, 1, 3))], 4)
        _store(b, scr, 4)
        s, bias, hin, y, act = ptrs(b, F32X, scr, bias, hin, y, act)
        hb = b.inttoptr(hb, ir.IntType(16).as_pointer())
        m = VMath(b, F32X)
        bv = [vload(b, F32X, bias, _C(g * VW)) for g in range(4)]
        with cgutils.for_range(b, nr) as loop:
            r = loop.index
            ro = b.mul(r, ldy)
            gr, gz, gn, nh, hn = gru_cell(m, *[_acc(b, s, r, g) for g in range(4)], bv,
                                          vload(b, F32X, hin, ro))
            vstore(b, hn, F32X, y, ro)
            _st16(b, hn, hb, b.mul(r, ldhb))
            with b.if_then(training):
                for g, val in enumerate((gr, gz, gn, nh)):
                    vstore(b, val, F32X, act, b.add(b.mul(r, ldact), _C(g * VW)))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def uk_gru_bwd_amx(typingctx, ntag, a, ldab, w, ldwb, KKc, scr, nr, dy, ldh, act, ldact, hp, dd,
                   dgh, dgx, dgxb, ldg, dgg, dghb, lddgb):
    """NV output vectors, ``nr <= 16`` rows: dh = a w on tiles (``a`` the rounded
    (dr, dz, dn r) of the next step, bf16 rows of ``ldab`` bytes, ``KKc`` chunks;
    ``w`` the output panel, pair rows of ``ldwb`` bytes), then the step of
    :data:`fastrnn.kernels.bf16_simd_cells.uk_gru_bwd` on its rows (``dghb`` with
    its own row stride ``lddgb`` elements; ``dgxb`` dgx rounded, at dgx's offsets)."""
    if not isinstance(ntag, types.UniTuple):
        return None
    NV = ntag.count
    i8 = types.int64
    sig = types.void(ntag, *([i8] * 20))

    def codegen(context, builder, signature, args):
        (_, a, ldab, w, ldwb, KKc, scr, nr, dy, ldh, act, ldact, hp, dd, dgh, dgx, dgxb, ldg,
         dgg, dghb, lddgb) = args
        b = builder
        _products(b, [(a, ldab, w, ldwb, KKc, tuple(range(NV)))], NV)
        _store(b, scr, NV)
        s, dy, act, hp, dd, dgh, dgx = ptrs(b, F32X, scr, dy, act, hp, dd, dgh, dgx)
        dghb = b.inttoptr(dghb, ir.IntType(16).as_pointer())
        dgxb = b.inttoptr(dgxb, ir.IntType(16).as_pointer())
        m = VMath(b, F32X)
        with cgutils.for_range(b, nr) as loop:
            r = loop.index
            for v in range(NV):
                ho = b.add(b.mul(r, ldh), _C(v * VW))
                dh = m.add(m.add(_acc(b, s, r, v), vload(b, F32X, dy, ho)),
                           vload(b, F32X, dd, ho))
                ra = b.add(b.mul(r, ldact), _C(v * 4 * VW))
                gates = [vload(b, F32X, act, b.add(ra, _C(g * VW))) for g in range(4)]
                dr, dz, dn = gru_cell_back(m, dh, gates, vload(b, F32X, hp, ho))
                gr, gz = gates[:2]
                for g, (vh, vx) in enumerate(((dr, dr), (dz, dz), (m.mul(dn, gr), dn))):
                    col = b.add(_C(v * VW), b.mul(_C(g), dgg))
                    vstore(b, vh, F32X, dgh, b.add(b.mul(r, ldg), col))
                    vstore(b, vx, F32X, dgx, b.add(b.mul(r, ldg), col))
                    _st16(b, vx, dgxb, b.add(b.mul(r, ldg), col))
                    _st16(b, vh, dghb, b.add(b.mul(r, lddgb), col))
                vstore(b, m.mul(dh, gz), F32X, dd, ho)
        return context.get_dummy_value()
    return sig, codegen


# --------------------------------------------------------------------------- RNN
@intrinsic
def uk_rnn_fwd_amx(typingctx, ntag, x, ldb, h, w, ldwb, KIc, KHc, scr, nr, bias, y, ldy, hb, ldhb,
                   relu):
    """One RNN panel of NV*16 units, ``nr <= 16`` rows: y = act(x w + h w' + bias)
    (``w`` pair rows of ``ldwb`` bytes, the x chunks first), float32 to ``y`` and
    rounded to ``hb``."""
    if not isinstance(ntag, types.UniTuple):
        return None
    NV = ntag.count
    i8 = types.int64
    sig = types.void(ntag, *([i8] * 14), types.boolean)

    def codegen(context, builder, signature, args):
        _, x, ldb, h, w, ldwb, KIc, KHc, scr, nr, bias, y, ldy, hb, ldhb, relu = args
        b = builder
        wh = b.add(w, b.mul(b.mul(KIc, _C(16)), ldwb))
        cols = tuple(range(NV))
        _products(b, [(x, ldb, w, ldwb, KIc, cols), (h, ldb, wh, ldwb, KHc, cols)], NV)
        _store(b, scr, NV)
        s, bias, y = ptrs(b, F32X, scr, bias, y)
        hb = b.inttoptr(hb, ir.IntType(16).as_pointer())
        m = VMath(b, F32X)
        bv = [vload(b, F32X, bias, _C(v * VW)) for v in range(NV)]
        with cgutils.for_range(b, nr) as loop:
            r = loop.index
            for v in range(NV):
                pre = m.add(_acc(b, s, r, v), bv[v])
                val = b.select(relu, rnn_act(m, pre, True), rnn_act(m, pre, False))
                vstore(b, val, F32X, y, b.add(b.mul(r, ldy), _C(v * VW)))
                _st16(b, val, hb, b.add(b.mul(r, ldhb), _C(v * VW)))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def uk_rnn_bwd_amx(typingctx, ntag, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, hn, dg,
                   dgb, lddgb, relu):
    """NV output vectors, ``nr <= 16`` rows: dh = a w on tiles + dy + dhx, then
    dg = dh (1 - h'^2) (tanh) or dh [h' > 0] (ReLU), float32 and rounded (``dgb``
    row stride ``lddgb`` elements)."""
    if not isinstance(ntag, types.UniTuple):
        return None
    NV = ntag.count
    i8 = types.int64
    sig = types.void(ntag, *([i8] * 15), types.boolean)

    def codegen(context, builder, signature, args):
        _, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, hn, dg, dgb, lddgb, relu = args
        b = builder
        _products(b, [(a, ldab, w, ldwb, KKc, tuple(range(NV)))], NV)
        _store(b, scr, NV)
        s, dhx, dy, hn, dg = ptrs(b, F32X, scr, dhx, dy, hn, dg)
        dgb = b.inttoptr(dgb, ir.IntType(16).as_pointer())
        m = VMath(b, F32X)
        with cgutils.for_range(b, nr) as loop:
            r = loop.index
            for v in range(NV):
                ho = b.add(b.mul(r, ldh), _C(v * VW))
                dh = m.add(m.add(_acc(b, s, r, v), vload(b, F32X, dy, ho)),
                           vload(b, F32X, dhx, b.add(b.mul(r, lddhx), _C(v * VW))))
                h = vload(b, F32X, hn, ho)
                val = b.select(relu, rnn_act_back(m, dh, h, True), rnn_act_back(m, dh, h, False))
                vstore(b, val, F32X, dg, ho)
                _st16(b, val, dgb, b.add(b.mul(r, lddgb), _C(v * VW)))
        return context.get_dummy_value()
    return sig, codegen


# --------------------------------------------------------------------------- kernels
@njit(inline="always")
def _gru_fwd_panel(s, p, tid, P, args, opt):
    (xhp, ld, Ip, Bx, B, KIc, KHc, Hp, upp, bp, hsp, ap, nact, training, scr, rlo, rhi) = args
    GA = 4 * Hp
    u0 = p * VW
    nb = min(nact[s], rhi)
    xsp = xhp + 2 * s * Bx * ld
    hout = xhp + 2 * ((s + 1) * Bx * ld + Ip + u0)
    hin = hsp + 4 * (s * B * Hp + u0)
    yp = hin + 4 * B * Hp
    asp = ap + 4 * (s * B * GA + 4 * u0)
    wp = upp + p * (KIc + KHc) * 16 * 192
    for q0 in range(rlo, nb, 16):
        nr = min(16, nb - q0)
        uk_gru_fwd_amx(xsp + 2 * q0 * ld, 2 * ld, xsp + 2 * (q0 * ld + Ip), wp, KIc, KHc, scr,
                       nr, bp + 4 * 4 * u0, hin + 4 * q0 * Hp, yp + 4 * q0 * Hp, Hp,
                       hout + 2 * q0 * ld, ld, asp + 4 * q0 * GA, GA, training)


@njit(**JIT_OPTIONS)
def gru_fwd_amx_kernel(xh, Ip, n, KIc, KHc, bias, up, hs, nact, training, act, ctl, tid, nthr,
                       rlo, rhi):
    # as packed_bf16_cells.gru_fwd_kernel, with xh [>= n+1,Bx,Ip+Kh] (Bx >= B+16; Ip, Kh
    # multiples of 32) and KIc, KHc chunks of 32 k
    Bx, ld = xh.shape[1], xh.shape[2]
    B, Hp = hs.shape[1], hs.shape[2]
    scr = np.empty(16 * 64, np.float32)
    args = (xh.ctypes.data, ld, Ip, Bx, B, KIc, KHc, Hp, up.ctypes.data, bias.ctypes.data,
            hs.ctypes.data, act.ctypes.data, nact, training, scr.ctypes.data, rlo, rhi)
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    w = panel_steps(n, Hp // VW, False, ctl, tid, nthr, _gru_fwd_panel, args, None)
    amx_end()
    return w


@njit(inline="always")
def _gru_bwd_panel(s, q, tid, Q, args, ntag):
    (n, B, Bx, Hp, GHp, ubp, ghp, gxp, gbp, gxbp, ap, hsp, dyp, ddp, nact, scr, rlo, rhi) = args
    GH = 3 * Hp
    GA = 4 * Hp
    NB = len(ntag) * VW
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = gbp + 2 * (s + 1) * Bx * GHp
    j0 = q * NB
    wq = ubp + 2 * q * GHp * NB
    dyq = dyp + 4 * (s * B * Hp + j0)
    aq = ap + 4 * (s * B * GA + 4 * j0)
    hpq = hsp + 4 * (s * B * Hp + j0)
    ddq = ddp + 4 * j0
    go = s * B * GH + j0
    gbo = s * Bx * GHp + j0
    for part in range(2):
        lo = rlo if part == 0 else nprod
        hi = nprod if part == 0 else nb
        KKc = GHp // 32 if part == 0 else 0
        for q0 in range(lo, hi, 16):
            nr = min(16, hi - q0)
            uk_gru_bwd_amx(ntag, a + 2 * q0 * GHp, 2 * GHp, wq, 4 * NB, KKc, scr, nr,
                           dyq + 4 * q0 * Hp, Hp, aq + 4 * q0 * GA, GA, hpq + 4 * q0 * Hp,
                           ddq + 4 * q0 * Hp, ghp + 4 * (go + q0 * GH), gxp + 4 * (go + q0 * GH),
                           gxbp + 2 * (go + q0 * GH), GH, Hp, gbp + 2 * (gbo + q0 * GHp), GHp)


@njit(**JIT_OPTIONS)
def gru_bwd_amx_kernel(ntag, act, hs, ub, dy, dd, dgh, dgx, dghb, dgxb, nact, ctl, tid, nthr,
                       rlo, rhi):
    # as packed_bf16_cells.gru_bwd_kernel, with U's output panels [GHp/2][NB][2] (GHp =
    # 3*Hp rounded up to 32, zero rows beyond) and dghb [n,Bx,GHp] uint16 (Bx >= B+16)
    n, B, _ = act.shape
    Hp = dy.shape[2]
    Bx, GHp = dghb.shape[1], dghb.shape[2]
    scr = np.empty(16 * 64, np.float32)
    args = (n, B, Bx, Hp, GHp, ub.ctypes.data, dgh.ctypes.data, dgx.ctypes.data,
            dghb.ctypes.data, dgxb.ctypes.data, act.ctypes.data, hs.ctypes.data, dy.ctypes.data,
            dd.ctypes.data, nact, scr.ctypes.data, rlo, rhi)
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    w = panel_steps(n, Hp // (len(ntag) * VW), True, ctl, tid, nthr, _gru_bwd_panel, args, ntag)
    amx_end()
    return w


@njit(inline="always")
def _rnn_fwd_panel(s, q, tid, Q, args, ntag):
    (xhp, ld, Ip, Bx, B, KIc, KHc, Hp, upp, bp, hsp, nact, relu, scr, rlo, rhi) = args
    NB = len(ntag) * VW
    j0 = q * NB
    nb = min(nact[s], rhi)
    xsp = xhp + 2 * s * Bx * ld
    hout = xhp + 2 * ((s + 1) * Bx * ld + Ip + j0)
    yp = hsp + 4 * ((s + 1) * B * Hp + j0)
    wq = upp + q * (KIc + KHc) * 16 * 4 * NB
    for q0 in range(rlo, nb, 16):
        nr = min(16, nb - q0)
        uk_rnn_fwd_amx(ntag, xsp + 2 * q0 * ld, 2 * ld, xsp + 2 * (q0 * ld + Ip), wq, 4 * NB,
                       KIc, KHc, scr, nr, bp + 4 * j0, yp + 4 * q0 * Hp, Hp,
                       hout + 2 * q0 * ld, ld, relu)


@njit(**JIT_OPTIONS)
def rnn_fwd_amx_kernel(ntag, xh, Ip, n, KIc, KHc, bias, up, hs, nact, relu, ctl, tid, nthr, rlo,
                       rhi):
    # as packed_bf16_cells.rnn_fwd_kernel, with xh as gru_fwd_amx_kernel's
    Bx, ld = xh.shape[1], xh.shape[2]
    B, Hp = hs.shape[1], hs.shape[2]
    scr = np.empty(16 * 64, np.float32)
    args = (xh.ctypes.data, ld, Ip, Bx, B, KIc, KHc, Hp, up.ctypes.data, bias.ctypes.data,
            hs.ctypes.data, nact, relu, scr.ctypes.data, rlo, rhi)
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    w = panel_steps(n, Hp // (len(ntag) * VW), False, ctl, tid, nthr, _rnn_fwd_panel, args, ntag)
    amx_end()
    return w


@njit(inline="always")
def _rnn_bwd_panel(s, q, tid, Q, args, ntag):
    (n, B, Bx, Hp, Hpp, ubp, gp, gbp, hsp, dyp, dhp, zp, nact, relu, scr, rlo, rhi) = args
    NB = len(ntag) * VW
    nb = min(nact[s], rhi)
    nprod = max(min(nact[s + 1], rhi) if s + 1 < n else rlo, rlo)
    a = gbp + 2 * (s + 1) * Bx * Hpp
    j0 = q * NB
    wq = ubp + 2 * q * Hpp * NB
    o = s * B * Hp + j0
    gbo = s * Bx * Hpp + j0
    hnq = hsp + 4 * ((s + 1) * B * Hp + j0)
    for part in range(2):
        lo = rlo if part == 0 else nprod
        hi = nprod if part == 0 else nb
        KKc = Hpp // 32 if part == 0 else 0
        dhx = zp if part == 0 else dhp + 4 * j0
        lddhx = 0 if part == 0 else Hp
        for q0 in range(lo, hi, 16):
            nr = min(16, hi - q0)
            uk_rnn_bwd_amx(ntag, a + 2 * q0 * Hpp, 2 * Hpp, wq, 4 * NB, KKc, scr, nr,
                           dhx + 4 * q0 * lddhx, lddhx, dyp + 4 * (o + q0 * Hp), Hp,
                           hnq + 4 * q0 * Hp, gp + 4 * (o + q0 * Hp), gbp + 2 * (gbo + q0 * Hpp),
                           Hpp, relu)


@njit(**JIT_OPTIONS)
def rnn_bwd_amx_kernel(ntag, hs, ub, dy, dhn, zrow, dg, dgb, nact, relu, ctl, tid, nthr, rlo,
                       rhi):
    # as packed_bf16_cells.rnn_bwd_kernel, with U's output panels [Hpp/2][NB][2] (Hpp = Hp
    # rounded up to 32) and dgb [n,Bx,Hpp] uint16 (Bx >= B+16)
    n, B, Hp = dy.shape
    Bx, Hpp = dgb.shape[1], dgb.shape[2]
    scr = np.empty(16 * 64, np.float32)
    args = (n, B, Bx, Hp, Hpp, ub.ctypes.data, dg.ctypes.data, dgb.ctypes.data, hs.ctypes.data,
            dy.ctypes.data, dhn.ctypes.data, zrow.ctypes.data, nact, relu, scr.ctypes.data,
            rlo, rhi)
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    w = panel_steps(n, Hp // (len(ntag) * VW), True, ctl, tid, nthr, _rnn_bwd_panel, args, ntag)
    amx_end()
    return w
