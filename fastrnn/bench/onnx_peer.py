"""The onnxruntime peer of ``fastrnn bench``.

Owns the ONNX side of the comparison: which ONNX operator and gate order
each registry cell maps to (:data:`ONNX_CELLS`), the ONNX recurrent node's
weights built from fastrnn's (:func:`onnx_weights`), a one-node ONNX model of
a whole sequence (:func:`onnx_rnn_model`), the onnxruntime session at a given
thread count (:func:`ort_session`), and the checked inference runners the
grid times (:func:`ort_runners`). onnx and onnxruntime are imported only when
used (:func:`ort_available`).
"""
from __future__ import annotations

import numpy as np

from .timing import PEER_THREADS

#: registry cell -> (ONNX operator, permutation of PyTorch's gate blocks into
#: ONNX's order, extra node attributes). ONNX orders: LSTM i,o,f,c; GRU z,r,h;
#: peepholes P = [p_i, p_o, p_f]. PyTorch's GRU (reset_after) is ONNX's
#: ``linear_before_reset=1``; the original GRU is ``linear_before_reset=0``.
ONNX_CELLS = {
    "lstm": ("LSTM", (0, 3, 1, 2), {}),
    "peephole_diagonal": ("LSTM", (0, 3, 1, 2), {}),
    "gru": ("GRU", (1, 0, 2), {"linear_before_reset": 1}),
    "gru_reset_before": ("GRU", (1, 0, 2), {"linear_before_reset": 0}),
    "rnn_tanh": ("RNN", (0,), {"activations": ["Tanh"]}),
    "rnn_relu": ("RNN", (0,), {"activations": ["Relu"]}),
}
#: largest |y_ort - y_fastrnn| accepted when checking an ONNX model
ORT_ATOL = 2e-5


def ort_available():
    """``(onnxruntime, onnx)`` modules, or ``None`` when either is missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime, onnx


def onnx_weights(cell, w, H):
    """``(op, attrs, initializers)`` of one ONNX recurrent node for ``cell`` with
    weights ``w`` (PyTorch layout): ``W``, ``R``, ``B`` in ONNX's gate order, and
    ``P`` (``[p_i, p_o, p_f]``) for a diagonal peephole."""
    from onnx import numpy_helper
    if cell.name not in ONNX_CELLS:
        raise ValueError(f"no ONNX operator for cell {cell.name!r}")
    op, perm, attrs = ONNX_CELLS[cell.name]
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in perm])
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)   # noqa: E731
    inits = [numpy_helper.from_array(f32(w.w_ih[order][None]), "W"),
             numpy_helper.from_array(f32(w.w_hh[order][None]), "R"),
             numpy_helper.from_array(f32(np.concatenate([w.b_ih[order],
                                                         w.b_hh[order]])[None]), "B")]
    if cell.peephole is not None:
        p = w.peep                                   # [3, H]: p_i, p_f, p_o
        inits.append(numpy_helper.from_array(f32(np.concatenate([p[0], p[2], p[1]])[None]),
                                             "P"))
    return op, attrs, inits


def onnx_rnn_model(cell, w, T, B, I, H, opset=14):
    """A single-node ONNX model (bytes) computing ``cell`` with weights ``w``
    (PyTorch layout, :class:`fastrnn.contract.Weights`) over ``X [T, B, I]``
    from ``h0 [1, B, H]`` (and ``c0``), with output ``Y [T, 1, B, H]``."""
    from onnx import TensorProto, helper
    op, attrs, inits = onnx_weights(cell, w, H)
    names = ["X", "W", "R", "B", "", "h0"]
    feeds = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
             helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, B, H])]
    if cell.has_cell:
        names.append("c0")
        feeds.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, B, H]))
    if cell.peephole is not None:
        names.append("P")
    node = helper.make_node(op, names, ["Y"], hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], f"fastrnn_{cell.name}", feeds,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def ort_session(ort, model_bytes, threads):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: its default)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _ort_feeds(cell, inputs):
    x, h0, c0, w, dy = inputs
    feeds = {"X": x, "h0": h0[None]}
    if cell.has_cell:
        feeds["c0"] = c0[None]
    return feeds


def ort_runners(ort, cell, inputs, threads=PEER_THREADS, check_with=None, atol=ORT_ATOL):
    """``{threads: fn}``: onnxruntime inference of ``cell`` on ``inputs``, one
    session per thread count. With ``check_with`` (the ``cpu`` backend), the
    ONNX output is first compared with fastrnn's; a mismatch above ``atol``
    raises ``RuntimeError`` (a wrong ONNX model must never be timed)."""
    x, h0, c0, w, dy = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    model = onnx_rnn_model(cell, w, T, B, I, H)
    feeds = _ort_feeds(cell, inputs)
    fns = {}
    for n in threads:
        sess = ort_session(ort, model, n)
        fns[n] = (lambda s: lambda: s.run(["Y"], feeds))(sess)
    if check_with is not None:
        y_ort = fns[threads[0]]()[0][:, 0]
        y_ref = check_with.forward(cell, x, h0, c0, w, None, False, False)[0]
        err = float(np.abs(y_ort - y_ref).max())
        if not np.isfinite(err) or err > atol:
            raise RuntimeError(
                f"onnxruntime {ONNX_CELLS[cell.name][0]} disagrees with fastrnn's cpu backend "
                f"for {cell.name} at (T,B,I,H)={(T, B, I, H)}: max |dy| = {err:.3g} > {atol:g}; "
                "the ONNX model built by fastrnn.bench.onnx_rnn_model is wrong")
    return fns
