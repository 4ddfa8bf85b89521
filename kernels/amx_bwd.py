"""The bf16 LSTM's backward on the AMX route, after
:func:`fastrnn.kernels.packed_bf16.lstm_backward` has sorted the gradients: the
time loop's launch (:mod:`fastrnn.kernels.amx_bf16`) and the products after it
(:mod:`fastrnn.kernels.amx_gemm`) on workspaces carved from few 64-byte-aligned
allocations.
"""
from __future__ import annotations

import math

import numpy as np

from fastrnn.kernels import amx_bf16
from fastrnn.kernels import amx_gemm as ag
from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.plan import Tasks
from fastrnn.kernels.task_gemm import DW_TASKS, splits

__all__ = ["backward", "carve", "CARVE_BYTES"]

#: the gate panels' width (AVX-512 lanes), as in :mod:`fastrnn.kernels.packed_bf16`
VW = 16

#: bytes per allocation of :func:`carve`: glibc hands blocks above its mmap
#: threshold (at most 32 MiB) fresh pages on every call, each page a fault on its
#: first write (milliseconds per call at large shapes); smaller ones come back
#: from the heap
CARVE_BYTES = 16 << 20


def carve(*specs):
    """C-contiguous arrays of the given (shape, dtype), each starting on a 64-byte
    boundary, carved from as few allocations of at most ``CARVE_BYTES`` as the
    order allows (an array larger than that alone; not zeroed)."""
    sizes = [-(-math.prod(sh) * np.dtype(dt).itemsize // 64) * 64 for sh, dt in specs]
    groups, cur = [], []
    for i, size in enumerate(sizes):
        if cur and sum(sizes[j] for j in cur) + size > CARVE_BYTES:
            groups.append(cur)
            cur = []
        cur.append(i)
    groups.append(cur)
    out = [None] * len(specs)
    for grp in groups:
        raw = np.empty(sum(sizes[i] for i in grp) + 64, np.uint8)
        off = (-raw.ctypes.data) % 64
        for i in grp:
            sh, dt = specs[i]
            nb = math.prod(sh) * np.dtype(dt).itemsize
            out[i] = raw[off:off + nb].view(dt).reshape(sh)
            off += sizes[i]
    return out


def backward(cache, plan, gthr, dys, dhn, zrow, dc, dg, ctl):
    """The loop (:func:`fastrnn.kernels.amx_bf16.lstm_bwd_amx_kernel`) and the products
    after it on AMX tiles (:mod:`fastrnn.kernels.amx_gemm`) of
    :func:`fastrnn.kernels.packed_bf16.lstm_backward`'s cache:
    ``(dx, dh0, dw_ih, dw_hh, db_p)``. The loop writes the rounded gate gradients
    twice: row-major ``dgb`` (the next step's ``dh``, then ``dx`` and ``dh0``, read in
    place) and in k pairs ``vt`` (the weight gradient's B operand, ``dWᵀ = [x h]ᵀ dg``)."""
    sched, pk = cache.sched, cache.pk
    n, B, GH = cache.act.shape
    H, Hp, I, Ip, Kh = pk.H, pk.Hp, pk.I, pk.Ip, pk.Kh
    dt = np.dtype(np.float32)
    Nx = Ip + Kh
    # the steps' rows one after the other (dx = dg W_ih is one GEMM over them), 32
    # rows more at the end: the products read two tiles of 16 rows from any row
    # (the rows past a step's own give products that are not used: no zeros needed);
    # rows padded off multiples of 4 KiB (a tile's 16 rows would share cache sets)
    R = n * B
    Rp = -(-R // 32) * 32
    GHb = GH + (32 if GH % 2048 == 0 else 0)
    vs = ag.vnni_shape(n, B, GH)
    # few allocations for the workspaces (each on a 64-byte boundary); the outputs
    # apart (dx and dh0 may come back as views: they keep only their own alive)
    dgf, vt, at, wt, ct = carve(
        ((Rp + 32, GHb), np.uint16), (vs, np.uint16), ((Nx // 16, vs[1] // 16, 16, 32), np.uint16),
        ((Ip // 16, GH // 2, 16, 2), np.uint16), ((GH // 16, Nx // 16, 16, 16), dt))
    dxp, dh0 = carve(((Rp + 32, Ip), dt), ((B + 32, Hp), dt))
    dgb = dgf[:R].reshape(n, B, GHb)
    # the k-pair copy: zero where the loop writes nothing (past the last row; rows
    # past the sequences' ends)
    if sched.tix is not None:
        vt[:] = 0
    vt[:, R // 2:] = 0
    plan.launch(amx_bf16.lstm_bwd_amx_kernel, lambda tid, nthr, r0, r1: (
        cache.act, cache.cs, pk.ub, pk.peep, dys, dhn, zrow, dc, dg, dgb, vt, sched.nact, ctl,
        tid, nthr, r0, r1))
    split = 2.0 * n * B * GH * (2 * I + Hp) >= settings.split_gemm_flops
    nt = gthr if split else 1
    at[:, R // 32:] = 0                   # pack_a_steps fills the rows k < R
    wt[:] = 0                             # pack_wih fills the real units and columns
    db_p = np.empty(GH, dt)
    dw_ih = np.empty((4 * H, I), dt)
    dw_hh = np.empty((4 * H, H), dt)
    xh = cache.xh[:n]
    # [x h]ᵀ packed by feature blocks; beside it W_ih's operand and dh0
    stage = [lambda f0=f0, f1=f1: ag.pack_a_steps(xh[:, :, 16 * f0:16 * f1], B, at[f0:f1])
             for f0, f1 in splits(Nx // 16, 2 if split else 1)]
    stage.append(lambda: ag.pack_wih(pk.wb_ih, H, Hp, wt))
    stage.append(lambda: ag.dh0_gemm(dgf, B, pk.ub, Hp, pk.nvb * VW, dh0))
    Tasks(stage).run(nt)

    stage = [lambda j0=j0, j1=j1: ag.dwt_gemm(at, vt, ct, I, Ip, H, Hp, dw_ih, dw_hh, 32 * j0,
                                              32 * j1)
             for j0, j1 in splits(GH // 32, DW_TASKS if split else 1)]
    stage += [lambda r0=r0, r1=r1: ag.dx_gemm(dgf, wt, dxp, 32 * r0, 32 * r1)
              for r0, r1 in splits(Rp // 32, 2 if split else 1)]
    # the bias sums (a pass over the float32 gate gradients, or over the loop's
    # per-row sums) by column halves: the same row order in each column whatever
    # the split
    dg2 = dg.reshape(-1, GH)
    stage += [lambda c0=c0, c1=c1: np.sum(dg2[:, 16 * c0:16 * c1], axis=0,
                                          out=db_p[16 * c0:16 * c1])
              for c0, c1 in splits(GH // 16, 2 if split else 1)]
    Tasks(stage).run(nt)
    dx = sched.scatter(dxp[:R].reshape(n, B, Ip), I, dt)
    return dx, dh0[:B], dw_ih, dw_hh, db_p
