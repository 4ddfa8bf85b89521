"""Compiled loops of the training step around the recurrent layers.

Each kernel is one plain loop over flat (or row-major 2-D) host arrays that
writes into the arrays it is given; the Python callers in
:mod:`fastrnn.optim` and :mod:`fastrnn.blocks` check shapes, dtypes and
index ranges first, so no loop here can index out of bounds.

Notation: ``N`` elements (or rows), ``C`` classes, ``V`` vocabulary, ``E``
embedding width.

Exactness
---------
- The optimizer updates perform *the same* floating-point operations, in the
  same order and the same dtype, as the NumPy formulas they replace (the
  ``_update`` methods of :mod:`fastrnn.optim`): the hyper-parameters arrive
  already cast to the parameters' dtype (NumPy casts a Python float to a
  float32 array's dtype the same way), and none of these kernels is compiled
  with ``fastmath``, so LLVM neither reassociates nor contracts to FMA. The
  result is bit for bit that of the NumPy path
  (``tests/test_optim.py::test_fused_equals_numpy_bitwise``).
- The embedding scatter-add visits rows in order, as ``np.add.at`` does:
  bit-identical gradients (``tests/test_blocks.py::test_embedding_backward_kernel_equals_add_at``).
- Only :func:`sumsq_cpu` allows reassociation (``fastmath={"reassoc"}``): it
  sums float32 or float64 squares *in float64*, so the order changes the
  result by a few float64 ulps; NaN and infinity still propagate.
- ``error_model="numpy"``: a division by zero gives inf/NaN as in NumPy
  instead of raising.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "sgd_step", "adam_step", "rmsprop_step", "adagrad_step",
    "sgd_update_cpu", "adam_update_cpu", "rmsprop_update_cpu", "adagrad_update_cpu",
    "sumsq_cpu", "embedding_backward_cpu", "softmax_xent_shift_cpu", "softmax_xent_cpu",
]

_OPTS = dict(cache=True, error_model="numpy", nogil=True)


# ------------------------------------------------------------- optimizers
# Each optimizer's formula is written once, as a plain scalar Python function
# of one element: its parameter, gradient and state values in, their new
# values out. The same source is compiled twice: ``njit(inline="always")``
# into the host loops below and ``cuda.jit(device=True)`` into the device
# kernels of :mod:`fastrnn.kernels.cuda_optim` (one thread per element).
# Only ``math`` functions appear, which both targets compile (``math.sqrt`` of
# a float32 is a float32 on both). Scalars in and out, not arrays and an
# index: LLVM vectorises the host loop around a scalar function (8 lanes of
# float32) but not around one that stores through arrays passed to it, which
# ran 3.5x slower. ``tests/test_optim.py::test_fused_equals_numpy_bitwise``
# and ``tests/test_cuda_training.py::test_optimizer_on_device_matches_host``
# pin the two compilations.
def sgd_step(p, g, b, lr, wd, momentum, dampc, nesterov, first):
    r"""SGD with momentum / Nesterov of one element: returns ``(p', b')``.

    p, g, b : the parameter, its gradient and momentum buffer (``b`` is
    ignored without momentum or on the first step); lr, wd, momentum, dampc
    (= 1 - dampening) : scalars in the same dtype

    .. math:: g \leftarrow g + wd\,p;\; b \leftarrow \mu b + (1-\tau) g
              \;(b = g \text{ first});\; p \leftarrow p - lr\,(g + \mu b
              \text{ or } b)
    """
    if wd != 0:
        g = g + wd * p
    if momentum != 0:
        if first:
            b = g
        else:
            b = b * momentum
            b = b + dampc * g
        if nesterov:
            g = g + momentum * b
        else:
            g = b
    return p - lr * g, b


def adam_step(p, g, m, v, vmax, step_size, b1, c1, b2, c2, sqrt_bc2, eps, wd, decay, amsgrad):
    r"""Adam / AdamW of one element: returns ``(p', m', v', vmax')``.

    p, g, m, v, vmax : the parameter, its gradient, first and second moments
    and the running maximum of ``v`` (``vmax`` passes through without
    amsgrad); step_size = lr / (1 - β1^t), c1 = 1 - β1, c2 = 1 - β2,
    sqrt_bc2 = √(1 - β2^t), wd (L2, added to g), decay (= 1 - lr·wd for
    AdamW, else 1): scalars in the same dtype

    .. math:: m \leftarrow \beta_1 m + c_1 g;\; v \leftarrow \beta_2 v + c_2 g^2;\;
              p \leftarrow p - \mathrm{step}\, m / (\sqrt{v}/\sqrt{bc_2} + \epsilon)
    """
    if decay != 1:
        p = p * decay
    if wd != 0:
        g = g + wd * p
    m = m * b1
    m = m + c1 * g
    v = v * b2
    v = v + c2 * (g * g)
    vd = v
    if amsgrad:
        if v > vmax or v != v:             # np.maximum: NaN wins
            vmax = v
        vd = vmax
    denom = math.sqrt(vd) / sqrt_bc2 + eps
    return p - step_size * (m / denom), m, v, vmax


def rmsprop_step(p, g, s, a, b, lr, alpha, c, eps, wd, momentum, centered):
    r"""RMSprop of one element: returns ``(p', s', a', b')``.

    p, g, s, a, b : the parameter, its gradient, the mean square, the mean
    gradient (used when centred) and the momentum buffer (with momentum);
    c = 1 - α; scalars in the same dtype

    .. math:: s \leftarrow \alpha s + c g^2;\; a = \sqrt{s - \bar g^2} + \epsilon;\;
              p \leftarrow p - lr\,(g / a \text{ or } b = \mu b + g/a)
    """
    if wd != 0:
        g = g + wd * p
    s = s * alpha
    s = s + c * (g * g)
    if centered:
        a = a * alpha
        a = a + c * g
        avg = math.sqrt(s - a * a) + eps
    else:
        avg = math.sqrt(s) + eps
    if momentum != 0:
        b = b * momentum
        b = b + g / avg
        d = b
    else:
        d = g / avg
    return p - lr * d, s, a, b


def adagrad_step(p, g, acc, clr, eps, wd):
    r"""Adagrad of one element: returns ``(p', acc')``; clr = lr / (1 + (t-1)·lr_decay).

    .. math:: \Sigma \leftarrow \Sigma + g^2;\;
              p \leftarrow p - clr\, g / (\sqrt\Sigma + \epsilon)
    """
    if wd != 0:
        g = g + wd * p
    acc = acc + g * g
    return p - clr * (g / (math.sqrt(acc) + eps)), acc


_inline = njit(inline="always")
_sgd, _adam, _rmsprop, _adagrad = (_inline(f) for f in (sgd_step, adam_step, rmsprop_step,
                                                        adagrad_step))


# The loops read a state buffer only where the formula uses it (a constant
# zero stands in for the others: a select between two loads, ``g[i]`` say,
# kept the plain RMSprop loop from vectorising, 5x slower) and write back
# only what it changed; p, g and the buffers: [N] one dtype.
@njit(**_OPTS)
def sgd_update_cpu(p, g, buf, lr, wd, momentum, dampc, nesterov, first):
    """:func:`sgd_step` over all elements, in place (``buf`` unused without momentum)."""
    use_buf = momentum != 0
    zero = p.dtype.type(0)
    for i in range(p.size):
        b = buf[i] if use_buf and not first else zero
        p[i], b = _sgd(p[i], g[i], b, lr, wd, momentum, dampc, nesterov, first)
        if use_buf:
            buf[i] = b


@njit(**_OPTS)
def adam_update_cpu(p, g, m, v, vmax, step_size, b1, c1, b2, c2, sqrt_bc2, eps, wd, decay,
                    amsgrad):
    """:func:`adam_step` over all elements, in place (``vmax`` unused without amsgrad)."""
    zero = p.dtype.type(0)
    for i in range(p.size):
        vm = vmax[i] if amsgrad else zero
        p[i], m[i], v[i], vm = _adam(p[i], g[i], m[i], v[i], vm, step_size, b1, c1, b2, c2,
                                     sqrt_bc2, eps, wd, decay, amsgrad)
        if amsgrad:
            vmax[i] = vm


@njit(inline="always")
def _rmsprop_loop(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, momentum, centered):
    zero = p.dtype.type(0)
    for i in range(p.size):
        a = gavg[i] if centered else zero
        b = buf[i] if momentum != 0 else zero
        p[i], sq[i], a, b = _rmsprop(p[i], g[i], sq[i], a, b, lr, alpha, c, eps, wd, momentum,
                                     centered)
        if centered:
            gavg[i] = a
        if momentum != 0:
            buf[i] = b


@njit(**_OPTS)
def rmsprop_update_cpu(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, momentum, centered):
    """:func:`rmsprop_step` over all elements, in place (``gavg`` used when
    centred, ``buf`` with momentum).

    One loop per (momentum, centred) case with both as constants: left to
    LLVM's loop unswitching, one of the four cases stayed scalar (plain
    RMSprop 4.5x slower here, momentum without centring 3x slower before the
    formulas were shared)."""
    if momentum != 0:
        if centered:
            _rmsprop_loop(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, momentum, True)
        else:
            _rmsprop_loop(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, momentum, False)
    else:
        zero = p.dtype.type(0)
        if centered:
            _rmsprop_loop(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, zero, True)
        else:
            _rmsprop_loop(p, g, sq, gavg, buf, lr, alpha, c, eps, wd, zero, False)


@njit(**_OPTS)
def adagrad_update_cpu(p, g, acc, clr, eps, wd):
    """:func:`adagrad_step` over all elements, in place."""
    for i in range(p.size):
        p[i], acc[i] = _adagrad(p[i], g[i], acc[i], clr, eps, wd)


# ---------------------------------------------------------------- norms
@njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc"})
def sumsq_cpu(g):
    """Σ g² of a flat array, accumulated in float64 without a float64 copy.

    g : [N] float32 or float64. ``reassoc`` lets LLVM vectorise the sum (the
    order moves the float64 result by a few ulps); no ``nnan``/``ninf``, so a
    NaN or infinite gradient still gives a NaN / infinite norm.
    """
    s = 0.0
    for i in range(g.size):
        x = np.float64(g[i])
        s += x * x
    return s


# -------------------------------------------------------------- embedding
@njit(**_OPTS)
def embedding_backward_cpu(gw, idx, dy, padding_idx, has_padding):
    """Scatter-add ``gw[idx[r]] += dy[r]`` row by row (the order of
    ``np.add.at``), skipping ``padding_idx`` when ``has_padding``.

    gw : [V, E]; idx : [N] int64 in [0, V); dy : [N, E] (gw's dtype)
    """
    E = gw.shape[1]
    for r in range(idx.shape[0]):
        i = idx[r]
        if has_padding and i == padding_idx:
            continue
        for e in range(E):
            gw[i, e] += dy[r, e]


# ------------------------------------------------------ softmax + x-entropy
@njit(**_OPTS)
def _row_max(row):
    """max(row) over eight independent running maxima (a single chain of
    compares is latency-bound; a max reduction only vectorises with ``nnan``).
    NaNs are not propagated here: they reach the loss through ``exp`` and the
    row sum instead."""
    C = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    j = 0
    while j + 8 <= C:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        m4 = max(m4, row[j + 4])
        m5 = max(m5, row[j + 5])
        m6 = max(m6, row[j + 6])
        m7 = max(m7, row[j + 7])
        j += 8
    while j < C:
        m0 = max(m0, row[j])
        j += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit(**_OPTS)
def softmax_xent_shift_cpu(x, targets, valid, z, zt):
    """Pass 1 of the softmax cross-entropy: per row the maximum ``m``, the
    shifted logits ``z = x - m`` (``z`` may be ``x`` itself) and, for counted
    rows, ``zt = x[target] - m`` in float64 (kept before ``z`` is exponentiated,
    so the loss of a confidently wrong row is not lost to underflow).

    x, z : [N, C]; targets : [N] int64 (in [0, C) where valid); valid : [N]
    bool; zt : [N] float64
    """
    N, C = x.shape
    for r in range(N):
        m = _row_max(x[r])
        if valid[r]:
            zt[r] = np.float64(x[r, targets[r]]) - np.float64(m)
        else:
            zt[r] = 0.0
        for j in range(C):
            z[r, j] = x[r, j] - m


@njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc"})
def _row_sum64(row):
    """Σ row in float64 (reassociated so that it vectorises)."""
    s = 0.0
    for j in range(row.shape[0]):
        s += np.float64(row[j])
    return s


@njit(**_OPTS)
def softmax_xent_cpu(e, targets, valid, zt, scale, min_logp, want_grad):
    """Pass 2 (after ``e = exp(z)`` in place): the loss and, when
    ``want_grad``, the gradient written over ``e``.

    e : [N, C] exp of the shifted logits; targets, valid, zt as in pass 1;
    scale : 1/count ("mean") or 1 ("sum"), in e's dtype; min_logp : the log
    of e's dtype's smallest normal (a confident mistake costs a large finite
    loss, as before).

    .. math:: \\log p_t = z_t - \\log \\textstyle\\sum_j e_j,\\quad
              \\partial L/\\partial x_j = \\mathrm{scale}\\,(e_j/\\textstyle\\sum e - [j = t])

    Returns ``-Σ_valid log p_t`` (float64, not scaled).
    """
    N, C = e.shape
    loss = 0.0
    zero = e.dtype.type(0)
    one = e.dtype.type(1)
    for r in range(N):
        s = _row_sum64(e[r])
        if valid[r]:
            lp = zt[r] - np.log(s)
            if lp < min_logp:
                lp = min_logp
            loss -= lp
        if want_grad:
            if valid[r]:
                s32 = e.dtype.type(s)
                for j in range(C):
                    e[r, j] = e[r, j] / s32
                t = targets[r]
                e[r, t] = e[r, t] - one
                for j in range(C):
                    e[r, j] = e[r, j] * scale
            else:
                for j in range(C):
                    e[r, j] = zero
    return loss
