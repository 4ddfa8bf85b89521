"""The Python side of the BLAS-per-step loops (:mod:`fastrnn.kernels.loops`):
workspaces, the input and weight-gradient GEMMs around the time loop, the
inference chunks and the batch split, for every cell, driven by the cell's
:class:`fastrnn.kernels.rows.Layout`.

- The input product ``x W_ihᵀ`` for all ``T*B`` rows is one GEMM before
  the time loop; ``dx``, ``dW_ih``, ``dW_hh`` (and full peephole gradients)
  are single GEMMs over all ``T*B`` rows after it. Only ``U h`` (and, where
  the cell needs it, a second dependent product) is inside the loop.
- The recurrent product is ``h @ Uᵀ`` with ``Uᵀ`` transposed once per call,
  so OpenBLAS gets a no-transpose GEMM: at B=8, H=64 that is 1.7 µs per step
  against 11.7 µs for the transposed call (its small-matrix path only takes
  NN). The biases are written into the product's output and added by the
  GEMM itself (beta=1), so the ``T*B*G*H`` input product is never re-read
  just to add them; bias gradients are summed inside the backward loop.
- Workspaces are allocated once per call. Inference (``training=False``)
  keeps no cache, and computes the input product in chunks of steps
  (``settings.chunk_rows``), so its workspace does not grow with ``T``;
  training saves the gate activations, and backward differentiates from them.
"""
from __future__ import annotations

import numpy as np

from fastrnn.contract import Weights
from fastrnn.kernels.blas import get_num_threads
from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.loops import LOOPS
from fastrnn.kernels.rows import LAYOUTS

__all__ = ["forward", "backward", "Cache", "row_ranges", "run_rows", "chunk_steps"]


class Cache:
    """What backward needs from a training forward (arrays indexed by time):
    the cpu backend's cache of every kernel route, ``saved`` being the route's
    own (the loops' saved arrays, or the packed kernels' cache object), and
    ``backward`` the route's backward (set by :func:`fastrnn.kernels.cpu.forward`)."""

    __slots__ = ("cell", "x", "w", "lengths", "reverse", "saved", "loop_flops", "backward")
    # loop_flops: the FLOPs of one step's recurrent product (picks the loop's thread count)

    def __init__(self, cell, x, w, lengths, reverse, saved, loop_flops):
        self.cell, self.x, self.w, self.lengths = cell, x, w, lengths
        self.reverse, self.saved, self.loop_flops = reverse, saved, loop_flops


# --------------------------------------------------------------------------- batch split
_pool = []


def _executor():
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor
        _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-cpu"))
    return _pool[0]


def row_ranges(T, B, loop_flops):
    """Batch row ranges to run concurrently: two halves (``settings.split_min_flops``),
    or all rows at once."""
    if get_num_threads() >= 2 and B >= 2 and T * loop_flops >= settings.split_min_flops:
        mid = (B + 1) // 2
        return [(0, mid), (mid, B)]
    return [(0, B)]


def run_rows(kernel, ranges, args_of, threads, loop_flops):
    """Run ``kernel(*args_of(k), b0, b1)`` for each row range ``k``, concurrently."""
    if len(ranges) == 1:
        threads.use(loop_flops)
        kernel(*args_of(0), *ranges[0])
        return
    threads.use(0)   # each half calls single-threaded BLAS
    fut = _executor().submit(kernel, *args_of(1), *ranges[1])
    try:
        kernel(*args_of(0), *ranges[0])
    finally:
        fut.result()


def chunk_steps(T, B):
    """Steps per input-product chunk in inference."""
    return min(T, max(settings.chunk_min_steps, -(-settings.chunk_rows // B)))


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _plain_forward_weights(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype):
    return w_hhT, bias, (), None


def _plain_backward_weights(w, B, H, dtype):
    return (), None


# --------------------------------------------------------------------------- forward
def forward(cell, x, h0, c0, weights, lens, reverse, training, threads):
    """One layer and direction on the loops: ``(y, h_n, c_n, cache)`` (see cpu.forward)."""
    layout = LAYOUTS[cell.name]
    dtype = x.dtype
    T, B, I = x.shape
    G = cell.gates
    H = weights.w_hh.shape[1]
    w_ih, w_hh = _c(weights.w_ih, dtype), _c(weights.w_hh, dtype)
    b_ih, b_hh = _c(weights.b_ih, dtype), _c(weights.b_hh, dtype)
    padded = bool((lens < T).any())
    bias = b_ih + b_hh      # added per step onto the recurrent product (beta=1 GEMM)
    w_hhT = np.ascontiguousarray(w_hh.T)                    # [H,G*H]: NN GEMMs in the loop
    loop_flops = 2.0 * B * G * H * H
    rows = row_ranges(T, B, loop_flops)

    def run(kernel, *args):
        run_rows(kernel, rows, lambda k: args, threads, loop_flops)

    h = np.array(h0, dtype=dtype, order="C", copy=True)   # h: [B,H] state
    y = np.zeros((T, B, H), dtype) if padded else np.empty((T, B, H), dtype)

    def keep(width, zero):
        """A saved array [T,B,width], zero-filled where padded rows enter the weight
        GEMMs; in inference one step's scratch [1,B,width] (see the loops)."""
        if not training:
            return np.empty((1, B, width), dtype)
        return (np.zeros if (padded and zero) else np.empty)((T, B, width), dtype)

    c = None
    state = (h,)
    if cell.has_cell:
        c = np.array(c0, dtype=dtype, order="C", copy=True)
        state = (h, c)
    saved = tuple(keep(G * H if wide else H, zero) for _, wide, zero in layout.saved)
    peep = None if cell.peephole is None else _c(weights.peep, dtype)
    # the cell's extra weights (cellw) and the second product's weights (two-product cells)
    prepare = layout.forward_weights or _plain_forward_weights
    w_hhT, bias, cellw, second = prepare(w_hhT, bias, b_ih, b_hh, peep, B, H, dtype)
    fwd = LOOPS[cell.name][0]

    def call(xg, L, rev, yv):     # one launch over len(xg) steps
        if cell.products == 1:
            run(fwd, xg, state, w_hhT, bias, cellw, L, rev, training, yv, saved)
        else:
            run(fwd, xg, state, w_hhT, bias, second[0], second[1], cellw, L, rev, training, yv,
                saved)

    def input_product(xs):                                  # xs: [n,B,I] -> [n,B,G*H]
        n = xs.shape[0]
        threads.use(2.0 * n * B * I * G * H)
        return (xs.reshape(n * B, I) @ w_ih.T).reshape(n, B, G * H)

    if training:  # one GEMM over all T*B rows
        call(input_product(x), lens, reverse, y)
        w = Weights(w_ih, w_hh, b_ih, b_hh,
                    None if weights.peep is None else _c(weights.peep, dtype))
        return y, h, c, Cache(cell, x, w, lens, reverse, saved, loop_flops)

    # inference: chunks of steps; the kernels carry h (and c) from chunk to chunk.
    # Reverse reads x in step order (row b at step s reads t = lengths[b]-1-s):
    # gather those rows, run the chunk forwards, scatter y back.
    n_steps = chunk_steps(T, B)
    cols = np.arange(B)
    for s0 in range(0, T, n_steps):
        s1 = min(T, s0 + n_steps)
        L = np.clip(lens - s0, 0, s1 - s0)                  # steps left per row
        if not L.any():
            break
        if reverse:
            t_idx = lens[None, :] - 1 - np.arange(s0, s1)[:, None]      # [n,B]
            valid = t_idx >= 0
            t_idx = np.where(valid, t_idx, 0)
            ys = np.zeros((s1 - s0, B, H), dtype)
            call(input_product(x[t_idx, cols]), L, False, ys)
            y[t_idx[valid], np.broadcast_to(cols, t_idx.shape)[valid]] = ys[valid]
        else:
            call(input_product(x[s0:s1]), L, False, y[s0:s1])
    return y, h, c, None


# --------------------------------------------------------------------------- backward
def backward(cell, cache, dy, dh_n, dc_n, threads):
    """Gradients from :func:`forward`'s cache: ``(dx, dh0, dc0, Weights)``."""
    layout = LAYOUTS[cell.name]
    x, w, lens, reverse = cache.x, cache.w, cache.lengths, cache.reverse
    dtype = x.dtype
    T, B, I = x.shape
    G = cell.gates
    H = w.w_hh.shape[1]
    dy = _c(dy, dtype)
    dh = np.array(dh_n, dtype=dtype, order="C", copy=True)   # dh: [B,H] carry
    dc = None
    loop_flops = cache.loop_flops
    rows = row_ranges(T, B, loop_flops)
    padded = bool((lens < T).any())

    def grad(*shape):  # every active (t, b) row is written; padded rows must be 0
        return np.zeros(shape, dtype) if padded else np.empty(shape, dtype)

    # float64 bias-gradient sums, one per row range (summed below)
    dbs = [np.zeros(G * H) for _ in rows]
    dbhs = dbs
    dg = grad(T, B, G * H)
    dgh = dg
    saved = cache.saved
    hprev = saved[layout.hprev]
    carry = (dh,)
    if cell.has_cell:
        dc = np.array(dc_n, dtype=dtype, order="C", copy=True)
        carry = (dh, dc)
    carry += tuple(np.zeros((B, H), dtype) for _ in range(layout.carry_extra))
    if layout.split_grads:
        dgh = grad(T, B, G * H)
        dbhs = [np.zeros(G * H) for _ in rows]
    cellw, second = (layout.backward_weights or _plain_backward_weights)(w, B, H, dtype)
    bwd = LOOPS[cell.name][1]
    if cell.products == 1:
        grads = (dg, dgh) if layout.split_grads else (dg,)
        run_rows(bwd, rows, lambda k: (saved, w.w_hh, cellw, lens, reverse, dy, carry, grads,
                                       (dbs[k], dbhs[k])), threads, loop_flops)
    else:
        w1, w2, lo2 = second
        run_rows(bwd, rows, lambda k: (saved, w1, w2, lo2, cellw, lens, reverse, dy, carry,
                                       (dg,), (dbs[k],)), threads, loop_flops)

    # weight gradients: GEMMs over all T*B rows (padded rows are zero)
    threads.use(2.0 * T * B * I * G * H)
    TB = T * B
    dg2 = dg.reshape(TB, G * H)
    hp2 = hprev.reshape(TB, H)
    dx = (dg2 @ w.w_ih).reshape(T, B, I)
    dw_ih = dg2.T @ x.reshape(TB, I)
    dgh2 = dgh.reshape(TB, G * H)
    dw_hh = dgh2.T @ hp2 if layout.dw_hh is None else layout.dw_hh(dg2, dgh2, hp2, saved, w, H)
    db_ih = np.sum(dbs, axis=0).astype(dtype)
    db_hh = np.sum(dbhs, axis=0).astype(dtype)
    dpeep = None if layout.dpeep is None else layout.dpeep(dg2, saved, w, H)
    return dx, dh, dc, Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep)
