"""The bf16 LSTM's forward time loop on AMX tiles: weights in tile order, each
panel's epilogue beside the next panel's tile products.

Products: ``tdpbf16ps`` on the operand rows ``[x_t, h_{t-1}]``, 32 k per chunk,
float32 sums in tiles, the chunks summed in order; the epilogue (gates, c, h) is
:mod:`fastrnn.kernels.amx_bf16`'s ``_fwd_epilogue``.

- The weight panel's layout: :func:`fastrnn.kernels.packed_bf16.pack_bf16` with
  ``tiles=True`` stores panel ``p`` (16 units x 4 gates) chunk by chunk, and in a
  chunk gate by gate, so that each weight tile (16 k pairs x 16 units) is 1 KiB of
  contiguous memory (``[P][chunks][4 gates][16 k pairs][16 units]`` words), read
  whole lines in order.
- The pipeline: a thread's panels alternate between two scratch blocks; while the
  tile unit runs a panel's products, the vector units run the epilogue of the
  thread's previous panel, a few rows per chunk of 32 k inside the products' loop
  (:func:`_epi_rows`), so that both stay in the core's out-of-order window (run one
  after the other, the tile unit idles through each epilogue); the last panel of
  a step is finished alone before the step counts it done.

Rows per thread: from :data:`SEG_MIN_ROWS` the segment-blocked products (32 rows x
2 gates per tile pass over :data:`FWD_SEG` chunks at a time), else 16 rows x 4
gates over the whole k range.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.amx_bf16 import (SEG_MIN_ROWS, _aligned_ptr, _fn, _fwd_epilogue, _i8p, _t,
                                      amx_begin, amx_end, sfence, tile_config, uk_amx_epi)
from fastrnn.kernels.atomics import atomic_add, cycles
from fastrnn.kernels.bf16_simd import I64
from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.sync import claim, wait

__all__ = ["lstm_fwd_tiles_kernel", "uk_tiles32", "uk_tiles16", "FWD_SEG", "SEG_MIN_ROWS",
           "PIPE_MIN_CHUNKS", "CHUNK_BYTES", "TILE_BYTES"]

#: one weight tile (16 k pairs x 16 units of one gate) and one chunk (4 gates)
TILE_BYTES = 1024
CHUNK_BYTES = 4 * TILE_BYTES
#: chunks of 32 k per tile pass of the 32-row blocks: the accumulators stay in their
#: tiles over the whole k range up to this many (a pass that stores and reloads them
#: between segments of weights kept in L1 measured slower than one that reads the
#: weights from L2 twice); the float32 sums are the same either way
FWD_SEG = 32
#: training stores the gates non-temporal from this many bytes of them (several
#: L2s: they leave the caches anyway; below, the backward finds them in L3)
NT_MIN_BYTES = 16 << 20
#: with fewer than 16 rows per thread, the panels are pipelined from this many
#: chunks of 32 k (below, each epilogue runs right after its products)
PIPE_MIN_CHUNKS = 8

_C = lambda v: ir.Constant(I64, v)  # noqa: E731


def _epi_rows(b, peephole, c, nk, e):
    """The epilogue (:func:`fastrnn.kernels.amx_bf16._fwd_epilogue`) of rows [c*e1/nk,
    (c+1)*e1/nk) of a pending block (``e``: its scratch, row count ``e1`` and row-0
    pointers), emitted in chunk ``c`` of ``nk``: the vector work of one panel runs,
    spread evenly, while the tile unit does the next one's products (a few rows per
    chunk keep both in the out-of-order window)."""
    (escr, e1, bias, peep, cin, cout, ldc, y, ldy, hb, ldhb, act, ldact, training) = e
    lo = b.sdiv(b.mul(c, e1), nk)
    hi = b.sdiv(b.mul(b.add(c, _C(1)), e1), nk)
    with b.if_then(b.icmp_signed("<", lo, hi)):
        _fwd_epilogue(b, peephole, b.add(escr, b.mul(lo, _C(256))), b.sub(hi, lo), bias, peep,
                      b.add(cin, b.mul(lo, b.mul(ldc, _C(4)))),
                      b.add(cout, b.mul(lo, b.mul(ldc, _C(4)))), ldc,
                      b.add(y, b.mul(lo, b.mul(ldy, _C(4)))), ldy,
                      b.add(hb, b.mul(lo, b.mul(ldhb, _C(2)))), ldhb,
                      b.add(act, b.mul(lo, b.mul(ldact, _C(4)))), ldact, training)


_EPI_SIG = (types.int64,) * 14


def _make32(peephole):
    @intrinsic
    def uk(typingctx, a, ldb, w, nk, scr, acc, escr, e1, bias, peep, cin, cout, ldc, y, ldy, hb,
           ldhb, act, ldact, training):
        """32 rows x 2 gates over ``nk`` chunks: the accumulators (tiles 0-3: rows 0-15 /
        16-31 x the two gates; from ``scr`` when ``acc``, else zero; rows of 256 bytes)
        plus the operand rows ``a`` (tiles 4, 5: 32 rows of stride ``ldb`` bytes) times
        the gates' weight tiles (6, 7: at ``w`` and ``w + 1 KiB`` of each chunk's 4 KiB,
        rows of 64 bytes), stored back to ``scr``; beside them the epilogue of the ``e1``
        rows of the block pending at ``escr`` (:func:`_epi_rows`; the other arguments as
        ``uk_amx_epi``'s, at the block's row 0)."""
        i8 = types.int64
        sig = types.void(i8, i8, i8, i8, i8, types.boolean, *_EPI_SIG)

        def codegen(context, b, signature, args):
            a, ldb, w, nk, scr, acc = args[:6]
            e = args[6:]
            load = _fn(b, "llvm.x86.tileloadd64", [ir.IntType(8), _i8p, I64])
            dp = _fn(b, "llvm.x86.tdpbf16ps", [ir.IntType(8)] * 3)
            store = _fn(b, "llvm.x86.tilestored64", [ir.IntType(8), _i8p, I64])
            cq = [b.add(scr, _C(16 * 256 * i + 64 * j)) for i in range(2) for j in range(2)]
            with b.if_else(acc) as (then, otherwise):
                with then:
                    for t in range(4):
                        b.call(load, [_t(t), b.inttoptr(cq[t], _i8p), _C(256)])
                with otherwise:
                    for t in range(4):
                        b.call(_fn(b, "llvm.x86.tilezero", [ir.IntType(8)]), [_t(t)])
            a16 = b.mul(ldb, _C(16))
            with cgutils.for_range(b, nk) as loop:
                c = loop.index
                ac = b.add(a, b.mul(c, _C(64)))
                wc = b.add(w, b.mul(c, _C(CHUNK_BYTES)))
                b.call(load, [_t(4), b.inttoptr(ac, _i8p), ldb])
                b.call(load, [_t(6), b.inttoptr(wc, _i8p), _C(64)])
                b.call(dp, [_t(0), _t(4), _t(6)])
                b.call(load, [_t(7), b.inttoptr(b.add(wc, _C(TILE_BYTES)), _i8p), _C(64)])
                b.call(dp, [_t(1), _t(4), _t(7)])
                b.call(load, [_t(5), b.inttoptr(b.add(ac, a16), _i8p), ldb])
                b.call(dp, [_t(2), _t(5), _t(6)])
                b.call(dp, [_t(3), _t(5), _t(7)])
                _epi_rows(b, peephole, c, nk, e)
            for t in range(4):
                b.call(store, [_t(t), b.inttoptr(cq[t], _i8p), _C(256)])
            return context.get_dummy_value()
        return sig, codegen
    return uk


def _make16(peephole):
    @intrinsic
    def uk(typingctx, a, ldb, w, nk, scr, escr, e1, bias, peep, cin, cout, ldc, y, ldy, hb, ldhb,
           act, ldact, training):
        """16 rows x 4 gates over ``nk`` chunks from zero: the operand rows ``a`` (tile 4,
        stride ``ldb`` bytes) times each chunk's four weight tiles (5, 6, 7, 5: the
        chunk's 4 KiB at ``w``, rows of 64 bytes) into tiles 0-3, stored to ``scr``
        (rows of 256 bytes); the pending epilogue rows as :data:`uk_tiles32`."""
        i8 = types.int64
        sig = types.void(i8, i8, i8, i8, i8, *_EPI_SIG)

        def codegen(context, b, signature, args):
            a, ldb, w, nk, scr = args[:5]
            e = args[5:]
            load = _fn(b, "llvm.x86.tileloadd64", [ir.IntType(8), _i8p, I64])
            dp = _fn(b, "llvm.x86.tdpbf16ps", [ir.IntType(8)] * 3)
            store = _fn(b, "llvm.x86.tilestored64", [ir.IntType(8), _i8p, I64])
            for t in range(4):
                b.call(_fn(b, "llvm.x86.tilezero", [ir.IntType(8)]), [_t(t)])
            with cgutils.for_range(b, nk) as loop:
                c = loop.index
                wc = b.add(w, b.mul(c, _C(CHUNK_BYTES)))
                b.call(load, [_t(4), b.inttoptr(b.add(a, b.mul(c, _C(64))), _i8p), ldb])
                for v in range(4):
                    wt = 5 + v % 3
                    b.call(load, [_t(wt), b.inttoptr(b.add(wc, _C(TILE_BYTES * v)), _i8p),
                                  _C(64)])
                    b.call(dp, [_t(v), _t(4), _t(wt)])
                _epi_rows(b, peephole, c, nk, e)
            for t in range(4):
                b.call(store, [_t(t), b.inttoptr(b.add(scr, _C(64 * t)), _i8p), _C(256)])
            return context.get_dummy_value()
        return sig, codegen
    return uk


#: [peephole]: the products with the pending block's epilogue interleaved
uk_tiles32 = [_make32(False), _make32(True)]
uk_tiles16 = [_make16(False), _make16(True)]
_u32, _u32p = uk_tiles32
_u16, _u16p = uk_tiles16


_ue, _uep = uk_amx_epi


@njit(inline="always")
def _rows0(s, p, args):
    """Step ``s``, panel ``p``: the epilogue's pointers at row r0 (bias, peepholes, c in,
    c out, y, the next step's bf16 h, the saved gates) and the step's row end."""
    (xp, ld, hoff, Bx, B, KIc, KHc, Hp, GH, bp, upp, ppp, csp, ring, nact, training, ap, yp,
     scr0, sbytes, seg, r0, r1) = args
    nb = min(nact[s], r1)
    u0 = p * 16
    co = 4 * (r0 * Hp + u0)
    hout = xp + 2 * (s + 1) * Bx * ld + 2 * hoff
    return (nb, bp + 4 * p * 64, ppp + 4 * 3 * u0, csp + 4 * (s % ring) * B * Hp + co,
            csp + 4 * ((s + 1) % ring) * B * Hp + co, yp + 4 * s * B * Hp + co,
            hout + 2 * (r0 * ld + u0), ap + 4 * (s * B * GH + r0 * GH + p * 64))


@njit(inline="always")
def _call(seg, peep, a, ldb, w, nk, scr, acc, er, ne, ep, ldc, ld, GH, training):
    """One products call with ``ne`` pending epilogue rows from row ``er`` of the block
    ``ep`` (= (scratch, bias, peep, c in, c out, y, hb, act) at its row 0)."""
    escr, bias, pp, cin, cout, y, hb, act = ep
    if seg:
        if peep is None:
            _u32(a, ldb, w, nk, scr, acc, escr + 256 * er, ne, bias, pp, cin + 4 * er * ldc,
                 cout + 4 * er * ldc, ldc, y + 4 * er * ldc, ldc, hb + 2 * er * ld, ld,
                 act + 4 * er * GH, GH, training)
        else:
            _u32p(a, ldb, w, nk, scr, acc, escr + 256 * er, ne, bias, pp,
                  cin + 4 * er * ldc, cout + 4 * er * ldc, ldc, y + 4 * er * ldc, ldc,
                  hb + 2 * er * ld, ld, act + 4 * er * GH, GH, training)
    else:
        if peep is None:
            _u16(a, ldb, w, nk, scr, escr + 256 * er, ne, bias, pp, cin + 4 * er * ldc,
                 cout + 4 * er * ldc, ldc, y + 4 * er * ldc, ldc, hb + 2 * er * ld, ld,
                 act + 4 * er * GH, GH, training)
        else:
            _u16p(a, ldb, w, nk, scr, escr + 256 * er, ne, bias, pp, cin + 4 * er * ldc,
                  cout + 4 * er * ldc, ldc, y + 4 * er * ldc, ldc, hb + 2 * er * ld, ld,
                  act + 4 * er * GH, GH, training)


@njit(inline="always")
def _panel(s, p, args, peep, st):
    """Step ``s``, panel ``p`` on rows [r0, min(nact[s], r1)): the products into one of
    the thread's two scratch blocks while the epilogue of the panel pending in the
    other (``st``: [pending panel or -1, its block]) runs row by row beside them; this
    panel is pending after."""
    (xp, ld, hoff, Bx, B, KIc, KHc, Hp, GH, bp, upp, ppp, csp, ring, nact, training, ap, yp,
     scr0, sbytes, seg, r0, r1) = args
    pend = st[0]
    cur = 1 - st[1] if pend >= 0 else 0
    scr = scr0 + cur * sbytes
    nb, bias, pp, cin, cout, y, hb, act = _rows0(s, pend if pend >= 0 else p, args)
    ep = (scr0 + st[1] * sbytes, bias, pp, cin, cout, y, hb, act)
    NR = nb - r0 if pend >= 0 else 0
    xsp = xp + 2 * s * Bx * ld
    KT = KIc + KHc                    # [x_t h_{t-1}] and the panel's rows: one k range
    wp = upp + p * KT * CHUNK_BYTES
    step = 32 if seg else 16
    nblk = (nb - r0 + step - 1) // step
    iters = max(1, (2 if seg else 1) * KT * nblk)
    it = 0
    er = 0
    if seg:
        for gp in range(2):
            for c0 in range(0, KT, FWD_SEG):
                nk = min(FWD_SEG, KT - c0)
                for q0 in range(r0, nb, 32):
                    it += nk
                    ne = NR * it // iters - er
                    _call(True, peep, xsp + 2 * q0 * ld + 64 * c0, 2 * ld,
                          wp + c0 * CHUNK_BYTES + 2 * TILE_BYTES * gp, nk,
                          scr + 256 * (q0 - r0) + 128 * gp, c0 > 0, er, ne, ep, Hp, ld, GH,
                          training)
                    er += ne
    else:
        for q0 in range(r0, nb, 16):
            it += KT
            ne = NR * it // iters - er
            _call(False, peep, xsp + 2 * q0 * ld, 2 * ld, wp, KT, scr + 256 * (q0 - r0), False,
                  er, ne, ep, Hp, ld, GH, training)
            er += ne
    st[0] = p
    st[1] = cur


@njit(inline="always")
def _flush(s, args, peep, st):
    """The epilogue of the panel still pending at the end of step ``s``, alone."""
    pend = st[0]
    if pend < 0:
        return
    (xp, ld, hoff, Bx, B, KIc, KHc, Hp, GH, bp, upp, ppp, csp, ring, nact, training, ap, yp,
     scr0, sbytes, seg, r0, r1) = args
    nb, bias, pp, cin, cout, y, hb, act = _rows0(s, pend, args)
    escr = scr0 + st[1] * sbytes
    if peep is None:
        _ue(escr, nb - r0, bias, pp, cin, cout, Hp, y, Hp, hb, ld, act, GH, training)
    else:
        _uep(escr, nb - r0, bias, pp, cin, cout, Hp, y, Hp, hb, ld, act, GH, training)
    st[0] = -1


@njit(inline="always")
def _steps(n, P, ctl, tid, nthr, args, peep, st, pipe):
    """:func:`fastrnn.kernels.sync.panel_steps` (forward) with the pipelined panels
    (``pipe``; else each panel's epilogue right after its products): a thread's last
    panel of a step is finished (:func:`_flush`) before the step counts it done."""
    flags = ctl.ctypes.data
    done = flags + 8 * P
    t0 = cycles()
    waited = 0
    for s in range(n):
        if nthr > 1 and s > 0:
            waited += wait(done, P * s)
        cnt = 0
        start = tid * P // nthr
        for i in range(P):
            if nthr <= 2:
                p = i if tid == 0 else P - 1 - i
            else:
                p = start + i
                if p >= P:
                    p -= P
            if not claim(flags, p, s, nthr):
                if nthr <= 2:
                    break
                continue
            cnt += 1
            _panel(s, p, args, peep, st)
            if not pipe:
                _flush(s, args, peep, st)
        _flush(s, args, peep, st)
        if nthr > 1:
            atomic_add(done, cnt)
    if nthr > 1 and tid == 0:
        waited += wait(done, P * n)
    return waited / max(1, cycles() - t0)


@njit(**JIT_OPTIONS)
def lstm_fwd_tiles_kernel(xh, ld, hoff, n, KIc, KHc, Hp, bias, up, peep, cs, ring, nact,
                          training, act, y, ctl, tid, nthr, r0, r1):
    # xh: [n+1,Bx,ld] uint16 bf16 operand rows [x_t (hoff), h_{t-1} (ld-hoff)], Bx >= B
    #     rounded up to 16 and 32 readable rows past its end; step s writes h_s into row
    #     s+1 at column hoff
    # KIc, KHc: 32-k chunks of x and h;  up: [P, KIc+KHc, 4, 16, 16] words (pack_bf16
    #     tiles=True);  bias: [4*Hp] float32 (panel order);  peep: None or [P,3,16]
    # cs: [ring,B,Hp] float32 cell states;  nact: [n] rows active per step
    # act: [n,B,4*Hp] float32 gates out in training;  y: [n,B,Hp] float32 h_t out
    # ctl, tid, nthr, r0, r1: as lstm_fwd_kernel of packed_lstm (claim counters, thread,
    #     threads, rows)
    seg = r1 - r0 >= SEG_MIN_ROWS
    # a thread with fewer than 16 rows configures the accumulator and operand-row
    # tiles (0-4) with just its rows: the products' time goes with the rows
    M = 16 if seg else min(16, max(1, r1 - r0))
    cfg = tile_config(M, 5)
    sbytes = (r1 - r0 + 63) // 32 * 32 * 256          # rows of 256 bytes, whole row pairs
    scr = np.empty((2 * sbytes + 64) // 4, np.float32)
    st = np.full(2, -1, np.int64)
    st[1] = 0
    ppp = 0 if peep is None else peep.ctypes.data
    P = Hp // 16
    # the epilogue's mode (amx_bf16._fwd_epilogue): the gates stored non-temporal when
    # they are many (they go to memory anyway) and every row's start is aligned
    mode = 0
    if training:
        mode = 2 if act.nbytes >= NT_MIN_BYTES and act.ctypes.data % 64 == 0 else 1
    args = (xh.ctypes.data, ld, hoff, xh.shape[1], y.shape[1], KIc, KHc, Hp, bias.shape[0],
            bias.ctypes.data, up.ctypes.data, ppp, cs.ctypes.data, ring, nact, mode,
            act.ctypes.data, y.ctypes.data, _aligned_ptr(scr), sbytes, seg, r0, r1)
    amx_begin(cfg.ctypes.data)
    # pipelined unless a panel's products are few (under 16 rows and 8 chunks): too
    # little tile work to hide an epilogue behind, the plain order is faster
    pipe = seg or r1 - r0 >= 16 or KIc + KHc >= PIPE_MIN_CHUNKS
    w = _steps(n, P, ctl, tid, nthr, args, peep, st, pipe)
    amx_end()
    if mode == 2:
        sfence()            # the non-temporal stores visible before the call returns
    return w
