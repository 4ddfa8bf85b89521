"""Packed-weight CPU kernels: the recurrent product never leaves the compiled loop.

Used by :mod:`fastrnn.kernels.cpu` for the LSTM in float32 and float64
(forward in training and inference, and backward). Notation: ``T`` steps, ``B``
batch, ``I`` inputs, ``H`` hidden, ``G = 4`` gates, ``VW`` the SIMD width in
elements (float32: 16 with AVX-512, 8 with AVX2; float64: 8 and 4, the same
registers), ``Hp`` = ``H`` rounded up to a multiple of ``VW``, ``P = Hp / VW``
panels. Every kernel is compiled per element type from one source: the
``tag`` argument's type selects it (see :mod:`fastrnn.kernels.simd`), and
byte offsets scale with ``esize(tag)``.

Layout ("panel order")
----------------------
Hidden units are grouped in blocks of ``VW``; panel ``p`` holds the ``G*VW``
gate columns of its units side by side, ``[i(VW) f(VW) g(VW) o(VW)]``. Gate
column ``q = p*G*VW + g*VW + u`` is the natural row ``g*H + p*VW + u`` of the
PyTorch-layout weights (``_pack``); units ``>= H`` are zero padding (zero
weights and bias give ``h = c = 0`` there, so they never leak into real
units). ``W_ih`` and the biases are permuted the same way (the input product
runs inside the loop, as the first ``I`` rows of each panel). The backward
loop writes the gate gradients in PyTorch's natural gate order instead, so the
weight-gradient GEMMs after it produce PyTorch's layout with no permutation.

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
activations. The weight gradients, ``dx``, ``dh0`` and the bias gradient are
large GEMMs (and one sum) after the loop, run as tasks on the two threads.

Schedule: the batch is sorted by length (longest first) and, for the reverse
direction, gathered into step order, so step ``s`` works on the rows
``[0, nact[s])`` only (PyTorch's packed-sequence batch sizes): padded steps
cost nothing, and the loop stops at the longest sequence.

Two threads (``_Plan``)
-----------------------
The second thread is the process's one partner thread (``_Partner``, see
"partner thread" below): it waits for jobs in compiled code and runs the LSTM
kernels without the GIL; a job it has not claimed when the caller's own share
is done is taken back by the caller.
"rows": when the packed weights fit one core's L2 (``_ROW_SPLIT_BYTES``), the
caller and the partner each run the whole loop on their own batch rows (rows
never interact): no per-step synchronisation, and a partner that does not
come leaves its rows to the caller.
"panels": otherwise both run the same step loop and each panel of each step
is claimed with one compare-and-swap on its counter (it holds the last step
it was claimed for), thread 0 from the first panel up, thread 1 from the last
down, so on a quiet machine each thread keeps its half of ``U`` hot in its own
L2, and when one thread is late (its core is busy) the other claims the rest:
a step never waits for a thread that has not started it. A thread waits only
for a panel the other has claimed and not finished: it spins briefly
(``pause``), then yields its core (``sched_yield``).
Calls under ``_ROW_SPLIT_FLOPS`` (ten times that with fewer than 8 rows) run on
one thread. A call in which the caller spent more than half its time waiting
for the partner makes the following calls run on one thread for 50 ms
(doubling while it happens again, reset by one good call), so a busy machine
costs little more than one thread's time.
Every split depends on the shape only: results are bitwise the same on one
thread or two.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
from numba import carray, njit

from fastrnn.kernels.simd import (atomic_add, atomic_cas, atomic_load, atomic_store, cpu_pause,
                                  cycles, esize, fptr, i64_ptr, sched_yield, uk_lstm_bwd,
                                  uk_lstm_fwd, uk_peep_bwd, uk_peep_fwd, uk_lstm_fwd2,
                                  uk_peep_fwd2, PAIR_MR)

__all__ = ["vector_width", "lstm_forward", "lstm_backward"]

_OPTS = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)

_lf1, _lf2, _lf3, _lf4, _lf5, _lf6 = uk_lstm_fwd[1:7]
_lb1, _lb2, _lb3, _lb4, _lb5, _lb6 = uk_lstm_bwd[1:7]
_pf1, _pf2, _pf3, _pf4, _pf5, _pf6 = uk_peep_fwd[1:7]
_pb1, _pb2, _pb3, _pb4, _pb5, _pb6 = uk_peep_bwd[1:7]
_lf1p, _lf2p = uk_lstm_fwd2[1:3]      # two panels per call (one or two rows)
_pf1p, _pf2p = uk_peep_fwd2[1:3]
_MRMAX = 6    # micro-kernel row counts compiled: 1..6


# --------------------------------------------------------------------------- vector width
def _host_features():
    try:
        import llvmlite.binding as ll
        return dict(ll.get_host_cpu_features())
    except Exception:  # pragma: no cover
        return {}


def _host_has_avx512():
    return bool(_host_features().get("avx512f", False))


def host_simd():
    """``"avx512"``, ``"avx2"`` or None: the widest vector unit the packed
    kernels are written for (``<16 x float>`` / ``<8 x float>`` FMAs). On a
    CPU with neither (an x86-64 without AVX2 and FMA, a non-x86 CPU) LLVM would
    split their vectors into slow scalar or SSE code: the CPU backend runs its
    BLAS-per-step loops there instead (``fastrnn info`` says which)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    f = _host_features()
    if f.get("avx512f", False):
        return "avx512"
    if f.get("avx2", False) and f.get("fma", False):
        return "avx2"
    return None


_HOST_VW = 16 if _host_has_avx512() else 8
_env_vw = os.environ.get("FASTRNN_VECTOR_WIDTH")    # read once, at import
_AUTO_VW = min(int(_env_vw), _HOST_VW) if _env_vw in ("8", "16") else _HOST_VW
_vw = _AUTO_VW


def vector_width():
    """SIMD width (float32 lanes) the packed kernels use: 16 with AVX-512, else 8
    (float64 runs the same registers with half the lanes, see :func:`_lanes`).

    ``FASTRNN_VECTOR_WIDTH=8`` in the environment at import (or
    :func:`set_vector_width`) forces the AVX2 variant on an AVX-512 machine
    (the tests run both)."""
    return _vw


def set_vector_width(vw):
    """Force the SIMD width (8 or 16, at most the host's) or ``None`` for automatic."""
    global _vw
    if vw is not None and vw not in (8, 16):
        raise ValueError(f"vector width must be 8, 16 or None, got {vw!r}")
    _vw = _AUTO_VW if vw is None else min(vw, _HOST_VW)


def _tag(n, dtype=np.float32):
    """The tag argument that selects a kernel's variant: ``n`` lanes of ``dtype``
    (``(0,)*n`` for float32, ``(0.0,)*n`` for float64; see :mod:`fastrnn.kernels.simd`)."""
    return (0.0,) * n if np.dtype(dtype) == np.float64 else (0,) * n


def _tag_code(tag):
    """A tag as one int64 (lanes * 16 + element bytes), for the partner's mailbox."""
    return len(tag) * 16 + (8 if isinstance(tag[0], float) else 4)


def _tag_of_code(code):
    return _tag(code // 16, np.float64 if code % 16 == 8 else np.float32)


def _lanes(dtype):
    """SIMD lanes of ``dtype`` at the current vector width (16/8 floats, 8/4 doubles)."""
    return _vw * 4 // np.dtype(dtype).itemsize


def _mr(vw, itemsize=4):
    """Batch rows per micro-kernel call for ``vw`` lanes of ``itemsize`` bytes: its
    MR*4 accumulators, the panel row and a broadcast must fit the register file
    (32 zmm / 16 ymm)."""
    return _MRMAX if vw * itemsize == 64 else 3


# --------------------------------------------------------------------------- helpers
#: spins (``pause``, ~40 ns each) before a waiting thread starts yielding its core
_SPIN = 2000


@njit(inline="always")
def _wait(p, target):
    """Wait until the int64 at ``p`` reaches ``target``; returns the cycles it waited."""
    if atomic_load(p) >= target:
        return 0
    t0 = cycles()
    spins = 0
    while atomic_load(p) < target:
        if spins < _SPIN:
            cpu_pause()
            spins += 1
        else:
            sched_yield()
    return cycles() - t0


@njit(inline="always")
def _claim(flags, p, s, nthr):
    """Claim panel ``p`` for step ``s`` (always granted with one thread)."""
    if nthr == 1:
        return True
    return atomic_cas(flags + 8 * p, s, s + 1)


@njit(inline="always")
def _panel_steps(n, P, backward, ctl, tid, nthr, panel, args, opt):
    """The time loop of every packed kernel: ``n`` steps (last to first when
    ``backward``), each over ``P`` panels that the threads claim (thread 0 from
    the first panel up, thread 1 from the last down), then a step barrier;
    ``panel(s, p, tid, P, args, opt)`` does the cell's work for step ``s`` and
    panel ``p`` (``opt``: a compile-time option such as the peephole vectors or
    None, passed apart from ``args`` so that branches on it are pruned).
    ctl: [P+1] int64 claim counters, then the done counter. Returns the
    fraction of the call's cycles spent waiting for the other thread."""
    flags = ctl.ctypes.data
    done = flags + 8 * P
    t0 = cycles()
    waited = 0
    for k in range(n):
        s = n - 1 - k if backward else k
        if nthr > 1 and k > 0:
            waited += _wait(done, P * k)
        cnt = 0
        for i in range(P):
            p = i if tid == 0 else P - 1 - i
            if not _claim(flags, p, k, nthr):
                break
            cnt += 1
            panel(s, p, tid, P, args, opt)
        if nthr > 1:
            atomic_add(done, cnt)
    if nthr > 1 and tid == 0:
        waited += _wait(done, P * n)
    return waited / max(1, cycles() - t0)


# --------------------------------------------------------------------------- LSTM forward
@njit(inline="always")
def _lstm_fwd_mr(mr, pair, peep, tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y,
                 act, ldact, training, wn):
    """One micro-kernel call of ``mr`` rows (``peep`` None: plain LSTM, else the
    diagonal peephole variant; the branch is pruned at compile time)."""
    if pair:      # two panels, mr <= PAIR_MR
        if peep is None:
            if mr == 1:
                _lf1p(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact,
                      training, wn)
            else:
                _lf2p(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact,
                      training, wn)
        elif mr == 1:
            _pf1p(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact,
                  training, wn)
        else:
            _pf2p(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact,
                  training, wn)
    elif peep is None:
        if mr == 1:
            _lf1(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 2:
            _lf2(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 3:
            _lf3(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 4:
            _lf4(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 5:
            _lf5(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        else:
            _lf6(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
    else:
        if mr == 1:
            _pf1(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 2:
            _pf2(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 3:
            _pf3(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 4:
            _pf4(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        elif mr == 5:
            _pf5(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)
        else:
            _pf6(tag, x, ldx, h, ldh, w, I, H, bias, pp, cin, cout, ldc, y, act, ldact, training, wn)


@njit(inline="always")
def _lstm_fwd_panel(s, g, tid, NG, args, peep):
    """Step ``s``, panel (or pair of panels) ``g`` of :func:`_lstm_fwd` (byte
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
        _lstm_fwd_mr(mr, pair, peep, tag, xsp + ES * q0 * xld, xld, hsp + ES * q0 * hld, hld,
                     wp, I, Hp, bp + ES * col, ppp + ES * 3 * u0, cin + co, cout + co, Hp,
                     ysp + ES * (q0 * hld + u0), asp + ES * (q0 * GH + col), GH, training,
                     wn + 64 * (I + Hp) * (blk % (GV * ES // 64)))


@njit(**_OPTS)
def _lstm_fwd(tag, xb, xld, hb, hoff, hld, n, I, Hp, bias, up, peep, cs, ring, nact, training,
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
    # pairs, one micro-kernel call each (LSTM (200,1,32,32) inference 67 -> 64 us,
    # (100,1,64,64) 130 -> 118 us on one thread)
    ppp = 0 if peep is None else peep.ctypes.data
    P = Hp // len(tag)
    pairs = r1 - r0 <= PAIR_MR and P >= 2
    args = (tag, xb.ctypes.data, xld, hb.ctypes.data + xb.itemsize * hoff, hld, xb.shape[1], I,
            Hp, bias.shape[0], bias.ctypes.data, up.ctypes.data, ppp, cs.ctypes.data, ring, nact,
            training, act.ctypes.data, mrmax, r0, r1, pairs)
    return _panel_steps(n, (P + 1) // 2 if pairs else P, False, ctl, tid, nthr, _lstm_fwd_panel,
                        args, peep)


# --------------------------------------------------------------------------- LSTM backward
@njit(inline="always")
def _lstm_bwd_mr(mr, peep, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp,
                 cn, dc, dg, dgv, dgg, wn):
    if peep is None:
        if mr == 1:
            _lb1(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 2:
            _lb2(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 3:
            _lb3(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 4:
            _lb4(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 5:
            _lb5(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        else:
            _lb6(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
    else:
        if mr == 1:
            _pb1(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 2:
            _pb2(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 3:
            _pb3(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 4:
            _pb4(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        elif mr == 5:
            _pb5(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)
        else:
            _pb6(tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, pp, cp, cn, dc, dg, dgv, dgg,
                 wn)


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
    """Step ``s``, output panel ``q`` of :func:`_lstm_bwd`."""
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


@njit(**_OPTS)
def _lstm_bwd(tag, act, cs, ub, nvb, peep, dy, dhn, zrow, dc, dg, nact, ctl, tid, nthr, mrmax,
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
    # nact: [n];  ctl: [Q+1] claim counters, then done;  r0, r1: rows (see _lstm_fwd)
    n, B, GH = act.shape
    Hp = dy.shape[2]
    NB = nvb * len(tag)
    ppp = 0 if peep is None else peep.ctypes.data
    args = (tag, n, B, Hp, GH, nvb, ub.ctypes.data, dg.ctypes.data, act.ctypes.data,
            cs.ctypes.data, dy.ctypes.data, dhn.ctypes.data, dc.ctypes.data, zrow.ctypes.data,
            ppp, nact, mrmax, r0, r1)
    return _panel_steps(n, (Hp + NB - 1) // NB, True, ctl, tid, nthr, _lstm_bwd_panel, args, peep)


# --------------------------------------------------------------------------- threads
_TWO_THREAD_STEP_FLOPS = 1.5e6  # per-step FLOPs from which two threads pay (measured)
_LATE_WAIT = 0.5               # fraction of a call the caller waited that marks the partner late
                               # (from half on, one thread would have been as fast)
_backoff = {"until": 0.0, "span": 0.05}
_backoff_lock = threading.Lock()


def _nthreads(max_threads, step_flops, panels):
    if max_threads < 2 or panels < 2 or step_flops < _TWO_THREAD_STEP_FLOPS:
        return 1
    if time.monotonic() < _backoff["until"]:
        return 1
    return 2


def _note(nthr, waited):
    """After a two-thread call: back off to one thread if the caller spent more
    than ``_LATE_WAIT`` of it waiting for the partner."""
    if nthr < 2:
        return
    with _backoff_lock:
        if waited > _LATE_WAIT:
            _backoff["until"] = time.monotonic() + _backoff["span"]
            _backoff["span"] = min(_backoff["span"] * 2, 2.0)
        else:        # one good call ends the doubling: a single hiccup costs 50 ms
            _backoff["span"] = 0.05


def _l2_bytes(default=1 << 20):
    """One core's L2 cache in bytes (Linux sysfs), ``default`` where unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            with open(os.path.join(base, d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(base, d, "size")) as f:
                txt = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(txt[-1:], 1)
            return int(txt.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return default


#: packed weights up to this size fit one core's L2 with room to spare (90% of
#: it, 0.5-4 MiB; 1 MiB where the L2 size is unknown): two threads then split the
#: batch rows (each runs the whole loop on its rows, no per-step synchronisation)
#: instead of each step's panels. Measured on a 2 MiB-L2 Xeon: LSTM (64,32,64,256)
#: (1.3 MB of packed weights) trains 7% faster on rows than on panels.
_ROW_SPLIT_BYTES = int(min(4 << 20, max(512 << 10, 0.9 * _l2_bytes())))
#: a call's FLOPs from which two threads pay: 2e7 when each thread gets at least
#: _ROW_SPLIT_MIN_ROWS rows, else ten times that. Measured with the partner thread, same-process
#: A/B against 2e8 everywhere: LSTM (100,8,64,64) inference 426 -> 314 us, training
#: 1.40 -> 1.22 ms; (200,8,32,32) inference 292 -> 231 us; but B = 2 or 4 (one or two
#: rows per thread) trained 7-15% slower on two threads
_ROW_SPLIT_FLOPS = 2e7
_ROW_SPLIT_MIN_ROWS = 4


class _Plan:
    """How one kernel call uses the threads: ``mode`` "one", "panels" (both threads
    share every step, claiming panels) or "rows" (rows [0, cut) and [cut, B) run as
    two independent tasks)."""

    __slots__ = ("mode", "cut", "B")

    def __init__(self, max_threads, B, step_flops, total_flops, panels, wbytes, lens_sorted):
        self.B, self.cut, self.mode = B, B, "one"
        if _nthreads(max_threads, _TWO_THREAD_STEP_FLOPS, 2) < 2:   # capped, or backing off
            return
        enough = total_flops >= _ROW_SPLIT_FLOPS * (1 if B >= 2 * _ROW_SPLIT_MIN_ROWS else 10)
        if wbytes <= _ROW_SPLIT_BYTES and B >= 2 and enough:
            work = np.cumsum(lens_sorted)                  # rows are sorted, longest first
            self.cut = int(min(B - 1, max(1, np.searchsorted(work, work[-1] / 2) + 1)))
            self.mode = "rows"
        elif panels >= 2 and step_flops >= _TWO_THREAD_STEP_FLOPS and enough:
            self.mode = "panels"

    def launch(self, kernel, args_of):
        """``kernel(*args_of(tid, nthr, r0, r1))`` as planned."""
        if self.mode == "one":
            kernel(*args_of(0, 1, 0, self.B))
        elif self.mode == "panels":
            # the caller's kernel returns once every panel of every step is done: a
            # partner that never claimed its job has nothing left to do
            _note(2, _pair(kernel, args_of(1, 2, 0, self.B),
                           lambda: kernel(*args_of(0, 2, 0, self.B)), None))
        else:
            c, B = self.cut, self.B
            _note(2, _pair(kernel, args_of(0, 1, c, B), lambda: kernel(*args_of(0, 1, 0, c)),
                           lambda: kernel(*args_of(0, 1, c, B))))


def _pair(kernel, partner_args, own, take_back):
    """``own()`` here while the partner thread runs ``kernel(*partner_args)``; if
    the partner has not claimed that job when ``own`` returns, the caller takes
    it back and runs ``take_back()`` (None: nothing left to do). Returns the
    fraction of the call the caller waited (for the back-off)."""
    partner = _partner()
    t0 = time.perf_counter()
    kind = _JOB_KINDS.get(kernel)
    if kind is not None:
        seq = partner.post(kind, _encode(partner_args), keep=partner_args, tag=partner_args[0])
    else:
        seq = partner.post(_K_PY, fn=lambda: kernel(*partner_args))
    if not seq:                          # the partner serves another call right now
        own()
        if take_back is not None:
            take_back()
        return 0.0
    try:
        r = own()
    finally:
        taken, waited = partner.finish(seq)
    if taken and take_back is not None:
        take_back()
    inner = r if isinstance(r, float) else 0.0      # the panel kernels' own waits
    return inner + waited / max(time.perf_counter() - t0, 1e-9)


class _Tasks:
    """Independent tasks run by the caller and (when it comes) the partner thread.

    Tasks are claimed one at a time (``next`` on a shared iterator, atomic
    under the GIL; each task releases the GIL in BLAS), so a partner that is
    late never holds up work it has not started; the caller waits only for a
    task the partner is running."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.it = iter(range(len(tasks)))

    def work(self):
        for i in self.it:
            self.tasks[i]()

    def run(self, nthr):
        """Run every task; returns the fraction of the time the caller waited."""
        t0 = time.perf_counter()
        seq = 0
        if nthr > 1 and len(self.tasks) > 1:
            seq = _partner().post(_K_PY, fn=self.work)
        waited = 0.0
        try:
            self.work()
        finally:
            if seq:
                waited = _partner().finish(seq)[1]
        return waited / max(time.perf_counter() - t0, 1e-9)


# --------------------------------------------------------------------------- partner thread
# One helper thread per process does the second thread's share of every call. It
# waits for jobs in compiled code, without the GIL: a posted job is claimed
# within a microsecond while it spins (for up to _SPIN_S after its last job,
# pausing, then yielding its core), and a packed-kernel job runs right there,
# its arrays rebuilt from the addresses and shapes in the mailbox, never
# touching the interpreter; other jobs (BLAS tasks, the GRU/RNN kernels) are
# Python callables it returns to run. After _SPIN_S without a job it sleeps on a
# condition that the next post notifies. The caller takes a job back (one
# compare-and-swap) when the partner has not claimed it by the time the caller's
# own share is done, so a partner whose core is busy never holds up a call;
# the caller waits only for a job the partner is running.
#
# Measured against the former pool thread (concurrent.futures: ~35 us per submit,
# then a GIL hand-off before the partner could start, ~100 us behind the caller):
# LSTM (100,8,64,64) inference on two threads (rows split) 442 -> 361 us median
# (one thread: 503 us); (100,32,64,128) 2.25 -> 1.98 ms; training (100,32,64,128)
# 8.3 -> 7.6 ms, (50,64,256,512) 120 -> 118 ms.
_SPIN_S = 0.002
# mailbox words: posted, claimed and done sequence numbers, sleeping flag, job
# kind, the job's tag (_tag_code), then the job's fields
_POST, _CLAIM, _DONE, _SLEEP, _KIND, _VWF, _A = 0, 1, 2, 3, 4, 5, 8
_K_PY, _K_LSTM_FWD, _K_LSTM_BWD = 1, 2, 3


def _encode(args):
    """A kernel's arguments after ``tag`` as int64 words: an array as its address
    and shape, None as four zeros (the peepholes' place), numbers as themselves."""
    out = []
    for a in args[1:]:
        if isinstance(a, np.ndarray):
            out.append(a.ctypes.data)
            out.extend(a.shape)
        elif a is None:
            out.extend((0, 0, 0, 0))
        else:
            out.append(int(a))
    return out


@njit(inline="always")
def _f1(tag, mb, i):
    return carray(fptr(tag, mb[i]), (mb[i + 1],))


@njit(inline="always")
def _f2(tag, mb, i):
    return carray(fptr(tag, mb[i]), (mb[i + 1], mb[i + 2]))


@njit(inline="always")
def _f3(tag, mb, i):
    return carray(fptr(tag, mb[i]), (mb[i + 1], mb[i + 2], mb[i + 3]))


@njit(inline="always")
def _i1(mb, i):
    return carray(i64_ptr(mb[i]), (mb[i + 1],))


@njit(inline="always")
def _run_fwd(tag, mb, peep):
    a = _A     # fields: see _encode of _lstm_fwd's arguments
    _lstm_fwd(tag, _f3(tag, mb, a), mb[a + 4], _f3(tag, mb, a + 5), mb[a + 9], mb[a + 10],
              mb[a + 11], mb[a + 12], mb[a + 13], _f1(tag, mb, a + 14), _f3(tag, mb, a + 16),
              peep, _f3(tag, mb, a + 24), mb[a + 28], _i1(mb, a + 29), mb[a + 31] != 0,
              _f3(tag, mb, a + 32), _i1(mb, a + 36), mb[a + 38], mb[a + 39], mb[a + 40],
              mb[a + 41], mb[a + 42])


@njit(inline="always")
def _run_bwd(tag, mb, peep):
    a = _A     # fields: see _encode of _lstm_bwd's arguments
    _lstm_bwd(tag, _f3(tag, mb, a), _f3(tag, mb, a + 4), _f1(tag, mb, a + 8), mb[a + 10], peep,
              _f3(tag, mb, a + 15), _f2(tag, mb, a + 19), _f1(tag, mb, a + 22),
              _f2(tag, mb, a + 24), _f3(tag, mb, a + 27), _i1(mb, a + 31), _i1(mb, a + 33),
              mb[a + 35], mb[a + 36], mb[a + 37], mb[a + 38], mb[a + 39])


@njit(nogil=True, cache=True, error_model="numpy")
def _partner_loop(tag, mb, spin):
    """The partner's wait-and-run loop. Returns 1 with a Python job claimed, 2 when
    a job needs another tag (vector width or dtype, see :func:`_tag_code`), 0
    after ``spin`` cycles without a job."""
    base = mb.ctypes.data
    idle = cycles()
    pauses = 0
    while True:
        post = atomic_load(base + 8 * _POST)
        claim = atomic_load(base + 8 * _CLAIM)
        if post > claim:
            kind = mb[_KIND]
            if kind != _K_PY and mb[_VWF] != len(tag) * 16 + esize(tag):
                return 2
            if not atomic_cas(base + 8 * _CLAIM, claim, post):
                continue                             # the caller took it back
            if kind == _K_PY:
                return 1
            if kind == _K_LSTM_FWD:
                if mb[_A + 20] == 0:
                    _run_fwd(tag, mb, None)
                else:
                    _run_fwd(tag, mb, _f3(tag, mb, _A + 20))
            else:
                if mb[_A + 11] == 0:
                    _run_bwd(tag, mb, None)
                else:
                    _run_bwd(tag, mb, _f3(tag, mb, _A + 11))
            atomic_store(base + 8 * _DONE, post)
            idle = cycles()
            pauses = 0
        elif cycles() - idle > spin:
            return 0
        elif pauses < _SPIN:
            cpu_pause()
            pauses += 1
        else:
            sched_yield()


@njit(nogil=True, cache=True)
def _settle(mb, seq):
    """After the caller's share: take job ``seq`` back if it is unclaimed (True),
    else wait until the partner has done it (False)."""
    base = mb.ctypes.data
    if atomic_cas(base + 8 * _CLAIM, seq - 1, seq):
        return True
    _wait(base + 8 * _DONE, seq)
    return False


@njit(nogil=True, cache=True)
def _publish(mb, i, v):
    atomic_store(mb.ctypes.data + 8 * i, v)


def _cycles_per_second():
    c0, t0 = _now_cycles(), time.perf_counter()
    time.sleep(0.005)
    return (_now_cycles() - c0) / (time.perf_counter() - t0)


@njit(cache=True)
def _now_cycles():
    return cycles()


class _Partner:
    """The partner thread and its mailbox (see the comment above)."""

    def __init__(self):
        self.mb = np.zeros(64, np.int64)
        self.lock = threading.Lock()          # one call at a time uses the partner
        self.cv = threading.Condition()
        self.fn = self.keep = self.error = None
        self.thread = None
        self.spin = 0

    def _ensure(self):
        if self.thread is None or not self.thread.is_alive():
            if not self.spin:
                self.spin = int(_SPIN_S * _cycles_per_second())
            self.thread = threading.Thread(target=self._loop, name="fastrnn-partner",
                                           daemon=True)
            self.thread.start()

    def _loop(self):
        mb = self.mb
        tag = _tag(vector_width())
        while True:
            r = _partner_loop(tag, mb, self.spin)
            if r == 1:
                seq = int(mb[_CLAIM])
                try:
                    self.fn()
                except BaseException as e:     # handed to the caller by finish()
                    self.error = e
                finally:
                    _publish(mb, _DONE, seq)
            elif r == 2:
                tag = _tag_of_code(int(mb[_VWF]))
            else:
                with self.cv:
                    mb[_SLEEP] = 1
                    if mb[_POST] == mb[_CLAIM]:
                        self.cv.wait(1.0)
                    mb[_SLEEP] = 0

    def post(self, kind, fields=(), fn=None, keep=None, tag=None):
        """Post a job (its sequence number), or 0 when another call holds the partner.
        ``tag``: the kernel's (a packed-kernel job; None for a Python job)."""
        if not self.lock.acquire(blocking=False):
            return 0
        try:
            self._ensure()
            mb = self.mb
            mb[_A:_A + len(fields)] = fields
            mb[_KIND] = kind
            mb[_VWF] = 0 if tag is None else _tag_code(tag)
            self.fn, self.keep = fn, keep            # keep: the job's arrays stay alive
            seq = int(mb[_POST]) + 1
            _publish(mb, _POST, seq)
            if mb[_SLEEP]:
                with self.cv:
                    self.cv.notify()
            return seq
        except BaseException:
            self.lock.release()
            raise

    def finish(self, seq):
        """``(taken_back, seconds waited)`` for job ``seq`` (see :func:`_settle`); ends
        the call's use of the partner and raises what a Python job raised."""
        t0 = time.perf_counter()
        try:
            taken = bool(_settle(self.mb, seq))
            err, self.error = self.error, None
        finally:
            self.fn = self.keep = None
            self.lock.release()
        if err is not None:
            raise err
        return taken, time.perf_counter() - t0


_JOB_KINDS = {_lstm_fwd: _K_LSTM_FWD, _lstm_bwd: _K_LSTM_BWD}
_partners = []
_partners_lock = threading.Lock()


def _forget_partner():
    """After ``fork``: the child has no partner thread and must not run a job its
    parent posted; it starts a fresh partner with an empty mailbox."""
    global _partners_lock
    _partners.clear()
    _partners_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_partner)


def _partner():
    if not _partners:
        with _partners_lock:
            if not _partners:
                _partners.append(_Partner())
    return _partners[0]


#: GEMMs are split into tasks for two threads from this many FLOPs on
_SPLIT_GEMM_FLOPS = 8e6
#: tasks (row ranges) of a weight-gradient GEMM ``dgᵀ [x h]`` when it is split: its
#: long reduction over every step's rows runs 7-8% slower per extra task in
#: OpenBLAS (one thread, (3200x512)ᵀ(3200x192): 3.51 ms whole, 3.81 in two, 4.27
#: in four), so one task per thread
_DW_TASKS = 2


def _splits(n, k):
    """k contiguous ranges covering [0, n)."""
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def gemm(a, b, out, max_threads):
    """``out[...] = a @ b`` for 2-D float arrays on NumPy's BLAS, one BLAS thread per
    task (the caller sets that), split in tasks for this module's two threads when
    large: by rows of ``a``, or by columns of ``b`` when ``a`` has few rows."""
    M, K = a.shape
    N = b.shape[1]
    nthr = _nthreads(max_threads, _TWO_THREAD_STEP_FLOPS, 2)
    if 2.0 * M * K * N < _SPLIT_GEMM_FLOPS:     # the split depends on the shape only:
        np.matmul(a, b, out=out)                 # results do not depend on the threads
        return out
    if M >= 128:
        _Tasks([(lambda r0=r0, r1=r1: np.matmul(a[r0:r1], b, out=out[r0:r1]))
                for r0, r1 in _splits(M, min(8, M // 64))]).run(nthr)
        return out

    def cols(c0, c1):
        out[:, c0:c1] = a @ b[:, c0:c1]
    _Tasks([(lambda c0=c0, c1=c1: cols(c0, c1)) for c0, c1 in _splits(N, 2)]).run(nthr)
    return out


# --------------------------------------------------------------------------- packing
class _Packed:
    __slots__ = ("H", "Hp", "VW", "w_ih", "w_hh", "bias", "up", "ub", "nvb", "peep")


def _pack(w_ih, w_hh, b_ih, b_hh, VW, G=4, backward=False, peep=None):
    """Panel-order copies of the weights (in their dtype, float32 or float64; ``VW``
    lanes of it per vector); ``peep`` [3,H] diagonal peepholes.

    With ``backward``, also ``w_ih`` [G*Hp, I], ``w_hh`` [G*Hp, Hp] and ``ub`` (``U``
    packed for ``dh = dgates U``) in PyTorch's gate order, units padded to Hp: the
    backward loops write the gate gradients in that order."""
    H = w_hh.shape[1]
    I = w_ih.shape[1]
    dt = w_ih.dtype
    Hp = -(-H // VW) * VW
    P = Hp // VW
    GV = G * VW
    pk = _Packed()
    pk.H, pk.Hp, pk.VW = H, Hp, VW
    # up: [P, I+Hp, G*VW]: panel p's columns of [W_ih W_hh]ᵀ, input rows first,
    # written in one strided copy per matrix (gate g, unit p*VW+u -> column g*VW+u;
    # measured faster than a compiled loop at every size)
    up = np.empty((P, I + Hp, GV), dt)
    u4 = up.reshape(P, I + Hp, G, VW)
    bias = (b_ih + b_hh).astype(dt)
    if Hp == H:
        wi4, wh4 = w_ih.reshape(G, P, VW, I), w_hh.reshape(G, P, VW, H)
        bias = bias.reshape(G, P, VW)
    else:                                                  # padding units: zero weights
        wi4 = np.zeros((G, Hp, I), dt)
        wi4[:, :H] = w_ih.reshape(G, H, I)
        wh4 = np.zeros((G, Hp, Hp), dt)
        wh4[:, :H, :H] = w_hh.reshape(G, H, H)
        b = np.zeros((G, Hp), dt)
        b[:, :H] = bias.reshape(G, H)
        wi4, wh4, bias = wi4.reshape(G, P, VW, I), wh4.reshape(G, P, VW, Hp), b.reshape(G, P, VW)
    u4[:, :I] = wi4.transpose(1, 3, 0, 2)
    u4[:, I:] = wh4.transpose(1, 3, 0, 2)
    pk.bias = np.ascontiguousarray(bias.transpose(1, 0, 2)).reshape(-1)      # [G*Hp]
    pk.up = up
    pk.w_ih = pk.w_hh = None
    if backward:                   # PyTorch's gate order, units padded (views when Hp == H)
        pk.w_ih, pk.w_hh = wi4.reshape(G * Hp, I), wh4.reshape(G * Hp, Hp)
    pk.ub = None
    pk.nvb = 4
    pk.peep = None
    if peep is not None:                                  # [P,3,VW]: p_i, p_f, p_o per panel
        pp = np.zeros((3, Hp), dt)
        pp[:, :H] = peep
        pk.peep = np.ascontiguousarray(pp.reshape(3, P, VW).transpose(1, 0, 2))
    if backward:
        pk.ub = _pack_backward(pk.w_hh, Hp, VW, pk.nvb)
    return pk


def _pack_backward(wh, Hp, VW, nvb):
    """U packed by output-unit panels for dh = dgates U (see ``_lstm_bwd``)."""
    GH = wh.shape[0]
    NB = nvb * VW
    Q = -(-Hp // NB)
    ub = np.empty(Q * GH * NB, wh.dtype)
    for q in range(Q):
        j0 = q * NB
        w = min(NB, Hp - j0)
        ub[q * GH * NB:q * GH * NB + GH * w] = wh[:, j0:j0 + w].reshape(-1)
    return ub


# --------------------------------------------------------------------------- schedule
class _Schedule:
    """Rows sorted by length (longest first), steps in processing order.

    ``order`` (None: identity) maps sorted row j to batch row ``order[j]``;
    ``tix[s, j]`` is the time index step ``s`` of sorted row j reads (None:
    ``tix[s, j] = s``); ``nact[s]`` the rows active at step s; ``n`` steps."""

    __slots__ = ("order", "tix", "valid", "nact", "n", "T", "B")

    def __init__(self, lens, T, reverse):
        B = lens.shape[0]
        self.T, self.B = T, B
        full = bool((lens == T).all())
        if full and not reverse:
            self.order = self.tix = self.valid = None
            self.n = T
            self.nact = np.full(T, B, np.int64)
            return
        order = np.argsort(-lens, kind="stable")
        Ls = lens[order]
        n = int(Ls[0]) if B else 0
        steps = np.arange(n)[:, None]
        self.valid = steps < Ls[None, :]                         # [n,B]
        self.order = None if full or (order == np.arange(B)).all() else order
        if self.order is None:
            Ls = lens
            self.valid = steps < Ls[None, :]
        tix = (Ls[None, :] - 1 - steps) if reverse else np.broadcast_to(steps, (n, B))
        self.tix = np.where(self.valid, tix, 0)
        self.n = n
        self.nact = self.valid.sum(axis=1).astype(np.int64)

    def nact_lengths(self):
        """[B] the length of each sorted row."""
        if self.valid is None:
            return np.full(self.B, self.n, np.int64)
        return self.valid.sum(axis=0).astype(np.int64)

    def rows(self):
        return np.arange(self.B) if self.order is None else self.order

    def gather_into(self, a, out, s0, s1):
        """out[:] = steps [s0, s1) of a [T,B,F] in step order (zero where inactive)."""
        if self.tix is None:
            out[...] = a[s0:s1]
        else:
            out[...] = np.where(self.valid[s0:s1, :, None],
                                a[self.tix[s0:s1], self.rows()[None, :]], 0)

    def scatter_into(self, y, a_step, s0):
        """Steps [s0, s0+m) of a_step [m,B,F] into their places in y [T,B,F]
        (y is zero where they leave nothing)."""
        m = a_step.shape[0]
        if self.tix is None:
            y[s0:s0 + m] = a_step
            return
        v = self.valid[s0:s0 + m]
        cols = np.broadcast_to(self.rows()[None, :], v.shape)
        y[self.tix[s0:s0 + m][v], cols[v]] = a_step[v]

    def gather(self, a, width=None):
        """a: [T,B,F] natural -> [n,B,width] step order (zero where inactive/padded)."""
        T, B, F = a.shape
        width = F if width is None else width
        if self.tix is None and width == F:
            return np.ascontiguousarray(a)
        out = np.zeros((self.n, B, width), a.dtype)
        if self.tix is None:
            out[:, :, :F] = a
        else:
            v = self.valid
            src = a[self.tix, self.rows()[None, :]]                  # [n,B,F]
            out[:, :, :F] = np.where(v[:, :, None], src, 0)
        return out

    def scatter(self, a_step, F, dtype):
        """[n,B,>=F] step order -> [T,B,F] natural (zero at padded steps)."""
        if self.tix is None:
            if a_step.shape[2] == F and a_step.shape[0] == self.T:
                return a_step
            out = np.zeros((self.T, self.B, F), dtype)
            out[:a_step.shape[0]] = a_step[:, :, :F]
            return out
        out = np.zeros((self.T, self.B, F), dtype)
        v = self.valid
        cols = np.broadcast_to(self.rows()[None, :], v.shape)
        out[self.tix[v], cols[v]] = a_step[:, :, :F][v]
        return out

    def sort_rows(self, a, width):
        """a: [B,F] -> [B,width] in sorted row order, zero padded (fresh, a's dtype)."""
        out = np.zeros((self.B, width), a.dtype)
        out[:, :a.shape[1]] = a if self.order is None else a[self.order]
        return out

    def unsort_rows(self, a, F):
        out = np.empty((self.B, F), a.dtype)
        if self.order is None:
            out[:] = a[:, :F]
        else:
            out[self.order] = a[:, :F]
        return out


# --------------------------------------------------------------------------- drivers
class PackedCache:
    """What :func:`lstm_backward` needs from a training :func:`lstm_forward`."""

    __slots__ = ("sched", "pk", "xh", "act", "cs", "flops", "plan")


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads,
                 peep=None):
    """LSTM, one layer and direction: returns ``(y, h_n, c_n, cache)``, in float32
    or float64 (``x``'s dtype, which every array argument shares).

    ``x`` [T,B,I], ``h0``/``c0`` [B,H], weights in PyTorch's layout, ``lens``
    [B] int64 in [1, T]. The input product runs inside the time loop (the
    micro-kernel's first ``I`` rows of each panel), so no BLAS call is made.
    ``peep`` [3,H] (p_i, p_f, p_o) makes it the diagonal peephole LSTM."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = x.dtype
    VW = _lanes(dt)
    G = 4
    pk = _pack(w_ih, w_hh, b_ih, b_hh, VW, G, backward=training, peep=peep)
    Hp = pk.Hp
    P = Hp // VW
    sched = _Schedule(lens, T, reverse)
    n = sched.n
    tag = _tag(VW, dt)
    mrmax = _mr(VW, dt.itemsize)
    lens_sorted = sched.nact_lengths()
    step_flops = 2.0 * B * G * H * (H + I)
    plan = _Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), P,
                 pk.up.nbytes, lens_sorted)
    padded = sched.tix is not None
    zero = padded or Hp != H               # padded rows / units must read as zeros
    rows = np.arange(B)

    def launch(xb, xld, hb, hoff, hld, m, cs_, ring, nact, act_):
        ctl = np.zeros(P + 1, np.int64)
        plan.launch(_lstm_fwd, lambda tid, nthr, r0, r1: (
            tag, xb, xld, hb, hoff, hld, m, I, Hp, pk.bias, pk.up, pk.peep, cs_, ring, nact,
            training, act_, ctl, tid, nthr, mrmax, r0, r1))

    if not training:
        cs = np.zeros((2, B, Hp), dt)
        cs[0] = sched.sort_rows(c0, Hp)
        dummy = np.empty((1, 1, 1), dt)
        if sched.tix is None and Hp == H:
            # x read in place, h written straight into the output: y = hs[1:]
            hs = np.empty((n + 1, B, H), dt)
            hs[0] = h0
            launch(x, I, hs, 0, H, n, cs, 2, sched.nact, dummy)
            return hs[1:], hs[n].copy(), cs[n % 2].copy(), None
        # chunks of steps through small buffers: the workspace beyond x and y is
        # O(B (I+H)), whatever T is; C is even, so every chunk starts on slot 0 of
        # the cell ring (step s of a chunk reads cs[s % 2])
        C = min(n, _infer_chunk(B))
        xbuf = np.zeros((C, B, I), dt)
        hbuf = np.zeros((C + 1, B, Hp), dt)
        hbuf[0] = sched.sort_rows(h0, Hp)
        y = np.zeros((T, B, H), dt)
        h_last = np.empty((B, Hp), dt)
        for s0 in range(0, n, C):
            s1 = min(n, s0 + C)
            m = s1 - s0
            if s0:
                hbuf[0] = hbuf[C]                               # h after the last chunk
            sched.gather_into(x, xbuf[:m], s0, s1)
            launch(xbuf, I, hbuf, 0, Hp, m, cs, 2, sched.nact[s0:s1], dummy)
            sched.scatter_into(y, hbuf[1:m + 1, :, :H], s0)
            end = (lens_sorted > s0) & (lens_sorted <= s1)        # rows whose last step is here
            h_last[end] = hbuf[lens_sorted[end] - s0, rows[end]]
        # row j last wrote its cell at step L_j - 1, into ring slot L_j % 2
        c_last = cs[lens_sorted % 2, rows]
        return y, sched.unsort_rows(h_last, H), sched.unsort_rows(c_last, H), None

    # xh: [n+1,B,I+Hp] rows [x_t, h_{t-1}] in step order (see _lstm_fwd), kept for
    # the weight gradient; act: the gate activations; cs: every step's cell
    xh = (np.zeros if zero else np.empty)((n + 1, B, I + Hp), dt)
    sched.gather_into(x, xh[:n, :, :I], 0, n)
    xh[n, :, :I] = 0
    xh[0, :, I:] = sched.sort_rows(h0, Hp)
    act = np.empty((n, B, G * Hp), dt)
    cs = (np.zeros if padded else np.empty)((n + 1, B, Hp), dt)  # all rows written
    cs[0] = sched.sort_rows(c0, Hp)                                     # unless padded
    launch(xh, I + Hp, xh, I, I + Hp, n, cs, n + 1, sched.nact, act)
    ys = xh[1:, :, I:]
    c_last = cs[lens_sorted, rows]
    h_last = ys[lens_sorted - 1, rows]
    y = sched.scatter(ys, H, dt)
    h_n = sched.unsort_rows(h_last, H)
    c_n = sched.unsort_rows(c_last, H)
    cache = PackedCache()
    cache.sched, cache.pk, cache.xh = sched, pk, xh
    cache.act, cache.cs = act, cs
    cache.flops = 2.0 * B * G * H * H
    cache.plan = plan
    return y, h_n, c_n, cache


def _infer_chunk(B):
    """Steps per inference chunk: about 4096 rows, at least 16 steps, even."""
    m = max(16, -(-4096 // max(B, 1)))
    return m + (m % 2)


def _last_output(ys, sched, B):
    """[B,Hp] the output at each sorted row's last step."""
    if sched.tix is None:
        return ys[-1]
    last = sched.valid.sum(axis=0) - 1                              # [B] per sorted row
    return ys[last, np.arange(B)]


def lstm_backward(cache, dy, dh_n, dc_n, max_threads, blas_threads):
    """Gradients from :func:`lstm_forward`'s cache: ``(dx, dh0, dc0, dw_ih, dw_hh, db,
    dpeep)`` in the natural (PyTorch) layout; ``db`` is the gradient of both
    biases, ``dpeep`` [3,H] that of the peepholes (None without).

    ``blas_threads(flops)`` sets NumPy's BLAS thread count for a GEMM of that size;
    it is called with 0 (one BLAS thread): the weight-gradient GEMMs after the
    loop are split into tasks for this module's own two threads (``_Tasks``),
    which cannot stall on a busy core the way a BLAS worker hand-off does."""
    sched, pk = cache.sched, cache.pk
    n, B, GH = cache.act.shape
    H, Hp, VW = pk.H, pk.Hp, pk.VW
    I = cache.xh.shape[2] - Hp
    dt = cache.act.dtype
    tag = _tag(VW, dt)
    NB = pk.nvb * VW
    Q = -(-Hp // NB)
    mrmax = _mr(VW, dt.itemsize)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < _TWO_THREAD_STEP_FLOPS):
        plan = _Plan(1, B, 0, 0, 1, 0, None)                 # too few output panels to share
    gthr = _nthreads(max_threads, _TWO_THREAD_STEP_FLOPS, 2)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, dt), Hp)
    dhn = sched.sort_rows(dh_n, Hp)
    dc = sched.sort_rows(dc_n, Hp)
    dg = (np.zeros if sched.tix is not None else np.empty)((n, B, GH), dt)
    zrow = np.zeros(NB, dt)
    ctl = np.zeros(Q + 1, np.int64)
    plan.launch(_lstm_bwd, lambda tid, nthr, r0, r1: (
        tag, cache.act, cache.cs, pk.ub, pk.nvb, pk.peep, dys, dhn, zrow, dc, dg, sched.nact,
        ctl, tid, nthr, mrmax, r0, r1))
    # after the loop: large GEMMs over all n*B rows (inactive rows of dg are 0),
    # split in tasks over the rows of their outputs; dg is in the natural gate
    # order, so with Hp == H they write PyTorch's layout directly
    dg2 = dg.reshape(n * B, GH)
    xh2 = cache.xh[:n].reshape(n * B, I + Hp)                       # [x_t, h_{t-1}] rows
    dxs = np.empty((n * B, I), dt)
    dh0 = np.empty((B, Hp), dt)
    db_p = np.empty(GH, dt)
    dw_p = np.empty((GH, I + Hp), dt)                       # [dW_ih dW_hh]
    # the split depends on the shape only, never on the thread count, so results
    # are bitwise the same on one thread or two
    tasks = []
    split = 2.0 * n * B * GH * (2 * I + Hp) >= _SPLIT_GEMM_FLOPS
    for r0, r1 in _splits(GH, _DW_TASKS if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dg2[:, r0:r1].T, xh2, out=dw_p[r0:r1]))
    for r0, r1 in _splits(n * B, min(4, max(1, n * B // 64)) if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dg2[r0:r1], pk.w_ih, out=dxs[r0:r1]))
    tasks.append(lambda: np.matmul(dg[0], pk.w_hh, out=dh0))
    tasks.append(lambda: np.sum(dg2, axis=0, out=db_p))
    _Tasks(tasks).run(gthr if split else 1)     # small GEMMs: a hand-off costs more
    dx = sched.scatter(dxs.reshape(n, B, I), I, dt)
    if Hp == H:   # views of one buffer (one GEMM per row range measured ~3% faster)
        dw_ih, dw_hh, db = dw_p[:, :I], dw_p[:, I:], db_p
    else:
        dw4 = dw_p.reshape(4, Hp, I + Hp)
        dw_ih = np.ascontiguousarray(dw4[:, :H, :I]).reshape(4 * H, I)
        dw_hh = np.ascontiguousarray(dw4[:, :H, I:I + H]).reshape(4 * H, H)
        db = np.ascontiguousarray(db_p.reshape(4, Hp)[:, :H]).reshape(4 * H)
    dpeep = None
    if pk.peep is not None:   # sum over rows of dai c, daf c (c before the step), dao c'
        dg3 = dg.reshape(n * B, 4, Hp)
        cp = cache.cs[:-1].reshape(n * B, Hp)
        cn = cache.cs[1:].reshape(n * B, Hp)
        dpeep = np.stack([np.einsum("rh,rh->h", dg3[:, 0], cp),
                          np.einsum("rh,rh->h", dg3[:, 1], cp),
                          np.einsum("rh,rh->h", dg3[:, 3], cn)])[:, :H]
    return (dx, sched.unsort_rows(dh0, H), sched.unsort_rows(dc, H), dw_ih, dw_hh, db,
            dpeep)
