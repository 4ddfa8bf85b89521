"""The packed LSTM drivers: :func:`lstm_forward` and :func:`lstm_backward`, one
layer and direction, float32 and float64, the LSTM and the diagonal peephole
LSTM, on the compiled kernels of :mod:`fastrnn.kernels.packed_lstm`.

Used by :mod:`fastrnn.kernels.cpu`. Notation: ``T`` steps, ``B`` batch, ``I``
inputs, ``H`` hidden, ``G = 4`` gates, ``VW``, ``Hp``, ``P``: see
:mod:`fastrnn.kernels.vector` (which also packs the weights). The batch runs
in the length schedule of :mod:`fastrnn.kernels.schedule`; the threads as
planned by :mod:`fastrnn.kernels.plan` (caller plus the workers of
:mod:`fastrnn.kernels.worker`); the weight-gradient, ``dx``, ``dh0`` GEMMs and
the bias-gradient sum after the backward loop run as tasks on the call's threads.
"""
from __future__ import annotations

import numpy as np

from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.packed_lstm import lstm_bwd_kernel, lstm_fwd_kernel
from fastrnn.kernels.plan import Plan, Tasks, nthreads
from fastrnn.kernels.schedule import Schedule, infer_chunk
from fastrnn.kernels.task_gemm import DW_TASKS, splits
from fastrnn.kernels.vector import host_simd, lanes, make_tag, micro_rows, pack, vector_width

__all__ = ["lstm_forward", "lstm_backward", "PackedCache", "host_simd", "vector_width"]


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
    VW = lanes(dt)
    G = 4
    pk = pack(w_ih, w_hh, b_ih, b_hh, VW, G, backward=training, peep=peep)
    Hp = pk.Hp
    P = Hp // VW
    sched = Schedule(lens, T, reverse)
    n = sched.n
    tag = make_tag(VW, dt)
    mrmax = micro_rows(VW, dt.itemsize)
    lens_sorted = sched.nact_lengths()
    step_flops = 2.0 * B * G * H * (H + I)
    plan = Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), P,
                 pk.up.nbytes, lens_sorted)
    padded = sched.tix is not None
    zero = padded or Hp != H               # padded rows / units must read as zeros
    rows = np.arange(B)

    def launch(xb, xld, hb, hoff, hld, m, cs_, ring, nact, act_):
        ctl = np.zeros(P + 1, np.int64)
        plan.launch(lstm_fwd_kernel, lambda tid, nthr, r0, r1: (
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
        C = min(n, infer_chunk(B))
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

    # xh: [n+1,B,I+Hp+1] rows [x_t, h_{t-1}, 1] in step order (see lstm_fwd_kernel),
    # kept for the weight gradient, whose GEMM then also gives the bias gradient
    # (the column of ones) in the same pass over dg; act: the gate activations;
    # cs: every step's cell
    L = I + Hp + 1
    xh = (np.zeros if zero else np.empty)((n + 1, B, L), dt)
    sched.gather_into(x, xh[:n, :, :I], 0, n)
    xh[n, :, :I] = 0
    xh[0, :, I:I + Hp] = sched.sort_rows(h0, Hp)
    xh[:, :, I + Hp] = 1
    act = np.empty((n, B, G * Hp), dt)
    cs = (np.zeros if padded else np.empty)((n + 1, B, Hp), dt)  # all rows written
    cs[0] = sched.sort_rows(c0, Hp)                                     # unless padded
    launch(xh, L, xh, I, L, n, cs, n + 1, sched.nact, act)
    ys = xh[1:, :, I:I + Hp]
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


def lstm_backward(cache, dy, dh_n, dc_n, max_threads, blas_threads):
    """Gradients from :func:`lstm_forward`'s cache: ``(dx, dh0, dc0, dw_ih, dw_hh, db,
    dpeep)`` in the natural (PyTorch) shapes and gate order; ``dw_ih``/``dw_hh`` are
    transposed views (F-contiguous) of one ``[I+H+1, G*H]`` buffer whose last row
    is ``db`` (the product with the column of ones), the gradient of both biases;
    ``dpeep`` [3,H] that of the peepholes (None without).

    ``blas_threads(flops)`` sets NumPy's BLAS thread count for a GEMM of that size;
    it is called with 0 (one BLAS thread): the weight-gradient GEMMs after the
    loop are split into tasks for the caller and the workers (``Tasks``),
    which cannot stall on a busy core the way a BLAS worker hand-off does."""
    sched, pk = cache.sched, cache.pk
    n, B, GH = cache.act.shape
    H, Hp, VW = pk.H, pk.Hp, pk.VW
    I = cache.xh.shape[2] - Hp - 1
    dt = cache.act.dtype
    tag = make_tag(VW, dt)
    NB = pk.nvb * VW
    Q = -(-Hp // NB)
    mrmax = micro_rows(VW, dt.itemsize)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < settings.two_thread_step_flops):
        plan = Plan(1, B, 0, 0, 1, 0, None)                 # too few output panels to share
    gthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, dt), Hp)
    dhn = sched.sort_rows(dh_n, Hp)
    dc = sched.sort_rows(dc_n, Hp)
    dg = (np.zeros if sched.tix is not None else np.empty)((n, B, GH), dt)
    zrow = np.zeros(NB, dt)
    ctl = np.zeros(Q + 1, np.int64)
    plan.launch(lstm_bwd_kernel, lambda tid, nthr, r0, r1: (
        tag, cache.act, cache.cs, pk.ub, pk.nvb, pk.peep, dys, dhn, zrow, dc, dg, sched.nact,
        ctl, tid, nthr, mrmax, r0, r1))
    # after the loop: large GEMMs over all n*B rows (inactive rows of dg are 0),
    # split in tasks over the columns/rows of their outputs; dg is in the natural
    # gate order, so with Hp == H they write PyTorch's layout directly
    dg2 = dg.reshape(n * B, GH)
    xh2 = cache.xh[:n].reshape(n * B, I + Hp + 1)                 # [x_t, h_{t-1}, 1] rows
    dxs = np.empty((n * B, I), dt)
    dh0 = np.empty((B, Hp), dt)
    # the weight gradient as [dW_ih dW_hh]ᵀ = [x h]ᵀ dg: OpenBLAS runs this form
    # faster than dgᵀ [x h] in float64 (as fast in float32), and it is the in_out
    # layout (Keras, CS231n) as it is, PyTorch's as a transposed view
    dw_t = np.empty((I + Hp + 1, GH), dt)
    # the split depends on the shape only, never on the thread count: a row range
    # of a product is not always bitwise the whole product's rows in OpenBLAS (dx
    # with a small I), so results stay the same on any number of threads only
    # if every count runs the same ranges (tests/test_packed_threads.py)
    split = 2.0 * n * B * GH * (2 * I + Hp) >= settings.split_gemm_flops
    tasks = []
    for c0, c1 in splits(GH, DW_TASKS if split else 1):
        tasks.append(lambda c0=c0, c1=c1: np.matmul(xh2.T, dg2[:, c0:c1], out=dw_t[:, c0:c1]))
    for r0, r1 in splits(n * B, min(4, max(1, n * B // 64)) if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dg2[r0:r1], pk.w_ih, out=dxs[r0:r1]))
    tasks.append(lambda: np.matmul(dg[0], pk.w_hh, out=dh0))
    Tasks(tasks).run(gthr if split else 1)     # small GEMMs: a hand-off costs more
    db_p = dw_t[I + Hp]                                          # the row of the ones
    dx = sched.scatter(dxs.reshape(n, B, I), I, dt)
    if Hp == H:   # transposed views of one buffer
        dw_ih, dw_hh, db = dw_t[:I].T, dw_t[I:I + Hp].T, db_p
    else:
        dw4 = dw_t[:I + Hp].reshape(I + Hp, 4, Hp)
        dw_ih = np.ascontiguousarray(dw4[:I, :, :H]).reshape(I, 4 * H).T
        dw_hh = np.ascontiguousarray(dw4[I:I + H, :, :H]).reshape(H, 4 * H).T
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
