"""Device kernels of the optimizers and of gradient clipping.

The GPU side of :mod:`fastrnn.optim` (reached through
:mod:`fastrnn.kernels.cuda_blocks`): one update kernel per optimizer, compiled
from the host's scalar formulas, and the clamp, scale and global norm of
gradient clipping. :func:`scale` also scales the device buffer of
:mod:`fastrnn.distributed`'s CUDA-aware gradient reduction. The norm syncs the
host once (one float for all gradients); nothing else copies back.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from . import training
from .cuda_base import _pow2
from .cuda_ops import _F64, _block_max, _block_sum, _flat, _launch_flat, empty, view, zeros

__all__ = ["sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "clamp", "scale",
           "global_norm"]


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
