"""The bf16 LSTM's weight packing for the AMX route in vector code: the float32
weights rounded to bf16 (``vcvtne2ps2bf16``: the rounding of
:func:`fastrnn.kernels.bf16_simd.round_bits` and :func:`fastrnn.bf16.round_bf16`)
and laid out in one pass.

- :func:`pack_tiles`: the forward's panels in AMX tile order (the layout of
  :func:`fastrnn.kernels.packed_bf16.pack_bf16` with ``tiles=True``), each 1 KiB
  weight tile from 16 rows x 32 k of float32 weights: the 16 rows rounded into
  bf16 pairs (one ``<16 x i32>`` each) and transposed in registers (four rounds
  of two-vector shuffles), so that every line is read and written whole;
  :func:`pack_tiles_bits` also stores ``W_ih``'s bf16 bits as it rounds them.
- :func:`pack_u_bits`: the backward's ``U`` panels (``pack_bf16``'s ``ub``, pairs
  of gate rows interleaved by columns) and ``W_hh``'s bf16 bits from the float32
  ``W_hh`` in one pass, row pair by row pair (each row read once, front to back,
  each 16 columns rounded once for both).
- :func:`x_bits`: float32 -> bf16 bits of the inputs into the operand rows, 16 at
  a time.

Columns past a row's end and rows past a panel's last unit come out zero (masked
loads: nothing past an array is read).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.bf16_simd import (F32X, I16X, I32X, I64, V32X16, bits16_bf16, cvt2_bf16,
                                       half16)

__all__ = ["pack_tiles", "pack_tiles_bits", "pack_u_bits", "x_bits"]

_i1 = ir.IntType(1)
_i32 = ir.IntType(32)
_M16 = ir.VectorType(_i1, 16)
_C = lambda v: ir.Constant(I64, v)  # noqa: E731


def _masked_load(b, addr, mask):
    """``<16 x float>`` at byte address ``addr``, lanes off in ``mask`` zero (not read)."""
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(F32X, [F32X.as_pointer(), _i32, _M16, F32X]),
        "llvm.masked.load.v16f32.p0")
    return b.call(fn, [b.inttoptr(addr, F32X.as_pointer()), ir.Constant(_i32, 4), mask,
                       ir.Constant(F32X, None)])


def _col_masks(b, nc):
    """Masks of the columns [0, 16) and [16, 32) below ``nc`` (i64)."""
    ncv = b.insert_element(ir.Constant(I32X, None), b.trunc(nc, _i32), ir.Constant(_i32, 0))
    ncv = b.shuffle_vector(ncv, ir.Constant(I32X, None), ir.Constant(I32X, [0] * 16))
    lo = b.icmp_signed("<", ir.Constant(I32X, list(range(16))), ncv)
    hi = b.icmp_signed("<", ir.Constant(I32X, list(range(16, 32))), ncv)
    return lo, hi


def _transpose16(b, rows):
    """The 16 x 16 transpose of 16 ``<16 x i32>`` rows: for block sizes 8, 4, 2, 1 the
    off-diagonal blocks of each 2b x 2b block swap (one shuffle per output row)."""
    rows = list(rows)
    for bs in (8, 4, 2, 1):
        lo_mask = [j if not j & bs else 16 + j - bs for j in range(16)]
        hi_mask = [j + bs if not j & bs else 16 + j for j in range(16)]
        out = list(rows)
        for i in range(16):
            if i & bs:
                continue
            a, c = rows[i], rows[i + bs]
            out[i] = b.shuffle_vector(a, c, ir.Constant(I32X, lo_mask))
            out[i + bs] = b.shuffle_vector(a, c, ir.Constant(I32X, hi_mask))
        rows = out
    return rows


@intrinsic
def uk_tile(typingctx, src, ld, nr, nc, dst, bits, bld):
    """One weight tile: rows ``u < nr`` of 32 float32 from byte address ``src + u*ld``
    (columns ``< nc`` read, the others zero) rounded into 16 bf16 pairs each, stored
    transposed at ``dst`` (64-byte aligned): word ``(m, u)`` = pair ``m`` of row ``u``;
    with ``bits`` (else 0) also each row's bf16 bits (columns ``< nc``) at ``bits +
    u*bld``, as rounded for the tile."""
    sig = types.void(*([types.int64] * 7))

    def codegen(context, b, signature, args):
        src, ld, nr, nc, dst, bits, bld = args
        mlo, mhi = _col_masks(b, nc)
        off = ir.Constant(_M16, None)
        m32 = b.shuffle_vector(mlo, mhi, ir.Constant(ir.VectorType(_i32, 32), list(range(32))))
        st32 = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(ir.VoidType(), [V32X16, V32X16.as_pointer(), _i32, m32.type]),
            "llvm.masked.store.v32i16.p0")
        rows = []
        for u in range(16):
            valid = b.icmp_signed("<", _C(u), nr)
            p = b.add(src, b.mul(ld, _C(u)))
            lo = _masked_load(b, p, b.select(valid, mlo, off))
            hi = _masked_load(b, b.add(p, _C(64)), b.select(valid, mhi, off))
            w = cvt2_bf16(b, lo, hi)
            with b.if_then(b.and_(valid, b.icmp_signed("!=", bits, _C(0)))):
                b.call(st32, [w, b.inttoptr(b.add(bits, b.mul(bld, _C(u))), V32X16.as_pointer()),
                              ir.Constant(_i32, 2), m32])
            rows.append(b.bitcast(w, I32X))
        for m, row in enumerate(_transpose16(b, rows)):
            b.store(row, b.inttoptr(b.add(dst, _C(64 * m)), I32X.as_pointer()), align=4)
        return context.get_dummy_value()
    return sig, codegen


def _store_bits(b, bits, dst, mask):
    """The lanes of ``bits`` (``<16 x i16>``) on in ``mask`` at byte address ``dst``."""
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(ir.VoidType(), [I16X, I16X.as_pointer(), _i32, _M16]),
        "llvm.masked.store.v16i16.p0")
    b.call(fn, [bits, b.inttoptr(dst, I16X.as_pointer()), ir.Constant(_i32, 2), mask])


@intrinsic
def uk_pair_bits16(typingctx, a, b_, nc, dst, da, db):
    """16 columns of a row pair: float32 at byte addresses ``a`` and ``b_`` (0: that row
    is zero; columns ``< nc`` read) -> 32 bf16 bits at ``dst``, column j's two as
    elements 2j (row a) and 2j + 1 (row b); each row's bits (columns ``< nc``) also at
    ``da`` and ``db`` (0: not stored)."""
    sig = types.void(*([types.int64] * 6))

    def codegen(context, b, signature, args):
        pa, pb, nc, dst, da, db = args
        mlo, _ = _col_masks(b, nc)
        off = ir.Constant(_M16, None)
        va = _masked_load(b, pa, b.select(b.icmp_signed("!=", pa, _C(0)), mlo, off))
        vb = _masked_load(b, pb, b.select(b.icmp_signed("!=", pb, _C(0)), mlo, off))
        rab = cvt2_bf16(b, va, vb)
        ra, rb = half16(b, rab, 0), half16(b, rab, 1)
        inter = [i // 2 + 16 * (i % 2) for i in range(32)]
        v = b.shuffle_vector(rab, ir.Constant(V32X16, None),
                             ir.Constant(ir.VectorType(_i32, 32), inter))
        b.store(v, b.inttoptr(dst, v.type.as_pointer()), align=2)
        for r, d in ((ra, da), (rb, db)):
            with b.if_then(b.icmp_signed("!=", d, _C(0))):
                _store_bits(b, r, d, mlo)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def uk_bits16(typingctx, src, nc, dst):
    """Columns ``< nc`` (of 16) of float32 at byte address ``src`` -> bf16 bits at
    ``dst`` (only those stored)."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context, b, signature, args):
        src, nc, dst = args
        mlo, _ = _col_masks(b, nc)
        v = _masked_load(b, src, mlo)
        _store_bits(b, bits16_bf16(b, v), dst, mlo)
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always")
def _pack_tiles(wi, wh, H, KIc, out, p0, p1, bp):
    # panels p0 <= p < p1 of out [P, KIc+KHc, 4, 16, 16] uint32 (64-byte aligned; every
    # word written): word (p, c, g, m, u) = the bf16 pair k = 2(16c+m), +1 of [W_ih 0
    # W_hh 0] row (gate g, unit 16p+u) (x part: chunks c < KIc, zero past I; h part
    # from chunk KIc, zero past H; zero for units past H); wi [4H, I], wh [4H, H]
    # float32, C-contiguous; bp: 0, or the address of W_ih's bf16 bits [4H, I] uint16
    # (written from the x part's tiles: each element in one)
    I = wi.shape[1]
    KT = out.shape[1]
    base = out.ctypes.data
    for p in range(p0, p1):
        nu = max(0, min(16, H - 16 * p))
        for c in range(KT):
            for g in range(4):
                r0 = g * H + 16 * p
                dst = base + 1024 * ((p * KT + c) * 4 + g)
                if c < KIc:
                    k0 = 32 * c
                    nc = max(0, min(32, I - k0))
                    ok = nc > 0 and nu > 0
                    src = wi.ctypes.data + 4 * (r0 * I + k0) if ok else 0
                    uk_tile(src, 4 * I, nu if nc > 0 else 0, nc, dst,
                            bp + 2 * (r0 * I + k0) if ok and bp else 0, 2 * I)
                else:
                    k0 = 32 * (c - KIc)
                    nc = max(0, min(32, H - k0))
                    src = wh.ctypes.data + 4 * (r0 * H + k0) if nc > 0 and nu > 0 else 0
                    uk_tile(src, 4 * H, nu if nc > 0 else 0, nc, dst, 0, 0)


@njit(cache=True, nogil=True)
def pack_tiles(wi, wh, H, KIc, out, p0, p1):
    # the panels of _pack_tiles, without the bits
    _pack_tiles(wi, wh, H, KIc, out, p0, p1, 0)


@njit(cache=True, nogil=True)
def pack_tiles_bits(wi, wh, H, KIc, out, p0, p1, bi):
    # the panels of _pack_tiles and the bits of W_ih's rows in them (bi [4H, I] uint16)
    _pack_tiles(wi, wh, H, KIc, out, p0, p1, bi.ctypes.data)


@njit(cache=True, nogil=True)
def pack_u_bits(wh, H, Hp, NB, out, bits, k0, k1):
    # row pairs k0 <= kk < k1 of every output panel of out (flat uint16; panel q, units
    # j0 = q*NB .. j0+w, w = min(NB, Hp-j0), at element q*4*Hp*NB: [2*Hp pairs][w][2]):
    # pair kk holds the natural gate rows r = 2kk, 2kk+1 (r = g*Hp + unit, zero for
    # units past H) of the padded W_hh [4*Hp, Hp], columns past H zero; and bits [4H, H]
    # uint16 the bf16 bits of the W_hh rows in them; wh [4H, H] float32, C-contiguous.
    # The two rows of a pair are read once, in order, for all the panels
    wp = wh.ctypes.data
    ob = out.ctypes.data
    bp = bits.ctypes.data
    Q = (Hp + NB - 1) // NB
    for kk in range(k0, k1):
        g = (2 * kk) // Hp
        unit = 2 * kk - g * Hp
        ra = g * H + unit                       # W_hh's row of the pair's first
        pa = wp + 4 * ra * H if unit < H else 0
        pb = wp + 4 * (ra + 1) * H if unit + 1 < H else 0
        ba = bp + 2 * ra * H if pa else 0
        bb = bp + 2 * (ra + 1) * H if pb else 0
        for q in range(Q):
            j0 = q * NB
            w = min(NB, Hp - j0)
            base = ob + 2 * q * 4 * Hp * NB
            for j in range(0, w, 16):
                nc = max(0, min(16, H - j0 - j))
                uk_pair_bits16(pa + 4 * (j0 + j) if pa and nc else 0,
                               pb + 4 * (j0 + j) if pb and nc else 0, nc,
                               base + 2 * (kk * 2 * w + 2 * j),
                               ba + 2 * (j0 + j) if ba and nc else 0,
                               bb + 2 * (j0 + j) if bb and nc else 0)


@njit(cache=True, nogil=True)
def x_bits(x, s0, out, Ip, t0, t1):
    # out[t, b, :I] = the bf16 bits of x[s0 + t, b], out[t, b, I:Ip] = 0, for t0 <= t < t1,
    # b < B (x float32 [T,B,I] C-contiguous; out uint16 [., Bx, ld], unit inner stride)
    B, I = x.shape[1], x.shape[2]
    xp = x.ctypes.data
    for t in range(t0, t1):
        for b in range(B):
            src = xp + 4 * ((s0 + t) * B + b) * I
            o = out[t, b]
            op = o.ctypes.data
            for k in range(0, I, 16):
                uk_bits16(src + 4 * k, min(16, I - k), op + 2 * k)
            for k in range(I, Ip):
                o[k] = 0
