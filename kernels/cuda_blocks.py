"""Device kernels of the blocks, losses, optimizers and gradient clipping.

The GPU side of :mod:`fastrnn.blocks` and :mod:`fastrnn.optim`: the blocks
dispatch here when their parameters (or, for dropout and the losses, their
inputs) are device arrays, so that a model whose recurrent layers run on the
GPU keeps its embedding, head, loss and optimizer there too.

Arrays are numba device arrays; anything else with
``__cuda_array_interface__`` (CuPy, torch) is viewed without a copy. Host
arrays are copied over only where named (integer indices, targets, masks and
lengths: what a host batch brings). Launch sizes follow
:data:`fastrnn.kernels.cuda.settings` (``threads``; the GEMMs go through
:func:`fastrnn.kernels.cuda._gemm`: cuBLAS when CuPy is installed, the tiled
kernels otherwise), so the simulator tests can shrink them.

Host synchronisation: each loss returns one Python float (one small
device-to-host copy per call: loss, count and a bad-target flag together);
:func:`global_norm` reads one float for all gradients. Nothing else copies
back.

Notation as in :mod:`fastrnn.blocks`: ``N`` rows, ``C`` classes, ``E``
embedding width, ``T`` steps, ``B`` batch, ``H`` hidden, ``A`` attention units.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from . import cuda as kc
from . import training

__all__ = [
    "is_device", "view", "to_device", "to_host", "empty", "zeros", "fill", "contiguous",
    "mul", "embedding_forward", "embedding_backward", "linear_forward", "linear_backward",
    "dropout_forward", "softmax_cross_entropy", "mse", "attention_forward",
    "attention_backward", "pool_last", "unpool_last", "swap01", "sgd_update", "adam_update",
    "rmsprop_update", "adagrad_update", "clamp", "scale", "global_norm",
]

_F64 = numba.from_dtype(np.dtype(np.float64))


# --------------------------------------------------------------------------- arrays
def _tpb():
    return max(1, int(kc.settings.threads))


def _pow2():
    """Threads per block of the reduction kernels: a power of two <= settings.threads."""
    n = _tpb()
    return 1 << (n.bit_length() - 1)


def _grid(n, tpb=None):
    tpb = tpb or _tpb()
    return max(1, (n + tpb - 1) // tpb), tpb


def is_device(a):
    """True for a numba device array or anything with ``__cuda_array_interface__``."""
    if a is None or isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("numba.cuda")


def view(a):
    """A numba view of a device array (no copy)."""
    if type(a).__module__.startswith("numba.cuda"):
        return a
    return cuda.as_cuda_array(a)


def to_device(a, dtype=None):
    """``a`` on the device: device arrays as they are (viewed), host arrays copied."""
    if is_device(a):
        return view(a)
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def to_host(a):
    """A host ndarray (device arrays copied back, host arrays as they are)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return view(a).copy_to_host()


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def _flat(a):
    return a if len(a.shape) == 1 else a.reshape(a.size)


def _launch_flat(kernel, a, *args):
    """``kernel(*args)`` with one thread per element of ``a``; nothing when ``a`` is empty."""
    if a.size:
        kernel[_grid(a.size)](*args)


@cuda.jit
def _fill_kernel(a, v):
    # a: [N]
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = v


def fill(a, value):
    """Set every element of the C-contiguous device array ``a`` to ``value``."""
    _launch_flat(_fill_kernel, a, _flat(a), value)
    return a


def zeros(shape, dtype):
    """A device array of zeros (filled on the device: no host copy)."""
    return fill(empty(shape, dtype), 0)


@cuda.jit
def _copy1_kernel(src, dst):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


@cuda.jit
def _copy2_kernel(src, dst):
    # src, dst: [M, N] (any strides)
    i = cuda.grid(1)
    N = dst.shape[1]
    if i < dst.shape[0] * N:
        dst[i // N, i % N] = src[i // N, i % N]


@cuda.jit
def _copy3_kernel(src, dst):
    # src, dst: [P, M, N] (any strides)
    i = cuda.grid(1)
    M, N = dst.shape[1], dst.shape[2]
    if i < dst.shape[0] * M * N:
        n = i % N
        m = (i // N) % M
        p = i // (M * N)
        dst[p, m, n] = src[p, m, n]


def contiguous(a):
    """``a`` itself when C-contiguous, else a C-contiguous copy (1-3 dimensions)."""
    a = view(a)
    if a.is_c_contiguous():
        return a
    out = empty(a.shape, a.dtype)
    kern = {1: _copy1_kernel, 2: _copy2_kernel, 3: _copy3_kernel}.get(len(a.shape))
    if kern is None:
        raise ValueError(f"a non-contiguous device array of {len(a.shape)} dimensions "
                         "cannot be copied here (1 to 3 only)")
    kern[_grid(out.size)](a, out)
    return out


@cuda.jit
def _mul_kernel(a, b, out):
    # flat [N]
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] * b[i]


def mul(a, b):
    """``a * b`` elementwise (same shape; both C-contiguous)."""
    out = empty(a.shape, a.dtype)
    _launch_flat(_mul_kernel, out, _flat(a), _flat(b), _flat(out))
    return out


def _colsum_acc(a, out):
    """``out += a.sum(axis=0)``: the backend's tiled, deterministic column sum."""
    kc._colsum(a, out, accumulate=True)


# --------------------------------------------------------------------------- embedding
@cuda.jit
def _gather_kernel(w, idx, out):
    # w: [V, E]; idx: [N] ints; out: [N, E] (rows of indices out of range: zeros)
    i = cuda.grid(1)
    E = out.shape[1]
    if i < out.shape[0] * E:
        n = i // E
        e = i - n * E
        r = idx[n]
        if r >= 0 and r < w.shape[0]:
            out[n, e] = w[r, e]
        else:
            out[n, e] = 0


@cuda.jit
def _scatter_add_kernel(gw, idx, dy, pad):
    # gw: [V, E] += dy [N, E] at rows idx [N]; rows equal to pad (>= 0) or out of range skipped
    i = cuda.grid(1)
    E = dy.shape[1]
    if i < dy.shape[0] * E:
        n = i // E
        e = i - n * E
        r = idx[n]
        if r >= 0 and r < gw.shape[0] and r != pad:
            cuda.atomic.add(gw, (r, e), dy[n, e])


def embedding_forward(weight, idx):
    """``weight[idx]``: weight ``[V, E]``, idx ``[N]`` device ints -> ``[N, E]``."""
    out = empty((idx.shape[0], weight.shape[1]), weight.dtype)
    _launch_flat(_gather_kernel, out, weight, idx, out)
    return out


def embedding_backward(grad, idx, dy, padding_idx=None):
    """``grad[idx[n]] += dy[n]`` with atomics (rows equal to ``padding_idx`` skipped)."""
    pad = -1 if padding_idx is None else int(padding_idx)
    _launch_flat(_scatter_add_kernel, dy, grad, idx, dy, pad)


# --------------------------------------------------------------------------- linear
def linear_forward(x2, weight, bias):
    """``x2 Wᵀ + b``: x2 ``[N, F]``, weight ``[O, F]``, bias ``[O]`` or None -> ``[N, O]``."""
    y = empty((x2.shape[0], weight.shape[0]), weight.dtype)
    kc._gemm(x2, weight, y, bias=bias, trans_b=True, big=True)
    return y


def linear_backward(x2, dy2, weight, gw, gb):
    """Accumulate ``gw += dy2ᵀ x2`` and ``gb += Σ dy2``; return ``dx2 = dy2 W``."""
    if x2.shape[0]:
        kc._gemm(dy2, x2, gw, accumulate=True, trans_a=True, big=True)
        if gb is not None:
            _colsum_acc(dy2, gb)
    dx = empty((dy2.shape[0], weight.shape[1]), weight.dtype)
    if dx.size:
        kc._gemm(dy2, weight, dx, big=True)
    return dx


# --------------------------------------------------------------------------- dropout
@cuda.jit(device=True)
def _mul32(x, c):
    # (x * c) mod 2**32 for 0 <= x, c < 2**32, in int64 without overflow
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & 0xFFFFFFFF


@cuda.jit(device=True)
def _hash32(x):
    # a 32-bit integer hash (lowbias32): x in [0, 2**32)
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


@cuda.jit(device=True)
def _uniform(i, k0, k1):
    """A uniform number in [0, 1) for element ``i`` under the key ``(k0, k1)``."""
    lo = i & 0xFFFFFFFF
    hi = (i // 4294967296) & 0xFFFFFFFF
    h = _hash32(_hash32(_hash32(lo ^ k0) ^ hi) ^ k1)
    return h * 2.3283064365386963e-10          # 2**-32


@cuda.jit
def _dropout_kernel(x, y, mask, k0, k1, p, keep_scale, zero):
    # flat [N]: mask = keep_scale where kept (u >= p) else zero; y = x * mask
    i = cuda.grid(1)
    if i < x.shape[0]:
        if _uniform(i, k0, k1) >= p:
            m = keep_scale
        else:
            m = zero
        mask[i] = m
        y[i] = x[i] * m


def dropout_forward(x, p, key):
    """Inverted dropout of the C-contiguous device array ``x``: returns ``(y,
    mask)``. The mask is a counter-based hash of each element's index under
    ``key`` (two integers in ``[0, 2**32)``, drawn from the block's seeded
    generator), so it is drawn on the device and reproducible from the seed."""
    dt = np.dtype(x.dtype)
    y = empty(x.shape, dt)
    mask = empty(x.shape, dt)
    if x.size:
        _dropout_kernel[_grid(x.size)](_flat(x), _flat(y), _flat(mask), int(key[0]),
                                       int(key[1]), float(p), dt.type(1.0) / dt.type(1.0 - p),
                                       dt.type(0))
    return y, mask


# --------------------------------------------------------------------------- reductions
# Tree reductions of a shared array of ``nt`` entries (a power of two), one
# entry per thread, into entry 0. They sync the block (after the entries are
# stored, then after each level), so every thread of the block must call them.
@cuda.jit(device=True)
def _block_sum(buf, tid, nt):
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _block_max(buf, tid, nt):
    # the maximum, NaN propagating
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            b = buf[tid + s]
            if b > buf[tid] or b != b:
                buf[tid] = b
        cuda.syncthreads()
        s //= 2


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
    if is_device(mask):
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
    if is_device(targets):
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
        if mask is None or not is_device(mask):     # else the kernel flags bad targets
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
        if (not is_device(out) or tuple(out.shape) != tuple(x.shape) or np.dtype(out.dtype) != dt
                or not view(out).is_c_contiguous()):
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
    if is_device(target):
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
    if has_mask and is_device(mask):
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


# --------------------------------------------------------------------------- attention
@cuda.jit
def _tanh_rowdot_kernel(s, v, e):
    # s: [N, A] -> tanh(s) in place; e: [N] = tanh(s) . v
    n = cuda.grid(1)
    if n < s.shape[0]:
        acc = type(s[n, 0])(0)          # the array's type (a bare 0.0 would mean float64)
        for a in range(s.shape[1]):
            u = math.tanh(s[n, a])
            s[n, a] = u
            acc += u * v[a]
        e[n] = acc


@cuda.jit
def _attn_softmax_kernel(e, lengths, has_lengths, alpha):
    # e, alpha: [T, B]; softmax over t < lengths[b] per column b
    b = cuda.grid(1)
    T = e.shape[0]
    if b < e.shape[1]:
        n = T
        if has_lengths:
            n = lengths[b]
            if n > T:
                n = T
        m = e[0, b]
        for t in range(1, n):
            if e[t, b] > m:
                m = e[t, b]
        tot = type(m)(0)
        for t in range(T):
            if t < n:
                w = math.exp(e[t, b] - m)
                alpha[t, b] = w
                tot += w
            else:
                alpha[t, b] = 0
        for t in range(n):
            alpha[t, b] = alpha[t, b] / tot


@cuda.jit
def _attn_context_kernel(alpha, h, ctx):
    # ctx[b, k] = sum_t alpha[t, b] h[t, b, k]; h: [T, B, H]
    i = cuda.grid(1)
    H = h.shape[2]
    if i < h.shape[1] * H:
        b = i // H
        k = i - b * H
        acc = type(h[0, b, k])(0)
        for t in range(h.shape[0]):
            acc += alpha[t, b] * h[t, b, k]
        ctx[b, k] = acc


@cuda.jit
def _attn_dalpha_kernel(h, dctx, alpha, dh, dalpha):
    # dh[t,b,k] = alpha[t,b] dctx[b,k]; dalpha[t,b] = sum_k h[t,b,k] dctx[b,k]
    i = cuda.grid(1)
    B = h.shape[1]
    H = h.shape[2]
    if i < h.shape[0] * B:
        t = i // B
        b = i - t * B
        a = alpha[t, b]
        acc = type(a)(0)
        for k in range(H):
            dh[t, b, k] = a * dctx[b, k]
            acc += h[t, b, k] * dctx[b, k]
        dalpha[t, b] = acc


@cuda.jit
def _attn_de_kernel(alpha, dalpha, de):
    # de[t,b] = alpha (dalpha - sum_t alpha dalpha), per column b
    b = cuda.grid(1)
    if b < alpha.shape[1]:
        tot = type(alpha[0, b])(0)
        for t in range(alpha.shape[0]):
            tot += alpha[t, b] * dalpha[t, b]
        for t in range(alpha.shape[0]):
            de[t, b] = alpha[t, b] * (dalpha[t, b] - tot)


@cuda.jit
def _attn_du_kernel(de, v, s, du):
    # du[n, a] = (de[n] v[a]) (1 - s[n,a]^2); de: [N]; s, du: [N, A]
    i = cuda.grid(1)
    A = s.shape[1]
    if i < s.shape[0] * A:
        n = i // A
        a = i - n * A
        u = s[n, a]
        du[n, a] = (de[n] * v[a]) * (type(u)(1) - u * u)


_NO_LENGTHS = {}


def attention_forward(h, weight, bias, v, lengths):
    """Additive attention pooling on the device: h ``[T, B, H]`` (C-contiguous),
    lengths ``[B]`` device ints or None. Returns ``(context [B, H], s [T, B, A], alpha [T, B])``."""
    T, B, H = h.shape
    A = weight.shape[0]
    dt = np.dtype(h.dtype)
    h2 = h.reshape(T * B, H)
    s2 = linear_forward(h2, weight, bias)                       # [TB, A] pre-activations
    e = empty(T * B, dt)
    _tanh_rowdot_kernel[_grid(T * B)](s2, v, e)
    alpha = empty((T, B), dt)
    if lengths is None:                     # an int array of the right type, unread
        lengths = _NO_LENGTHS.get("x")
        if lengths is None:
            lengths = _NO_LENGTHS["x"] = cuda.to_device(np.zeros(1, np.int64))
        has = False
    else:
        has = True
    _attn_softmax_kernel[_grid(B)](e.reshape(T, B), lengths, has, alpha)
    ctx = empty((B, H), dt)
    _attn_context_kernel[_grid(B * H)](alpha, h, ctx)
    return ctx, s2.reshape(T, B, A), alpha


def attention_backward(h, s, alpha, dctx, weight, v, grads):
    """Accumulate the attention's parameter gradients (``grads``: weight, bias,
    v) and return ``dh [T, B, H]``."""
    T, B, H = h.shape
    A = weight.shape[0]
    dt = np.dtype(h.dtype)
    dh = empty((T, B, H), dt)
    dalpha = empty((T, B), dt)
    _attn_dalpha_kernel[_grid(T * B)](h, dctx, alpha, dh, dalpha)
    de = empty((T, B), dt)
    _attn_de_kernel[_grid(B)](alpha, dalpha, de)
    s2 = s.reshape(T * B, A)
    h2 = h.reshape(T * B, H)
    kc._gemm(de.reshape(1, T * B), s2, grads["v"].reshape(1, A), accumulate=True, big=True)
    du = empty((T * B, A), dt)
    _attn_du_kernel[_grid(T * B * A)](de.reshape(T * B), v, s2, du)
    kc._gemm(du, h2, grads["weight"], accumulate=True, trans_a=True, big=True)
    _colsum_acc(du, grads["bias"])
    kc._gemm(du, weight, dh.reshape(T * B, H), accumulate=True, big=True)
    return dh


# --------------------------------------------------------------------------- pooling, layout
@cuda.jit
def _pool_last_kernel(h_n, D, out):
    # out[b, d*H + j] = h_n[LD - D + d, b, j]; h_n: [LD, B, H]; out: [B, D*H]
    i = cuda.grid(1)
    W = out.shape[1]
    H = h_n.shape[2]
    if i < out.shape[0] * W:
        b = i // W
        k = i - b * W
        d = k // H
        out[b, k] = h_n[h_n.shape[0] - D + d, b, k - d * H]


@cuda.jit
def _unpool_last_kernel(dp, D, dh):
    # dh[l, b, j] = dp[b, (l - (LD - D)) * H + j] for the top D rows, else 0
    i = cuda.grid(1)
    LD = dh.shape[0]
    B = dh.shape[1]
    H = dh.shape[2]
    if i < LD * B * H:
        j = i % H
        b = (i // H) % B
        layer = i // (B * H)
        top = layer - (LD - D)
        if top >= 0:
            dh[layer, b, j] = dp[b, top * H + j]
        else:
            dh[layer, b, j] = 0


def pool_last(h_n, D):
    """``concat(h_n[-D:])`` on the last axis: h_n ``[L*D, B, H]`` -> ``[B, D*H]``."""
    LD, B, H = h_n.shape
    out = empty((B, D * H), h_n.dtype)
    _pool_last_kernel[_grid(out.size)](h_n, D, out)
    return out


def unpool_last(dpooled, shape, D):
    """The gradient of :func:`pool_last`: ``[L*D, B, H]`` zeros but the top ``D`` rows."""
    dh = empty(shape, dpooled.dtype)
    _unpool_last_kernel[_grid(dh.size)](dpooled, D, dh)
    return dh


@cuda.jit
def _swap01_kernel(src, dst):
    # dst[i, j, k] = src[j, i, k] where j < src.shape[0], else 0; src: [P, Q, K]; dst: [Q, R, K]
    n = cuda.grid(1)
    R = dst.shape[1]
    K = dst.shape[2]
    if n < dst.shape[0] * R * K:
        k = n % K
        j = (n // K) % R
        i = n // (R * K)
        if j < src.shape[0]:
            dst[i, j, k] = src[j, i, k]
        else:
            dst[i, j, k] = 0


@cuda.jit
def _swap2_kernel(src, dst):
    # dst[i, j] = src[j, i]
    n = cuda.grid(1)
    Q = dst.shape[1]
    if n < dst.shape[0] * Q:
        dst[n // Q, n % Q] = src[n % Q, n // Q]


def swap01(a, length=None):
    """A C-contiguous copy of ``a`` with axes 0 and 1 swapped (2-D or 3-D, any
    strides); with ``length``, axis 1 of the result is zero-padded to it."""
    a = view(a)
    if len(a.shape) == 2:
        out = empty((a.shape[1], a.shape[0]), a.dtype)
        _launch_flat(_swap2_kernel, out, a, out)
        return out
    P, Q, K = a.shape
    out = empty((Q, P if length is None else max(int(length), P), K), a.dtype)
    _launch_flat(_swap01_kernel, out, a, out)
    return out


# --------------------------------------------------------------------------- optimizers
# The formulas are those of the host (fastrnn.kernels.training: sgd_step,
# adam_step, rmsprop_step, adagrad_step), the same source compiled here as
# device functions: the same float operations, in the same order and dtype.
# One thread per element, one launch per parameter; each kernel reads the
# state buffers its formula uses and writes back what it changed, as the host
# loops do.
_sgd_step, _adam_step, _rmsprop_step, _adagrad_step = (
    cuda.jit(device=True)(f) for f in (training.sgd_step, training.adam_step,
                                       training.rmsprop_step, training.adagrad_step))


@cuda.jit
def _sgd_kernel(p, g, buf, lr, wd, momentum, dampc, nesterov, first):
    i = cuda.grid(1)
    if i < p.shape[0]:
        b = buf[i] if momentum != 0 and not first else g[i]
        p[i], b = _sgd_step(p[i], g[i], b, lr, wd, momentum, dampc, nesterov, first)
        if momentum != 0:
            buf[i] = b


@cuda.jit
def _adam_kernel(p, g, m, v, vmax, step_size, b1, c1, b2, c2, sqrt_bc2, eps, wd, decay,
                 amsgrad):
    i = cuda.grid(1)
    if i < p.shape[0]:
        vm = vmax[i] if amsgrad else v[i]
        p[i], m[i], v[i], vm = _adam_step(p[i], g[i], m[i], v[i], vm, step_size, b1, c1, b2,
                                          c2, sqrt_bc2, eps, wd, decay, amsgrad)
        if amsgrad:
            vmax[i] = vm


@cuda.jit
def _rmsprop_kernel(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, momentum, centered):
    i = cuda.grid(1)
    if i < p.shape[0]:
        a = gavg[i] if centered else g[i]
        b = buf[i] if momentum != 0 else g[i]
        p[i], sq[i], a, b = _rmsprop_step(p[i], g[i], sq[i], a, b, lr, alpha, c, eps, wd,
                                          momentum, centered)
        if centered:
            gavg[i] = a
        if momentum != 0:
            buf[i] = b


@cuda.jit
def _adagrad_kernel(p, g, acc, clr, eps, wd):
    i = cuda.grid(1)
    if i < p.shape[0]:
        p[i], acc[i] = _adagrad_step(p[i], g[i], acc[i], clr, eps, wd)


def sgd_update(p, g, buf, lr, wd, momentum, dampc, nesterov, first):
    """Arguments as :func:`fastrnn.kernels.training.sgd_update_cpu` (device arrays)."""
    _launch_flat(_sgd_kernel, p, _flat(p), _flat(g), _flat(buf), lr, wd, momentum, dampc,
                 bool(nesterov), bool(first))


def adam_update(p, g, m, v, vmax, *scalars, amsgrad):
    """Arguments as :func:`fastrnn.kernels.training.adam_update_cpu` (device arrays)."""
    _launch_flat(_adam_kernel, p, _flat(p), _flat(g), _flat(m), _flat(v), _flat(vmax),
                 *scalars, bool(amsgrad))


def rmsprop_update(p, g, sq, gavg, buf, *scalars, centered):
    """Arguments as :func:`fastrnn.kernels.training.rmsprop_update_cpu` (device arrays)."""
    _launch_flat(_rmsprop_kernel, p, _flat(p), _flat(g), _flat(sq), _flat(gavg), _flat(buf),
                 *scalars, bool(centered))


def adagrad_update(p, g, acc, clr, eps, wd):
    """Arguments as :func:`fastrnn.kernels.training.adagrad_update_cpu` (device arrays)."""
    _launch_flat(_adagrad_kernel, p, _flat(p), _flat(g), _flat(acc), clr, eps, wd)


# --------------------------------------------------------------------------- clipping
@cuda.jit
def _clamp_kernel(a, lo, hi):
    i = cuda.grid(1)
    if i < a.shape[0]:
        v = a[i]
        if v < lo:
            a[i] = lo
        elif v > hi:
            a[i] = hi


@cuda.jit
def _scale_kernel(a, s):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = a[i] * s


def clamp(a, lo, hi):
    """Clamp the C-contiguous device array ``a`` to ``[lo, hi]`` in place (NaN stays)."""
    t = np.dtype(a.dtype).type
    _launch_flat(_clamp_kernel, a, _flat(a), t(lo), t(hi))


def scale(a, s):
    """``a *= s`` in place (``s`` cast to a's dtype first, as the host does)."""
    _launch_flat(_scale_kernel, a, _flat(a), np.dtype(a.dtype).type(s))


@lru_cache(maxsize=None)
def _norm_partial_kernel(nt):
    """Per block of ``g [N]`` (grid-stride): Σ g² (mode 0), max |g| (1),
    Σ |g|^p (2) or Σ |g| (3), in float64, written to ``partial[offset + block]``."""
    @cuda.jit
    def kernel(g, mode, p, partial, offset):
        sh = cuda.shared.array(nt, _F64)
        tid = cuda.threadIdx.x
        acc = 0.0
        for i in range(cuda.blockIdx.x * nt + tid, g.shape[0], nt * cuda.gridDim.x):
            x = abs(g[i] * 1.0)
            if mode == 0:
                acc += x * x
            elif mode == 1:
                if x > acc or x != x:
                    acc = x
            elif mode == 2:
                acc += x ** p
            else:
                acc += x
        sh[tid] = acc
        if mode == 1:
            _block_max(sh, tid, nt)
        else:
            _block_sum(sh, tid, nt)
        if tid == 0:
            partial[offset + cuda.blockIdx.x] = sh[0]

    return kernel


def global_norm(grads, norm_type=2.0):
    """The norm of the device arrays ``grads`` (a list) taken as one vector,
    accumulated in float64 on the device; one host sync for the result."""
    grads = [_flat(view(g)) for g in grads if g.size]
    if not grads:
        return 0.0
    nt = _pow2()
    if norm_type == math.inf:
        mode, p = 1, 1.0
    elif norm_type == 2:
        mode, p = 0, 2.0
    else:
        mode, p = 2, float(norm_type)
    blocks = [min((g.size + nt - 1) // nt, 64) for g in grads]
    partial = empty(sum(blocks), np.float64)
    off = 0
    kern = _norm_partial_kernel(nt)
    for g, nb in zip(grads, blocks):
        kern[nb, nt](g, mode, p, partial, off)
        off += nb
    res = zeros(1, np.float64)
    _norm_partial_kernel(nt)[1, nt](partial, 1 if mode == 1 else 3, 1.0, res, 0)
    total = float(res.copy_to_host()[0])          # the one host sync
    if mode == 0:
        return math.sqrt(total)
    if mode == 1:
        return total
    return total ** (1.0 / norm_type)
