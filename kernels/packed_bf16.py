"""The packed LSTM in the bfloat16 compute mode: :func:`lstm_forward` and
:func:`lstm_backward`, one layer and direction, the LSTM and the diagonal
peephole LSTM, float32 parameters and states, bf16 operands of the products.

The semantics are :mod:`fastrnn.bf16`'s: the operands of the matrix products
(``W_ih``, ``W_hh``, ``x_t``, ``h_{t-1}``; backward the gate gradients and both
operands of the weight-gradient sums) rounded to bf16, their products summed
in float32; the cell state, the gate math, the biases, the peepholes, ``y``,
``h_n``, ``c_n`` and everything saved for backward float32.

Layout: as the float32 packed kernels (:mod:`fastrnn.kernels.vector`,
:mod:`fastrnn.kernels.packed_lstm`, ``VW = 16``) with every product operand in
bf16 pairs (:mod:`fastrnn.kernels.bf16_simd`): panel ``p`` of ``[W_ih W_hh]ᵀ``
is ``[(Ip+Hp)/2][4*16]`` 32-bit words (``Ip`` = ``I`` rounded up to even, the
extra row zero), ``x`` is converted to bf16 once per call, and the forward
epilogue writes ``h_t`` twice: float32 into ``y`` and rounded into the bf16
operand rows ``[x_t, h_{t-1}]`` of the next step. The backward epilogue writes
each gate gradient float32 (for the bias gradients) and rounded (the operand
of the next step's ``dh = dgates U`` and of the GEMMs after the loop). The
GEMMs after the loop (``dW``, ``dx``, ``dh0``) run in float32 on the rounded
operands widened back to float32: the same products (exact in float32), the
same numbers as bf16 GEMMs up to the order of the float32 sums.

Three variants, one layout: native ``vdpbf16ps`` (CPUs with AVX512-BF16) and
emulated (bf16 halves widened to float32, two FMAs), one source selected by
the tag (:mod:`fastrnn.kernels.bf16_simd`); and AMX (``amx=True``,
:mod:`fastrnn.kernels.amx_fwd`, :mod:`fastrnn.kernels.amx_bf16`,
:mod:`fastrnn.kernels.amx_bwd`): the time loops' products and, after the
backward loop, ``dx``, ``dh0`` and ``dW`` (:mod:`fastrnn.kernels.amx_gemm`) on
AMX-BF16 tiles (operand widths padded to 32 k). All compute
the same numbers up to the order of the float32 sums. Measured on the Xeon
with both (Sapphire Rapids class): ``vdpbf16ps`` sums bf16 pairs at about half
the rate of float32 FMAs there (the native variant is slower than float32),
AMX at several times it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastrnn.kernels.bf16_simd import (BF16_MR, EMULATED, NATIVE, uk_bf16_bwd, uk_bf16_fwd,
                                       uk_bf16_peep_bwd, uk_bf16_peep_fwd)
from fastrnn.kernels.cpu_settings import JIT_OPTIONS, settings
from fastrnn.kernels.plan import Plan, Tasks, nthreads
from fastrnn.kernels.schedule import Schedule, infer_chunk
from fastrnn.kernels.simd import rows_switch
from fastrnn.kernels.sync import panel_steps
from fastrnn.kernels.task_gemm import DW_TASKS, splits

__all__ = ["lstm_forward", "lstm_backward", "BF16Cache", "to_bits", "from_bits", "aligned", "VW"]

VW = 16          # AVX-512 only: the accumulators are <16 x float>

#: the micro-kernels by row count (1-6), one switch each
_f, _pf, _b, _pb = (rows_switch(k[:7]) for k in
                    (uk_bf16_fwd, uk_bf16_peep_fwd, uk_bf16_bwd, uk_bf16_peep_bwd))


@njit(inline="always")
def _bits(v):
    """The bf16 bits (uint32, < 2^16) of the float32 whose bits are ``v`` (uint32),
    :func:`fastrnn.bf16.round_bf16`'s rounding: nearest even, denormal -> signed
    zero, infinities kept, NaN quieted."""
    e = v & 0x7F800000
    if e == 0:
        return (v >> 16) & 0x8000
    if e == 0x7F800000:
        if v & 0x007FFFFF:
            return ((v | 0x00400000) >> 16) & 0xFFFF
        return v >> 16
    return ((v + 0x7FFF + ((v >> 16) & 1)) >> 16) & 0xFFFF


@njit(cache=True, nogil=True)
def _fbits(x):
    """:func:`_bits` of a float32 value."""
    return _bits(np.uint32(np.float32(x).view(np.uint32)))


@njit(cache=True, nogil=True)
def _to_bits(u, out):
    for i in range(u.shape[0]):
        out[i] = _bits(u[i])


@njit(cache=True, nogil=True)
def _x_bits(x, s0, s1, out, Ip):
    # out[t, b, :I] = the bf16 bits of x[s0 + t, b] (x: float32 bits [T,B,I] uint32),
    # out[t, b, I:Ip] = 0, for t < s1 - s0, b < B (out: C-contiguous, unit strides
    # known to the compiler: the rounding loop vectorises)
    I = x.shape[2]
    for t in range(s1 - s0):
        for b in range(x.shape[1]):
            for k in range(I):
                out[t, b, k] = _bits(x[s0 + t, b, k])
            for k in range(I, Ip):
                out[t, b, k] = 0


def to_bits(a):
    """float32 array -> uint16 bf16 bits (:func:`fastrnn.bf16.round_bf16`'s rounding)."""
    a = np.ascontiguousarray(a, np.float32)
    out = np.empty(a.shape, np.uint16)
    _to_bits(a.reshape(-1).view(np.uint32), out.reshape(-1))
    return out


@njit(inline="always")
def _panel_words(si, sh, gs, ps, H, KI, out, p):
    # panel p of out [P, K2/m, 4, m, 16] uint32 words (every word written): word
    # (p, kk // m, g, kk % m, u) = the bf16 pair k = 2kk, 2kk+1 of [W_ih 0 W_hh 0] row
    # (gate g, unit p*16+u), low half first (m = 1: rows of the 4 gates' 64 words; m =
    # 16: AMX tiles of 16 k pairs); si [., I], sh [., H]: bf16 bits, that row at
    # si[g*gs + p*ps + u]. Each output line is written whole; the 16 source rows of a
    # gate stay in L1
    m = out.shape[3]
    K2 = out.shape[1] * m
    I = si.shape[1]
    nu = min(16, H - p * 16)
    for g in range(4):
        r0 = g * gs + p * ps
        for kk in range(K2):
            o = out[p, kk // m, g, kk % m]
            if kk < KI:
                src, k, lim = si, 2 * kk, I
            else:
                src, k, lim = sh, 2 * (kk - KI), H
            if k + 1 < lim:
                for u in range(nu):
                    o[u] = np.uint32(src[r0 + u, k]) | (np.uint32(src[r0 + u, k + 1]) << 16)
            elif k < lim:
                for u in range(nu):
                    o[u] = np.uint32(src[r0 + u, k])
            else:
                for u in range(nu):
                    o[u] = 0
            for u in range(nu, 16):
                o[u] = 0


@njit(cache=True, nogil=True)
def _pack_panels(wi, wh, H, KI, out, p0, p1):
    # panels p0 <= p < p1 of out (:func:`_panel_words`) from the
    # float32 weights' bits wi [4H, I], wh [4H, H] (uint32): each panel's 64 rows are
    # rounded into a small buffer first (a loop that vectorises), then transposed
    I = wi.shape[1]
    ti = np.empty((64, max(I, 1)), np.uint16)
    th = np.empty((64, max(H, 1)), np.uint16)
    for p in range(p0, p1):
        nu = min(16, H - p * 16)
        for g in range(4):
            for u in range(nu):
                r = g * H + p * 16 + u
                a = wi[r]
                b = ti[g * 16 + u]
                for k in range(I):
                    b[k] = _bits(a[k])
                a = wh[r]
                b = th[g * 16 + u]
                for k in range(H):
                    b[k] = _bits(a[k])
        _panel_words(ti, th, 16, 0, H, KI, out, p)


@njit(cache=True, nogil=True)
def _pack_panels_bits(wbi, wbh, H, KI, out, p0, p1):
    # :func:`_pack_panels` from the weights' bf16 bits (to_bits) when they exist anyway
    for p in range(p0, p1):
        _panel_words(wbi, wbh, H, 16, H, KI, out, p)


@njit(cache=True, nogil=True)
def _pack_u(wb_hh, H, Hp, NB, out):
    # out: flat uint16, zeros in; output panel q (units j0 = q*NB .. j0+w, w = min(NB,
    # Hp-j0)) at element q*4*Hp*NB: [2*Hp pairs][w][2], the pair kk of natural gate
    # rows r = 2kk, 2kk+1 (r = g*Hp + unit, zero for padded units) of the padded
    # W_hh [4*Hp, Hp]; wb_hh: W_hh's bits (to_bits). The two rows of a pair (one
    # gate: Hp is even) interleaved in one loop (it vectorizes; a row at a time
    # stored every other element)
    Q = (Hp + NB - 1) // NB
    for q in range(Q):
        j0 = q * NB
        w = min(NB, Hp - j0)
        wr = max(0, min(w, H - j0))
        base = q * 4 * Hp * NB
        for kk in range(2 * Hp):
            g = (2 * kk) // Hp
            unit = 2 * kk - g * Hp
            o = base + kk * 2 * w
            if unit + 1 < H:
                a = wb_hh[g * H + unit, j0:j0 + wr]
                b = wb_hh[g * H + unit + 1, j0:j0 + wr]
                for j in range(wr):
                    out[o + 2 * j] = a[j]
                    out[o + 2 * j + 1] = b[j]
            elif unit < H:
                a = wb_hh[g * H + unit, j0:j0 + wr]
                for j in range(wr):
                    out[o + 2 * j] = a[j]


def from_bits(b):
    """uint16 bf16 bits -> the float32 values they stand for (exact)."""
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def aligned(shape, dtype, zero=True):
    """A C-contiguous array whose data starts on a 64-byte boundary (a view into a
    slightly larger one). AMX tiles must: with tile rows that straddle two cache
    lines the products from L2 run at less than half the rate (~0.8 against ~1.8
    TFLOP/s on one core, ``bench/bf16_lstm.py --peak``), and NumPy's large arrays
    start 16 bytes past a page."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = (np.zeros if zero else np.empty)(n * dt.itemsize + 64, np.uint8)
    a = (-raw.ctypes.data) % 64
    return raw[a:a + n * dt.itemsize].view(dt).reshape(shape)


class PackedBF16:
    __slots__ = ("H", "Hp", "I", "Ip", "Kh", "bias", "up", "ub", "nvb", "peep", "wb_ih", "wb_hh")


#: rows of an AMX tile: the forward's row blocks
AMX_ROWS = 16

#: weights of at least this many elements are converted and packed on the
#: call's threads (two halves of the panels; U's panels beside them)
PACK_SPLIT = 1 << 18


def pack_bf16(w_ih, w_hh, b_ih, b_hh, backward, peep, kmult=2, threads=1, tiles=False):
    """The panels of :func:`fastrnn.kernels.vector.pack` (``VW = 16``) in bf16 pairs:
    ``up`` [P, (Ip+Kh)/2, 4*VW, 2] uint16 (as words: [P, (Ip+Kh)/2, 4*VW] uint32; ``Ip``,
    ``Kh``: I and Hp rounded up to ``kmult``); with ``backward`` also ``ub`` (``U``
    for ``dh = dgates U`` by output panels of ``nvb*VW`` units, ``[G*Hp/2][w][2]``
    each), ``wb_ih`` and ``wb_hh`` (the weights' bf16 bits in PyTorch's layout, for
    the products after the loop). ``threads``: at most that
    many threads convert and pack large weights (``PACK_SPLIT``). ``tiles`` (``kmult``
    32): ``up`` in AMX tile order instead, ``[P][(Ip+Kh)/32][4][16][16]`` words
    (:mod:`fastrnn.kernels.amx_fwd`)."""
    I = w_ih.shape[1]
    H = w_hh.shape[1]
    Hp = -(-H // VW) * VW
    P = Hp // VW
    Ip = -(-I // kmult) * kmult                 # the operand rows' x and h widths: even
    Kh = -(-Hp // kmult) * kmult                # (AMX: multiples of 32), zeros beyond
    pk = PackedBF16()
    pk.H, pk.Hp, pk.I, pk.Ip, pk.Kh, pk.nvb = H, Hp, I, Ip, Kh, 4
    bias = np.zeros((4, Hp), np.float32)
    bias[:, :H] = (b_ih + b_hh).reshape(4, H)
    pk.bias = np.ascontiguousarray(bias.reshape(4, P, VW).transpose(1, 0, 2)).reshape(-1)
    pk.peep = None
    if peep is not None:                                  # [P,3,VW]: p_i, p_f, p_o per panel
        pp = np.zeros((3, Hp), np.float32)
        pp[:, :H] = peep
        pk.peep = np.ascontiguousarray(pp.reshape(3, P, VW).transpose(1, 0, 2))
    split = threads > 1 and w_ih.size + w_hh.size >= PACK_SPLIT
    if tiles and kmult == 32:
        _pack_tiles_into(pk, w_ih, w_hh, backward, split, threads)
        return pk
    wbi = np.empty(w_ih.shape, np.uint16)
    wbh = np.empty(w_hh.shape, np.uint16)
    conv = [lambda: _to_bits(np.ascontiguousarray(w_ih, np.float32).reshape(-1).view(np.uint32),
                             wbi.reshape(-1)),
            lambda: _to_bits(np.ascontiguousarray(w_hh, np.float32).reshape(-1).view(np.uint32),
                             wbh.reshape(-1))]
    m = 16 if tiles else 1
    up = aligned((P, (Ip + Kh) // 2 // m, 4, m, VW), np.uint32, zero=False)   # every word written
    NB = pk.nvb * VW
    ub = aligned(-(-Hp // NB) * 4 * Hp * NB, np.uint16) if backward else None
    cuts = (0, P // 2, P) if split else (0, P)
    if backward:        # the bits exist for the backward's panels: the forward's from them
        packs = [lambda p0=p0, p1=p1: _pack_panels_bits(wbi, wbh, H, Ip // 2, up, p0, p1)
                 for p0, p1 in zip(cuts[:-1], cuts[1:])]
    else:               # inference: rounded and packed in one pass, no bits arrays
        wi32 = np.ascontiguousarray(w_ih, np.float32).view(np.uint32)
        wh32 = np.ascontiguousarray(w_hh, np.float32).view(np.uint32)
        packs = [lambda p0=p0, p1=p1: _pack_panels(wi32, wh32, H, Ip // 2, up, p0, p1)
                 for p0, p1 in zip(cuts[:-1], cuts[1:])]
    if backward:
        packs.append(lambda: _pack_u(wbh, H, Hp, NB, ub))
    for stage in ((conv, packs) if backward else (packs,)):
        Tasks(stage).run(threads if split else 1)     # one thread: in order, here
    pk.up = up.view(np.uint16).reshape(P, (Ip + Kh) // 2, 8 * VW)
    pk.ub = pk.wb_ih = pk.wb_hh = None
    if backward:
        # the bits as they are (PyTorch's layout): each backward route lays out what
        # its products after the loop read
        pk.ub, pk.wb_ih, pk.wb_hh = ub, wbi, wbh
    return pk


def _pack_tiles_into(pk, w_ih, w_hh, backward, split, threads):
    """:func:`pack_bf16`'s arrays for the AMX route (:mod:`fastrnn.kernels.amx_pack`):
    each from the float32 weights in one pass, every task independent (one stage on
    the threads: the forward's panels in halves, with ``backward`` the bits and U's
    panels beside them)."""
    from fastrnn.kernels import amx_pack
    H, Hp, Ip, Kh = pk.H, pk.Hp, pk.Ip, pk.Kh
    P = Hp // VW
    wi = np.ascontiguousarray(w_ih, np.float32)
    wh = np.ascontiguousarray(w_hh, np.float32)
    up = aligned((P, (Ip + Kh) // 32, 4, 16, VW), np.uint32, zero=False)   # every word written
    cuts = (0, P // 2, P) if split else (0, P)
    pk.ub = pk.wb_ih = pk.wb_hh = None
    tasks = [lambda p0=p0, p1=p1: amx_pack.pack_tiles(wi, wh, H, Ip // 32, up, p0, p1)
             for p0, p1 in zip(cuts[:-1], cuts[1:])]
    if backward:
        NB = pk.nvb * VW
        Q = -(-Hp // NB)
        pk.ub = aligned(Q * 4 * Hp * NB, np.uint16, zero=False)
        pk.ub[(Q - 1) * 4 * Hp * NB + 4 * Hp * (Hp - (Q - 1) * NB):] = 0  # the rest is written
        pk.wb_ih = np.empty(w_ih.shape, np.uint16)
        pk.wb_hh = np.empty(w_hh.shape, np.uint16)
        # W_ih's bits rounded with the x part's tiles
        tasks = [lambda p0=p0, p1=p1: amx_pack.pack_tiles_bits(wi, wh, H, Ip // 32, up, p0, p1,
                                                               pk.wb_ih)
                 for p0, p1 in zip(cuts[:-1], cuts[1:])]
        # U's panels and W_hh's bits in one pass over W_hh, in halves of its row pairs
        kc = (0, Hp, 2 * Hp) if split else (0, 2 * Hp)
        tasks += [lambda k0=k0, k1=k1: amx_pack.pack_u_bits(wh, H, Hp, NB, pk.ub, pk.wb_hh,
                                                            k0, k1)
                  for k0, k1 in zip(kc[:-1], kc[1:])]
    Tasks(tasks).run(threads if split else 1)
    pk.up = up.view(np.uint16).reshape(P, (Ip + Kh) // 2, 8 * VW)


# --------------------------------------------------------------------------- forward
def _x_bits_amx(x, s0, m, xh, Ip, threads):
    """``xh[:m, :B, :Ip]`` = the bf16 bits of x's steps ``s0 .. s0+m`` (zero past I) in
    vector code (:func:`fastrnn.kernels.amx_pack.x_bits`), large inputs on two
    threads (halves of the steps)."""
    from fastrnn.kernels import amx_pack
    if threads > 1 and m > 1 and m * x.shape[1] * x.shape[2] >= PACK_SPLIT:
        h = m // 2
        Tasks([lambda: amx_pack.x_bits(x, s0, xh, Ip, 0, h),
               lambda: amx_pack.x_bits(x, s0, xh, Ip, h, m)]).run(2)
    else:
        amx_pack.x_bits(x, s0, xh, Ip, 0, m)


@njit(inline="always")
def _fwd_mr(mr, peep, tag, x, ldx, h, ldh, w, KI, KH, bias, pp, cin, cout, ldc, y, ldy, hb,
            ldhb, act, ldact, training, wn):
    if peep is None:
        _f(mr, (tag, x, ldx, h, ldh, w, KI, KH, bias, pp, cin, cout, ldc, y, ldy, hb, ldhb, act,
                ldact, training, wn))
    else:
        _pf(mr, (tag, x, ldx, h, ldh, w, KI, KH, bias, pp, cin, cout, ldc, y, ldy, hb, ldhb, act,
                 ldact, training, wn))


@njit(inline="always")
def _fwd_panel(s, p, tid, P, args, peep):
    """Step ``s``, panel ``p`` of :func:`lstm_fwd_bf16_kernel` (byte pointers in ``args``)."""
    (tag, xp, xld, hbp, hld, B, KI, KH, Hp, GH, bp, upp, ppp, csp, ring, nact, training, ap,
     yp, mrmax, r0, r1) = args
    VW_ = len(tag)
    pn = (p + 1) % P if tid == 0 else (p + P - 1) % P     # the panel this thread likely does next
    GV = 4 * VW_
    KW = 4 * (KI + KH) * GV                               # bytes per panel
    nb = nact[s]
    xsp = xp + 2 * s * B * xld
    hsp = hbp + 2 * s * B * hld
    hout = hsp + 2 * B * hld
    ysp = yp + 4 * s * B * Hp
    cin = csp + 4 * (s % ring) * B * Hp
    cout = csp + 4 * ((s + 1) % ring) * B * Hp
    asp = ap + 4 * s * B * GH
    wp = upp + p * KW
    wn = upp + pn * KW
    col = p * GV
    u0 = p * VW_
    nr = min(nb, r1) - r0
    nblk = (nr + mrmax - 1) // mrmax
    for blk in range(nblk):
        q0 = r0 + blk * nr // nblk
        mr = r0 + (blk + 1) * nr // nblk - q0
        co = 4 * (q0 * Hp + u0)
        _fwd_mr(mr, peep, tag, xsp + 2 * q0 * xld, xld, hsp + 2 * q0 * hld, hld, wp, KI, KH,
                bp + 4 * col, ppp + 4 * 3 * u0, cin + co, cout + co, Hp, ysp + co, Hp,
                hout + 2 * (q0 * hld + u0), hld, asp + 4 * (q0 * GH + col), GH, training,
                wn + 64 * (KI + KH) * (blk % (GV * 4 // 64)))


@njit(**JIT_OPTIONS)
def lstm_fwd_bf16_kernel(tag, xb, xld, hb, hoff, hld, n, KI, KH, Hp, bias, up, peep, cs, ring,
                         nact, training, act, y, ctl, tid, nthr, mrmax, r0, r1):
    # xb: uint16 bf16 x in step order, step s row b at element (s*B + b)*xld (B = xb.shape[1])
    # hb: uint16 bf16 operand states: h_{s-1} of row b at element hoff + (s*B + b)*hld; row
    #     0 holds h0 (in), step s writes row s+1. Training passes one [n+1,B,Ip+Hp]
    #     buffer of rows [x_t, h_{t-1}] as both (xld = hld = Ip+Hp, hoff = Ip)
    # KI, KH: input and state pairs (Ip/2, Kh/2);  bias: [G*Hp] float32 (panel order)
    # up: [P,(Ip+Kh)/2,G*VW,2] uint16 panels;  peep: None or [P,3,VW] float32
    # cs: [S,B,Hp] float32 cell ring (training S = n+1, inference 2)
    # act: [n,B,G*Hp] float32 out in training;  y: [n,B,Hp] float32 h_t out
    # ctl, tid, nthr, mrmax, r0, r1: as lstm_fwd_kernel of packed_lstm
    ppp = 0 if peep is None else peep.ctypes.data
    P = Hp // len(tag)
    args = (tag, xb.ctypes.data, xld, hb.ctypes.data + 2 * hoff, hld, xb.shape[1], KI, KH, Hp,
            bias.shape[0], bias.ctypes.data, up.ctypes.data, ppp, cs.ctypes.data, ring, nact,
            training, act.ctypes.data, y.ctypes.data, mrmax, r0, r1)
    return panel_steps(n, P, False, ctl, tid, nthr, _fwd_panel, args, peep)


# --------------------------------------------------------------------------- backward
@njit(inline="always")
def _bwd_mr(mr, peep, tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc,
            dg, dgv, dgg, dgb, wn):
    if peep is None:
        _b(mr, (tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg,
                dgv, dgg, dgb, wn))
    else:
        _pb(mr, (tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg,
                 dgv, dgg, dgb, wn))


@njit(inline="always")
def _bwd_rows(r0, r1, mrmax, peep, tag, ntag, a, lda, w, KK, dhx, lddhx, dy, ldh, act, ldact,
              pp, cp, cn, dc, dg, dgv, dgg, dgb, wn):
    """Rows [r0, r1) of one output panel, in blocks of at most ``mrmax`` rows (float32
    pointers advance 4 bytes per element, the bf16 ones 2)."""
    parts = len(ntag) * len(tag) * 4 // 64
    n = r1 - r0
    nblk = (n + mrmax - 1) // mrmax
    for blk in range(nblk):
        q0 = r0 + blk * n // nblk
        mr = r0 + (blk + 1) * n // nblk - q0
        _bwd_mr(mr, peep, tag, ntag, a + 2 * q0 * lda, lda, w, KK, dhx + 4 * q0 * lddhx, lddhx,
                dy + 4 * q0 * ldh, ldh, act + 4 * q0 * ldact, ldact, pp, cp + 4 * q0 * ldh,
                cn + 4 * q0 * ldh, dc + 4 * q0 * ldh, dg + 4 * q0 * ldact, dgv, dgg,
                dgb + 2 * q0 * ldact, wn + 64 * KK * (blk % max(1, parts)))


@njit(inline="always")
def _bwd_panel(s, q, tid, Q, args, peep):
    """Step ``s``, output panel ``q`` of :func:`lstm_bwd_bf16_kernel`."""
    (tag, n, B, Hp, GH, nvb, ubp, gp, gbp, ap, csp, dyp, dhp, dcp, zp, ppp, nact, mrmax, r0,
     r1) = args
    VW_ = len(tag)
    NB = nvb * VW_
    KK = GH // 2
    nb = min(nact[s], r1)
    nprod = min(nact[s + 1], r1) if s + 1 < n else r0
    nprod = max(nprod, r0)
    a = gbp + 2 * (s + 1) * B * GH                 # the rounded gate gradients of step s+1
    j0 = q * NB
    nv = min(NB, Hp - j0) // VW_
    wq = ubp + 2 * q * GH * NB
    qn = (q + 1) % Q if tid == 0 else (q + Q - 1) % Q
    wn = ubp + 2 * qn * GH * NB
    col = j0 * 4
    dyq = dyp + 4 * (s * B * Hp + j0)
    aq = ap + 4 * (s * B * GH + col)
    cpq = csp + 4 * (s * B * Hp + j0)
    cnq = cpq + 4 * B * Hp
    dcq = dcp + 4 * j0
    dgq = gp + 4 * (s * B * GH + j0)
    dgbq = gbp + 2 * (s * B * GH + j0)
    dhq = dhp + 4 * j0
    ppq = ppp + 4 * 3 * j0
    for part in range(2):
        lo = r0 if part == 0 else nprod
        hi = nprod if part == 0 else nb
        K = KK if part == 0 else 0
        dhx = zp if part == 0 else dhq
        lddhx = 0 if part == 0 else Hp
        if nv == 4:
            _bwd_rows(lo, hi, mrmax, peep, tag, (0, 0, 0, 0), a, GH, wq, K, dhx, lddhx, dyq, Hp,
                      aq, GH, ppq, cpq, cnq, dcq, dgq, VW_, Hp, dgbq, wn)
        elif nv == 3:
            _bwd_rows(lo, hi, mrmax, peep, tag, (0, 0, 0), a, GH, wq, K, dhx, lddhx, dyq, Hp,
                      aq, GH, ppq, cpq, cnq, dcq, dgq, VW_, Hp, dgbq, wn)
        elif nv == 2:
            _bwd_rows(lo, hi, mrmax, peep, tag, (0, 0), a, GH, wq, K, dhx, lddhx, dyq, Hp,
                      aq, GH, ppq, cpq, cnq, dcq, dgq, VW_, Hp, dgbq, wn)
        else:
            _bwd_rows(lo, hi, mrmax, peep, tag, (0,), a, GH, wq, K, dhx, lddhx, dyq, Hp,
                      aq, GH, ppq, cpq, cnq, dcq, dgq, VW_, Hp, dgbq, wn)


@njit(**JIT_OPTIONS)
def lstm_bwd_bf16_kernel(tag, act, cs, ub, nvb, peep, dy, dhn, zrow, dc, dg, dgb, nact, ctl, tid,
                         nthr, mrmax, r0, r1):
    # as lstm_bwd_kernel of packed_lstm, with ub: uint16 U in bf16 pairs (output
    # panel q at element q*G*Hp*NB, [G*Hp/2][w][2]) and dgb: [n,B,G*Hp] uint16 out,
    # the rounded dg (the operand of step s-1's product and of the GEMMs after)
    n, B, GH = act.shape
    Hp = dy.shape[2]
    NB = nvb * len(tag)
    ppp = 0 if peep is None else peep.ctypes.data
    args = (tag, n, B, Hp, GH, nvb, ub.ctypes.data, dg.ctypes.data, dgb.ctypes.data,
            act.ctypes.data, cs.ctypes.data, dy.ctypes.data, dhn.ctypes.data, dc.ctypes.data,
            zrow.ctypes.data, ppp, nact, mrmax, r0, r1)
    return panel_steps(n, (Hp + NB - 1) // NB, True, ctl, tid, nthr, _bwd_panel, args, peep)


# --------------------------------------------------------------------------- drivers
class BF16Cache:
    """What :func:`lstm_backward` needs from a training :func:`lstm_forward`."""

    __slots__ = ("sched", "pk", "xh", "act", "cs", "flops", "plan", "tag", "amx")


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads,
                 peep=None, native=True, amx=False):
    """LSTM in the bf16 compute mode, one layer and direction: ``(y, h_n, c_n,
    cache)``, float32 (every array argument float32; ``lens`` [B] int64 in
    [1, T]); ``peep`` [3,H] makes it the diagonal peephole LSTM; ``native``
    False runs the emulated products (any AVX-512/AVX2 CPU); ``amx`` runs the
    forward products on AMX tiles (:mod:`fastrnn.kernels.amx_fwd`; the CPU must
    have AMX-BF16 and the process the kernel's permission to use the tiles)."""
    if amx:
        from fastrnn.kernels import amx_bf16
        if not amx_bf16.available():      # a tile instruction without them is SIGILL
            raise ValueError("amx=True: this CPU or process may not use AMX-BF16 tiles "
                             "(amx_bf16.available() is False)")
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = np.dtype(np.float32)
    G = 4
    tag = NATIVE if native else EMULATED
    pthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    pk = pack_bf16(w_ih, w_hh, b_ih, b_hh, training, peep, 32 if amx else 2, pthr, tiles=amx)
    Hp, Ip, Kh = pk.Hp, pk.Ip, pk.Kh
    P = Hp // VW
    sched = Schedule(lens, T, reverse)
    n = sched.n
    lens_sorted = sched.nact_lengths()
    step_flops = 2.0 * B * G * H * (H + I)
    plan = Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), P,
                pk.up.nbytes, lens_sorted)
    fplan = plan
    if amx and plan.mode == "rows" and B < 2 * AMX_ROWS:
        # a thread's tile pass costs 16 rows' products however few rows it has: split
        # rows, two threads would each pay about what one pays for all of them (the
        # backward's 16-row tiles too: its loop runs on fplan)
        fplan = Plan(1, B, 0, 0, 1, 0, None)
    padded = sched.tix is not None
    rows = np.arange(B)
    # xh: [m+1,Bx,Ip+Kh] bf16 operand rows [x_t, h_{t-1}] of m steps in step order
    # (rows past a sequence's end, the padding rows and columns stay zero). AMX reads
    # tiles of 16 rows from a block's first row: Bx is B rounded up to 16 (a thread's
    # tile never reads the rows its epilogue is writing for the next step: such a load
    # waits for those stores), and a 32-row block that runs past a step's last row
    # reads the next step's first rows (products of rows it never stores), past the
    # last step a tail of 32 zero rows. Training keeps every step's (m = n: the weight
    # gradient's operand); inference runs chunks of C steps through one small buffer
    # (C even: each chunk starts on slot 0 of the cell ring), so its workspace beyond
    # x and y is O(B (I+H)) whatever T is
    C = n if training else max(1, min(n, infer_chunk(B)))
    C += C % 2 if not training else 0
    ld = Ip + Kh
    Bx = -(-B // AMX_ROWS) * AMX_ROWS if amx else B
    nx = (C + 1) * Bx * ld
    xbuf = aligned(nx + (32 * ld if amx else 0), np.uint16, zero=padded)
    xh = xbuf[:nx].reshape(C + 1, Bx, ld)
    if padded:
        xs = np.empty((C, B, I), dt)
    else:
        # every row runs every step: _x_bits writes each step's x part (zero padded to
        # Ip), the loop each h part up to Hp; zero only what nothing writes
        xbuf[nx:] = 0
        xh[:, B:] = 0
        xh[:, :B, Ip + Hp:] = 0
        xh[C, :B, :Ip] = 0
        x = np.ascontiguousarray(x, dt)
        x32 = x.view(np.uint32)
    xh[0, :B, Ip:Ip + Hp] = to_bits(sched.sort_rows(h0, Hp))
    # (64-byte aligned: the AMX loop may store the gates non-temporal, whole lines)
    act = aligned((n, B, G * Hp), dt, zero=False) if training else np.empty((1, 1, 1), dt)
    ring = n + 1 if training else 2
    cs = (np.zeros if padded else np.empty)((ring, B, Hp), dt)
    cs[0] = sched.sort_rows(c0, Hp)
    ys = (np.zeros if padded else np.empty)((n, B, Hp), dt)
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        m = s1 - s0
        if s0:
            xh[0, :, Ip:] = xh[C, :, Ip:]                     # h after the last chunk
        if padded:
            sched.gather_into(x, xs[:m], s0, s1)
            xh[:m, :B, :I] = to_bits(xs[:m])
        elif amx:
            _x_bits_amx(x, s0, m, xh, Ip, pthr)
        else:
            _x_bits(x32, s0, s1, xh, Ip)
        ctl = np.zeros(P + 1, np.int64)
        ysc = ys[s0:s1]
        nact = sched.nact[s0:s1]
        if amx:
            from fastrnn.kernels import amx_fwd
            fplan.launch(amx_fwd.lstm_fwd_tiles_kernel, lambda tid, nthr, r0, r1: (
                xh, Ip + Kh, Ip, m, Ip // 32, Kh // 32, Hp, pk.bias, pk.up, pk.peep, cs, ring,
                nact, training, act, ysc, ctl, tid, nthr, r0, r1))
        else:
            plan.launch(lstm_fwd_bf16_kernel, lambda tid, nthr, r0, r1: (
                tag, xh, Ip + Kh, xh, Ip, Ip + Kh, m, Ip // 2, Kh // 2, Hp, pk.bias, pk.up,
                pk.peep, cs, ring, nact, training, act, ysc, ctl, tid, nthr, BF16_MR, r0, r1))
    h_last = ys[lens_sorted - 1, rows]
    c_last = cs[lens_sorted % ring, rows]
    y = sched.scatter(ys, H, dt)
    h_n = sched.unsort_rows(h_last, H)
    c_n = sched.unsort_rows(c_last, H)
    if not training:
        return y, h_n, c_n, None
    cache = BF16Cache()
    cache.sched, cache.pk, cache.act, cache.cs = sched, pk, act, cs
    cache.xh = xh if Bx == B else xh[:, :B]
    cache.flops = 2.0 * B * G * H * H
    cache.plan, cache.tag, cache.amx = fplan, tag, amx
    return y, h_n, c_n, cache


def lstm_backward(cache, dy, dh_n, dc_n, max_threads, blas_threads):
    """Gradients from :func:`lstm_forward`'s cache: ``(dx, dh0, dc0, dw_ih, dw_hh, db,
    dpeep)`` in PyTorch's layout, as :func:`fastrnn.kernels.packed.lstm_backward`."""
    sched, pk = cache.sched, cache.pk
    n, B, GH = cache.act.shape
    H, Hp = pk.H, pk.Hp
    dt = np.dtype(np.float32)
    NB = pk.nvb * VW
    Q = -(-Hp // NB)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < settings.two_thread_step_flops):
        plan = Plan(1, B, 0, 0, 1, 0, None)
    if cache.amx and plan.mode == "rows" and B < 16 * plan.nthr:
        # AMX products run on tiles of 16 rows: with fewer rows per thread each
        # thread multiplies a whole tile, only the epilogue's rows are split
        plan = Plan(1, B, 0, 0, 1, 0, None)
    if cache.amx and plan.mode == "rows":
        plan = _cuts16(plan)
    gthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, dt), Hp)
    dhn = sched.sort_rows(np.asarray(dh_n, dt), Hp)
    dc = sched.sort_rows(np.asarray(dc_n, dt), Hp)
    zero = np.zeros if sched.tix is not None else np.empty
    if cache.amx and pk.peep is None:     # the AMX loop sums each 16 rows' over the steps
        dg = np.zeros((1, -(-B // AMX_ROWS), GH), dt)
    else:
        dg = zero((n, B, GH), dt)
    zrow = np.zeros(NB, dt)
    ctl = np.zeros(Q + 1, np.int64)
    if cache.amx:
        from fastrnn.kernels import amx_bwd
        dx, dh0, dw_ih, dw_hh, db_p = amx_bwd.backward(cache, plan, gthr, dys, dhn, zrow, dc, dg,
                                                   ctl)
    else:
        dx, dh0, dw_ih, dw_hh, db_p = _simd_backward(cache, plan, gthr, dys, dhn, zrow, dc, dg,
                                                    ctl, zero)
    db = np.ascontiguousarray(db_p.reshape(4, Hp)[:, :H]).reshape(4 * H)
    dpeep = None
    if pk.peep is not None:
        dg3 = dg.reshape(n * B, 4, Hp)
        cp = cache.cs[:-1].reshape(n * B, Hp)
        cn = cache.cs[1:].reshape(n * B, Hp)
        dpeep = np.stack([np.einsum("rh,rh->h", dg3[:, 0], cp),
                          np.einsum("rh,rh->h", dg3[:, 1], cp),
                          np.einsum("rh,rh->h", dg3[:, 3], cn)])[:, :H]
    return (dx, sched.unsort_rows(dh0, H), sched.unsort_rows(dc, H), dw_ih, dw_hh, db, dpeep)


def _cuts16(plan):
    """``plan`` (rows) with its cuts on multiples of 16 rows: the AMX backward loop
    sums the gate gradients of each 16 rows (rows 16i..16i+15) for the bias gradient,
    one thread per block, so that the sums are the same whatever the threads."""
    B = plan.B
    cuts = [0]
    for c in plan.cuts[1:-1]:
        c = int(round(c / AMX_ROWS)) * AMX_ROWS
        if c >= B:
            c = (B - 1) // AMX_ROWS * AMX_ROWS
        if cuts[-1] < c < B:
            cuts.append(c)
    cuts.append(B)
    if len(cuts) < 3:
        return Plan(1, B, 0, 0, 1, 0, None)
    out = Plan(1, B, 0, 0, 1, 0, None)
    out.mode, out.cuts, out.nthr = "rows", cuts, len(cuts) - 1
    return out


def _padded(bits, H, Hp, cols):
    """A weight's bits [4H, c] -> its bf16 values [4Hp, cols] float32, units and columns
    zero padded."""
    out = np.zeros((4, Hp, cols), np.float32)
    out[:, :H, :bits.shape[1]] = from_bits(bits).reshape(4, H, -1)
    return out.reshape(4 * Hp, cols)


def _simd_backward(cache, plan, gthr, dys, dhn, zrow, dc, dg, ctl, zero):
    """The loop on vdpbf16ps (or emulated) and float32 GEMMs on the rounded operands
    widened back to float32 (exact products): ``(dx, dh0, dw_ih, dw_hh, db_p)``."""
    sched, pk = cache.sched, cache.pk
    n, B, GH = cache.act.shape
    H, Hp, I, Ip, Kh = pk.H, pk.Hp, pk.I, pk.Ip, pk.Kh
    dt = np.dtype(np.float32)
    dgb = zero((n, B, GH), np.uint16)
    plan.launch(lstm_bwd_bf16_kernel, lambda tid, nthr, r0, r1: (
        cache.tag, cache.act, cache.cs, pk.ub, pk.nvb, pk.peep, dys, dhn, zrow, dc, dg, dgb,
        sched.nact, ctl, tid, nthr, BF16_MR, r0, r1))
    dgr = from_bits(dgb).reshape(-1, GH)
    xhr = from_bits(cache.xh[:n]).reshape(n * B, Ip + Kh)
    dg2 = dg.reshape(n * B, GH)
    dxs = np.empty((n * B, I), dt)
    dh0 = np.empty((B, Hp), dt)
    db_p = np.empty(GH, dt)
    dw_p = np.empty((GH, Ip + Kh), dt)
    split = 2.0 * n * B * GH * (2 * I + Hp) >= settings.split_gemm_flops
    tasks = [lambda r0=r0, r1=r1: np.matmul(dgr[:, r0:r1].T, xhr, out=dw_p[r0:r1])
             for r0, r1 in splits(GH, DW_TASKS if split else 1)]
    w_ih = _padded(pk.wb_ih, H, Hp, I)
    tasks += [lambda r0=r0, r1=r1: np.matmul(dgr[r0:r1], w_ih, out=dxs[r0:r1])
              for r0, r1 in splits(n * B, min(4, max(1, n * B // 64)) if split else 1)]
    w_hh = _padded(pk.wb_hh, H, Hp, Hp)
    tasks.append(lambda: np.matmul(dgr[:B], w_hh, out=dh0))
    tasks.append(lambda: np.sum(dg2, axis=0, out=db_p))
    Tasks(tasks).run(gthr if split else 1)
    dx = sched.scatter(dxs.reshape(n, B, I), I, dt)
    dw4 = dw_p.reshape(4, Hp, Ip + Kh)
    dw_ih = np.ascontiguousarray(dw4[:, :H, :I]).reshape(4 * H, I)
    dw_hh = np.ascontiguousarray(dw4[:, :H, Ip:Ip + H]).reshape(4 * H, H)
    return dx, dh0, dw_ih, dw_hh, db_p
