"""The bf16 LSTM's products after the backward loop on AMX tiles: ``dx = dg W_ih``,
``dh0 = dg_0 W_hh`` and the weight gradient ``dW = dgᵀ [x h]``, plus the packing
they need (CPUs with AMX-BF16; :mod:`fastrnn.kernels.amx_bf16` runs the loops).

One micro-kernel (:data:`uk_amx_blk`) multiplies up to 2 x 2 tiles: A tiles of 16
rows x 32 bf16 with any row stride (the backward loop's row-major gate gradients
``dgb`` are read in place, 16 or 32 rows of one step at a time), B tiles of 16 k
pairs x 16 columns x 2, C tiles anywhere (row-major output, or a tile-native
accumulator when the sums run over blocks of k).

The weight gradient is computed transposed, ``dWᵀ = [x h]ᵀ dg``: its B operand is
the gate gradients in k pairs, which the backward loop's epilogue writes itself
(two time-batch rows interleaved, tile-packed: :func:`vnni_shape`), and only
``[x h]`` (narrower than ``dg``) needs a transposing copy (:func:`pack_a_steps`).
The sums run over blocks of ``KB`` chunks of 32 k and of A rows that stay in L2,
into tile-native C, and after the last block each tile is transposed into the
parameters' layout from a scratch (:func:`dwt_gemm`).

:func:`gemm` is the general product of two tile-packed operands (the bf16
``Linear``'s, :mod:`fastrnn.kernels.linear_bf16`).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.amx_bf16 import _fn, _i8, _i8p, _t, amx_begin, amx_end, tile_config
from fastrnn.kernels.bf16_simd import I64
from fastrnn.kernels.cpu_settings import JIT_OPTIONS

__all__ = ["uk_amx_blk", "dx_gemm", "dh0_gemm", "dwt_gemm", "pack_a_steps",
           "pack_b_steps", "pack_wih", "vnni_shape", "KB", "gemm"]

#: chunks of 32 k per block of the weight gradient's sums (C goes through memory
#: once per block)
KB = 64
#: bytes of [x h]ᵀ per block of A rows x KB chunks: it stays in L2 while every
#: column pair of dg passes
ABLK = 1 << 20


def _make_blk(MA, NB):
    @intrinsic
    def uk(typingctx, a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl,
           cli, pf, prow, ipr):
        """C (``MA`` x ``NB`` tiles of 16 x 16 float32; tile (i, j) at ``c + i*ci + j*cj``,
        rows ``ldc`` bytes apart) = (``acc``: C +) A B over ``KKc`` chunks of 32 k: A
        tile i at ``a + i*arow`` (rows ``lda`` bytes apart), chunk k at ``+ k*astep``;
        B tile j at ``b + j*bcol`` (16 pair rows ``ldb`` bytes apart), chunk k at
        ``+ k*bstep``; with ``acc``, the C tiles first loaded from ``cl + i*cli + j*cj``.
        Tiles 0-3 C, 4-5 A, 6-7 B. With ``ipr > 0``, chunk k also prefetches 256 bytes
        into L2 at ``pf + (k // ipr) * prow + (k % ipr) * 256`` (the next block's operand:
        tile loads that miss L2 stall the tile unit; the hardware prefetchers do not
        run far enough ahead of them)."""
        i8 = types.int64
        sig = types.void(i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean, i8,
                         i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            (a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli, pf,
             prow, ipr) = args
            bd = builder
            load = _fn(bd, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
            i32 = ir.IntType(32)
            pfn = _fn(bd, "llvm.prefetch.p0", [_i8p, i32, i32, i32])
            dp = _fn(bd, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
            store = _fn(bd, "llvm.x86.tilestored64", [_i8, _i8p, I64])
            C = lambda v: ir.Constant(I64, v)  # noqa: E731
            cp = {(i, j): bd.add(c, bd.add(bd.mul(C(i), ci), bd.mul(C(j), cj)))
                  for i in range(MA) for j in range(NB)}
            with bd.if_else(acc) as (then, otherwise):
                with then:
                    for (i, j), p in cp.items():
                        pl = bd.add(cl, bd.add(bd.mul(C(i), cli), bd.mul(C(j), cj)))
                        bd.call(load, [_t(NB * i + j), bd.inttoptr(pl, _i8p), ldc])
                with otherwise:
                    for (i, j) in cp:
                        bd.call(_fn(bd, "llvm.x86.tilezero", [_i8]), [_t(NB * i + j)])
            with cgutils.for_range(bd, KKc) as loop:
                k = loop.index
                ak = bd.add(a, bd.mul(k, astep))
                bk = bd.add(b, bd.mul(k, bstep))
                with bd.if_then(bd.icmp_signed(">", ipr, C(0))):
                    pk = bd.add(bd.add(pf, bd.mul(bd.sdiv(k, ipr), prow)),
                                bd.mul(bd.srem(k, ipr), C(256)))
                    for ln in range(4):     # read, locality 2 (prefetcht1: L2), data
                        bd.call(pfn, [bd.inttoptr(bd.add(pk, C(64 * ln)), _i8p),
                                      ir.Constant(i32, 0), ir.Constant(i32, 2),
                                      ir.Constant(i32, 1)])
                for i in range(MA):
                    bd.call(load, [_t(4 + i), bd.inttoptr(bd.add(ak, bd.mul(C(i), arow)), _i8p),
                                   lda])
                    for j in range(NB):
                        if i == 0:
                            bd.call(load, [_t(6 + j % 2),
                                           bd.inttoptr(bd.add(bk, bd.mul(C(j), bcol)), _i8p),
                                           ldb])
                        bd.call(dp, [_t(NB * i + j), _t(4 + i), _t(6 + j % 2)])
            for (i, j), p in cp.items():
                bd.call(store, [_t(NB * i + j), bd.inttoptr(p, _i8p), ldc])
            return context.get_dummy_value()
        return sig, codegen
    return uk


#: [MA][NB] (1 or 2 tiles each way; index 0 unused)
uk_amx_blk = [None] + [[None] + [_make_blk(ma, nb) for nb in (1, 2)] for ma in (1, 2)]
_k11, _k12, _k21, _k22 = uk_amx_blk[1][1], uk_amx_blk[1][2], uk_amx_blk[2][1], uk_amx_blk[2][2]


@njit(inline="always")
def _blk(MA, NB, a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli,
         pf=0, prow=0, ipr=0):
    if MA == 2:
        if NB == 2:
            _k22(a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli, pf,
                 prow, ipr)
        else:
            _k21(a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli, pf,
                 prow, ipr)
    elif NB == 2:
        _k12(a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli, pf, prow,
             ipr)
    else:
        _k11(a, lda, astep, arow, b, ldb, bstep, bcol, KKc, c, ldc, ci, cj, acc, cl, cli, pf, prow,
             ipr)


@njit(**JIT_OPTIONS)
def dx_gemm(dgb, wt, dxp, r0, r1):
    """``dxp[r] = dgb[r] @ W_ih`` for the rows ``r0 <= r < r1`` (multiples of 32; rows past
    the last ``dgb`` row come out too, from the 32 rows readable past its end): ``dgb``
    [R, >= GH] uint16 (64-byte aligned rows), ``wt`` [Ip/16, GH/2, 16, 2] uint16
    (:func:`pack_wih`), ``dxp`` [>= r1, Ip] float32. By blocks of rows (~256 KiB of
    ``dgb``) that stay in L2 while every column pair of ``wt`` passes; the products of
    one block prefetch the next block's rows into L2 (``dgb`` comes from L3)."""
    GHb = dgb.shape[1]
    NT, GH2 = wt.shape[0], wt.shape[1]
    Ip = dxp.shape[1]
    KKc = GH2 // 16
    lda = 2 * GHb
    sb = GH2 * 64                         # bytes per 16-column tile column of wt
    MB = max(32, (1 << 18) // lda // 32 * 32)
    # a row's 2*GH bytes are prefetched by 256 per chunk: ipr chunks per row, KKc/ipr
    # (4) rows per product, the rows of the next block in turn (not when the rows
    # are few enough to stay in L2 from the loop that wrote them)
    ipr = max(1, GH2 // 64) if (r1 - r0) * lda > (1 << 20) else 0
    rpc = max(1, KKc // max(1, ipr))
    ap, bp, cp = dgb.ctypes.data, wt.ctypes.data, dxp.ctypes.data
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    for m0 in range(r0, r1, MB):
        m1 = min(r1, m0 + MB)
        q = 0
        for j in range(0, NT, 2):
            NB = 2 if j + 1 < NT else 1
            for i0 in range(m0, m1, 32):
                pr = m1 + q * rpc         # rows pr .. pr + rpc of the next block
                q += 1
                _blk(2, NB, ap + i0 * lda, lda, 64, 16 * lda, bp + j * sb, 64, 1024, sb, KKc,
                     cp + 4 * (i0 * Ip + 16 * j), 4 * Ip, 64 * Ip, 64, False, 0, 0,
                     ap + pr * lda, lda, ipr if pr < min(r1, m1 + MB) else 0)
    amx_end()


@njit(**JIT_OPTIONS)
def dh0_gemm(dgb, B, ub, Hp, NBu, out):
    """``out[b] = dgb[b] @ U`` (``b < B``, rows up to the next multiple of 16 or 32
    too): ``dgb`` [>= B+32, >= 4*Hp] uint16, ``ub``, U's k-pair panels of
    :func:`fastrnn.kernels.packed_bf16.pack_bf16` (output panels of ``NBu`` units),
    ``out`` [>= B+32, Hp] float32."""
    GHb = dgb.shape[1]
    GH = 4 * Hp
    KKc = GH // 32
    MA = 2 if B > 16 else 1
    lda = 2 * GHb
    ap, cp = dgb.ctypes.data, out.ctypes.data
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    for q in range((Hp + NBu - 1) // NBu):
        j0 = q * NBu
        wd = min(NBu, Hp - j0)
        wq = ub.ctypes.data + 2 * q * GH * NBu
        nv = wd // 16
        for v in range(0, nv, 2):
            NB = 2 if v + 1 < nv else 1
            for b0 in range(0, B, 16 * MA):
                _blk(MA, NB, ap + b0 * lda, lda, 64, 16 * lda, wq + 64 * v, 4 * wd, 64 * wd, 64,
                     KKc,
                     cp + 4 * (b0 * Hp + j0 + 16 * v), 4 * Hp, 64 * Hp, 64, False, 0, 0)
    amx_end()


_F16 = ir.VectorType(ir.FloatType(), 16)
_I16 = ir.VectorType(ir.IntType(16), 16)
_M32 = ir.VectorType(ir.IntType(32), 32)
_D16 = ir.VectorType(ir.IntType(32), 16)


def _transpose16(bd, v):
    """16 vectors of 16 lanes, rows -> columns: swapping the off-diagonal blocks of
    every 2b x 2b block for b = 8, 4, 2, 1 (4 x 16 two-source shuffles)."""
    v = list(v)
    for b in (8, 4, 2, 1):
        lo = ir.Constant(_D16, [(16 + j - b) if j & b else j for j in range(16)])
        hi = ir.Constant(_D16, [(16 + j) if j & b else (j + b) for j in range(16)])
        for i in range(16):
            if i & b == 0:
                v[i], v[i + b] = (bd.shuffle_vector(v[i], v[i + b], lo),
                                  bd.shuffle_vector(v[i], v[i + b], hi))
    return v


@intrinsic
def uk_tr_f32(typingctx, src, lds, dst, ldd, nr, nc):
    """``dst[r][c] = src[c][r]`` for ``r < nr``, ``c < nc`` (<= 16): a 16 x 16 float32 block
    (rows ``lds`` / ``ldd`` bytes apart; all 16 rows of ``src`` readable)."""
    i8 = types.int64
    sig = types.void(i8, i8, i8, i8, i8, i8)

    def codegen(context, builder, signature, args):
        src, lds, dst, ldd, nr, nc = args
        bd = builder
        C = lambda v: ir.Constant(I64, v)  # noqa: E731
        rows = [bd.load(bd.inttoptr(bd.add(src, bd.mul(C(i), lds)), _F16.as_pointer()), align=4)
                for i in range(16)]
        cols = _transpose16(bd, rows)
        m1 = ir.VectorType(ir.IntType(1), 16)
        lanes = ir.Constant(_D16, list(range(16)))
        ncv = bd.insert_element(ir.Constant(_D16, None), bd.trunc(nc, ir.IntType(32)),
                                ir.Constant(ir.IntType(32), 0))
        ncv = bd.shuffle_vector(ncv, ncv, ir.Constant(_D16, [0] * 16))
        mask = bd.icmp_signed("<", lanes, ncv)
        fn = _fn(bd, "llvm.masked.store.v16f32.p0", [_F16, _F16.as_pointer(), ir.IntType(32), m1])
        for r in range(16):
            with bd.if_then(bd.icmp_signed("<", C(r), nr)):
                p = bd.inttoptr(bd.add(dst, bd.mul(C(r), ldd)), _F16.as_pointer())
                bd.call(fn, [cols[r], p, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def uk_tr_bf16(typingctx, rows, dst):
    """One A tile of :func:`pack_a_steps`: ``dst`` [16][32] uint16 (1 KiB) with ``dst[f][k]
    = row k's element f``, the 32 rows' 16 elements at the byte addresses ``rows[k]``
    (an int64 array's data): rows k, k+1 interleaved (pairs = 32-bit lanes), then a
    16 x 16 transpose of the pairs."""
    i8 = types.int64
    sig = types.void(i8, i8)

    def codegen(context, builder, signature, args):
        rows, dst = args
        bd = builder
        C = lambda v: ir.Constant(I64, v)  # noqa: E731
        rp = bd.inttoptr(rows, ir.IntType(64).as_pointer())
        r = [bd.load(bd.inttoptr(bd.load(bd.gep(rp, [C(k)])), _I16.as_pointer()), align=2)
             for k in range(32)]
        mix = ir.Constant(_M32, [(i // 2) + 16 * (i % 2) for i in range(32)])
        w = [bd.bitcast(bd.shuffle_vector(r[2 * m], r[2 * m + 1], mix), _D16) for m in range(16)]
        cols = _transpose16(bd, w)
        for f in range(16):
            p = bd.inttoptr(bd.add(dst, C(64 * f)), _D16.as_pointer())
            bd.store(cols[f], p, align=1)
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True, nogil=True)
def pack_wih(wbi, H, Hp, out):
    """W_ih's bits ``wbi`` [4H, I] (PyTorch's gate order) as the B operand of
    ``dx = dg W_ih``: ``out`` [Ip/16, 2*Hp, 16, 2] uint16, zeros in: (j >> 4, kk, j & 15,
    half) = W_ih[gate row r = 2kk + half, j] with r = g*Hp + unit (zero for padded
    units and columns). By pairs of gate rows, each pair's 16-column blocks one
    vectorized loop of 32-bit words (``out``'s 16 x 2 blocks as 16 words)."""
    I = wbi.shape[1]
    o32 = out.reshape(out.shape[0], out.shape[1], 32).view(np.uint32)
    for kk in range(2 * Hp):
        r = 2 * kk
        g = r // Hp                       # Hp is a multiple of 16: both rows one gate
        u = r - g * Hp
        if u >= H:
            continue
        s0 = g * H + u
        for jb in range(I // 16):
            for ln in range(16):
                lo = np.uint32(wbi[s0, 16 * jb + ln])
                hi = np.uint32(wbi[s0 + 1, 16 * jb + ln]) if u + 1 < H else np.uint32(0)
                o32[jb, kk, ln] = lo | (hi << np.uint32(16))
        for j in range(I // 16 * 16, I):
            out[j >> 4, kk, j & 15, 0] = wbi[s0, j]
            if u + 1 < H:
                out[j >> 4, kk, j & 15, 1] = wbi[s0 + 1, j]


def vnni_shape(n, B, GH):
    """The shape of the gate gradients' k-pair copy that the backward loop writes for
    the weight gradient: [GH/16, Kp/2 + 1, 16, 2] uint16 (k = s*B + b; Kp = n*B rounded
    up to 32: the padding stays zero). One pair row more per tile column (not read):
    the epilogue stores a row's 16 vectors to 16 tile columns, and with a pitch of a
    multiple of 4 KiB their lines would share one L1 set."""
    Kp = -(-(n * B) // 32) * 32
    return (GH // 16, Kp // 2 + 1, 16, 2)


@njit(cache=True, nogil=True)
def pack_a_steps(src, B, out):
    """The A operand ``a[f, s*B + b] = src[s, b, f]`` (``b < B``; uint16 [n, >= B, F], F a
    multiple of 16, rows of 32-byte multiples) tile-packed into ``out`` [F/16, Kp/32, 16,
    32]; the rows k >= n*B of the last chunk are left as they are (zero them). By 32 k
    x 16 f blocks, each a vectorized transpose (:func:`uk_tr_bf16`)."""
    n = src.shape[0]
    F = src.shape[2]
    R = n * B
    rows = np.empty(32, np.int64)
    zero = np.zeros(32, np.uint16)
    base = src.ctypes.data
    s0, s1, s2 = src.strides
    tile = out.ctypes.data
    ts0, ts1 = out.strides[0], out.strides[1]
    for kc in range((R + 31) // 32):
        m = min(R, kc * 32 + 32) - kc * 32
        for i in range(32):
            k = kc * 32 + i
            rows[i] = base + (k // B) * s0 + (k % B) * s1 if i < m else zero.ctypes.data
        for fb in range(F // 16):
            uk_tr_bf16(rows.ctypes.data, tile + fb * ts0 + kc * ts1)
            if m == 32:
                for i in range(32):
                    rows[i] += 32
            else:
                for i in range(m):
                    rows[i] += 32


@njit(cache=True, nogil=True)
def pack_b_steps(src, B, out, j0, j1):
    """The B operand ``b[s*B + b, j] = src[s, b, j]`` (``b < B``, ``j0 <= j < j1``; uint16
    [n, >= B, N]) in k pairs, tile-packed into ``out`` [N/16, Kp/2, 16, 2] (zero where
    nothing is written)."""
    n = src.shape[0]
    R = n * B
    for kk in range((R + 1) // 2):
        r = 2 * kk
        s0, b0 = r // B, r % B
        if r + 1 < R:
            s1, b1 = (r + 1) // B, (r + 1) % B
            for j in range(j0, j1):
                out[j >> 4, kk, j & 15, 0] = src[s0, b0, j]
                out[j >> 4, kk, j & 15, 1] = src[s1, b1, j]
        else:
            for j in range(j0, j1):
                out[j >> 4, kk, j & 15, 0] = src[s0, b0, j]


@njit(inline="always")
def _put(t, it, jt, I, Ip, H, Hp, dw_ih, dw_hh):
    """The 16 x 16 tile of dWᵀ at byte address ``t`` (feature rows ``16*it``, gate rows
    ``16*jt``) transposed into its place in ``dw_ih`` [4H, I] or ``dw_hh`` [4H, H]."""
    g = (jt * 16) // Hp
    u0 = jt * 16 - g * Hp
    nr = min(16, H - u0)
    if nr > 0:
        d0 = g * H + u0
        f0 = it * 16
        if f0 < Ip:
            if f0 < I:
                uk_tr_f32(t, 64, dw_ih.ctypes.data + 4 * (d0 * I + f0), 4 * I, nr,
                          min(16, I - f0))
        elif f0 - Ip < H:
            uk_tr_f32(t, 64, dw_hh.ctypes.data + 4 * (d0 * H + f0 - Ip), 4 * H, nr,
                      min(16, H - f0 + Ip))


@njit(**JIT_OPTIONS)
def dwt_gemm(at, vt, ct, I, Ip, H, Hp, dw_ih, dw_hh, j0, j1):
    """``dw_ih`` [4H, I] and ``dw_hh`` [4H, H] (the parameters' layout), the rows ``j0 <= r
    < j1`` (gate rows g*Hp + unit, multiples of 16), from ``dWᵀ = [x h]ᵀ dg``: ``at``
    [Nx/16, Kp/32, 16, 32] ([x h]ᵀ, :func:`pack_a_steps`; x's columns padded to
    ``Ip``), ``vt`` [GH/16, >= Kp/2, 16, 2] (dg in k pairs, :func:`vnni_shape`). By
    blocks of ``KB`` chunks of k, the partial sums in ``ct`` [GH/16, Nx/16, 16, 16]
    float32 (tile-native, by columns: a column pair's tiles one after the other, not
    128 KiB apart in the same cache sets; not touched with one block), and of A rows whose block
    (``ABLK`` bytes) stays in L2 while the column pairs of dg pass (the full A
    streamed once per column pair ran at about half the rate); after the last block
    the tiles go through a scratch, transposed into place. The products of a column
    pair prefetch the next pair's chunks of dg into L2. The sums run in the same order
    whatever the row range (bitwise the same for any split)."""
    MT, KKt = at.shape[0], at.shape[1]
    sa = KKt * 1024                       # bytes per 16-row tile row of at
    sv = vt.shape[1] * 64                 # bytes per 16-column tile column of vt
    ap, bp, cp = at.ctypes.data, vt.ctypes.data, ct.ctypes.data
    sc = 1024 * MT                        # bytes per tile column of ct (and of the scratch)
    scr = np.empty((MT + 2) * 256 + 16, np.float32)
    sp = (scr.ctypes.data + 63) // 64 * 64
    cfg = tile_config(16, 0)
    amx_begin(cfg.ctypes.data)
    for k0 in range(0, KKt, KB):
        nk = min(KB, KKt - k0)
        last = k0 + KB >= KKt
        mb = max(2, ABLK // (nk * 1024) // 2 * 2)
        for m0 in range(0, MT, mb):
            m1 = min(MT, m0 + mb)
            for j in range(j0 // 16, j1 // 16, 2):
                NB = 2 if j + 1 < j1 // 16 else 1
                # the next column pair's chunks (2 x nk KiB of dg, from L3) into L2, nk/4
                # KiB by each product of this pair (the first column, then the second)
                jn = j + 2 if j + 2 < j1 // 16 else j0 // 16
                for i in range(m0, m1, 2):
                    MA = 2 if i + 1 < m1 else 1
                    c = cp + 1024 * (j * MT + i)
                    off = (i - m0) // 2 * nk * 256
                    pf = bp + (jn + off // (nk * 1024)) * sv + k0 * 1024 + off % (nk * 1024)
                    ipr = nk if off < 2 * nk * 1024 else 0
                    if last:
                        _blk(MA, NB, ap + i * sa + k0 * 1024, 64, 1024, sa,
                             bp + j * sv + k0 * 1024, 64, 1024, sv, nk, sp, 64, 1024, sc,
                             k0 > 0, c, 1024, pf, 0, ipr)
                        for ii in range(MA):
                            for jj in range(NB):
                                _put(sp + 1024 * ii + sc * jj, i + ii, j + jj, I, Ip, H, Hp,
                                     dw_ih, dw_hh)
                    else:
                        _blk(MA, NB, ap + i * sa + k0 * 1024, 64, 1024, sa,
                             bp + j * sv + k0 * 1024, 64, 1024, sv, nk, c, 64, 1024, sc,
                             k0 > 0, c, 1024, pf, 0, ipr)
    amx_end()


# --------------------------------------------------------------------------- general GEMM
# Operands of the general GEMM (:func:`gemm`; the bf16 Linear's products) are packed
# in tiles: ``a`` as [M/16][K/32][16][32] bf16 (each
# A tile 1 KiB contiguous), ``b`` as [N/16][K/2][16][2] (each B tile of a 32-k chunk
# 1 KiB contiguous): tile loads then read whole lines in order (row-major operands
# with strided rows load slower).
@intrinsic
def uk_amx_gemm(typingctx, a0, a1, b0, b1, c, ldc, KKc):
    """A 32 x 32 float32 block ``c`` (row stride ``ldc`` bytes) = the two 16-row A
    tile columns ``a0``, ``a1`` (``KKc`` consecutive 1 KiB tiles each) times the two
    16-column B tile columns ``b0``, ``b1``: tiles 0-3 the block's quarters, 4-5
    A, 6-7 B."""
    i8 = types.int64
    sig = types.void(i8, i8, i8, i8, i8, i8, i8)

    def codegen(context, builder, signature, args):
        a0, a1, b0, b1, c, ldc, KKc = args
        bd = builder
        load = _fn(bd, "llvm.x86.tileloadd64", [_i8, _i8p, I64])
        dp = _fn(bd, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
        C = lambda v: ir.Constant(I64, v)  # noqa: E731
        for t in range(4):
            bd.call(_fn(bd, "llvm.x86.tilezero", [_i8]), [_t(t)])
        with cgutils.for_range(bd, KKc) as loop:
            off = bd.mul(loop.index, C(1024))
            for t, base in ((4, a0), (5, a1), (6, b0), (7, b1)):
                bd.call(load, [_t(t), bd.inttoptr(bd.add(base, off), _i8p), C(64)])
            for i in range(2):
                for j in range(2):
                    bd.call(dp, [_t(2 * i + j), _t(4 + i), _t(6 + j)])
        store = _fn(bd, "llvm.x86.tilestored64", [_i8, _i8p, I64])
        for i in range(2):
            for j in range(2):
                pc = bd.add(bd.add(c, bd.mul(C(16 * i), ldc)), C(64 * j))
                bd.call(store, [_t(2 * i + j), bd.inttoptr(pc, _i8p), ldc])
        return context.get_dummy_value()
    return sig, codegen


@njit(**JIT_OPTIONS)
def gemm(ap, bp, c, n0, n1):
    """``c[:, n0:n1] = a @ b`` in float32 from tile-packed bf16 operands: ``ap``
    [M/16, K/32, 16, 32] and ``bp`` [N/16, K/2, 16, 2] uint16 (e.g.
    :mod:`fastrnn.kernels.linear_bf16`'s packing), ``c`` [M, N] float32; M, n0, n1
    multiples of 32."""
    KKc = ap.shape[1]
    N = c.shape[1]
    cfg = tile_config(16, 0)
    sa = 2 * ap.shape[1] * 512            # bytes per 16-row A tile column
    sb = 2 * bp.shape[1] * 32             # bytes per 16-column B tile column
    amx_begin(cfg.ctypes.data)
    for j0 in range(n0, n1, 32):
        for i0 in range(0, ap.shape[0] * 16, 32):
            a0 = ap.ctypes.data + (i0 // 16) * sa
            b0 = bp.ctypes.data + (j0 // 16) * sb
            uk_amx_gemm(a0, a0 + sa, b0, b0 + sb, c.ctypes.data + 4 * (i0 * N + j0), 4 * N,
                        KKc)
    amx_end()
