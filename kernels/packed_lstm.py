"""The packed LSTM kernels (compiled): forward and backward time loops over
panels, in float32 and float64, the LSTM and the diagonal peephole LSTM.

Layout and notation: see :mod:`fastrnn.kernels.vector`; the Python drivers are
in :mod:`fastrnn.kernels.packed`.

Forward, per step and panel: :data:`fastrnn.kernels.simd.uk_lstm_fwd` forms
``b + x W_ihᵀ + h Uᵀ`` for the panel's ``G*VW`` columns and ``MR`` batch rows
at a time in vector registers (``[W_ih W_hh]ᵀ`` packed ``[panel][k][G*VW]``, so
each ``k`` is one contiguous row, prefetched ahead into L1), and the gate math
for those ``VW`` units runs at once on the accumulators: ``c`` and ``h`` are
written, and in training the activations ``i, f, g, o`` (``act``) and every
step's cell (``cs``); in inference ``cs`` is a ring of two states.

Backward, per step (``s = n-1 .. 0``) and output panel (``NVB`` vectors of
units): :data:`fastrnn.kernels.simd.uk_lstm_bwd` forms ``dh = dgates[s+1] U``
for the panel's units (``K = G*Hp``, ``U`` packed by output-unit panels), and
the gate derivatives of step ``s`` for the same units follow from the saved
activations. The backward loop writes the gate gradients in PyTorch's natural
gate order, so the weight-gradient GEMMs after it produce PyTorch's layout with
no permutation.

:func:`run_fwd_job` / :func:`run_bwd_job` run a kernel from the partner
thread's mailbox (its arrays rebuilt from addresses and shapes).
"""
from __future__ import annotations

from numba import njit

from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.simd import (PAIR_MR, esize, rows_switch, uk_lstm_bwd, uk_lstm_fwd,
                                  uk_lstm_fwd2, uk_peep_bwd, uk_peep_fwd, uk_peep_fwd2)
from fastrnn.kernels.sync import A, field1, field2, field3, ifield1, panel_steps

__all__ = ["lstm_fwd_kernel", "lstm_bwd_kernel", "lstm_fwd_mr", "run_fwd_job", "run_bwd_job"]

#: the micro-kernels by row count (1-6; two panels per call: 1-2), one switch each
_lf, _lb, _pf, _pb = (rows_switch(k[:7]) for k in
                      (uk_lstm_fwd, uk_lstm_bwd, uk_peep_fwd, uk_peep_bwd))
_lfp, _pfp = rows_switch(uk_lstm_fwd2[:3]), rows_switch(uk_peep_fwd2[:3])


# --------------------------------------------------------------------------- LSTM forward
@njit(inline="always")
def lstm_fwd_mr(mr, pair, peep, tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y,
                 act, ldact, training, wn):
    """One micro-kernel call of ``mr`` rows (``peep`` None: plain LSTM, else the
    diagonal peephole variant; the branch is pruned at compile time)."""
    t = (tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
    if pair:      # two panels, mr <= PAIR_MR
        if peep is None:
            _lfp(mr, t)
        else:
            _pfp(mr, t)
    elif peep is None:
        _lf(mr, t)
    else:
        _pf(mr, t)


@njit(inline="always")
def _lstm_fwd_panel(s, g, tid, NG, args, peep):
    """Step ``s``, panel (or pair of panels) ``g`` of :func:`lstm_fwd_kernel` (byte
    pointers in ``args``)."""
    (tag, xp, xld, hbp, hld, B, I, Hp, GH, bp, upp, ppp, csp, ring, nact, training, ap, mrmax,
     r0, r1, pairs) = args
    VW = len(tag)
    ES = esize(tag)      # bytes per element
    P = Hp // VW
    gn = (g + 1) % NG if tid == 0 else (g + NG - 1) % NG     # the group this thread
    p, pn = (2 * g, 2 * gn) if pairs else (g, gn)              # likely does next
    pair = pairs and p + 1 < P
    GV = 4 * VW
    KW = (I + Hp) * GV
    nb = nact[s]
    xsp = xp + ES * s * B * xld
    hsp = hbp + ES * s * B * hld
    ysp = hsp + ES * B * hld
    cin = csp + ES * (s % ring) * B * Hp
    cout = csp + ES * ((s + 1) % ring) * B * Hp
    asp = ap + ES * s * B * GH
    wp = upp + ES * p * KW
    wn = upp + ES * pn * KW
    col = p * GV
    u0 = p * VW
    nr = min(nb, r1) - r0
    nblk = (nr + mrmax - 1) // mrmax     # row blocks of equal size (+-1), <= mrmax
    for blk in range(nblk):
        q0 = r0 + blk * nr // nblk
        mr = r0 + (blk + 1) * nr // nblk - q0
        co = ES * (q0 * Hp + u0)
        lstm_fwd_mr(mr, pair, peep, tag, xsp + ES * q0 * xld, xld, hsp + ES * q0 * hld, hld,
                     wp, I, Hp, bp + ES * col, ppp + ES * 3 * u0, cin + co, cout + co, Hp,
                     ysp + ES * (q0 * hld + u0), asp + ES * (q0 * GH + col), GH, training,
                     wn + 64 * (I + Hp) * (blk % (GV * ES // 64)))


@njit(**JIT_OPTIONS)
def lstm_fwd_kernel(tag, xb, xld, hb, hoff, hld, n, I, Hp, bias, up, peep, cs, ring, nact, training,
              act, ctl, tid, nthr, mrmax, r0, r1):
    # xb: x in step order, step s row b at float offset (s*B + b)*xld  (B = xb.shape[1])
    # hb: the states, h before step s of row b at float offset hoff + (s*B + b)*hld:
    #     row 0 holds h0 (in), step s writes row s+1 (rows >= nact[s] untouched).
    #     Training passes one [n+1,B,I+Hp] buffer of rows [x_t, h_{t-1}] as both
    #     (xld = hld = I+Hp, hoff = I), so the weight gradient is one GEMM against
    #     it; inference passes x itself and y (or chunk buffers).
    # bias: [G*Hp] b_ih + b_hh (panel order);  up: [P,I+Hp,G*VW] each panel's
    #     W_ihᵀ rows, then its W_hhᵀ rows;  peep: None (LSTM) or [P,3,VW] the
    #     diagonal peephole vectors p_i, p_f, p_o (peephole LSTM)
    # cs: [S,B,Hp] cell states, step s reads cs[s % S] and writes cs[(s+1) % S]
    #     (training: S = n+1, cs[0] = c0;  inference: S = 2)
    # nact: [n] active rows per step (non-increasing)
    # act: [n,B,G*Hp] out in training: i,f,g,o (panel order)
    # ctl: [P+1] int64 panel claim counters, then the done counter
    # r0, r1: the batch rows this call works on (rows never interact: two threads
    #     may run the whole loop on disjoint row ranges with nthr = 1 each)
    # with at most PAIR_MR rows a lone panel keeps few FMA chains in flight: panels go in
    # pairs, one micro-kernel call each, to keep twice as many chains in flight
    ppp = 0 if peep is None else peep.ctypes.data
    P = Hp // len(tag)
    pairs = r1 - r0 <= PAIR_MR and P >= 2
    args = (tag, xb.ctypes.data, xld, hb.ctypes.data + xb.itemsize * hoff, hld, xb.shape[1], I,
            Hp, bias.shape[0], bias.ctypes.data, up.ctypes.data, ppp, cs.ctypes.data, ring, nact,
            training, act.ctypes.data, mrmax, r0, r1, pairs)
    return panel_steps(n, (P + 1) // 2 if pairs else P, False, ctl, tid, nthr, _lstm_fwd_panel,
                        args, peep)


# --------------------------------------------------------------------------- LSTM backward
@njit(inline="always")
def _lstm_bwd_mr(mr, peep, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp,
                 cn, dc, dg, dgv, dgg, wn):
    t = (tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg, wn)
    if peep is None:
        _lb(mr, t)
    else:
        _pb(mr, t)


@njit(inline="always")
def _lstm_bwd_rows(r0, r1, mrmax, peep, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act,
                   ldact, pp, cp, cn, dc, dg, dgv, dgg, wn):
    """Rows [r0, r1) of one output panel (byte pointers at row 0 of the panel), in
    blocks of equal size (+-1) of at most ``mrmax`` rows; block ``b`` brings part
    ``b % parts`` of the next panel (at ``wn``, ``K`` rows of ``len(ntag)*VW``
    floats, parts of ``K`` lines) into L2."""
    ES = esize(tag)
    parts = len(ntag) * len(tag) * ES // 64
    n = r1 - r0
    nblk = (n + mrmax - 1) // mrmax
    for blk in range(nblk):
        q0 = r0 + blk * n // nblk
        mr = r0 + (blk + 1) * n // nblk - q0
        _lstm_bwd_mr(mr, peep, tag, ntag, a + ES * q0 * lda, lda, w, K, dhx + ES * q0 * lddhx,
                     lddhx, dy + ES * q0 * ldh, ldh, act + ES * q0 * ldact, ldact, pp,
                     cp + ES * q0 * ldh, cn + ES * q0 * ldh, dc + ES * q0 * ldh,
                     dg + ES * q0 * ldact, dgv, dgg, wn + 64 * K * (blk % max(1, parts)))


@njit(inline="always")
def _lstm_bwd_panel(s, q, tid, Q, args, peep):
    """Step ``s``, output panel ``q`` of :func:`lstm_bwd_kernel`."""
    (tag, n, B, Hp, GH, nvb, ubp, gp, ap, csp, dyp, dhp, dcp, zp, ppp, nact, mrmax, r0,
     r1) = args
    VW = len(tag)
    ES = esize(tag)
    NB = nvb * VW
    nb = min(nact[s], r1)
    nprod = min(nact[s + 1], r1) if s + 1 < n else r0    # rows whose dh comes through U
    nprod = max(nprod, r0)
    a = gp + ES * (s + 1) * B * GH
    j0 = q * NB
    nv = min(NB, Hp - j0) // VW
    wq = ubp + ES * q * GH * NB
    qn = (q + 1) % Q if tid == 0 else (q + Q - 1) % Q     # the panel this thread
    wn = ubp + ES * qn * GH * NB                             # likely does next
    col = j0 * 4
    dyq = dyp + ES * (s * B * Hp + j0)
    aq = ap + ES * (s * B * GH + col)
    cpq = csp + ES * (s * B * Hp + j0)
    cnq = cpq + ES * B * Hp
    dcq = dcp + ES * j0
    dgq = gp + ES * (s * B * GH + j0)          # dg: natural gate order
    dhq = dhp + ES * j0
    ppq = ppp + ES * 3 * j0
    # rows active at step s+1 get dh through U (K = GH); the rest start here with
    # dL/dh_n (K = 0: no product): one inlined call site per panel width
    for part in range(2):
        lo = r0 if part == 0 else nprod
        hi = nprod if part == 0 else nb
        K = GH if part == 0 else 0
        dhx = zp if part == 0 else dhq
        lddhx = 0 if part == 0 else Hp
        if nv == 4:
            _lstm_bwd_rows(lo, hi, mrmax, peep, tag, (0, 0, 0, 0), a, GH, wq, K, dhx, lddhx,
                           dyq, Hp, aq, GH, ppq, cpq, cnq, dcq, dgq, VW, Hp, wn)
        elif nv == 3:
            _lstm_bwd_rows(lo, hi, mrmax, peep, tag, (0, 0, 0), a, GH, wq, K, dhx, lddhx,
                           dyq, Hp, aq, GH, ppq, cpq, cnq, dcq, dgq, VW, Hp, wn)
        elif nv == 2:
            _lstm_bwd_rows(lo, hi, mrmax, peep, tag, (0, 0), a, GH, wq, K, dhx, lddhx,
                           dyq, Hp, aq, GH, ppq, cpq, cnq, dcq, dgq, VW, Hp, wn)
        else:
            _lstm_bwd_rows(lo, hi, mrmax, peep, tag, (0,), a, GH, wq, K, dhx, lddhx,
                           dyq, Hp, aq, GH, ppq, cpq, cnq, dcq, dgq, VW, Hp, wn)


@njit(**JIT_OPTIONS)
def lstm_bwd_kernel(tag, act, cs, ub, nvb, peep, dy, dhn, zrow, dc, dg, nact, ctl, tid, nthr, mrmax,
              r0, r1):
    # act: [n,B,G*Hp] i,f,g,o (panel order);  cs: [n+1,B,Hp] cell states (cs[0] = c0)
    # ub: flat packed U for dh = dgates U: output panel q (units [q*NB, q*NB+w),
    #     NB = nvb*VW, w = min(NB, Hp - q*NB)) at offset q*G*Hp*NB, [G*Hp][w], its
    #     rows in dg's natural gate order
    # dy: [n,B,Hp];  dhn: [B,Hp] dL/dh_n;  zrow: [>= NB] zeros
    # dc: [B,Hp] carry (in: dL/dc_n, out: dL/dc0)
    # dg: [n,B,G*Hp] out, gate pre-activation gradients in the natural gate order
    #     (column g*Hp + u; rows >= nact[s] untouched), so the weight gradients after
    #     the loop come out in PyTorch's layout without a permutation
    # nact: [n];  ctl: [Q+1] claim counters, then done;  r0, r1: rows (see lstm_fwd_kernel)
    n, B, GH = act.shape
    Hp = dy.shape[2]
    NB = nvb * len(tag)
    ppp = 0 if peep is None else peep.ctypes.data
    args = (tag, n, B, Hp, GH, nvb, ub.ctypes.data, dg.ctypes.data, act.ctypes.data,
            cs.ctypes.data, dy.ctypes.data, dhn.ctypes.data, dc.ctypes.data, zrow.ctypes.data,
            ppp, nact, mrmax, r0, r1)
    return panel_steps(n, (Hp + NB - 1) // NB, True, ctl, tid, nthr, _lstm_bwd_panel, args, peep)


# --------------------------------------------------------------------------- mailbox jobs
@njit(inline="always")
def run_fwd_job(tag, mb, peep):
    """:func:`lstm_fwd_kernel` on the arrays and numbers of a mailbox job."""
    a = A     # fields: see worker.encode of lstm_fwd_kernel's arguments
    lstm_fwd_kernel(tag, field3(tag, mb, a), mb[a + 4], field3(tag, mb, a + 5), mb[a + 9],
                    mb[a + 10], mb[a + 11], mb[a + 12], mb[a + 13], field1(tag, mb, a + 14),
                    field3(tag, mb, a + 16), peep, field3(tag, mb, a + 24), mb[a + 28],
                    ifield1(mb, a + 29), mb[a + 31] != 0, field3(tag, mb, a + 32),
                    ifield1(mb, a + 36), mb[a + 38], mb[a + 39], mb[a + 40], mb[a + 41],
                    mb[a + 42])


@njit(inline="always")
def run_bwd_job(tag, mb, peep):
    """:func:`lstm_bwd_kernel` on the arrays and numbers of a mailbox job."""
    a = A     # fields: see worker.encode of lstm_bwd_kernel's arguments
    lstm_bwd_kernel(tag, field3(tag, mb, a), field3(tag, mb, a + 4), field1(tag, mb, a + 8),
                    mb[a + 10], peep, field3(tag, mb, a + 15), field2(tag, mb, a + 19),
                    field1(tag, mb, a + 22), field2(tag, mb, a + 24), field3(tag, mb, a + 27),
                    ifield1(mb, a + 31), ifield1(mb, a + 33), mb[a + 35], mb[a + 36], mb[a + 37],
                    mb[a + 38], mb[a + 39])
