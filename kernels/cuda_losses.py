"""Device kernels of the losses: softmax cross-entropy and mean squared error.

The GPU side of :func:`fastrnn.blocks.softmax_cross_entropy` and
:func:`fastrnn.blocks.mse` (reached through :mod:`fastrnn.kernels.cuda_blocks`).
``logits``/``pred`` are device arrays; targets and masks may be host or device
arrays (a host batch brings them on the host). Each loss returns one Python
float and syncs the host once per call (loss, count and a bad-target flag
together); sums run in float64. Reductions use ``_pow2()`` threads per block
(a power of two <= ``settings.threads``) and the block tree sums of
:mod:`fastrnn.kernels.cuda_ops`.

Notation as in :mod:`fastrnn.blocks`: ``N`` rows, ``C`` classes.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from ..contract import is_device_array
from .cuda_base import _pow2
from .cuda_ops import (_F64, _block_max, _block_sum, _flat, contiguous, empty, fill, view,
                       zeros)

__all__ = ["softmax_cross_entropy", "mse"]


# --------------------------------------------------------------------------- counts
@lru_cache(maxsize=None)
def _sum_rows_kernel(nt):
    """One block: ``res[0] = Σ v`` over ``v >= 0`` (NaN propagates) and
    ``res[2] = #(v < 0)`` (rows marked bad) of ``vals [N]`` float64."""
    @cuda.jit
    def kernel(vals, res):
        ssum = cuda.shared.array(nt, _F64)
        sbad = cuda.shared.array(nt, _F64)
        tid = cuda.threadIdx.x
        acc = 0.0
        bad = 0.0
        for i in range(tid, vals.shape[0], nt):
            v = vals[i]
            if v < 0:
                bad += 1.0
            else:
                acc += v
        ssum[tid] = acc
        sbad[tid] = bad
        _block_sum(ssum, tid, nt)
        _block_sum(sbad, tid, nt)
        if tid == 0:
            res[0] = ssum[0]
            res[2] = sbad[0]

    return kernel


@lru_cache(maxsize=None)
def _count_kernel(nt):
    """One block: the count ``n`` of counted entries (``t != ignore`` and the
    mask set) -> ``res[1] = n`` and ``scale[0] = 1/max(n, 1)`` (mean) or 1."""
    @cuda.jit
    def kernel(t, ignore, mask, has_mask, use_targets, mean, res, scale):
        scnt = cuda.shared.array(nt, _F64)
        tid = cuda.threadIdx.x
        cnt = 0.0
        n_all = mask.shape[0] if not use_targets else t.shape[0]
        for i in range(tid, n_all, nt):
            ok = True
            if use_targets and t[i] == ignore:
                ok = False
            if has_mask and mask[i] == 0:
                ok = False
            if ok:
                cnt += 1.0
        scnt[tid] = cnt
        _block_sum(scnt, tid, nt)
        if tid == 0:
            n = scnt[0]
            res[1] = n
            if mean:
                scale[0] = 1.0 / max(n, 1.0)
            else:
                scale[0] = 1.0

    return kernel


def _mask_u8(mask, shape, name):
    """A flat uint8 device mask of ``shape`` from a host or device mask."""
    if is_device_array(mask):
        m = view(mask)
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"{name}: a device mask must have shape {tuple(shape)}, "
                             f"got {tuple(m.shape)}")
        return _flat(contiguous(m))
    m = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    return cuda.to_device(np.ascontiguousarray(m, dtype=np.uint8).reshape(-1))


# --------------------------------------------------------------------------- softmax xent
@lru_cache(maxsize=None)
def _xent_kernel(nt, np_dtype):
    """One block per row (grid-stride over rows): the row's maximum, Σ exp in
    float64, ``-log p_t`` (clipped) and, when ``want_grad``, the gradient
    ``scale (e/Σe - onehot)`` written to ``g`` (which may be ``x``)."""
    dt = numba.from_dtype(np.dtype(np_dtype))

    @cuda.jit
    def kernel(x, t, ignore, mask, has_mask, scale_value, scale, min_logp, g, rowloss,
               want_grad):
        # x, g: [N, C]; t: [N] ints; mask: [N] uint8 (has_mask); the gradient's scale:
        # scale_value, or scale[0] (float64, counted on the device) when scale_value < 0
        # rowloss: [N] float64: -log p_t of counted rows, 0 otherwise, -1 for a target out of range
        smax = cuda.shared.array(nt, dt)
        ssum = cuda.shared.array(nt, _F64)
        cast = cuda.local.array(3, dt)      # float64 -> dtype through a store
        tid = cuda.threadIdx.x
        N = x.shape[0]
        C = x.shape[1]
        cast[1] = scale_value if scale_value >= 0 else scale[0]
        sc = cast[1]
        cast[2] = 1.0
        one = cast[2]
        for r in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            m = x[r, 0]
            for c in range(tid, C, nt):
                v = x[r, c]
                if v > m or v != v:
                    m = v
            smax[tid] = m
            _block_max(smax, tid, nt)
            m = smax[0]
            tr = t[r]
            valid = tr != ignore
            if has_mask and mask[r] == 0:
                valid = False
            inrange = tr >= 0 and tr < C
            zt = 0.0
            if tid == 0 and valid and inrange:
                zt = x[r, tr] * 1.0 - m * 1.0      # read before any thread writes g (= x)
            acc = 0.0
            for c in range(tid, C, nt):
                acc += math.exp(x[r, c] - m)
            ssum[tid] = acc
            _block_sum(ssum, tid, nt)
            S = ssum[0]
            if tid == 0:
                if not valid:
                    rowloss[r] = 0.0
                elif not inrange:
                    rowloss[r] = -1.0
                else:
                    lp = zt - math.log(S)
                    if lp < min_logp:
                        lp = min_logp
                    rowloss[r] = -lp
            if want_grad:
                if valid and inrange:
                    cast[0] = S
                    s32 = cast[0]
                    for c in range(tid, C, nt):
                        v = math.exp(x[r, c] - m) / s32
                        if c == tr:
                            v = v - one
                        g[r, c] = v * sc
                else:
                    for c in range(tid, C, nt):
                        g[r, c] = 0
            cuda.syncthreads()            # smax / ssum are reused by the next row

    return kernel


def softmax_cross_entropy(logits, targets, ignore_index=-100, mask=None, reduction="mean",
                          grad=True, out=None):
    """The device version of :func:`fastrnn.blocks.softmax_cross_entropy`:
    ``logits`` a device array; ``targets`` and ``mask`` host or device arrays.
    Returns ``(loss float, dlogits device array or None)``."""
    x = view(logits)
    shape = tuple(x.shape)
    if len(shape) < 1:
        raise ValueError(f"logits must have a class axis, got shape {shape}")
    C = shape[-1]
    lead = shape[:-1]
    dt = np.dtype(x.dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"logits on the GPU must be float32 or float64, got {dt}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    N = int(np.prod(lead, dtype=np.int64))
    res_host = None                     # (n known on the host)
    if is_device_array(targets):
        t = view(targets)
        if tuple(t.shape) != lead:
            raise ValueError(f"targets shape {tuple(t.shape)} does not match logits {lead}")
        if np.dtype(t.dtype).kind not in "iu":
            raise TypeError(f"targets must hold integers, got dtype {np.dtype(t.dtype)}")
        t = _flat(contiguous(t)) if N else empty(0, np.int64)
    else:
        th = np.asarray(targets)
        if th.shape != lead:
            raise ValueError(f"targets shape {th.shape} does not match logits {lead}")
        if th.dtype.kind not in "iu":
            raise TypeError(f"targets must hold integers, got dtype {th.dtype}")
        th = th.reshape(-1).astype(np.int64, copy=False)
        t = cuda.to_device(np.ascontiguousarray(th))
        if mask is None or not is_device_array(mask):     # else the kernel flags bad targets
            valid = th != ignore_index
            if mask is not None:
                valid = valid & np.broadcast_to(np.asarray(mask, dtype=bool), lead).reshape(-1)
            tv = th[valid]
            if tv.size and (tv.min() < 0 or tv.max() >= C):
                raise ValueError(f"targets out of range [0, {C})")
            res_host = int(np.count_nonzero(valid))
    has_mask = mask is not None
    m = _mask_u8(mask, lead, "mask").reshape(N) if has_mask else t
    if grad and out is not None:
        if (not is_device_array(out) or tuple(out.shape) != tuple(x.shape)
                or np.dtype(out.dtype) != dt or not view(out).is_c_contiguous()):
            raise ValueError(f"out must be a C-contiguous {dt} device array of shape "
                             f"{tuple(x.shape)}")
        g = view(out)
    else:
        g = empty(x.shape, dt) if grad else None
    if N == 0 or C == 0:
        if g is not None and g.size:
            fill(g, 0)
        return 0.0, g
    x2 = contiguous(x).reshape(N, C)
    g2 = g.reshape(N, C) if g is not None else x2
    nt = _pow2()
    res = zeros(3, np.float64)
    if res_host is None:
        sc, scale = empty(1, np.float64), -1.0
        _count_kernel(nt)[1, nt](t, int(ignore_index), m, has_mask, True,
                                 reduction == "mean", res, sc)
    else:
        sc, scale = res, (1.0 / max(res_host, 1) if reduction == "mean" else 1.0)
    rowloss = empty(N, np.float64)
    min_logp = float(np.log(np.finfo(dt).tiny))
    _xent_kernel(nt, dt.type)[min(N, 8192), nt](x2, t, int(ignore_index), m, has_mask, scale,
                                                sc, min_logp, g2, rowloss, bool(grad))
    _sum_rows_kernel(nt)[1, nt](rowloss, res)
    total, n, bad = res.copy_to_host()          # the one host sync of the loss
    if bad:
        raise ValueError(f"targets out of range [0, {C})")
    n = res_host if res_host is not None else int(n)
    loss = float(total)
    if reduction == "mean":
        loss *= 1.0 / max(n, 1)
    return loss, g


# --------------------------------------------------------------------------- mse
@lru_cache(maxsize=None)
def _mse_kernel(nt, np_dtype):
    """``d = pred - target`` (0 where masked out), ``g = (2 scale) d`` (when
    ``want_grad``) and per-block partial sums of ``d²`` in float64."""
    dt = numba.from_dtype(np.dtype(np_dtype))

    @cuda.jit
    def kernel(pred, target, mask, has_mask, scale_value, scale, g, want_grad, partial):
        # flat [N]; the scale: scale_value, or scale[0] (float64, counted on the
        # device) when scale_value < 0; partial: [blocks] float64
        ssum = cuda.shared.array(nt, _F64)
        cast = cuda.local.array(2, dt)      # float64 -> dtype through a store
        tid = cuda.threadIdx.x
        cast[0] = 2.0 * (scale_value if scale_value >= 0 else scale[0])
        ts = cast[0]
        cast[1] = 0.0
        zero = cast[1]
        acc = 0.0
        for i in range(cuda.blockIdx.x * nt + tid, pred.shape[0], nt * cuda.gridDim.x):
            d = pred[i] - target[i]
            if has_mask and mask[i] == 0:
                d = zero
            acc += (d * 1.0) * (d * 1.0)
            if want_grad:
                g[i] = ts * d
        ssum[tid] = acc
        _block_sum(ssum, tid, nt)
        if tid == 0:
            partial[cuda.blockIdx.x] = ssum[0]

    return kernel


def mse(pred, target, mask=None, reduction="mean", grad=True):
    """The device version of :func:`fastrnn.blocks.mse`: ``pred`` a device
    array; ``target`` and ``mask`` host or device. Returns ``(loss, dpred)``."""
    p = view(pred)
    dt = np.dtype(p.dtype)
    shape = tuple(p.shape)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if is_device_array(target):
        t = view(target)
        if tuple(t.shape) != shape:
            raise ValueError(f"target shape {tuple(t.shape)} does not match pred {shape}")
        if np.dtype(t.dtype) != dt:
            raise TypeError(f"target must have pred's dtype {dt}, got {np.dtype(t.dtype)}")
        t = contiguous(t)
    else:
        th = np.asarray(target, dtype=dt)
        if th.shape != shape:
            raise ValueError(f"target shape {th.shape} does not match pred {shape}")
        t = cuda.to_device(np.ascontiguousarray(th))
    N = int(np.prod(shape, dtype=np.int64))
    g = empty(shape, dt) if grad else None
    if N == 0:
        return 0.0, g
    nt = _pow2()
    res = zeros(3, np.float64)
    has_mask = mask is not None
    if has_mask:
        m = _mask_u8(mask, shape, "mask")
    else:
        m = _flat(t)
    if has_mask and is_device_array(mask):
        sc = empty(1, np.float64)
        _count_kernel(nt)[1, nt](m, 0, m, True, False, reduction == "mean", res, sc)
        n = None
    else:
        n = int(np.count_nonzero(np.broadcast_to(np.asarray(mask, dtype=bool), shape))
                ) if has_mask else N
        sc = None
    scale = (1.0 / max(n, 1) if reduction == "mean" else 1.0) if n is not None else -1.0
    if sc is None:
        sc = res                                   # unread: the scale is passed by value
    blocks = min((N + nt - 1) // nt, 1024)
    partial = empty(blocks, np.float64)
    _mse_kernel(nt, dt.type)[blocks, nt](_flat(contiguous(p)), _flat(t), m, has_mask, scale, sc,
                                _flat(g) if g is not None else _flat(contiguous(p)),
                                bool(grad), partial)
    _sum_rows_kernel(nt)[1, nt](partial, res)
    total, cnt, _ = res.copy_to_host()          # the one host sync
    if n is None:
        n = int(cnt)
        scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
    return float(total) * scale, g
