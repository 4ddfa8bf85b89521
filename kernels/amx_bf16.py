"""The bf16 LSTM's AMX tile machinery and its backward time loop (CPUs with AMX-BF16).

``tdpbf16ps`` multiplies a tile of 16 rows x 32 bf16 (operand rows, 32 k at a
time) by a tile of 16 k pairs x 16 columns x 2 (a weight panel in k pairs) into
16 x 16 float32 accumulators. Here: the permission and tile configuration
(:func:`available`, :data:`amx_begin`, :data:`amx_end`), the forward's LSTM
epilogue on stored accumulators (:func:`_fwd_epilogue`, :data:`uk_amx_epi`: h'
float32 to ``y`` and rounded to the next step's bf16 operand row; the forward
loop itself is :mod:`fastrnn.kernels.amx_fwd`'s), the segment-blocked 32-row
block :data:`uk_amx_seg`, and the tile-rate probe.

Backward, :data:`uk_amx_bwd` does an output panel (up to 64 units: tiles 0-3)
for up to 16 rows: ``dh = dgates U`` from the rounded gate gradients of the
next step (tile 4) and ``U``'s k-pair panel (tiles 5, 6), then the LSTM
backward epilogue: the gate gradients float32 (without peepholes: summed over
the steps into one row per 16 batch rows, for the bias gradients) and rounded
to bf16 (``vcvtne2ps2bf16``, two vectors at a time), row-major and in k pairs
(the operands of :mod:`fastrnn.kernels.amx_gemm`'s products after the loop;
the k pairs two rows to a full-line store, streaming when the copy is large).

The operand widths are multiples of 32 (zero padded: ``pack_bf16(kmult=32)``),
the operand buffers have rows past the last one a tile may read (a block reads
whole tiles of 16 rows; the products of rows past a step's own are not used),
and each thread configures its tiles (``ldtilecfg``) at the start of a kernel
call and releases them at its end. Linux lets a process use the tiles only
after asking (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``):
:func:`available` asks once.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.bf16 import has_amx_bf16, has_avx512_bf16
from fastrnn.kernels.bf16_simd import (F32X, I32X, I64, V32X16, VW, bits16_bf16, cvt2_bf16,
                                       splat_i32, store_bf16)
from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.simd import VMath, lstm_cell, lstm_cell_back, ptrs, vload, vstore
from fastrnn.kernels.sync import panel_steps

__all__ = ["available", "amx_begin", "amx_end", "tile_config", "uk_amx_epi", "uk_amx_seg",
           "lstm_bwd_amx_kernel", "uk_amx_bwd", "probe"]

_i8 = ir.IntType(8)
_i8p = _i8.as_pointer()
_void = ir.VoidType()


@functools.lru_cache(maxsize=1)
def available():
    """Whether this process may use AMX-BF16 tiles (asks Linux once) and the
    AVX512-BF16 instructions the kernels use beside them."""
    if not (has_amx_bf16() and has_avx512_bf16()):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # SYS_arch_prctl (x86-64) = 158, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18
        return libc.syscall(ctypes.c_long(158), ctypes.c_long(0x1023), ctypes.c_long(18)) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return False


@njit(inline="always")
def _aligned_ptr(buf):
    """The first 64-byte boundary in ``buf``'s data (allocate 64 bytes more): tiles
    must start on one (:func:`fastrnn.kernels.packed_bf16.aligned`)."""
    return (buf.ctypes.data + 63) // 64 * 64


@njit(inline="always")
def tile_config(m, low):
    """The ``ldtilecfg`` block of the kernels: palette 1, tiles 0-7 of rows of 64
    bytes, tiles below ``low`` with ``m`` rows, the others 16 (a thread with fewer
    than 16 rows gives its accumulator and operand tiles just those: the products'
    time goes with the rows)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64
        cfg[48 + t] = m if t < low else 16
    return cfg


def _fn(builder, name, args, ret=_void):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _t(v):
    return ir.Constant(_i8, v)


def store_nt(b, val, ptr):
    """A streaming (non-temporal) store of a 64-byte vector to a 64-byte aligned
    ``ptr``: no read for ownership, the line not kept in the caches."""
    st = b.store(val, ptr, align=64)
    st.set_metadata("nontemporal", b.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def amx_begin(typingctx, cfg):
    """``ldtilecfg`` from the 64-byte configuration at byte address ``cfg``."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        builder.call(_fn(builder, "llvm.x86.ldtilecfg", [_i8p]),
                     [builder.inttoptr(args[0], _i8p)])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def amx_end(typingctx):
    """``tilerelease``."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.call(_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()
    return sig, codegen


def _fwd_epilogue(b, peephole, scr, nr, bias, peep, cin, cout, ldc, y, ldy, hb, ldhb, act, ldact,
                  training):
    """The LSTM cell on ``nr`` rows of the accumulators stored at ``scr`` ([rows][64]
    float32): h' float32 to ``y`` and rounded to ``hb``, c' to ``cout``, the gates to
    ``act`` in training (``training`` i64: 0 inference; 1 training; 2 training, the
    gates stored non-temporal: whole lines that go to memory without being read
    first, for saved gates larger than the caches; ``act`` and ``ldact`` then keep
    every row's gates on 64-byte boundaries)."""
    C = lambda v: ir.Constant(I64, v)  # noqa: E731
    s, bias, peep, cin, cout, y, act = ptrs(b, F32X, scr, bias, peep, cin, cout, y, act)
    (hb,) = [b.inttoptr(hb, ir.IntType(16).as_pointer())]
    m = VMath(b, F32X)
    bv = [vload(b, F32X, bias, C(g * VW)) for g in range(4)]
    pv = [vload(b, F32X, peep, C(k * VW)) for k in range(3)] if peephole else None
    with cgutils.for_range(b, nr) as loop:
        r = loop.index
        pre = [m.add(vload(b, F32X, s, b.add(b.mul(r, C(64)), C(16 * g))), bv[g])
               for g in range(4)]
        ro = b.mul(r, ldc)
        cp = vload(b, F32X, cin, ro)
        gi, gf, gg, go, cn, hn = lstm_cell(m, pre, cp, pv)
        vstore(b, cn, F32X, cout, ro)
        vstore(b, hn, F32X, y, b.mul(r, ldy))
        store_bf16(b, bits16_bf16(b, hn), hb, b.mul(r, ldhb))
        with b.if_then(b.icmp_signed("!=", training, C(0))):
            with b.if_else(b.icmp_signed("==", training, C(2))) as (nt, plain):
                with nt:
                    for g, val in enumerate((gi, gf, gg, go)):
                        p = b.gep(act, [b.add(b.mul(r, ldact), C(g * VW))])
                        store_nt(b, val, b.bitcast(p, F32X.as_pointer()))
                with plain:
                    for g, val in enumerate((gi, gf, gg, go)):
                        vstore(b, val, F32X, act, b.add(b.mul(r, ldact), C(g * VW)))


def _make_epi(peephole):
    @intrinsic
    def uk(typingctx, scr, nr, bias, peep, cin, cout, ldc, y, ldy, hb, ldhb, act, ldact,
           training):
        """The forward LSTM epilogue (:func:`_fwd_epilogue`) on ``nr`` rows of
        accumulators at ``scr`` (rows of 64 float32)."""
        i8 = types.int64
        sig = types.void(*([i8] * 14))

        def codegen(context, builder, signature, args):
            _fwd_epilogue(builder, peephole, *args)
            return context.get_dummy_value()
        return sig, codegen
    return uk


#: [peephole]: the forward epilogue (used by :mod:`fastrnn.kernels.amx_fwd`)
uk_amx_epi = [_make_epi(False), _make_epi(True)]

#: chunks of 32 k per weight segment of :data:`uk_amx_seg`'s blocked loops: 2 gates x
#: 16 chunks x 1 KiB = 32 KiB of weights that stay in L1 across a step's row pairs
#: (the accumulators go through the scratch once per segment)
SEG = 16
#: the blocked loop runs from this many rows per thread and step (fewer: the 16-row
#: block, which loads each weight tile once per 16 rows anyway)
SEG_MIN_ROWS = 32


# --------------------------------------------------------------------------- backward
#: the k-pair copy is written with streaming stores from this size (twice a
#: core's L2: it is read only after the loop, and its lines would push U's panels
#: out of L2); smaller, with plain stores (the products after the loop read it
#: from the caches)
VT_STREAM_BYTES = 4 << 20

#: the segment-blocked backward loop prefetches the next panel of U into L2 from
#: this size of U (a quarter of a core's L2; smaller, U stays there beside a step's
#: rows and the prefetches only cost)
U_PF_BYTES = 1 << 19

_M32 = ir.VectorType(ir.IntType(1), 32)


@intrinsic
def uk_amx_seg(typingctx, a, ldb, w, nk, scr, acc, pf, lpc):
    """32 rows x 2 gates of one panel over ``nk`` chunks: the accumulators (tiles 0-3,
    rows 0-15 / 16-31 x the two gates) from ``scr`` (``acc``; else zero; rows of 256
    bytes) plus the operand rows ``a`` (tiles 4, 5: 32 rows of stride ``ldb`` bytes
    from ``a``) times the two gates' weight tiles (6, 7: at ``w``, ``w + 64`` of
    each chunk's 4 KiB, rows of 256 bytes), stored back to ``scr``. Every loaded
    tile serves two products; the caller runs a segment's weights (``nk`` x 2
    KiB) against every row pair of the step, so they come from L1 after the
    first. Each chunk ``c`` also prefetches ``lpc`` cache lines (none when 0) into
    L2 (``prefetcht1``) from ``pf + c*lpc*64``: the weights of the panel that
    follows (tile loads that miss L2 stall the tile unit, and a step's panels of U
    do not all stay in L2)."""
    i8 = types.int64
    sig = types.void(i8, i8, i8, i8, i8, types.boolean, i8, i8)

    def codegen(context, builder, signature, args):
        a, ldb, w, nk, scr, acc, pf, lpc = args
        b = builder
        load = _fn(b, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
        dp = _fn(b, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
        store = _fn(b, "llvm.x86.tilestored64", [_i8, _i8p, I64])
        i32 = ir.IntType(32)
        pfn = _fn(b, "llvm.prefetch.p0", [_i8p, i32, i32, i32])
        C = lambda v: ir.Constant(I64, v)  # noqa: E731
        cq = [b.add(scr, C(16 * 256 * i + 64 * j)) for i in range(2) for j in range(2)]
        with b.if_else(acc) as (then, otherwise):
            with then:
                for t in range(4):
                    b.call(load, [_t(t), b.inttoptr(cq[t], _i8p), C(256)])
            with otherwise:
                for t in range(4):
                    b.call(_fn(b, "llvm.x86.tilezero", [_i8]), [_t(t)])
        a16 = b.mul(ldb, C(16))
        with cgutils.for_range(b, nk) as loop:
            c = loop.index
            ac = b.add(a, b.mul(c, C(64)))
            wc = b.add(w, b.mul(c, C(16 * 256)))
            b.call(load, [_t(4), b.inttoptr(ac, _i8p), ldb])
            b.call(load, [_t(6), b.inttoptr(wc, _i8p), C(256)])
            b.call(dp, [_t(0), _t(4), _t(6)])
            b.call(load, [_t(7), b.inttoptr(b.add(wc, C(64)), _i8p), C(256)])
            b.call(dp, [_t(1), _t(4), _t(7)])
            b.call(load, [_t(5), b.inttoptr(b.add(ac, a16), _i8p), ldb])
            b.call(dp, [_t(2), _t(5), _t(6)])
            b.call(dp, [_t(3), _t(5), _t(7)])
            pc = b.add(pf, b.mul(b.mul(c, lpc), C(64)))
            with cgutils.for_range(b, lpc) as ln:
                b.call(pfn, [b.inttoptr(b.add(pc, b.mul(ln.index, C(64))), _i8p),
                             ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        for t in range(4):
            b.call(store, [_t(t), b.inttoptr(cq[t], _i8p), C(256)])
        return context.get_dummy_value()
    return sig, codegen


def _bwd_epilogue(b, peephole, NV, scr, nr, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn, dc,
                  dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream):
    """The LSTM backward on ``nr`` rows of ``NV`` vectors whose products ``dgates U``
    are stored at ``scr`` ([rows][64] float32); row ``r`` is the step's row ``row0 +
    r``. The gate gradients float32 to ``dg`` (row 0 of the step's rows of stride
    ``ldact``; without peepholes added to the bias gradients' sums, one row of ``dg``
    per 16 of the step's rows, ``(row0 + r) // 16``: each of the step's rows in
    order), and rounded to ``dgb`` and, in k pairs, to the weight gradient's operand
    at byte address ``vb`` (:func:`fastrnn.kernels.amx_gemm.vnni_shape`: row ``r`` is
    k = ``k0 + r``; vector v of gate g in the tile column at ``vb + v*vks + g*vgs``;
    two rows of one k pair with one full-line store, a streaming one where ``stream``
    is not 0: a large copy read only after the loop), dc."""
    C = lambda v: ir.Constant(I64, v)  # noqa: E731
    vstore16 = _fn(b, "llvm.masked.store.v32i16.p0", [V32X16, V32X16.as_pointer(), ir.IntType(32),
                                                        _M32])
    even = ir.Constant(_M32, [i % 2 == 0 for i in range(32)])
    odd = ir.Constant(_M32, [i % 2 == 1 for i in range(32)])
    s, dhx, dy, act, peep, cp, cn, dc, dg = ptrs(b, F32X, scr, dhx, dy, act, peep, cp,
                                                 cn, dc, dg)
    (dgb,) = [b.inttoptr(dgb, ir.IntType(16).as_pointer())]
    m = VMath(b, F32X)
    if peephole:
        pv = [[vload(b, F32X, peep, C((3 * v + k) * VW)) for k in range(3)]
              for v in range(NV)]
    vps = [(v, v + 1) if v + 1 < NV else (v,) for v in range(0, NV, 2)]

    def row(r, v):
        """Row ``r``'s gate gradients of vector ``v``."""
        ho = b.add(b.mul(r, ldh), C(v * VW))
        acc = vload(b, F32X, s, b.add(b.mul(r, C(64)), C(16 * v)))
        dh = m.add(m.add(acc, vload(b, F32X, dy, ho)),
                   vload(b, F32X, dhx, b.add(b.mul(r, lddhx), C(v * VW))))
        ra = b.mul(r, ldact)
        gates = [vload(b, F32X, act, b.add(ra, C(v * 4 * VW + g * VW))) for g in range(4)]
        dgs, dcp = lstm_cell_back(
            m, dh, gates, vload(b, F32X, cn, ho), vload(b, F32X, cp, ho),
            vload(b, F32X, dc, ho), pv[v] if peephole else None)
        if peephole:            # dg [n,B,GH]: the peephole gradients read it
            dr = b.mul(b.add(row0, r), ldact)
        else:                   # dg [ceil(B/16),GH]: the sums over the steps
            dr = b.mul(b.lshr(b.add(row0, r), C(4)), ldact)
        for g, val in enumerate(dgs):
            o = b.add(dr, b.add(b.mul(C(v), dgv), b.mul(C(g), dgg)))
            vstore(b, val if peephole else m.add(vload(b, F32X, dg, o), val), F32X, dg, o)
        vstore(b, dcp, F32X, dc, ho)
        return dgs

    V32I = ir.VectorType(ir.IntType(32), 32)
    low16 = ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16)))

    def rows(r, pair, stream=False):
        """Row ``r`` alone (its half of the k pair row with a masked store: the other
        row may be another call's) or rows ``r``, ``r + 1`` (k even; ``stream``: the
        pair's line with a streaming store)."""
        k = b.add(k0, r)
        vrow = b.add(vb, b.mul(b.lshr(k, C(1)), C(64)))
        odd_row = b.icmp_unsigned("!=", b.and_(k, C(1)), C(0))
        for vp in vps:
            dgs = {(h, v): row(b.add(r, C(h)), v) for h in range(2 if pair else 1) for v in vp}
            for g in range(4):
                # per row, the vector pair's bf16 (words 0-15: vp[0], 16-31: vp[1])
                x = [cvt2_bf16(b, dgs[h, vp[0]][g], dgs[h, vp[-1]][g])
                     for h in range(2 if pair else 1)]
                for h, xh in enumerate(x):
                    o = b.add(b.mul(b.add(r, C(h)), lddgb),
                              b.add(b.mul(C(vp[0]), dgv), b.mul(C(g), dgg)))
                    if len(vp) == 2:      # two vectors of a gate: one line of dgb
                        b.store(xh, b.bitcast(b.gep(dgb, [o]), V32X16.as_pointer()), align=2)
                    else:
                        store_bf16(b, b.shuffle_vector(xh, xh, low16), dgb, o)
                for j, v in enumerate(vp):
                    pt = b.inttoptr(b.add(b.add(vrow, b.mul(C(v), vks)), b.mul(C(g), vgs)),
                                    V32X16.as_pointer())
                    if pair:              # the two rows' words interleaved: one line
                        w = b.shuffle_vector(x[0], x[1], ir.Constant(
                            V32I, [16 * j + i // 2 + 32 * (i % 2) for i in range(32)]))
                        if stream:        # the driver streams only a 64-byte aligned copy
                            store_nt(b, w, pt)
                        else:
                            b.store(w, pt, align=4)
                    else:
                        w32 = b.zext(b.shuffle_vector(x[0], x[0], ir.Constant(
                            ir.VectorType(ir.IntType(32), 16), [16 * j + i for i in range(16)])),
                            I32X)
                        w32 = b.select(odd_row, b.shl(w32, splat_i32(16)), w32)
                        b.call(vstore16, [b.bitcast(w32, V32X16), pt,
                                          ir.Constant(ir.IntType(32), 4),
                                          b.select(odd_row, odd, even)])

    # an odd first k alone, then pairs, then a last row alone
    first = b.select(b.icmp_unsigned("!=", b.and_(k0, C(1)), C(0)),
                     b.select(b.icmp_signed(">", nr, C(0)), C(1), C(0)), C(0))
    with b.if_then(b.icmp_signed(">", first, C(0))):
        rows(C(0), False)
    npair = b.sdiv(b.sub(nr, first), C(2))
    with b.if_else(b.icmp_signed("!=", stream, C(0))) as (then, otherwise):
        for flag, blk in ((True, then), (False, otherwise)):
            with blk:
                with cgutils.for_range(b, npair) as loop:
                    rows(b.add(first, b.mul(loop.index, C(2))), True, flag)
    last = b.add(first, b.mul(npair, C(2)))
    with b.if_then(b.icmp_signed("<", last, nr)):
        rows(last, False)


def _make_bwd(peephole):
    @intrinsic
    def uk(typingctx, ntag, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, act, ldact,
           peep, cp, cn, dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream):
        """NV output vectors (``len(ntag)``), ``nr <= 16`` rows: dh = a @ w on tiles
        (``a``: the rounded gate gradients of the next step, bf16 rows of stride
        ``ldab`` bytes, ``KKc`` chunks of 32 k; ``w``: the output panel, ``[KKc*16]``
        pair rows of ``ldwb`` bytes), then the LSTM backward epilogue of
        :data:`fastrnn.kernels.bf16_simd.uk_bf16_bwd` on ``nr`` rows (the rounded gate
        gradients to ``dgb``, row stride ``lddgb`` elements, and in k pairs to ``vb``)."""
        if not isinstance(ntag, types.UniTuple):
            return None
        NV = ntag.count
        i8 = types.int64
        sig = types.void(ntag, *([i8] * 28))

        def codegen(context, builder, signature, args):
            (_, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn,
             dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream) = args
            b = builder
            load = _fn(b, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
            dp = _fn(b, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
            C = lambda v: ir.Constant(I64, v)  # noqa: E731
            for v in range(NV):
                b.call(_fn(b, "llvm.x86.tilezero", [_i8]), [_t(v)])
            with cgutils.for_range(b, KKc) as loop:
                c = loop.index
                b.call(load, [_t(4), b.inttoptr(b.add(a, b.mul(c, C(64))), _i8p), ldab])
                wc = b.add(w, b.mul(b.mul(c, C(16)), ldwb))
                for v in range(NV):
                    b.call(load, [_t(5 + v % 2), b.inttoptr(b.add(wc, C(64 * v)), _i8p), ldwb])
                    b.call(dp, [_t(v), _t(4), _t(5 + v % 2)])
            store = _fn(b, "llvm.x86.tilestored64", [_i8, _i8p, I64])
            for v in range(NV):
                b.call(store, [_t(v), b.inttoptr(b.add(scr, C(64 * v)), _i8p), C(256)])
            _bwd_epilogue(b, peephole, NV, scr, nr, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn,
                          dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream)
            return context.get_dummy_value()
        return sig, codegen
    return uk


@intrinsic
def sfence(typingctx):
    """``sfence``: earlier non-temporal (weakly ordered) stores ordered before later
    stores, so that whatever reads them after the kernel sees them."""
    sig = types.void()

    def codegen(context, b, signature, args):
        b.call(_fn(b, "llvm.x86.sse.sfence", []), [])
        return context.get_dummy_value()
    return sig, codegen


#: [peephole]: the backward blocks
uk_amx_bwd = [_make_bwd(False), _make_bwd(True)]
_ub, _ubp = uk_amx_bwd


def _make_bwd_epi(peephole):
    @intrinsic
    def uk(typingctx, scr, nr, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn, dc, dg, dgv, dgg,
           dgb, lddgb, vb, vks, vgs, k0, row0, stream):
        """The backward epilogue of :data:`uk_amx_bwd` alone, four vectors (64 units),
        on ``nr`` rows of products at ``scr`` (rows of 64 float32)."""
        i8 = types.int64
        sig = types.void(*([i8] * 23))

        def codegen(context, builder, signature, args):
            _bwd_epilogue(builder, peephole, 4, *args)
            return context.get_dummy_value()
        return sig, codegen
    return uk


#: [peephole]: the epilogue of the segment-blocked backward
uk_amx_bwd_epi = [_make_bwd_epi(False), _make_bwd_epi(True)]
_be, _bep = uk_amx_bwd_epi


@njit(inline="always")
def _bwd_block(peep, ntag, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, act, ldact, pp,
               cp, cn, dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream):
    if peep is None:
        _ub(ntag, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn,
            dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream)
    else:
        _ubp(ntag, a, ldab, w, ldwb, KKc, scr, nr, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn,
             dc, dg, dgv, dgg, dgb, lddgb, vb, vks, vgs, k0, row0, stream)


@njit(inline="always")
def _bwd_rows(lo, hi, peep, ntag, a, GH, GHb, w, ldwb, KKc, scr, dhx, lddhx, dy, Hp, act, pp,
              cp, cn, dc, dg, dgb, vb, vks, vgs, k0, stream):
    """Rows [lo, hi) of one output panel in blocks of 16 (pointers at row 0, ``dg`` at
    the step's; ``GHb`` the row stride of the bf16 gate gradients; row 0 is k = ``k0``
    of the k-pair copy)."""
    for q0 in range(lo, hi, 16):
        nr = min(16, hi - q0)
        _bwd_block(peep, ntag, a + 2 * q0 * GHb, 2 * GHb, w, ldwb, KKc, scr, nr,
                   dhx + 4 * q0 * lddhx, lddhx, dy + 4 * q0 * Hp, Hp, act + 4 * q0 * GH, GH, pp,
                   cp + 4 * q0 * Hp, cn + 4 * q0 * Hp, dc + 4 * q0 * Hp, dg, 16,
                   Hp, dgb + 2 * q0 * GHb, GHb, vb, vks, vgs, k0 + q0, q0, stream)


@njit(inline="always")
def _bwd_panel(s, q, tid, Q, args, peep):
    (n, B, Bx, GHb, Hp, GH, ubp, gp, gbp, ap, csp, dyp, dhp, dcp, zp, ppp, nact, scr, r0,
     r1, vtp, vks, stream) = args
    NB = 64
    nb = min(nact[s], r1)
    nprod = min(nact[s + 1], r1) if s + 1 < n else r0
    nprod = max(nprod, r0)
    a = gbp + 2 * (s + 1) * Bx * GHb
    j0 = q * NB
    wd = min(NB, Hp - j0)
    nv = wd // 16
    wq = ubp + 2 * q * GH * NB
    col = j0 * 4
    dyq = dyp + 4 * (s * B * Hp + j0)
    aq = ap + 4 * (s * B * GH + col)
    cpq = csp + 4 * (s * B * Hp + j0)
    cnq = cpq + 4 * B * Hp
    dcq = dcp + 4 * j0
    if peep is None:
        dgq = gp + 4 * j0                 # dg [ceil(B/16),GH]: sums over the steps
    else:
        dgq = gp + 4 * (s * B * GH + j0)
    dgbq = gbp + 2 * (s * Bx * GHb + j0)
    dhq = dhp + 4 * j0
    ppq = ppp + 4 * 3 * j0
    vq = vtp + (j0 // 16) * vks           # the k-pair copy: tile columns of 16 units
    vgs = (Hp // 16) * vks
    k0 = s * B
    for part in range(2):
        lo = r0 if part == 0 else nprod
        hi = nprod if part == 0 else nb
        KKc = GH // 32 if part == 0 else 0
        dhx = zp if part == 0 else dhq
        lddhx = 0 if part == 0 else Hp
        if nv == 4 and part == 0 and hi - lo >= SEG_MIN_ROWS:
            # blocked by weight segments (uk_amx_seg): per vector pair and segment of U's
            # panel, every row pair, the sums in the scratch; then the epilogue. Beside
            # the products, the panel the thread likely takes next (its next, or the
            # first of the next step) into L2 by equal parts, when U is large
            nxt = q + 1 if tid == 0 else q - 1
            if nxt < 0 or nxt >= Q:
                nxt = 0 if tid == 0 else Q - 1
            pw = ubp + 2 * nxt * GH * NB
            npass = 2 * ((KKc + SEG - 1) // SEG) * ((hi - lo + 31) // 32)
            lpc = -(-2 * GH * NB // (64 * npass * SEG)) if 2 * GH * Hp >= U_PF_BYTES else 0
            t = 0
            for vp in range(2):
                for c0 in range(0, KKc, SEG):
                    nk = min(SEG, KKc - c0)
                    for q0 in range(lo, hi, 32):
                        uk_amx_seg(a + 2 * q0 * GHb + 64 * c0, 2 * GHb,
                                      wq + c0 * 16 * 4 * wd + 128 * vp, nk,
                                      scr + 256 * (q0 - lo) + 128 * vp, c0 > 0,
                                      pw + t * lpc * SEG * 64, lpc)
                        t += 1
            for q0 in range(lo, hi, 16):
                nr = min(16, hi - q0)
                if peep is None:
                    _be(scr + 256 * (q0 - lo), nr, zp, 0, dyq + 4 * q0 * Hp, Hp, aq + 4 * q0 * GH,
                        GH, ppq, cpq + 4 * q0 * Hp, cnq + 4 * q0 * Hp, dcq + 4 * q0 * Hp,
                        dgq, 16, Hp, dgbq + 2 * q0 * GHb, GHb, vq, vks, vgs, k0 + q0, q0,
                        stream)
                else:
                    _bep(scr + 256 * (q0 - lo), nr, zp, 0, dyq + 4 * q0 * Hp, Hp,
                         aq + 4 * q0 * GH, GH, ppq, cpq + 4 * q0 * Hp, cnq + 4 * q0 * Hp,
                         dcq + 4 * q0 * Hp, dgq, 16, Hp, dgbq + 2 * q0 * GHb, GHb,
                         vq, vks, vgs, k0 + q0, q0, stream)
        elif nv == 4:
            _bwd_rows(lo, hi, peep, (0, 0, 0, 0), a, GH, GHb, wq, 4 * wd, KKc, scr, dhx, lddhx, dyq,
                      Hp, aq, ppq, cpq, cnq, dcq, dgq, dgbq, vq, vks, vgs, k0, stream)
        elif nv == 3:
            _bwd_rows(lo, hi, peep, (0, 0, 0), a, GH, GHb, wq, 4 * wd, KKc, scr, dhx, lddhx, dyq,
                      Hp, aq, ppq, cpq, cnq, dcq, dgq, dgbq, vq, vks, vgs, k0, stream)
        elif nv == 2:
            _bwd_rows(lo, hi, peep, (0, 0), a, GH, GHb, wq, 4 * wd, KKc, scr, dhx, lddhx, dyq,
                      Hp, aq, ppq, cpq, cnq, dcq, dgq, dgbq, vq, vks, vgs, k0, stream)
        else:
            _bwd_rows(lo, hi, peep, (0,), a, GH, GHb, wq, 4 * wd, KKc, scr, dhx, lddhx, dyq,
                      Hp, aq, ppq, cpq, cnq, dcq, dgq, dgbq, vq, vks, vgs, k0, stream)


@njit(**JIT_OPTIONS)
def lstm_bwd_amx_kernel(act, cs, ub, peep, dy, dhn, zrow, dc, dg, dgb, vt, nact, ctl, tid,
                        nthr, r0, r1):
    # as lstm_bwd_bf16_kernel of packed_bf16 (output panels of 64 units), with dgb
    # [n,Bx,>= G*Hp] uint16, Bx >= B, 32 rows readable past its end (the products
    # read two tiles of 16 rows from any row; rows they read past a step's B rows
    # give products that are not used), and
    # the rounded gate gradients in k pairs to vt (amx_gemm.vnni_shape, zeros in);
    # without peepholes dg is [ceil(B/16),GH] (zeros in): row i the gate gradients
    # of rows 16i..16i+15 summed over the steps, step after step and in row order
    # whatever the threads (r0 a multiple of 16: a block of rows on one thread per
    # step)
    n, B, GH = act.shape
    Hp = dy.shape[2]
    cfg = tile_config(16, 0)
    scr = np.empty(max(16, (r1 - r0 + 63) // 32 * 32) * 64 + 16, np.float32)
    ppp = 0 if peep is None else peep.ctypes.data
    args = (n, B, dgb.shape[1], dgb.shape[2], Hp, GH, ub.ctypes.data, dg.ctypes.data, dgb.ctypes.data,
            act.ctypes.data, cs.ctypes.data, dy.ctypes.data, dhn.ctypes.data, dc.ctypes.data,
            zrow.ctypes.data, ppp, nact, _aligned_ptr(scr), r0, r1, vt.ctypes.data,
            vt.shape[1] * 64, int(vt.nbytes >= VT_STREAM_BYTES and vt.ctypes.data % 64 == 0))
    amx_begin(cfg.ctypes.data)
    w = panel_steps(n, (Hp + 63) // 64, True, ctl, tid, nthr, _bwd_panel, args, peep)
    amx_end()
    sfence()
    return w


# --------------------------------------------------------------------------- probe
@intrinsic
def uk_amx_probe(typingctx, buf, n, span, half):
    """``n`` rounds of four ``tdpbf16ps`` in the 2 x 2 pattern of the kernels (tiles
    0-3 += 4-5 x 6-7). ``span`` 0: the operand tiles loaded once (the tile unit's
    own rate); else each round loads its four tiles from the next 4 KiB of ``buf``,
    round ``i`` at ``(i mod span) * 4096`` (``half``: the B pair from the first 16
    KiB only, as a kernel that keeps its weights in L1)."""
    sig = types.void(types.int64, types.int64, types.int64, types.boolean)

    def codegen(context, b, signature, args):
        buf, n, span, half = args
        load = _fn(b, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
        dp = _fn(b, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
        C = lambda v: ir.Constant(I64, v)  # noqa: E731
        for t in range(8):
            if t < 4:
                b.call(_fn(b, "llvm.x86.tilezero", [_i8]), [_t(t)])
            else:
                b.call(load, [_t(t), b.inttoptr(b.add(buf, C(1024 * (t - 4))), _i8p), C(64)])
        loads = b.icmp_signed(">", span, C(0))
        sp = b.select(loads, span, C(1))
        with cgutils.for_range(b, n) as loop:
            i = loop.index
            off = b.mul(b.urem(i, sp), C(4096))
            offb = b.select(half, b.mul(b.urem(i, C(4)), C(4096)), off)
            with b.if_then(loads):
                for t, o, k in ((4, off, 0), (5, off, 1), (6, offb, 2), (7, offb, 3)):
                    b.call(load, [_t(t), b.inttoptr(b.add(buf, b.add(o, C(1024 * k))), _i8p),
                                  C(64)])
            for k in range(2):
                for j in range(2):
                    b.call(dp, [_t(2 * k + j), _t(4 + k), _t(6 + j)])
        store = _fn(b, "llvm.x86.tilestored64", [_i8, _i8p, I64])
        for t in range(4):
            b.call(store, [_t(t), b.inttoptr(b.add(buf, C(1024 * t)), _i8p), C(64)])
        return context.get_dummy_value()
    return sig, codegen


@njit(nogil=True)
def probe(buf, n, span, half):
    """Run :func:`uk_amx_probe` (``buf`` uint8, at least ``max(span, 4) * 4096 +
    4096`` bytes, 64-byte aligned or not): ``n * 4 * 16384`` FLOP."""
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    uk_amx_probe(buf.ctypes.data, n, span, half)
    amx_end()
