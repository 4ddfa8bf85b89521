"""ONNX export and import (the ``ort`` extra: ``pip install 'fastrnn[ort]'``).

:func:`export` writes a recurrent layer, or one of the three models whole, as
an ONNX model with dynamic batch and time axes; :func:`load` turns the ONNX
``LSTM``/``GRU``/``RNN`` nodes of a file into fastrnn layers. ``onnx`` is
imported on first use; onnxruntime is not needed to export.

The recurrent layers become ONNX recurrent nodes, one per stacked layer
(``direction="bidirectional"`` for two directions), chained through
Squeeze (one direction) or Transpose + Reshape (two: ``[T, 2, B, H]`` ->
``[T, B, 2H]``): LSTM (the diagonal peephole as its ``P`` input ``[p_i,
p_o, p_f]``), GRU (``reset_after=True`` is ``linear_before_reset=1``, the
original GRU ``linear_before_reset=0``), RNN (``Tanh``/``Relu``). Weights
are written in float32 (onnxruntime's recurrent kernels are float32 only).
The full-matrix peephole LSTM has no ONNX node: it is written as one ONNX
``Scan`` per layer and direction whose body is the cell's step in primitive
ops (MatMul, Split, Sigmoid, Tanh, Where for the lengths); :func:`load`
reads recurrent nodes only, so it does not read such a file back.

Graphs (``B`` batch, ``T`` time, both dynamic):

- a layer: inputs ``x`` ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``),
  with ``lengths=True`` ``lengths`` ``(B,)`` int64, with
  ``initial_state=True`` ``h0`` (and ``c0``) ``(L*D, B, H)``; outputs ``y``,
  ``h_n`` (and ``c_n``), as the layer returns them.
- :class:`~fastrnn.LanguageModel`: ``tokens`` ``(T, B)`` int64 (and ``h0``,
  ``c0`` with ``initial_state=True``) -> ``logits`` ``(T, B, V)``,
  ``probabilities`` (their softmax), ``h_n`` (``c_n``).
- :class:`~fastrnn.SequenceClassifier`: ``x`` raw features ``(B, T, F)``
  float32 (token ids int64 ``(B, T)`` with an embedding) and, with
  ``lengths=True``, ``lengths`` ``(B,)`` int64 -> ``logits`` ``(B, C)``,
  ``probabilities`` (``predict_proba``), ``label_index`` ``(B,)`` int64
  and, when the model's :attr:`classes` are all strings or all integers or
  all numbers, ``label`` (``predict``: string, int64 or double). The input
  scaler is part of the graph; the class list is also stored as JSON in the
  model's metadata (``fastrnn.classes``): ``classes[label_index]``.
- :class:`~fastrnn.SequenceRegressor`: ``x`` ``(B, T, F)`` float32 (and
  ``lengths``) -> ``prediction`` ``(B, horizon, output_size)`` float64, in
  the data's units (input scaler, differencing and target scaler in the
  graph, computed in float64 as ``predict`` does).
"""
from __future__ import annotations

import json

import numpy as np

from .convert import from_onnx_weights, onnx_operator, to_onnx_weights

__all__ = ["export", "load", "to_bytes", "UnsupportedONNX"]

#: the opset the exported graphs declare (ReduceSum and Squeeze take axes as inputs)
OPSET = 17
_F32 = np.float32


class UnsupportedONNX(ValueError):
    """An ONNX recurrent node with an attribute or input fastrnn cannot represent."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export/import needs the onnx package: "
                          "pip install 'fastrnn[ort]' (onnx and onnxruntime)") from None
    return onnx


# ==================================================================== graph building
class _Graph:
    """A small builder: named initializers and nodes with fresh output names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.h = onnx.helper
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self._n = 0

    def _name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base, array):
        name = self._name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def i64(self, values):
        return self.const("i64", np.asarray(values, dtype=np.int64))

    def node(self, op, inputs, n_out=1, outputs=None, **attrs):
        while inputs and inputs[-1] == "":          # trailing optional inputs are left off
            inputs = inputs[:-1]
        outs = outputs or [self._name(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, list(inputs), outs, name=self._name(op), **attrs))
        return outs if len(outs) > 1 else outs[0]

    def input(self, name, elem, shape):
        self.inputs.append(self.h.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name, elem, shape, value):
        """Expose ``value`` as the graph output ``name`` (an Identity keeps names free)."""
        self.node("Identity", [value], outputs=[name])
        self.outputs.append(self.h.make_tensor_value_info(name, elem, shape))

    def model(self, name, metadata=None):
        graph = self.h.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        model = self.h.make_model(graph, opset_imports=[self.h.make_opsetid("", OPSET)],
                                  producer_name="fastrnn")
        for k, v in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        self.onnx.checker.check_model(model)
        return model


def _recurrent(g, layer, x, lengths=None, h0=None, c0=None):
    """Emit ``layer``'s stack on ``x`` ``[T, B, I]`` (``lengths``: an int64
    ``[B]`` value or None); returns ``(y [T, B, D*H], h_n [L*D, B, H], c_n or
    None, Y_h of the top layer [D, B, H])``."""
    spec = layer.cell
    L, D, H = layer.num_layers, layer.num_directions, layer.hidden_size
    rows = (lambda s, k: "" if s is None else      # layer k's rows of h0 / c0
            g.node("Slice", [s, g.i64([k * D]), g.i64([(k + 1) * D]), g.i64([0])]))
    hs, cs = [], []
    if spec.peephole == "full":
        mask = None if lengths is None else _valid_steps(g, x, lengths)
        for k in range(L):
            x, Y_h, Y_c = _scan_full_peephole(g, layer, k, x, mask, rows(h0, k), rows(c0, k))
            hs.append(Y_h)
            cs.append(Y_c)
    else:
        op, attrs = onnx_operator(spec)
        if "activations" in attrs:                   # one per direction
            attrs = dict(attrs, activations=attrs["activations"] * D)
        seq_lens = None if lengths is None else g.node("Cast", [lengths],
                                                        to=g.onnx.TensorProto.INT32)
        for k, w in enumerate(to_onnx_weights(layer, dtype=_F32)):
            names = [x, g.const(f"W{k}", w["W"]), g.const(f"R{k}", w["R"]),
                     g.const(f"B{k}", w["B"]) if "B" in w else "", seq_lens or "", rows(h0, k)]
            if spec.has_cell:
                names += [rows(c0, k), g.const(f"P{k}", w["P"]) if "P" in w else ""]
            outs = g.node(op, names, n_out=3 if spec.has_cell else 2, hidden_size=H,
                          direction="bidirectional" if D == 2 else "forward", **attrs)
            Y, Y_h = outs[0], outs[1]                                  # [T, D, B, H], [D, B, H]
            hs.append(Y_h)
            if spec.has_cell:
                cs.append(outs[2])
            if D == 1:
                x = g.node("Squeeze", [Y, g.i64([1])])
            else:
                x = g.node("Reshape", [g.node("Transpose", [Y], perm=[0, 2, 1, 3]),
                                       g.i64([0, 0, -1])])
    cat = (lambda parts: parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=0))
    return x, cat(hs), (cat(cs) if cs else None), hs[-1]


def _valid_steps(g, x, lengths):
    """``[T, B, 1]`` bool: step ``t`` of sequence ``b`` is before ``lengths[b]``."""
    T = g.node("Gather", [g.node("Shape", [x]), g.i64(0)], axis=0)
    steps = g.node("Range", [g.i64(0), T, g.i64(1)])
    valid = g.node("Less", [g.node("Unsqueeze", [steps, g.i64([1])]),
                            g.node("Unsqueeze", [lengths, g.i64([0])])])          # [T, B]
    return g.node("Unsqueeze", [valid, g.i64([2])])


def _scan_full_peephole(g, layer, k, x, mask, h0, c0):
    """Layer ``k`` of a full-matrix peephole LSTM as one ONNX Scan per
    direction (ONNX's LSTM node has diagonal peepholes only). The input
    product ``x W^T + b`` is one MatMul before the Scan; the body computes,
    in fastrnn's gate order i, f, g, o,
    ``a = xw_t + h U^T; i, f = σ(a_i + c P_i^T), σ(a_f + c P_f^T);
    c' = f c + i tanh(a_g); o = σ(a_o + c' P_o^T); h' = o tanh(c')``;
    steps past a sequence's length keep the state and output zeros (a
    reverse Scan then starts at each sequence's last valid step, as fastrnn).
    Returns ``(y [T, B, D*H], h_n [D, B, H], c_n [D, B, H])``."""
    TP = g.onnx.TensorProto
    H, D = layer.hidden_size, layer.num_directions
    p = layer.state_dict()
    B = g.node("Gather", [g.node("Shape", [x]), g.i64(1)], axis=0)
    zeros = g.node("ConstantOfShape", [g.node("Concat", [g.node("Unsqueeze", [B, g.i64([0])]),
                                                          g.i64([H])], axis=0)],
                   value=g.onnx.helper.make_tensor("zero", TP.FLOAT, [1], [0.0]))
    ys, hs, cs = [], [], []
    for d in range(D):
        sfx = f"_l{k}" + ("_reverse" if d else "")
        b = np.zeros(4 * H, _F32)
        if layer.bias:
            b = (p["bias_ih" + sfx] + p["bias_hh" + sfx]).astype(_F32)
        xw = g.node("Add", [g.node("MatMul", [x, g.const("W_T", p["weight_ih" + sfx].T
                                                         .astype(_F32))]),
                            g.const("b", b)])                                   # [T, B, 4H]
        start = []
        for s in (h0, c0):
            start.append(zeros if s == "" else
                         g.node("Squeeze", [g.node("Slice", [s, g.i64([d]), g.i64([d + 1]),
                                                             g.i64([0])]), g.i64([0])]))
        body = _peephole_body(g.onnx, p, sfx, H, mask is not None)
        scans = [xw] + ([mask] if mask is not None else [])
        n = len(scans)
        h_n, c_n, y = g.node("Scan", start + scans, n_out=3, body=body, num_scan_inputs=n,
                             scan_input_directions=[d] * n, scan_output_directions=[d])
        ys.append(y)
        hs.append(g.node("Unsqueeze", [h_n, g.i64([0])]))
        cs.append(g.node("Unsqueeze", [c_n, g.i64([0])]))
    cat = (lambda parts, axis: parts[0] if len(parts) == 1 else
           g.node("Concat", parts, axis=axis))
    return cat(ys, 2), cat(hs, 0), cat(cs, 0)


def _peephole_body(onnx, p, sfx, H, masked):
    """The Scan body of :func:`_scan_full_peephole` (its own small graph)."""
    TP = onnx.TensorProto
    b = _Graph(onnx)
    f = lambda a: a.astype(_F32)                                   # noqa: E731
    h, c, xw = (b.input(n, TP.FLOAT, None) for n in ("h", "c", "xw"))
    m = b.input("m", TP.BOOL, None) if masked else None
    a = b.node("Add", [xw, b.node("MatMul", [h, b.const("U_T", f(p["weight_hh" + sfx].T))])])
    ai, af, ag, ao = b.node("Split", [a, b.i64([H] * 4)], n_out=4, axis=1)
    peep = lambda gate, s: b.node("MatMul", [s, b.const(f"P{gate}_T",     # noqa: E731
                                                        f(p[f"peephole_{gate}{sfx}"].T))])
    i = b.node("Sigmoid", [b.node("Add", [ai, peep("i", c)])])
    fg = b.node("Sigmoid", [b.node("Add", [af, peep("f", c)])])
    c2 = b.node("Add", [b.node("Mul", [fg, c]), b.node("Mul", [i, b.node("Tanh", [ag])])])
    o = b.node("Sigmoid", [b.node("Add", [ao, peep("o", c2)])])
    h2 = b.node("Mul", [o, b.node("Tanh", [c2])])
    y = h2
    if masked:
        h2 = b.node("Where", [m, h2, h])
        c2 = b.node("Where", [m, c2, c])
        y = b.node("Where", [m, y, b.const("zero", np.zeros(1, _F32))])
    for name, v in (("h_out", h2), ("c_out", c2), ("y_out", y)):
        b.output(name, TP.FLOAT, None, v)
    return onnx.helper.make_graph(b.nodes, "full_peephole_step", b.inputs, b.outputs, b.inits)


def _param(block, name):
    """A block's parameter as a float32 host array (also for a model on the GPU)."""
    from . import _device
    return np.asarray(_device.to_host(block.params[name]), dtype=_F32)


def _linear(g, lin, x):
    y = g.node("MatMul", [x, g.const("weight_T", _param(lin, "weight").T)])
    if "bias" in lin.params:
        y = g.node("Add", [y, g.const("bias", _param(lin, "bias"))])
    return y


# ==================================================================== the exported graphs
def _layer_graph(g, layer, lengths, initial_state):
    TP = g.onnx.TensorProto
    L, D, H, I = layer.num_layers, layer.num_directions, layer.hidden_size, layer.input_size
    xshape = ["batch", "time", I] if layer.batch_first else ["time", "batch", I]
    x = g.input("x", TP.FLOAT, xshape)
    ln = g.input("lengths", TP.INT64, ["batch"]) if lengths else None
    h0 = c0 = None
    if initial_state:
        h0 = g.input("h0", TP.FLOAT, [L * D, "batch", H])
        if layer.cell.has_cell:
            c0 = g.input("c0", TP.FLOAT, [L * D, "batch", H])
    if layer.batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])
    y, h_n, c_n, _ = _recurrent(g, layer, x, ln, h0, c0)
    if layer.batch_first:
        y = g.node("Transpose", [y], perm=[1, 0, 2])
    yshape = ["batch", "time", D * H] if layer.batch_first else ["time", "batch", D * H]
    g.output("y", TP.FLOAT, yshape, y)
    g.output("h_n", TP.FLOAT, [L * D, "batch", H], h_n)
    if c_n is not None:
        g.output("c_n", TP.FLOAT, [L * D, "batch", H], c_n)
    return {}


def _lm_graph(g, model, lengths, initial_state):
    TP = g.onnx.TensorProto
    if lengths:
        raise ValueError("a LanguageModel takes no lengths (its stream has none)")
    rnn = model.rnn
    L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
    tokens = g.input("tokens", TP.INT64, ["time", "batch"])
    h0 = c0 = None
    if initial_state:
        h0 = g.input("h0", TP.FLOAT, [L * D, "batch", H])
        if rnn.cell.has_cell:
            c0 = g.input("c0", TP.FLOAT, [L * D, "batch", H])
    e = g.node("Gather", [g.const("embedding", _param(model.embed, "weight")),
                          tokens], axis=0)                           # [T, B, E]
    y, h_n, c_n, _ = _recurrent(g, rnn, e, None, h0, c0)
    logits = _linear(g, model.head, y)                               # [T, B, V]
    V = model.vocab_size
    g.output("logits", TP.FLOAT, ["time", "batch", V], logits)
    g.output("probabilities", TP.FLOAT, ["time", "batch", V], g.node("Softmax", [logits], axis=2))
    g.output("h_n", TP.FLOAT, [L * D, "batch", H], h_n)
    if c_n is not None:
        g.output("c_n", TP.FLOAT, [L * D, "batch", H], c_n)
    meta = {}
    if model.meta.get("vocab"):
        meta["fastrnn.vocab"] = json.dumps(model.meta["vocab"])
    return meta


def _encoder(g, model, lengths, diff_base=None):
    """The shared front of the classifier and regressor: inputs, scaler,
    embedding, recurrent stack, pooling. Returns ``(pooled [B, D*H], base)``
    (``base``: the last ``difference`` raw steps, float64, for a differenced
    regressor)."""
    TP = g.onnx.TensorProto
    rnn = model.rnn
    if model.embed is not None:
        ids = g.input("x", TP.INT64, ["batch", "time"])
        e = g.node("Gather", [g.const("embedding", _param(model.embed, "weight")),
                              g.node("Transpose", [ids], perm=[1, 0])], axis=0)   # [T, B, E]
    else:
        x = g.input("x", TP.FLOAT, ["batch", "time", model.input_size])
        lag = getattr(model, "difference", 0)
        sc = model.scaler
        base = None
        if lag or sc is not None:
            x = g.node("Cast", [x], to=TP.DOUBLE)            # predict works in float64
        if lag:
            big = np.iinfo(np.int64).max
            axis1 = g.i64([1])
            base = g.node("Slice", [x, g.i64([-lag]), g.i64([big]), axis1])     # [B, lag, F]
            x = g.node("Sub", [g.node("Slice", [x, g.i64([lag]), g.i64([big]), axis1]),
                               g.node("Slice", [x, g.i64([0]), g.i64([-lag]), axis1])])
        if sc is not None:
            x = g.node("Div", [g.node("Sub", [x, g.const("mean", np.asarray(sc.mean, np.float64))]),
                               g.const("std", np.asarray(sc.std, np.float64))])
        if lag or sc is not None:
            x = g.node("Cast", [x], to=TP.FLOAT)
        e = g.node("Transpose", [x], perm=[1, 0, 2])                                # [T, B, F]
        if diff_base is not None:
            diff_base.append(base)
    ln = g.input("lengths", TP.INT64, ["batch"]) if lengths else None
    y, _, _, top = _recurrent(g, rnn, e, ln)
    if model.pooling == "attention":
        at = model.attn
        s = g.node("Tanh", [_linear(g, at, y)])                                       # [T, B, A]
        sc = g.node("MatMul", [s, g.const("v", _param(at, "v"))])          # [T, B]
        if ln is not None:
            valid = g.node("Squeeze", [_valid_steps(g, y, ln), g.i64([2])])        # [T, B]
            sc = g.node("Where", [valid, sc, g.const("neg_inf", np.array(-np.inf, _F32))])
        alpha = g.node("Softmax", [sc], axis=0)
        pooled = g.node("ReduceSum", [g.node("Mul", [g.node("Unsqueeze", [alpha, g.i64([2])]), y]),
                                      g.i64([0])], keepdims=0)                        # [B, D*H]
    else:
        pooled = g.node("Reshape", [g.node("Transpose", [top], perm=[1, 0, 2]),
                                    g.i64([0, -1])])                                  # [B, D*H]
    return pooled


def _class_tensor(classes):
    if all(isinstance(c, str) for c in classes):
        return np.array(classes, dtype=object), "STRING"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.int64), "INT64"
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.float64), "DOUBLE"
    return None, None


def _classifier_graph(g, model, lengths, initial_state):
    TP = g.onnx.TensorProto
    if initial_state:
        raise ValueError("a SequenceClassifier starts from zero states (no initial_state)")
    logits = _linear(g, model.head, _encoder(g, model, lengths))                    # [B, C]
    C = model.num_classes
    g.output("logits", TP.FLOAT, ["batch", C], logits)
    g.output("probabilities", TP.FLOAT, ["batch", C], g.node("Softmax", [logits], axis=1))
    idx = g.node("ArgMax", [logits], axis=1, keepdims=0)
    g.output("label_index", TP.INT64, ["batch"], idx)
    meta = {}
    classes = model.classes
    if classes is not None:
        meta["fastrnn.classes"] = json.dumps(classes)
        table, kind = _class_tensor(classes)
        if table is not None:
            if kind == "STRING":
                init = g.onnx.helper.make_tensor(g._name("classes"), TP.STRING, [len(classes)],
                                                 [c.encode() for c in classes])
                g.inits.append(init)
                name = init.name
            else:
                name = g.const("classes", table)
            g.output("label", getattr(TP, kind), ["batch"],
                     g.node("Gather", [name, idx], axis=0))
    return meta


def _regressor_graph(g, model, lengths, initial_state):
    TP = g.onnx.TensorProto
    if initial_state:
        raise ValueError("a SequenceRegressor starts from zero states (no initial_state)")
    lag = model.difference
    if lag and lengths:
        raise ValueError("a differenced SequenceRegressor takes no lengths (as predict)")
    base = []
    out = _linear(g, model.head, _encoder(g, model, lengths, base))          # [B, hz*out]
    hz, O = model.horizon, model.output_size
    out = g.node("Cast", [g.node("Reshape", [out, g.i64([0, hz, O])])], to=TP.DOUBLE)
    ts = model.target_scaler
    if ts is not None:
        out = g.node("Add", [g.node("Mul", [out, g.const("target_std",
                                                         np.asarray(ts.std, np.float64))]),
                             g.const("target_mean", np.asarray(ts.mean, np.float64))])
    if lag:
        # out[:, k] += the value lag steps before: the window's tail, then earlier outputs
        axis1 = g.i64([1])
        steps = []
        for k in range(hz):
            prev = (g.node("Slice", [base[0], g.i64([k]), g.i64([k + 1]), axis1]) if k < lag
                    else steps[k - lag])
            steps.append(g.node("Add", [g.node("Slice", [out, g.i64([k]), g.i64([k + 1]),
                                                         axis1]), prev]))
        out = steps[0] if hz == 1 else g.node("Concat", steps, axis=1)
    g.output("prediction", TP.DOUBLE, ["batch", hz, O], out)
    return {}


def _graph_for(obj):
    from . import models
    if isinstance(obj, models.LanguageModel):
        return _lm_graph
    if isinstance(obj, models.SequenceClassifier):
        return _classifier_graph
    if isinstance(obj, models.SequenceRegressor):
        return _regressor_graph
    if hasattr(obj, "cell") and hasattr(obj, "num_directions"):
        return _layer_graph
    raise TypeError(f"export takes a fastrnn recurrent layer or model, got {type(obj).__name__}")


def to_bytes(obj, *, lengths=False, initial_state=False):
    """The serialized ONNX model :func:`export` writes (see there)."""
    onnx = _onnx()
    build = _graph_for(obj)
    g = _Graph(onnx)
    meta = build(g, obj, lengths, initial_state)
    meta = {"fastrnn.type": type(obj).__name__, **meta}
    return g.model(f"fastrnn_{type(obj).__name__}", meta).SerializeToString()


def export(obj, path, *, lengths=False, initial_state=False):
    """Write a fastrnn layer or model as an ONNX model (dynamic batch and time).

    Parameters
    ----------
    obj : fastrnn layer, LanguageModel, SequenceClassifier or SequenceRegressor
    path : str or path-like
        The ``.onnx`` file to write.
    lengths : bool, default False
        Add a ``lengths`` ``(B,)`` int64 input (valid steps per sequence;
        the recurrent nodes' ``sequence_lens``) to a layer, classifier or
        regressor.
    initial_state : bool, default False
        Add ``h0`` (and ``c0``) ``(L*D, B, H)`` inputs to a layer or a
        language model.

    The inputs and outputs of each graph are listed in the module docstring
    (:mod:`fastrnn.onnx`).
    """
    data = to_bytes(obj, lengths=lengths, initial_state=initial_state)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ==================================================================== import
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _attrs(node, onnx):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _node_layer(node, arrays, onnx, k, layer_kwargs):
    """``(cell, W, R, B, P, batch_first)`` of one recurrent node, checked."""
    op = node.op_type
    at = _attrs(node, onnx)
    where = f"node {k} ({op} {node.name!r})"
    for bad in ("clip", "activation_alpha", "activation_beta"):
        if bad in at:
            raise UnsupportedONNX(f"{where}: attribute {bad!r} is not supported by fastrnn")
    if at.get("input_forget", 0):
        raise UnsupportedONNX(f"{where}: attribute 'input_forget'=1 (coupled input and forget "
                              "gates) is not supported by fastrnn")
    direction = _str(at.get("direction", "forward"))
    if direction not in ("forward", "bidirectional"):
        raise UnsupportedONNX(f"{where}: attribute 'direction'={direction!r} is not supported "
                              "(fastrnn runs 'forward' or 'bidirectional')")
    layout = at.get("layout", 0)
    D = 2 if direction == "bidirectional" else 1
    acts = [_str(a) for a in at.get("activations", [])]
    if op == "RNN":
        per = acts[:1] or ["Tanh"]
        if len(acts) > D or any(a != per[0] for a in acts) or per[0] not in ("Tanh", "Relu"):
            raise UnsupportedONNX(f"{where}: attribute 'activations'={acts} is not supported "
                                  "(fastrnn's RNN uses Tanh or Relu, the same in both directions)")
        cell = "rnn_tanh" if per[0] == "Tanh" else "rnn_relu"
    else:
        dflt = _DEFAULT_ACTS[op]
        if acts and acts != dflt * (len(acts) // len(dflt)):
            raise UnsupportedONNX(f"{where}: attribute 'activations'={acts} is not supported "
                                  f"(fastrnn's {op} uses the defaults {dflt})")
        if op == "LSTM":
            cell = "lstm"
        else:
            cell = "gru" if at.get("linear_before_reset", 0) else "gru_reset_before"
    names = list(node.input) + [""] * (8 - len(node.input))

    def weight(i, what):
        n = names[i]
        if not n:
            return None
        if n not in arrays:
            raise UnsupportedONNX(f"{where}: input {what} ({n!r}) is not an initializer or "
                                  "Constant: fastrnn needs the weights in the file")
        return arrays[n]

    W, R, B = weight(1, "W"), weight(2, "R"), weight(3, "B")
    P = weight(7, "P") if op == "LSTM" else None
    if P is not None and not np.any(P):
        P = None                                     # zero peepholes: a plain LSTM
    if W is None or R is None:
        raise UnsupportedONNX(f"{where}: W and R are required")
    hs = at.get("hidden_size")
    if hs is not None and R.shape[-1] != hs:
        raise UnsupportedONNX(f"{where}: hidden_size={hs} but R has shape {R.shape}")
    return cell, W, R, B, P, bool(layout)


def load(path, *, stack=False, **layer_kwargs):
    """fastrnn layers from the ONNX ``LSTM``/``GRU``/``RNN`` nodes of a file.

    Parameters
    ----------
    path : str, path-like or bytes
        An ONNX file (or a serialized model).
    stack : bool, default False
        Return one layer stacking every recurrent node in graph order (they
        must share cell, hidden size and directions, each reading the
        previous one's outputs: the layout :func:`export` writes).
    **layer_kwargs
        Layer arguments (``backend``, ``dtype``...).

    Returns
    -------
    list of layers, one per node (``stack=False``), or one layer.

    Raises
    ------
    UnsupportedONNX (a ValueError)
        A node fastrnn cannot represent, naming the attribute or input:
        ``clip``, ``activation_alpha``/``activation_beta``, non-default
        ``activations``, ``input_forget=1``, ``direction="reverse"``, or
        weights that are not initializers. ``layout=1`` gives a
        ``batch_first`` layer.
    """
    onnx = _onnx()
    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
    nh = onnx.numpy_helper
    arrays = {t.name: nh.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    arrays[n.output[0]] = nh.to_array(a.t)
    nodes = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    if not nodes:
        raise UnsupportedONNX(f"{path if not isinstance(path, bytes) else 'the model'} has no "
                              "LSTM, GRU or RNN node")
    parts = [_node_layer(n, arrays, onnx, k, layer_kwargs) for k, n in enumerate(nodes)]
    if not stack:
        return [from_onnx_weights(W, R, B, P, cell=cell, batch_first=bf, **layer_kwargs)
                for cell, W, R, B, P, bf in parts]
    cells = {"peephole_diagonal" if p[4] is not None else p[0] for p in parts}
    if len(cells) > 1:
        raise UnsupportedONNX(f"stack=True needs one cell for every node, got {sorted(cells)}")
    cell = parts[0][0]
    Ps = [p[4] for p in parts] if parts[0][4] is not None else None
    return from_onnx_weights([p[1] for p in parts], [p[2] for p in parts],
                             None if parts[0][3] is None else [p[3] for p in parts], Ps,
                             cell=cell, batch_first=parts[0][5], **layer_kwargs)
