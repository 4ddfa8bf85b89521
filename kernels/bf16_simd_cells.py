"""LLVM-IR micro-kernels of the bfloat16 compute mode for the GRU (reset_after) and
the tanh/ReLU RNN (:mod:`fastrnn.kernels.packed_bf16_cells`).

The bf16 counterparts of :mod:`fastrnn.kernels.simd_cells`, in the conventions of
:mod:`fastrnn.kernels.bf16_simd` (its tags :data:`~fastrnn.kernels.bf16_simd.NATIVE`
/ :data:`~fastrnn.kernels.bf16_simd.EMULATED` pick ``vdpbf16ps`` or the emulated
float32 products; operands are words of bf16 k pairs; float32 accumulators
``<16 x float>``; pointers are byte addresses as int64; ``NV`` read off the
type of an ``ntag`` tuple). The register-blocked product here takes, per
segment, the accumulators it adds to, so that the GRU's ``x`` and ``h`` rows
share the ``r``, ``z`` accumulators and keep ``W_n x`` and ``U_n h`` apart.

Every epilogue keeps the gate math in float32 and writes what the next
product reads twice: float32 (the state, the saved values, the bias
gradients) and rounded to bf16 (:func:`fastrnn.kernels.bf16_simd.round_bits`,
:func:`fastrnn.bf16.round_bf16`'s rounding).

``uk_gru_fwd[MR]``, ``uk_gru_bwd[MR]``, ``uk_rnn_fwd[MR]``, ``uk_rnn_bwd[MR]``, and
the reset-before GRU's two halves of a step, ``uk_rb_fwd_a/b[MR]`` and
``uk_rb_bwd_x/y[MR]``, for ``MR = 1..BF16_MR`` rows per call (``[0]`` unused).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.bf16_simd import (BF16_MR, EMULATED, F32X, I32X, NATIVE, VW, dp_bf16,
                                      i16_ptrs, i32_ptrs, is_native, round_bits, store_bf16)
from fastrnn.kernels.simd import (I64, VMath, _splat, gru_back_nz, gru_h, ptrs, row_off, vload,
                                  vstore)
from fastrnn.kernels.simd_cells import gru_bwd_rows, gru_fwd_rows, rnn_bwd_rows, rnn_fwd_rows

__all__ = ["uk_gru_fwd", "uk_gru_bwd", "uk_rnn_fwd", "uk_rnn_bwd", "uk_rb_fwd_a",
           "uk_rb_fwd_b", "uk_rb_bwd_x", "uk_rb_bwd_y", "NATIVE", "EMULATED", "BF16_MR", "VW"]


def _store16(builder, v, base16, off):
    """Store ``<16 x float>`` ``v`` rounded to bf16 at element ``off`` of an i16 pointer."""
    store_bf16(builder, round_bits(builder, v), base16, off)


def _half(builder, v):
    return builder.ashr(v, ir.Constant(I64, 1))


def accs_bf16(builder, native, MR, NACC, segments):
    """``acc[r][j] = sum over the segments (a, lda, w, KK, cols)`` of ``sum_kk
    dp(a[r*lda + kk], w[kk*len(cols)*16 + v*16 : +16])`` with ``j = cols[v]``
    (``a``, ``w`` i32 pointers to words of bf16 pairs, ``lda`` in words)."""
    accs = [[cgutils.alloca_once(builder, F32X) for _ in range(NACC)] for _ in range(MR)]
    zero = ir.Constant(F32X, [0.0] * VW)
    for r in range(MR):
        for j in range(NACC):
            builder.store(zero, accs[r][j])
    for a, lda, w, KK, cols in segments:
        W = len(cols) * VW
        with cgutils.for_range(builder, KK) as loop:
            k = loop.index
            wrow = builder.mul(k, ir.Constant(I64, W))
            wv = [builder.load(builder.bitcast(builder.gep(w, [builder.add(
                wrow, ir.Constant(I64, v * VW))]), I32X.as_pointer()), align=4)
                for v in range(len(cols))]
            for r in range(MR):
                aoff = builder.add(builder.mul(ir.Constant(I64, r), lda), k)
                s = _splat(builder, I32X, builder.load(builder.gep(a, [aoff]), align=4))
                for v, j in enumerate(cols):
                    acc = builder.load(accs[r][j])
                    builder.store(dp_bf16(builder, native, acc, s, wv[v]), accs[r][j])
    return [[builder.load(accs[r][j]) for j in range(NACC)] for r in range(MR)]


# --------------------------------------------------------------------------- GRU
def _make_gru_fwd(MR):
    @intrinsic
    def uk(typingctx, tag, x, ldx, h, ldh, w, KI, KH, bias, hin, y, ldy, hb, ldhb, act, ldact,
           training):
        """One panel (16 units), MR rows: ``x``, ``h`` bf16 rows (even strides ``ldx``,
        ``ldh`` elements; ``KI``, ``KH`` pairs), ``w`` the panel's ``[KI+KH][3*16]``
        words ([r z n] columns); a_x = x w[:KI], a_h = h w[KI:] (n apart),
        r = σ(a_x,r + a_h,r + b_r), z likewise, nh = a_h,n + b_hn,
        n = tanh(a_x,n + b_in + r nh), y = n + z (hin - n) (float32, ``hin`` and
        ``y`` row stride ``ldy``) and y rounded to ``hb`` (row stride ``ldhb``);
        act = (r, z, n, nh) if training; ``bias`` [b_r, b_z, b_in, b_hn]."""
        if not isinstance(tag, types.UniTuple):
            return None
        native = is_native(tag)
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         types.boolean)

        def codegen(context, builder, signature, args):
            (_, x, ldx, h, ldh, w, KI, KH, bias, hin, y, ldy, hb, ldhb, act, ldact,
             training) = args
            x, h, w = i32_ptrs(builder, x, h, w)
            (hb,) = i16_ptrs(builder, hb)
            bias, hin, y, act = ptrs(builder, F32X, bias, hin, y, act)
            wh = builder.gep(w, [builder.mul(KI, ir.Constant(I64, 3 * VW))])
            accs = accs_bf16(builder, native, MR, 4,
                             [(x, _half(builder, ldx), w, KI, (0, 1, 2)),
                              (h, _half(builder, ldh), wh, KH, (0, 1, 3))])
            m = VMath(builder, F32X)
            bv = [vload(builder, F32X, bias, ir.Constant(I64, g * VW)) for g in range(4)]
            gru_fwd_rows(m, accs, bv, hin, y, ldy, act, ldact, training,
                         lambda r, hn: _store16(builder, hn, hb, row_off(builder, r, ldhb)))
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_gru_bwd(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dgh, dgx, dghb,
           dgxb, ldg, dgg):
        """NV output vectors, MR rows: dh = a w + dy + dd (``a`` the rounded
        (dr, dz, dn r) of the next step, bf16 rows of stride ``lda`` elements; ``w``
        ``[KK][NV*16]`` words; ``dd`` the carried z dh, updated in place), then
        back through the step from the saved (r, z, n, nh) (``act`` [NV][4][16],
        row stride ``ldact``) and h_prev (``hp``): dgh = (dr, dz, dn r) float32 and
        rounded (``dghb``, the same element offsets), dgx = (dr, dz, dn) float32 and
        rounded (``dgxb``);
        gate g of vector v at ``v*16 + g*dgg``, row stride ``ldg``."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, *([i8] * 16))

        def codegen(context, builder, signature, args):
            (_, _, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dgh, dgx, dghb, dgxb, ldg,
             dgg) = args
            a, w = i32_ptrs(builder, a, w)
            dghb, dgxb = i16_ptrs(builder, dghb, dgxb)
            dy, act, hp, dd, dgh, dgx = ptrs(builder, F32X, dy, act, hp, dd, dgh, dgx)
            accs = accs_bf16(builder, native, MR, NV,
                             [(a, _half(builder, lda), w, KK, tuple(range(NV)))])
            bf = {"h": dghb, "x": dgxb}
            gru_bwd_rows(VMath(builder, F32X), accs, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg,
                         dgg, lambda which, o, val: _store16(builder, val, bf[which], o))
            return context.get_dummy_value()
        return sig, codegen
    return uk


# --------------------------------------------------------------------------- RNN
def _make_rnn_fwd(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, x, ldx, h, ldh, w, KI, KH, bias, y, ldy, hb, ldhb, relu):
        """One panel of NV*16 units, MR rows: ``w`` ``[KI+KH][NV*16]`` words,
        y = act(x w[:KI] + h w[KI:] + bias) (ReLU if ``relu`` else tanh) float32
        (row stride ``ldy``) and rounded to ``hb`` (row stride ``ldhb``)."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         types.boolean)

        def codegen(context, builder, signature, args):
            _, _, x, ldx, h, ldh, w, KI, KH, bias, y, ldy, hb, ldhb, relu = args
            x, h, w = i32_ptrs(builder, x, h, w)
            (hb,) = i16_ptrs(builder, hb)
            bias, y = ptrs(builder, F32X, bias, y)
            cols = tuple(range(NV))
            wh = builder.gep(w, [builder.mul(KI, ir.Constant(I64, NV * VW))])
            accs = accs_bf16(builder, native, MR, NV,
                             [(x, _half(builder, ldx), w, KI, cols),
                              (h, _half(builder, ldh), wh, KH, cols)])
            m = VMath(builder, F32X)
            bv = [vload(builder, F32X, bias, ir.Constant(I64, v * VW)) for v in range(NV)]
            rnn_fwd_rows(m, accs, bv, y, ldy, relu, lambda r, v, val: _store16(
                builder, val, hb, row_off(builder, r, ldhb, v * VW)))
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_rnn_bwd(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, hn, dg, dgb, relu):
        """NV output vectors, MR rows: dh = a w + dy + dhx (``a`` the rounded
        gradients of the next step, stride ``lda`` elements; ``lddhx`` 0 for a
        broadcast zero row), dg = dh (1 - h'^2) (tanh) or dh [h' > 0] (ReLU) from
        the saved output ``hn``, float32 and rounded (``dgb``); ``dy``, ``hn``,
        ``dg``, ``dgb`` have row stride ``ldh``."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, KK, dhx, lddhx, dy, ldh, hn, dg, dgb, relu = args
            a, w = i32_ptrs(builder, a, w)
            (dgb,) = i16_ptrs(builder, dgb)
            dhx, dy, hn, dg = ptrs(builder, F32X, dhx, dy, hn, dg)
            accs = accs_bf16(builder, native, MR, NV,
                             [(a, _half(builder, lda), w, KK, tuple(range(NV)))])
            rnn_bwd_rows(VMath(builder, F32X), accs, dhx, lddhx, dy, ldh, hn, dg, relu,
                         lambda o, val: _store16(builder, val, dgb, o))
            return context.get_dummy_value()
        return sig, codegen
    return uk


# --------------------------------------------------------------------------- GRU reset-before
def _make_rb_fwd_a(MR):
    @intrinsic
    def uk(typingctx, tag, x, ldx, h, ldh, w, KI, KH, bias, hin, ldhin, act, ldact, rhb, ldrh):
        """Reset-before GRU, first half of a step: one panel (16 units), MR rows:
        ``w`` the panel's ``[KI][3*16]`` words ([r z n] of W_ih) then ``[KH][2*16]``
        ([r z] of W_hh); r = σ(x W_r + h U_r + b_r), z likewise, nx = x W_n + b_in
        (``bias`` [b_r, b_z, b_in]); act = (r, z, nx) (row stride ``ldact``) and
        r h rounded to ``rhb`` (the operand of U_n; row stride ``ldrh``); ``hin``
        the float32 h (row stride ``ldhin``)."""
        if not isinstance(tag, types.UniTuple):
            return None
        native = is_native(tag)
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, x, ldx, h, ldh, w, KI, KH, bias, hin, ldhin, act, ldact, rhb, ldrh = args
            x, h, w = i32_ptrs(builder, x, h, w)
            (rhb,) = i16_ptrs(builder, rhb)
            bias, hin, act = ptrs(builder, F32X, bias, hin, act)
            wh = builder.gep(w, [builder.mul(KI, ir.Constant(I64, 3 * VW))])
            accs = accs_bf16(builder, native, MR, 3,
                             [(x, _half(builder, ldx), w, KI, (0, 1, 2)),
                              (h, _half(builder, ldh), wh, KH, (0, 1))])
            m = VMath(builder, F32X)
            bv = [vload(builder, F32X, bias, ir.Constant(I64, g * VW)) for g in range(3)]
            for r in range(MR):
                gr = m.sigmoid(m.add(accs[r][0], bv[0]))
                gz = m.sigmoid(m.add(accs[r][1], bv[1]))
                nx = m.add(accs[r][2], bv[2])
                for g, val in enumerate((gr, gz, nx)):
                    vstore(builder, val, F32X, act, row_off(builder, r, ldact, g * VW))
                hp = vload(builder, F32X, hin, row_off(builder, r, ldhin))
                _store16(builder, m.mul(gr, hp), rhb, row_off(builder, r, ldrh))
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_rb_fwd_b(MR):
    @intrinsic
    def uk(typingctx, tag, rh, ldrh, w, KH, bhn, act, ldact, hin, y, ldy, hb, ldhb):
        """Reset-before GRU, second half: one panel, MR rows: n = tanh(nx + rd(r h)
        U_nᵀ + b_hn) (``w`` ``[KH][16]`` words, ``rh`` bf16 rows of stride ``ldrh``
        elements), h' = n + z (h - n) float32 to ``y`` and rounded to ``hb``; n
        replaces nx in ``act``."""
        if not isinstance(tag, types.UniTuple):
            return None
        native = is_native(tag)
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, rh, ldrh, w, KH, bhn, act, ldact, hin, y, ldy, hb, ldhb = args
            rh, w = i32_ptrs(builder, rh, w)
            (hb,) = i16_ptrs(builder, hb)
            bhn, act, hin, y = ptrs(builder, F32X, bhn, act, hin, y)
            accs = accs_bf16(builder, native, MR, 1, [(rh, _half(builder, ldrh), w, KH, (0,))])
            m = VMath(builder, F32X)
            bv = vload(builder, F32X, bhn, ir.Constant(I64, 0))
            for r in range(MR):
                no = row_off(builder, r, ldact, 2 * VW)
                gz = vload(builder, F32X, act, row_off(builder, r, ldact, VW))
                gn = m.tanh(m.add(m.add(accs[r][0], bv), vload(builder, F32X, act, no)))
                vstore(builder, gn, F32X, act, no)
                ro = row_off(builder, r, ldy)
                hn = gru_h(m, gz, gn, vload(builder, F32X, hin, ro))
                vstore(builder, hn, F32X, y, ro)
                _store16(builder, hn, hb, row_off(builder, r, ldhb))
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_rb_bwd_x(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dg, dgb, ldg, dgg):
        """Reset-before GRU backward, first half of a step: NV output vectors, MR rows:
        dh = a w + dy + dd (``a``: the rounded (dr, dz) of the next step, ``w`` its
        U_rz panel ``[KK][NV*16]`` words; ``dd`` the carried dh z + drh r of the
        next step), then dn = dh (1-z)(1-n²), dz = dh (h-n) z(1-z) float32 and
        rounded (gates 2 and 1 of ``dg``/``dgb``: vector v of gate g at
        ``v*16 + g*dgg``, row stride ``ldg``); ``dd`` = dh z. ``act``: (r, z, n)
        per vector ([NV][3][16], row stride ``ldact``)."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, KK, dy, ldh, act, ldact, hp, dd, dg, dgb, ldg, dgg = args
            a, w = i32_ptrs(builder, a, w)
            (dgb,) = i16_ptrs(builder, dgb)
            dy, act, hp, dd, dg = ptrs(builder, F32X, dy, act, hp, dd, dg)
            accs = accs_bf16(builder, native, MR, NV,
                             [(a, _half(builder, lda), w, KK, tuple(range(NV)))])
            m = VMath(builder, F32X)
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    dh = m.add(m.add(accs[r][v], vload(builder, F32X, dy, ho)),
                               vload(builder, F32X, dd, ho))
                    gz, gn = [vload(builder, F32X, act,
                                    row_off(builder, r, ldact, v * 3 * VW + g * VW))
                              for g in (1, 2)]
                    dn, dz = gru_back_nz(m, dh, gz, gn, vload(builder, F32X, hp, ho))
                    for g, val in ((1, dz), (2, dn)):
                        o = builder.add(row_off(builder, r, ldg, v * VW),
                                        builder.mul(ir.Constant(I64, g), dgg))
                        vstore(builder, val, F32X, dg, o)
                        _store16(builder, val, dgb, o)
                    vstore(builder, m.mul(dh, gz), F32X, dd, ho)
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_rb_bwd_y(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, ldh, act, ldact, hp, dd, dg, dgb, ldg):
        """Reset-before GRU backward, second half: NV output vectors, MR rows:
        drh = a w (``a`` the rounded dn of this step, ``w`` its U_n panel), dr =
        drh h r(1-r) float32 and rounded (gate 0 of ``dg``/``dgb``), dd += drh r."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, KK, ldh, act, ldact, hp, dd, dg, dgb, ldg = args
            a, w = i32_ptrs(builder, a, w)
            (dgb,) = i16_ptrs(builder, dgb)
            act, hp, dd, dg = ptrs(builder, F32X, act, hp, dd, dg)
            accs = accs_bf16(builder, native, MR, NV,
                             [(a, _half(builder, lda), w, KK, tuple(range(NV)))])
            m = VMath(builder, F32X)
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    gr = vload(builder, F32X, act, row_off(builder, r, ldact, v * 3 * VW))
                    drh = accs[r][v]
                    dr = m.mul(m.mul(drh, vload(builder, F32X, hp, ho)),
                               m.mul(gr, m.sub(m.one, gr)))
                    o = row_off(builder, r, ldg, v * VW)
                    vstore(builder, dr, F32X, dg, o)
                    _store16(builder, dr, dgb, o)
                    vstore(builder, m.fma(drh, gr, vload(builder, F32X, dd, ho)), F32X, dd, ho)
            return context.get_dummy_value()
        return sig, codegen
    return uk


uk_gru_fwd = [None] + [_make_gru_fwd(m) for m in range(1, BF16_MR + 1)]
uk_gru_bwd = [None] + [_make_gru_bwd(m) for m in range(1, BF16_MR + 1)]
uk_rnn_fwd = [None] + [_make_rnn_fwd(m) for m in range(1, BF16_MR + 1)]
uk_rnn_bwd = [None] + [_make_rnn_bwd(m) for m in range(1, BF16_MR + 1)]
uk_rb_fwd_a = [None] + [_make_rb_fwd_a(m) for m in range(1, BF16_MR + 1)]
uk_rb_fwd_b = [None] + [_make_rb_fwd_b(m) for m in range(1, BF16_MR + 1)]
uk_rb_bwd_x = [None] + [_make_rb_bwd_x(m) for m in range(1, BF16_MR + 1)]
uk_rb_bwd_y = [None] + [_make_rb_bwd_y(m) for m in range(1, BF16_MR + 1)]
