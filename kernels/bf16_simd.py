"""LLVM-IR micro-kernels of the bfloat16 compute mode (:mod:`fastrnn.kernels.packed_bf16`).

Numba ``@intrinsic`` functions, callable from ``@njit`` code only; the same
conventions as :mod:`fastrnn.kernels.simd` (pointers are byte addresses as
int64, the vector width is read off the type of a tag argument), float32
accumulators ``<16 x float>`` only (AVX-512).

bf16 operands (see :mod:`fastrnn.bf16`): a bf16 number is the upper 16 bits
of a float32; arrays of them are ``uint16``. The product ``acc += a w`` over K
runs over *k pairs*: a weight panel is stored as ``[K/2][NV*16][2]`` bf16
(each 32-bit word holds the weights of rows ``2kk`` (low half) and ``2kk+1``
(high half) of one column), so one 64-byte load gives 16 columns x 2 k, and
one 32-bit word of an activation row (``a[2kk]``, ``a[2kk+1]``) is broadcast
to all lanes. ``vdpbf16ps`` (``llvm.x86.avx512bf16.dpbf16ps.512``) adds both
products of each lane to its float32 accumulator; a product of two bf16
numbers is exact in float32.

Each kernel comes in two *modes*, chosen by the tag's element type:

- native (``UniTuple(int64, 16)``, :data:`NATIVE`): ``vdpbf16ps``; the CPU must
  have AVX512-BF16 (the instruction faults elsewhere);
- emulated (``UniTuple(int32, 16)``, :data:`EMULATED`): the two bf16 halves of
  each word widened to float32 (a shift) and added with two FMAs: the same
  products (exact in float32), summed in another order; runs on any AVX-512
  or AVX2 CPU (``<16 x float>`` split into halves there).

Rounding float32 -> bf16 in the epilogues (:func:`round_bits`) is integer
arithmetic on ``<16 x i32>`` that reproduces :func:`fastrnn.bf16.round_bf16`
bit for bit: nearest even, a denormal to a zero of its sign, infinities kept,
a NaN quieted.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.simd import (I64, PREFETCH_BYTES, PREFETCH_MIN_MR, VMath, _splat,
                                  lstm_cell, lstm_cell_back, ptrs,
                                  row_off, vload, vstore)

__all__ = ["NATIVE", "EMULATED", "is_native", "round_bits", "gemm_accs_bf16",
           "uk_bf16_fwd", "uk_bf16_peep_fwd", "uk_bf16_bwd", "uk_bf16_peep_bwd",
           "uk_bf16_gemm", "vround_bf16", "BF16_MR", "VW", "F32X", "I32X", "I16X", "dp_bf16",
           "splat_i32", "i32_ptrs", "i16_ptrs", "uk_dp_probe", "PROBE_ACCS", "cvt2_bf16",
           "bits16_bf16", "half16", "V32X16"]

_f32 = ir.FloatType()
_i32 = ir.IntType(32)
_i16 = ir.IntType(16)
VW = 16
F32X = ir.VectorType(_f32, VW)
I32X = ir.VectorType(_i32, VW)
I16X = ir.VectorType(_i16, VW)

#: the tags that select a kernel's mode (see the module doc)
NATIVE = (0,) * VW
EMULATED = (np.int32(0),) * VW

#: the most batch rows of one micro-kernel call: 6 rows x 4 accumulators + 4
#: panel vectors + a broadcast fit the 32 zmm registers, as in float32
BF16_MR = 6


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite's IR builder has no such type)."""

    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


BF32X = ir.VectorType(_BFloat(), 2 * VW)


def is_native(tag):
    """Whether a tag type asks for the native (``vdpbf16ps``) mode."""
    return isinstance(tag, types.UniTuple) and tag.dtype == types.int64


def splat_i32(v):
    """An ``<16 x i32>`` splat constant (``v`` taken modulo 2^32, as signed)."""
    v &= 0xFFFFFFFF
    return ir.Constant(I32X, [v - (1 << 32) if v >= 1 << 31 else v] * VW)


def round_bits(builder, v):
    """``<16 x float>`` -> ``<16 x i16>``: the bf16 bits of :func:`fastrnn.bf16.round_bf16`."""
    b = builder
    u = b.bitcast(v, I32X)
    exp = b.and_(u, splat_i32(0x7F800000))
    lsb = b.and_(b.lshr(u, splat_i32(16)), splat_i32(1))
    rounded = b.and_(b.add(b.add(u, splat_i32(0x7FFF)), lsb), splat_i32(0xFFFF0000))
    special = b.icmp_unsigned("==", exp, splat_i32(0x7F800000))
    nan = b.and_(special, b.icmp_unsigned("!=", b.and_(u, splat_i32(0x007FFFFF)), splat_i32(0)))
    r = b.select(special, b.select(nan, b.or_(u, splat_i32(0x00400000)), u), rounded)
    r = b.select(b.icmp_unsigned("==", exp, splat_i32(0)), b.and_(u, splat_i32(0x80000000)), r)
    return b.trunc(b.lshr(r, splat_i32(16)), I16X)


#: 32 bf16 bit patterns: what ``vcvtne2ps2bf16`` gives for two float vectors
V32X16 = ir.VectorType(ir.IntType(16), 32)


def cvt2_bf16(builder, lo, hi):
    """``vcvtne2ps2bf16`` (AVX512-BF16; the AMX route requires it): two ``<16 x
    float>`` rounded to bf16 as :func:`round_bits` does (nearest even, denormals to
    signed zero, NaN quieted; whatever MXCSR says) in one instruction instead of a
    dozen per vector: ``lo``'s bits in words 0-15 of the ``<32 x i16>``, ``hi``'s in
    16-31."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(BF32X, [F32X, F32X]),
        "llvm.x86.avx512bf16.cvtne2ps2bf16.512")
    return builder.bitcast(builder.call(fn, [hi, lo]), V32X16)


def half16(builder, v32, h):
    """Words ``16h .. 16h+15`` of a ``<32 x i16>`` as ``<16 x i16>``."""
    return builder.shuffle_vector(v32, ir.Constant(V32X16, None),
                                  ir.Constant(I32X, list(range(16 * h, 16 * h + 16))))


def bits16_bf16(builder, v):
    """:func:`round_bits` of one ``<16 x float>`` by ``vcvtne2ps2bf16``."""
    return half16(builder, cvt2_bf16(builder, v, v), 0)


def store_bf16(builder, bits, base16, off):
    """Store ``<16 x i16>`` at element ``off`` of an i16 pointer."""
    p = builder.gep(base16, [off])
    builder.store(bits, builder.bitcast(p, I16X.as_pointer()), align=2)


def dp_bf16(builder, native, acc, a, w):
    """``acc + dpbf16(a, w)`` for ``<16 x i32>`` words of bf16 pairs."""
    if native:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(F32X, [F32X, BF32X, BF32X]),
            "llvm.x86.avx512bf16.dpbf16ps.512")
        return builder.call(fn, [acc, builder.bitcast(a, BF32X), builder.bitcast(w, BF32X)])
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(F32X, [F32X, F32X, F32X]), "llvm.fma.v16f32")
    lo = lambda x: builder.bitcast(builder.shl(x, splat_i32(16)), F32X)            # noqa: E731
    hi = lambda x: builder.bitcast(builder.and_(x, splat_i32(0xFFFF0000)), F32X)   # noqa: E731
    acc = builder.call(fma, [lo(a), lo(w), acc])
    return builder.call(fma, [hi(a), hi(w), acc])


def gemm_accs_bf16(builder, native, MR, NV, segments, l2next=None):
    """The register-blocked bf16 product: a segment ``(a, lda, w, KK)`` (``a``, ``w``
    i32 pointers to words of bf16 pairs, ``lda`` the row stride of ``a`` in words,
    ``KK`` pairs) adds ``sum_kk dp(a[r*lda+kk], w[kk*NV*16 + v*16 : +16])`` to
    accumulator ``[r][v]``. ``l2next``: as in :func:`fastrnn.kernels.simd.gemm_accs`
    (one line into L2 per pair row, counted across the segments)."""
    i8p = ir.IntType(8).as_pointer()
    pf = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, _i32, _i32, _i32]),
        "llvm.prefetch.p0i8")
    accs = [[cgutils.alloca_once(builder, F32X) for _ in range(NV)] for _ in range(MR)]
    zero = ir.Constant(F32X, [0.0] * VW)
    for r in range(MR):
        for v in range(NV):
            builder.store(zero, accs[r][v])
    kbase = ir.Constant(I64, 0)
    l2 = None if l2next is None else builder.bitcast(l2next, i8p)
    W = NV * VW                                   # words per pair row
    pfd = max(8, PREFETCH_BYTES // (4 * W)) if PREFETCH_BYTES and MR >= PREFETCH_MIN_MR else 0
    for a, lda, w, KK in segments:
        with cgutils.for_range(builder, KK) as loop:
            k = loop.index
            wrow = builder.mul(k, ir.Constant(I64, W))
            wv = [builder.load(builder.bitcast(builder.gep(w, [builder.add(
                wrow, ir.Constant(I64, v * VW))]), I32X.as_pointer()), align=4)
                for v in range(NV)]
            for line in range(0, W if pfd else 0, 16):
                pp = builder.gep(w, [builder.add(wrow, ir.Constant(I64, pfd * W + line))])
                builder.call(pf, [builder.bitcast(pp, i8p), ir.Constant(_i32, 0),
                                  ir.Constant(_i32, 3), ir.Constant(_i32, 1)])
            if l2 is not None:
                pp = builder.gep(l2, [builder.mul(builder.add(kbase, k), ir.Constant(I64, 64))])
                builder.call(pf, [pp, ir.Constant(_i32, 0), ir.Constant(_i32, 2),
                                  ir.Constant(_i32, 1)])
            for r in range(MR):
                aoff = builder.add(builder.mul(ir.Constant(I64, r), lda), k)
                s = _splat(builder, I32X, builder.load(builder.gep(a, [aoff]), align=4))
                for v in range(NV):
                    acc = builder.load(accs[r][v])
                    builder.store(dp_bf16(builder, native, acc, s, wv[v]), accs[r][v])
        kbase = builder.add(kbase, KK)
    return [[builder.load(accs[r][v]) for v in range(NV)] for r in range(MR)]


def i32_ptrs(builder, *vals):
    return [builder.inttoptr(v, _i32.as_pointer()) for v in vals]


def i16_ptrs(builder, *vals):
    return [builder.inttoptr(v, _i16.as_pointer()) for v in vals]


def _half(builder, v):
    """An even element count (or stride) of bf16 as 32-bit words."""
    return builder.ashr(v, ir.Constant(I64, 1))


def _make_fwd(MR, peephole):
    @intrinsic
    def uk(typingctx, tag, x, ldx, h, ldh, w, KI, KH, bias, peep, cin, cout, ldc, y, ldy, hb,
           ldhb, act, ldact, training, wn):
        """One panel (16 units), MR rows, bf16 operands: pre = bias + x @ w[:KI]
        + h @ w[KI:KI+KH] (``x``, ``h`` bf16 rows with even strides ``ldx``, ``ldh``
        in elements; ``KI``, ``KH`` pairs; ``w`` the panel's ``[KI+KH][4*16]`` words),
        then the LSTM cell as :data:`fastrnn.kernels.simd.uk_lstm_fwd` (cin, cout
        row stride ``ldc``; act, ``ldact``), writing ``h' = o tanh(c')`` both as
        float32 to ``y`` (row stride ``ldy``) and rounded to bf16 to ``hb`` (the
        next step's operand, row stride ``ldhb``)."""
        if not isinstance(tag, types.UniTuple):
            return None
        native = is_native(tag)
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         i8, i8, types.boolean, i8)

        def codegen(context, builder, signature, args):
            (_, x, ldx, h, ldh, w, KI, KH, bias, peep, cin, cout, ldc, y, ldy, hb, ldhb, act,
             ldact, training, wn) = args
            x, h, w = i32_ptrs(builder, x, h, w)
            (hb,) = i16_ptrs(builder, hb)
            bias, peep, cin, cout, y, act, wn = ptrs(builder, F32X, bias, peep, cin, cout, y,
                                                      act, wn)
            wh = builder.gep(w, [builder.mul(KI, ir.Constant(I64, 4 * VW))])
            accs = gemm_accs_bf16(builder, native, MR, 4,
                                  [(x, _half(builder, ldx), w, KI),
                                   (h, _half(builder, ldh), wh, KH)], wn)
            m = VMath(builder, F32X)
            bv = [vload(builder, F32X, bias, ir.Constant(I64, g * VW)) for g in range(4)]
            if peephole:
                pv = [vload(builder, F32X, peep, ir.Constant(I64, k * VW)) for k in range(3)]
            for r in range(MR):
                pre = [m.add(accs[r][g], bv[g]) for g in range(4)]
                ro = row_off(builder, r, ldc)
                cp = vload(builder, F32X, cin, ro)
                gi, gf, gg, go, cn, hn = lstm_cell(m, pre, cp, pv if peephole else None)
                vstore(builder, cn, F32X, cout, ro)
                vstore(builder, hn, F32X, y, row_off(builder, r, ldy))
                store_bf16(builder, round_bits(builder, hn), hb, row_off(builder, r, ldhb))
                with builder.if_then(training):
                    for g, val in enumerate((gi, gf, gg, go)):
                        vstore(builder, val, F32X, act, row_off(builder, r, ldact, g * VW))
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_bwd(MR, peephole):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn,
           dc, dg, dgv, dgg, dgb, wn):
        """:data:`fastrnn.kernels.simd.uk_lstm_bwd` with ``dh = a @ w`` in bf16:
        ``a`` the rounded gate gradients of the next step (bf16 rows, even stride
        ``lda`` elements), ``w`` the output panel's ``[KK][NV*16]`` words; the gate
        gradients are written as float32 to ``dg`` and rounded to bf16 to ``dgb``
        (the same element offsets)."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            (_, _, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn, dc, dg, dgv,
             dgg, dgb, wn) = args
            a, w = i32_ptrs(builder, a, w)
            (dgb,) = i16_ptrs(builder, dgb)
            dhx, dy, act, peep, cp, cn, dc, dg, wn = ptrs(
                builder, F32X, dhx, dy, act, peep, cp, cn, dc, dg, wn)
            accs = gemm_accs_bf16(builder, native, MR, NV, [(a, _half(builder, lda), w, KK)], wn)
            m = VMath(builder, F32X)
            if peephole:
                pv = [[vload(builder, F32X, peep, ir.Constant(I64, (3 * v + k) * VW))
                       for k in range(3)] for v in range(NV)]
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    dh = m.add(m.add(accs[r][v], vload(builder, F32X, dy, ho)),
                               vload(builder, F32X, dhx, row_off(builder, r, lddhx, v * VW)))
                    ao = [row_off(builder, r, ldact, v * 4 * VW + g * VW) for g in range(4)]
                    gates = [vload(builder, F32X, act, o) for o in ao]
                    dgs, dcp = lstm_cell_back(
                        m, dh, gates, vload(builder, F32X, cn, ho), vload(builder, F32X, cp, ho),
                        vload(builder, F32X, dc, ho), pv[v] if peephole else None)
                    for g, val in enumerate(dgs):
                        go_ = builder.add(builder.mul(ir.Constant(I64, v), dgv),
                                          builder.mul(ir.Constant(I64, g), dgg))
                        off = builder.add(row_off(builder, r, ldact), go_)
                        vstore(builder, val, F32X, dg, off)
                        store_bf16(builder, round_bits(builder, val), dgb, off)
                    vstore(builder, dcp, F32X, dc, ho)
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make_gemm(MR):
    @intrinsic
    def uk(typingctx, tag, ntag, a, lda, w, KK, out, ldo):
        """``out[r, :NV*16] = a[r] @ w`` (float32 ``out``, row stride ``ldo``; ``a``,
        ``w`` as in :func:`gemm_accs_bf16`, ``lda`` in elements): the bare
        product, for the tests of the two modes against NumPy."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        native = is_native(tag)
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, KK, out, ldo = args
            a, w = i32_ptrs(builder, a, w)
            (out,) = ptrs(builder, F32X, out)
            accs = gemm_accs_bf16(builder, native, MR, NV, [(a, _half(builder, lda), w, KK)])
            for r in range(MR):
                for v in range(NV):
                    vstore(builder, accs[r][v], F32X, out, row_off(builder, r, ldo, v * VW))
            return context.get_dummy_value()
        return sig, codegen
    return uk


@intrinsic
def vround_bf16(typingctx, src, dst):
    """``dst[:16]`` (uint16) = the bf16 bits of ``src[:16]`` (float32), byte addresses
    (for the test of :func:`round_bits` against :func:`fastrnn.bf16.round_bf16`)."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        (s,) = ptrs(builder, F32X, args[0])
        (d,) = i16_ptrs(builder, args[1])
        store_bf16(builder, round_bits(builder, vload(builder, F32X, s, ir.Constant(I64, 0))),
                   d, ir.Constant(I64, 0))
        return context.get_dummy_value()
    return sig, codegen


#: independent accumulators of :func:`uk_dp_probe`: more than the instruction's
#: latency times its issue rate, so the loop measures throughput
PROBE_ACCS = 12


@intrinsic
def uk_dp_probe(typingctx, tag, n):
    """``n`` rounds of :data:`PROBE_ACCS` independent bf16-pair products on registers
    (``vdpbf16ps`` with the native tag, its float32 emulation with the emulated one),
    ``n * PROBE_ACCS * 64`` FLOP: the product unit's own rate, with no loads. Returns a
    lane of the sums (so the loop is not removed)."""
    if not isinstance(tag, types.UniTuple):
        return None
    native = is_native(tag)
    sig = types.float32(tag, types.int64)

    def codegen(context, builder, signature, args):
        b = builder
        n = args[1]
        pre = b.block
        body = b.function.append_basic_block("dp_probe")
        done = b.function.append_basic_block("dp_probe_done")
        b.branch(body)
        b.position_at_end(body)
        i = b.phi(I64)
        accs = [b.phi(F32X) for _ in range(PROBE_ACCS)]
        a, w = splat_i32(0x3F803F80), splat_i32(0x3F803F81)
        new = [dp_bf16(b, native, acc, a, w) for acc in accs]
        i1 = b.add(i, ir.Constant(I64, 1))
        i.add_incoming(ir.Constant(I64, 0), pre)
        i.add_incoming(i1, body)
        for acc, v in zip(accs, new):
            acc.add_incoming(ir.Constant(F32X, [0.0] * VW), pre)
            acc.add_incoming(v, body)
        b.cbranch(b.icmp_signed("<", i1, n), body, done)
        b.position_at_end(done)
        total = new[0]
        for v in new[1:]:
            total = b.fadd(total, v)
        return b.extract_element(total, ir.Constant(_i32, 0))
    return sig, codegen


#: [MR] for MR = 1..BF16_MR ([0] unused)
uk_bf16_fwd = [None] + [_make_fwd(m, False) for m in range(1, BF16_MR + 1)]
uk_bf16_peep_fwd = [None] + [_make_fwd(m, True) for m in range(1, BF16_MR + 1)]
uk_bf16_bwd = [None] + [_make_bwd(m, False) for m in range(1, BF16_MR + 1)]
uk_bf16_peep_bwd = [None] + [_make_bwd(m, True) for m in range(1, BF16_MR + 1)]
uk_bf16_gemm = [None] + [_make_gemm(m) for m in range(1, BF16_MR + 1)]
