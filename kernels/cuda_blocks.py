"""Device kernels of the blocks, and the device side of the blocks and optimizers.

The GPU side of :mod:`fastrnn.blocks` and :mod:`fastrnn.optim`: the blocks
dispatch here when their parameters (or, for dropout and the losses, their
inputs) are device arrays, so that a model whose recurrent layers run on the
GPU keeps its embedding, head, loss and optimizer there too. This module
defines the blocks' kernels (embedding, linear, dropout, attention, pooling
and layout); :func:`fastrnn._device.kernels` returns it as the one namespace
of the device side, so it also re-exports the device-array helpers of
:mod:`fastrnn.kernels.cuda_ops`, the losses of
:mod:`fastrnn.kernels.cuda_losses` and the optimizer updates and clipping of
:mod:`fastrnn.kernels.cuda_optim`.

Arrays are numba device arrays; anything else with
``__cuda_array_interface__`` (CuPy, torch) is viewed without a copy. Host
arrays are copied over only where named (integer indices, targets, masks and
lengths: what a host batch brings). Launch sizes follow
:data:`fastrnn.kernels.cuda.settings` (``threads``; the GEMMs go through
:func:`fastrnn.kernels.cuda_gemm.device_gemm`: cuBLAS when CuPy is installed, the
tiled kernels otherwise), so the simulator tests can shrink them.

Host synchronisation: each loss returns one Python float (one small
device-to-host copy per call: loss, count and a bad-target flag together);
:func:`global_norm` reads one float for all gradients. Nothing else copies
back.

Notation as in :mod:`fastrnn.blocks`: ``N`` rows, ``C`` classes, ``E``
embedding width, ``T`` steps, ``B`` batch, ``H`` hidden, ``A`` attention units.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .cuda_base import _grid
from .cuda_gemm import column_sums, device_gemm
from .cuda_losses import mse, softmax_cross_entropy
from .cuda_ops import (_flat, _launch_flat, contiguous, empty, fill, mul, to_device, to_host,
                       view, zeros)
from .cuda_optim import (adagrad_update, adam_update, clamp, global_norm, rmsprop_update,
                         scale, sgd_update)

__all__ = [
    "view", "to_device", "to_host", "empty", "zeros", "fill", "contiguous",
    "mul", "embedding_forward", "embedding_backward", "linear_forward", "linear_backward",
    "dropout_forward", "softmax_cross_entropy", "mse", "attention_forward",
    "attention_backward", "pool_last", "unpool_last", "swap01", "sgd_update", "adam_update",
    "rmsprop_update", "adagrad_update", "clamp", "scale", "global_norm",
]


def _colsum_acc(a, out):
    """``out += a.sum(axis=0)``: the backend's tiled, deterministic column sum."""
    column_sums(a, out, accumulate=True)


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
    device_gemm(x2, weight, y, bias=bias, trans_b=True, big=True)
    return y


def linear_backward(x2, dy2, weight, gw, gb):
    """Accumulate ``gw += dy2ᵀ x2`` and ``gb += Σ dy2``; return ``dx2 = dy2 W``."""
    if x2.shape[0]:
        device_gemm(dy2, x2, gw, accumulate=True, trans_a=True, big=True)
        if gb is not None:
            _colsum_acc(dy2, gb)
    dx = empty((dy2.shape[0], weight.shape[1]), weight.dtype)
    if dx.size:
        device_gemm(dy2, weight, dx, big=True)
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
    device_gemm(de.reshape(1, T * B), s2, grads["v"].reshape(1, A), accumulate=True, big=True)
    du = empty((T * B, A), dt)
    _attn_du_kernel[_grid(T * B * A)](de.reshape(T * B), v, s2, du)
    device_gemm(du, h2, grads["weight"], accumulate=True, trans_a=True, big=True)
    _colsum_acc(du, grads["bias"])
    device_gemm(du, weight, dh.reshape(T * B, H), accumulate=True, big=True)
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
