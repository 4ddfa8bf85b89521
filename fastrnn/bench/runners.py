"""The kernel grid's definition and what it times.

Owns the cells, shapes, implementations and modes of ``fastrnn bench``
(:data:`BENCH_CELLS`, :data:`GRID`, :data:`IMPLS`, :data:`MODES`...), the
inputs of one backend call (:func:`fastrnn.testing.make_problem`), the runners the tables
time (:func:`backend_runner` for a fastrnn backend, :func:`torch_runner`
for the cell's PyTorch twin) and the GEMM FLOPs of one layer
(:func:`layer_flops`). The onnxruntime runners are in
:mod:`fastrnn.bench.onnx_peer`.
"""
from __future__ import annotations

import numpy as np

from ..cells import CELLS


#: the default grid's cells, by the names the tables show (registry keys or
#: aliases: "peephole_lstm" is the registry's "peephole_diagonal"); a cell's
#: PyTorch twin is its ``CellSpec.torch``
BENCH_CELLS = ("rnn_tanh", "lstm", "gru", "peephole_lstm")
#: the other registry cells (not run by default); ``--cells`` takes any of
#: these, of BENCH_CELLS, or any other name :func:`fastrnn.cells.get_cell` knows
EXTRA_CELLS = tuple(n for n in CELLS if n not in BENCH_CELLS)

#: (T, B, I, H)
GRID = [(200, 1, 32, 32), (100, 8, 64, 64), (100, 32, 64, 128),
        (100, 64, 128, 256), (50, 64, 256, 512)]
#: ``--quick``: the two small shapes, one cell (unless --cells / --shapes say otherwise)
QUICK_SHAPES = GRID[:2]
QUICK_CELLS = ("lstm",)

IMPLS = ("numpy", "cpu", "torch", "ort")
MODES = ("train", "infer")


def layer_flops(cell, T, B, I, H, mode):
    """GEMM FLOPs of one layer: forward 2 T B G H (I + H); training is 3x that."""
    fwd = 2.0 * T * B * cell.gates * H * (I + H)
    return fwd if mode == "infer" else 3.0 * fwd


def backend_runner(backend, cell, inputs, mode, compute_dtype=None):
    x, h0, c0, w, dy = inputs
    dh = np.zeros_like(h0)
    dc = np.zeros_like(h0) if cell.has_cell else None
    kw = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    if mode == "infer":
        return lambda: backend.forward(cell, x, h0, c0, w, None, False, False, **kw)

    def step():
        y, h, c, cache = backend.forward(cell, x, h0, c0, w, None, False, True, **kw)
        backend.backward(cell, cache, dy, dh, dc)
    return step


def has_compute_dtype(backend):
    """Whether a backend's ``forward`` takes ``compute_dtype`` (the bf16 mode)."""
    import inspect
    return "compute_dtype" in inspect.signature(backend.forward).parameters


def torch_runner(torch, cell, inputs, mode, dtype=None):
    """The cell's PyTorch twin (``cell.torch``, which must be set) on the same
    weights; ``dtype`` (``torch.bfloat16``): module, input, state and output
    gradient converted with ``.to(dtype)``."""
    x, h0, c0, w, dy = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    m = getattr(torch.nn, cell.torch[0])(I, H, **cell.torch_kwargs)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(w.w_ih))
        m.weight_hh_l0.copy_(torch.from_numpy(w.w_hh))
        m.bias_ih_l0.copy_(torch.from_numpy(w.b_ih))
        m.bias_hh_l0.copy_(torch.from_numpy(w.b_hh))
    tx = torch.from_numpy(x)
    state = torch.from_numpy(h0)[None]
    if cell.has_cell:
        state = (state, torch.from_numpy(c0)[None])
    tdy = torch.from_numpy(dy)
    if dtype is not None:
        m, tx, tdy = m.to(dtype), tx.to(dtype), tdy.to(dtype)
        state = tuple(s.to(dtype) for s in state) if cell.has_cell else state.to(dtype)
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                m(tx, state)
        return infer
    txg = tx.clone().requires_grad_(True)

    def step():
        m.zero_grad(set_to_none=True)
        txg.grad = None
        out, _ = m(txg, state)
        out.backward(tdy)
    return step
