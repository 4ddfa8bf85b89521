"""Prepared weights for inference, and the parameter version that keeps them fresh.

A layer in eval mode runs small batches (``B <= 8``) of a unidirectional
stack through the latency kernels (:mod:`fastrnn.kernels.latency`), whose
weights are prepared once (transposed, concatenated, in one buffer) and kept
while the parameters are unchanged, instead of re-read per call.

When prepared weights are stale
-------------------------------
Every code path of fastrnn that writes parameters calls :func:`bump`: the
optimizers' ``step``, ``load_state_dict`` of layers, blocks and models (so
``Trainer`` resume, the best-weights callback and checkpoint loading),
``layer.to()``, and the distributed trainer's parameter averaging and
broadcast. A prepared copy remembers the version it was made at and the
identity of the parameter arrays; either changing makes the next call
prepare again. The one path fastrnn cannot see is a user writing a
parameter array in place (``layer.params["weight_hh_l0"][...] = w``): call
``layer.refresh()`` (or :func:`bump`) after that.

Streams (:mod:`fastrnn.stream`) are snapshots on purpose and ignore the
version: ``stream.refresh()`` re-reads their weights.
"""
from __future__ import annotations

import numpy as np

__all__ = ["bump", "version", "eval_forward", "stack"]

_version = 0

#: the most batch rows the eval path sends to the latency kernels
MAX_ROWS = 8
#: False turns the prepared eval path off (the tests compare both)
enabled = True


def bump():
    """Mark every prepared copy of every layer's weights stale (cheap: one
    integer increment). Called by everything in fastrnn that writes
    parameters; call it (or ``layer.refresh()``) after writing parameter
    arrays in place yourself."""
    global _version
    _version += 1


def version() -> int:
    """The current parameter version."""
    return _version


_KERNELS = None


def _kernels():
    """``(cpu, latency, packed)`` kernel modules, imported once; None without Numba."""
    global _KERNELS
    try:
        from .kernels import cpu, latency
        from .kernels.cpu_settings import settings
    except ImportError:             # pragma: no cover - depends on the install
        return None
    _KERNELS = (cpu, latency, settings)
    return _KERNELS


def _fresh(got, layer):
    """Whether a prepared entry still describes ``layer``'s parameters: the
    same version, and the very same arrays (held by the entry, so that a
    freed array's id cannot come back as another's)."""
    if got is None or got[0][0] != _version:
        return False
    arrays = got[0][1]
    params = layer.params
    return len(arrays) == len(params) and all(a is b for a, b in zip(arrays, params.values()))


def stack(layer):
    """``(w, meta)`` of the layer's stack for the latency kernels, prepared
    once per parameter version (see the module doc)."""
    p = _prepare(layer)
    return p[1], p[2]


def _prepare(layer):
    """``(key, w, meta, panels, rows1)``: the prepared stack, whether it runs
    on the micro-kernels, and the per-layer input weights of the one-row path
    (or None), cached on the layer per parameter version."""
    got = layer.__dict__.get("_prepared")
    if _fresh(got, layer):
        return got
    key = (_version, tuple(layer.params.values()))
    latency = (_KERNELS or _kernels())[1]       # eval_forward checked that they load
    from .stream import stream_weights
    w, meta = latency.prepare(layer.cell, stream_weights(layer), layer.dtype)
    panels = latency.uses_panels(layer.cell, layer.dtype, layer.hidden_size)
    rows1 = [latency.input_weights(meta, w, l) for l in range(layer.num_layers)]
    got = (key, w, meta, panels, None if any(r is None for r in rows1) else rows1)
    layer._prepared = got
    return got


def eval_forward(layer, x, h0, c0, lengths, T, B):
    """The eval-mode forward of a unidirectional host stack on the latency
    kernels with prepared weights, or None where it does not apply (the
    caller then runs the sequence kernels). Arguments as checked by the
    layer (``x`` ``(T, B, I)`` or batch-first).

    It applies to small batches (:data:`MAX_ROWS`) of the stacks the latency
    kernels run on the sequence kernels' own micro-kernels (float32 LSTM,
    diagonal peephole LSTM and GRU, ``H`` a multiple of the SIMD width) that
    the sequence kernels would run on one thread: there it measured 1.04-1.6x
    faster than them (fixed costs paid once per stack, weights not re-packed;
    one row: the input product as one GEMM first). The plain loops of the
    other cells and of float64 were slower there and serve streams only."""
    if (not enabled or B > MAX_ROWS or layer.training or lengths is not None
            or layer.bidirectional or layer._ops.on_device
            or layer.backend not in ("cpu", "auto")):
        return None
    k = _KERNELS or _kernels()
    if k is None:                   # pragma: no cover - no numba: the caller's path
        return None
    cpu, latency, settings = k
    _, w, meta, panels, rows1 = _prepare(layer)
    if not panels:
        return None
    L, H, dt = layer.num_layers, layer.hidden_size, layer.dtype
    if cpu.get_num_threads() > 1 and _two_threads(settings, layer, B, T):
        return None             # the sequence kernels would split it over two threads
    st = latency.new_state(L, B, H, dt)
    if h0 is not None:
        st[0] = h0
    if c0 is not None:
        st[1] = c0
    xt = np.ascontiguousarray(x.transpose(1, 0, 2) if layer.batch_first else x)
    if B == 1 and rows1 is not None:
        # one sequence layer by layer: each layer's input product for all steps
        # as one GEMM, then the recurrence with only U h in each step's
        # dependent chain
        y = xt
        for l, wx in enumerate(rows1):
            xg = cpu.matmul(y.reshape(T, y.shape[2]), wx)          # [T, P*G*VW]
            y = np.empty((T, 1, H), dt)
            latency.run_rows1(meta[1 + l], w, xg, st[0, l], st[1, l], y)
    else:
        meta = meta.copy()
        meta[0, 2] = B
        y = np.empty((T, B, H), dt)
        latency.run(meta, w, st, latency.new_workspace(B, layer.cell.gates * H, dt), xt, y)
    if layer.batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    h_n = st[0].copy()
    return y, ((h_n, st[1].copy()) if layer.cell.has_cell else h_n)


def _two_threads(settings, layer, B, T):
    """Whether the sequence kernels would run a layer of this call on two
    threads (their plan's size rule, :class:`fastrnn.kernels.plan.Plan`):
    the latency kernels use the calling thread only, so they take only the
    calls that would run on one thread anyway."""
    G, H = layer.cell.gates, layer.hidden_size
    I = max(layer.input_size, H)
    flops = 2.0 * B * G * H * (H + I) * T
    return flops >= settings.row_split_flops * (1 if B >= 2 * settings.row_split_min_rows else 10)
