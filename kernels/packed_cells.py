"""The packed GRU (reset_after=True) and tanh/ReLU RNN drivers: :func:`gru_forward`,
:func:`rnn_forward` and :func:`backward`, one layer and direction, float32 and
float64, on the compiled kernels of :mod:`fastrnn.kernels.packed_gru_rnn`
(which describes their layout), with the packing, schedule, thread plans and
task GEMMs of the packed LSTM (:mod:`fastrnn.kernels.packed`).
"""
from __future__ import annotations

import numpy as np

from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.packed_gru_rnn import (GRU_FWD_MR8, NVB, gru_bwd_kernel, gru_fwd_kernel,
                                            rnn_bwd_kernel, rnn_fwd_kernel)
from fastrnn.kernels.plan import Plan, Tasks, nthreads
from fastrnn.kernels.schedule import Schedule, infer_chunk, last_output
from fastrnn.kernels.task_gemm import DW_TASKS, splits
from fastrnn.kernels.vector import lanes, make_tag, micro_rows, pack, pack_backward

__all__ = ["gru_forward", "rnn_forward", "backward", "PackedCellCache"]


class PackedCellCache:
    """What :func:`backward` needs from a training :func:`gru_forward` / :func:`rnn_forward`."""

    __slots__ = ("kind", "relu", "sched", "pk", "xs", "act", "hs", "flops", "plan")


class _RnnPacked:
    __slots__ = ("H", "Hp", "VW", "w_ih", "w_hh", "bias", "up", "ub", "nvb")


def _pack_rnn(w_ih, w_hh, b_ih, b_hh, VW, backward):
    H, I = w_hh.shape[1], w_ih.shape[1]
    dt = w_ih.dtype
    Hp = -(-H // VW) * VW
    pk = _RnnPacked()
    pk.H, pk.Hp, pk.VW, pk.nvb = H, Hp, VW, NVB
    m = np.zeros((I + Hp, Hp), dt)            # [W_ih W_hh]ᵀ, zero padded
    m[:I, :H] = w_ih.T
    m[I:I + H, :H] = w_hh.T
    pk.up = pack_backward(m, Hp, VW, NVB)           # by output-unit panels: [I+Hp][w] each
    pk.bias = np.zeros(Hp, dt)
    pk.bias[:H] = b_ih + b_hh
    if backward:
        wi = np.zeros((Hp, I), dt)
        wi[:H] = w_ih
        wh = np.zeros((Hp, Hp), dt)
        wh[:H, :H] = w_hh
        pk.w_ih, pk.w_hh = wi, wh
        pk.ub = pack_backward(wh, Hp, VW, NVB)
    else:
        pk.w_ih = pk.w_hh = pk.ub = None
    return pk


def _states(sched, h0, Hp):
    n, B = sched.n, sched.B
    hs = (np.zeros if sched.tix is not None else np.empty)((n + 1, B, Hp), h0.dtype)
    hs[0] = sched.sort_rows(h0, Hp)
    return hs


def _finish(sched, hs, H, B):
    ys = hs[1:]
    y = sched.scatter(ys, H, hs.dtype)
    h_n = sched.unsort_rows(last_output(ys, sched, B), H)
    return y, h_n


def _infer_chunks(sched, x, h0, Hp, H, run_chunk):
    """Inference in chunks of steps: ``run_chunk(xs [m,B,I], hs [m+1,B,Hp], nact [m])``
    runs one (hs[0] = the state before it); the workspace beyond x and y is
    O(B (I+H)) whatever T is. Returns ``(y, h_n)``."""
    n, B = sched.n, sched.B
    T, _, I = x.shape
    dt = x.dtype
    if sched.tix is None and Hp == H:       # x read in place, h written into y = hs[1:]
        hs = np.empty((n + 1, B, H), dt)
        hs[0] = h0
        run_chunk(x, hs, sched.nact)
        return hs[1:], hs[n].copy()
    C = min(n, infer_chunk(B))
    zero = sched.tix is not None or Hp != H
    hs = (np.zeros if zero else np.empty)((C + 1, B, Hp), dt)
    hs[0] = sched.sort_rows(h0, Hp)
    xbuf = None if sched.tix is None else np.zeros((C, B, I), dt)
    y = (np.zeros if sched.tix is not None or n < T else np.empty)((T, B, H), dt)
    h_last = np.empty((B, Hp), dt)
    lens_sorted = sched.nact_lengths()
    rows = np.arange(B)
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        m = s1 - s0
        if s0:
            hs[0] = hs[C]                                   # h after the last chunk
        if xbuf is None:
            xs = x[s0:s1]
        else:
            sched.gather_into(x, xbuf[:m], s0, s1)
            xs = xbuf[:m]
        run_chunk(xs, hs[:m + 1], sched.nact[s0:s1])
        sched.scatter_into(y, hs[1:m + 1, :, :H], s0)
        end = (lens_sorted > s0) & (lens_sorted <= s1)        # rows whose last step is here
        h_last[end] = hs[lens_sorted[end] - s0, rows[end]]
    return y, sched.unsort_rows(h_last, H)


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads):
    """GRU (reset_after=True), one layer and direction: ``(y, h_n, cache)``, in float32
    or float64 (``x``'s dtype, which every array argument shares).

    ``x`` [T,B,I], ``h0`` [B,H], weights in PyTorch's layout (gates r, z, n),
    ``lens`` [B] int64 in [1, T]; ``cache`` is None unless ``training``."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = x.dtype
    VW = lanes(dt)
    pk = pack(w_ih, w_hh, b_ih, b_hh, VW, 3, backward=training)
    Hp = pk.Hp
    P = Hp // VW
    bias = np.zeros((P, 4, VW), dt)
    bias[:, :2] = pk.bias.reshape(P, 3, VW)[:, :2]
    for g, b in ((2, b_ih), (3, b_hh)):
        v = np.zeros(Hp, dt)
        v[:H] = b[2 * H:]
        bias[:, g] = v.reshape(P, VW)
    sched = Schedule(lens, T, reverse)
    n = sched.n
    step_flops = 2.0 * B * 3 * H * (H + I)
    plan = Plan(max_threads, B, step_flops, step_flops * n * (3 if training else 1), P,
                    pk.up.nbytes, sched.nact_lengths())
    tag = make_tag(VW, dt)
    mrmax = micro_rows(VW, dt.itemsize) if VW * dt.itemsize == 64 else GRU_FWD_MR8

    def run(xs, hs, nact, act):
        ctl = np.zeros(P + 1, np.int64)
        plan.launch(gru_fwd_kernel, lambda tid, nthr, r0, r1: (tag, xs, bias, pk.up, hs, nact,
                                                          training, act, ctl, tid, nthr, mrmax,
                                                          r0, r1))

    if not training:
        dummy = np.empty((1, 1, 1), dt)
        y, h_n = _infer_chunks(sched, x, h0, Hp, H, lambda xs, hs, nact: run(xs, hs, nact, dummy))
        return y, h_n, None
    hs = _states(sched, h0, Hp)
    xs = sched.gather(x)
    act = np.empty((n, B, 4 * Hp), dt)
    run(xs, hs, sched.nact, act)
    y, h_n = _finish(sched, hs, H, B)
    cache = PackedCellCache()
    cache.kind, cache.relu, cache.sched, cache.pk = "gru", False, sched, pk
    cache.xs, cache.act, cache.hs = xs, act, hs
    cache.flops = 2.0 * B * 3 * H * H
    cache.plan = plan
    return y, h_n, cache


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse, relu, training, max_threads):
    """tanh (``relu=False``) or ReLU RNN, one layer and direction: ``(y, h_n, cache)``
    as :func:`gru_forward` (float32 or float64)."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = x.dtype
    VW = lanes(dt)
    pk = _pack_rnn(w_ih, w_hh, b_ih, b_hh, VW, training)
    Hp = pk.Hp
    Q = -(-Hp // (pk.nvb * VW))
    sched = Schedule(lens, T, reverse)
    step_flops = 2.0 * B * H * (H + I)
    plan = Plan(max_threads, B, step_flops, step_flops * sched.n * (3 if training else 1),
                    Q, pk.up.nbytes, sched.nact_lengths())
    tag = make_tag(VW, dt)
    mrmax = micro_rows(VW, dt.itemsize)
    relu = bool(relu)

    def run(xs, hs, nact):
        ctl = np.zeros(Q + 1, np.int64)
        plan.launch(rnn_fwd_kernel, lambda tid, nthr, r0, r1: (tag, xs, pk.bias, pk.up, pk.nvb, hs,
                                                          nact, relu, ctl, tid, nthr, mrmax,
                                                          r0, r1))

    if not training:
        y, h_n = _infer_chunks(sched, x, h0, Hp, H, run)
        return y, h_n, None
    hs = _states(sched, h0, Hp)
    xs = sched.gather(x)
    run(xs, hs, sched.nact)
    y, h_n = _finish(sched, hs, H, B)
    cache = PackedCellCache()
    cache.kind, cache.relu, cache.sched, cache.pk = "rnn", relu, sched, pk
    cache.xs, cache.act, cache.hs = xs, None, hs
    cache.flops = 2.0 * B * H * H
    cache.plan = plan
    return y, h_n, cache


def _weight_grads(gthr, dgx2, dgh2, xs2, hp2, w_ih_p):
    """dW_ih = dgxᵀ x, dW_hh = dghᵀ h_prev, dx = dgx W_ih over all rows (PyTorch gate order),
    split in tasks for the call's threads as in :func:`fastrnn.kernels.packed.lstm_backward`."""
    R, GH = dgx2.shape
    I, Hp = xs2.shape[1], hp2.shape[1]
    dt = dgx2.dtype
    dw_hh_p = np.empty((GH, Hp), dt)
    dw_ih_p = np.empty((GH, I), dt)
    dxs = np.empty((R, I), dt)
    # the split depends on the shape only: bitwise the same results on one thread or two
    split = 2.0 * R * GH * (2 * I + Hp) >= settings.split_gemm_flops
    tasks = []
    for r0, r1 in splits(GH, DW_TASKS if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgh2[:, r0:r1].T, hp2, out=dw_hh_p[r0:r1]))
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgx2[:, r0:r1].T, xs2, out=dw_ih_p[r0:r1]))
    for r0, r1 in splits(R, min(4, max(1, R // 64)) if split else 1):
        tasks.append(lambda r0=r0, r1=r1: np.matmul(dgx2[r0:r1], w_ih_p, out=dxs[r0:r1]))
    Tasks(tasks).run(gthr if split else 1)     # small GEMMs: a hand-off costs more
    return dw_ih_p, dw_hh_p, dxs


def backward(cache, dy, dh_n, max_threads, blas_threads):
    """Gradients from a training forward's cache:
    ``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)`` in the natural (PyTorch) layout.

    ``blas_threads`` as in :func:`fastrnn.kernels.packed.lstm_backward` (called with 0)."""
    sched, pk = cache.sched, cache.pk
    n, B = sched.n, sched.B
    H, Hp, VW = pk.H, pk.Hp, pk.VW
    I = cache.xs.shape[2]
    dt = cache.hs.dtype
    tag = make_tag(VW, dt)
    NB = pk.nvb * VW
    Q = -(-Hp // NB)
    mrmax = micro_rows(VW, dt.itemsize)
    plan = cache.plan
    if plan.mode == "panels" and (Q < 2 or cache.flops < settings.two_thread_step_flops):
        plan = Plan(1, B, 0, 0, 1, 0, None)             # too few output panels to share
    gthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    blas_threads(0)
    dys = sched.gather(np.asarray(dy, dt), Hp)
    dhn = sched.sort_rows(np.asarray(dh_n, dt), Hp)
    alloc = np.zeros if sched.tix is not None else np.empty
    ctl = np.zeros(Q + 1, np.int64)
    hs = cache.hs
    if cache.kind == "gru":
        dgh = alloc((n, B, 3 * Hp), dt)
        dgx = alloc((n, B, 3 * Hp), dt)
        dd = dhn
        plan.launch(gru_bwd_kernel, lambda tid, nthr, r0, r1: (tag, cache.act, hs, pk.ub, pk.nvb, dys,
                                                          dd, dgh, dgx, sched.nact, ctl, tid,
                                                          nthr, mrmax, r0, r1))
        dh0 = dgh[0] @ pk.w_hh + dd                                   # [B,Hp]
        G = 3
    else:
        dgh = dgx = alloc((n, B, Hp), dt)
        zrow = np.zeros(NB, dt)
        plan.launch(rnn_bwd_kernel, lambda tid, nthr, r0, r1: (tag, hs, pk.ub, pk.nvb, dys, dhn, zrow,
                                                          dgh, sched.nact, cache.relu, ctl, tid,
                                                          nthr, mrmax, r0, r1))
        dh0 = dgh[0] @ pk.w_hh
        G = 1
    GH = G * Hp
    dgx2, dgh2 = dgx.reshape(n * B, GH), dgh.reshape(n * B, GH)
    dw_ih_p, dw_hh_p, dxs = _weight_grads(gthr, dgx2, dgh2, cache.xs.reshape(n * B, I),
                                          hs[:-1].reshape(n * B, Hp), pk.w_ih)
    dbx_p = dgx2.sum(axis=0)
    dbh_p = dbx_p if dgh is dgx else dgh2.sum(axis=0)
    dx = sched.scatter(dxs.reshape(n, B, I), I, dt)
    if G == 1:
        dw_ih = dw_ih_p[:H].copy()
        dw_hh = dw_hh_p[:H, :H].copy()
        db_ih = dbx_p[:H].copy()
        db_hh = db_ih.copy()
    elif Hp == H:                     # natural gate order: PyTorch's layout already
        dw_ih, dw_hh, db_ih, db_hh = dw_ih_p, dw_hh_p, dbx_p, dbh_p
    else:                             # drop the padding units of each gate
        dw_ih = np.ascontiguousarray(dw_ih_p.reshape(G, Hp, I)[:, :H]).reshape(G * H, I)
        dw_hh = np.ascontiguousarray(dw_hh_p.reshape(G, Hp, Hp)[:, :H, :H]).reshape(G * H, H)
        db_ih = np.ascontiguousarray(dbx_p.reshape(G, Hp)[:, :H]).reshape(G * H)
        db_hh = np.ascontiguousarray(dbh_p.reshape(G, Hp)[:, :H]).reshape(G * H)
    return dx, sched.unsort_rows(dh0, H), dw_ih, dw_hh, db_ih, db_hh
