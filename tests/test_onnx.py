"""fastrnn.onnx: export to ONNX (checked with onnxruntime at batch and time
sizes the export never saw) and import of ONNX recurrent nodes.

fastrnn runs on the NumPy reference backend here (the compiled kernels are
checked against it elsewhere), so the tests compile nothing. Skipped cleanly
without onnx or onnxruntime.
"""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastrnn                                      # noqa: E402
from fastrnn import onnx as fonnx                   # noqa: E402
from fastrnn.data import Standardizer              # noqa: E402
from fastrnn.models import make_recurrent          # noqa: E402

ATOL = 1e-5
SHAPES = [(3, 2), (7, 5)]          # (T, B): any sizes work, the axes are dynamic
ONNX_CELLS = ["lstm", "peephole_diagonal", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu",
              "peephole_full"]          # the last as a Scan of primitive ops


def session(data):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run(sess, feeds):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("cell", ONNX_CELLS)
@pytest.mark.parametrize("stacked", [False, True])
def test_layer_export_equals_fastrnn(cell, stacked):
    L, D = (2, 2) if stacked else (1, 1)
    layer = make_recurrent(cell, 3, 4, num_layers=L, bidirectional=stacked, backend="numpy",
                           seed=1).eval()
    layer.batch_first = stacked                  # both layouts
    sess = session(fonnx.to_bytes(layer, lengths=stacked, initial_state=stacked))
    rng = np.random.default_rng(0)
    for T, B in SHAPES:
        x = rng.normal(size=(B, T, 3) if layer.batch_first else (T, B, 3)).astype(np.float32)
        feeds, state, lengths = {"x": x}, None, None
        if stacked:
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
            h0 = rng.normal(size=(L * D, B, 4)).astype(np.float32)
            c0 = rng.normal(size=(L * D, B, 4)).astype(np.float32)
            state = (h0, c0) if layer.cell.has_cell else h0
            feeds.update(lengths=lengths.astype(np.int64), h0=h0)
            if layer.cell.has_cell:
                feeds["c0"] = c0
        y, st = layer(x, state, lengths)
        out = run(sess, feeds)
        np.testing.assert_allclose(out["y"], y, rtol=0, atol=ATOL)
        h = st[0] if layer.cell.has_cell else st
        np.testing.assert_allclose(out["h_n"], h, rtol=0, atol=ATOL)
        if layer.cell.has_cell:
            np.testing.assert_allclose(out["c_n"], st[1], rtol=0, atol=ATOL)


def test_full_peephole_exports_as_scan_not_as_a_node():
    layer = fastrnn.PeepholeLSTM(3, 4, peephole="full", backend="numpy")
    ops = {n.op_type for n in onnx.load_from_string(fonnx.to_bytes(layer)).graph.node}
    assert "Scan" in ops and "LSTM" not in ops
    with pytest.raises(fonnx.UnsupportedONNX, match="no LSTM, GRU or RNN node"):
        fonnx.load(fonnx.to_bytes(layer))


def test_export_writes_a_file_that_load_reads_back(tmp_path):
    layer = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False,
                        backend="numpy", seed=3)
    path = fonnx.export(layer, tmp_path / "gru.onnx")
    parts = fonnx.load(path)
    assert [p.num_layers for p in parts] == [1, 1] and parts[1].input_size == 8
    back = fonnx.load(path, stack=True)
    a, b = layer.state_dict(), back.state_dict()
    assert back.cell.name == "gru_reset_before" and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)       # float32 in, float32 out: exact


# --------------------------------------------------------------------------- models
def test_language_model_export():
    rng = np.random.default_rng(1)
    lm = fastrnn.LanguageModel(11, embed_dim=5, hidden_size=6, num_layers=2, backend="numpy",
                               seed=0).eval()
    sess = session(fonnx.to_bytes(lm, initial_state=True))
    for T, B in SHAPES:
        tok = rng.integers(0, 11, (T, B))
        h0, c0 = (rng.normal(size=(2, B, 6)).astype(np.float32) for _ in range(2))
        logits, (h, c) = lm(tok, (h0, c0))
        out = run(sess, {"tokens": tok, "h0": h0, "c0": c0})
        np.testing.assert_allclose(out["logits"], logits, rtol=0, atol=ATOL)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(out["probabilities"], p / p.sum(-1, keepdims=True),
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(out["h_n"], h, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out["c_n"], c, rtol=0, atol=ATOL)


@pytest.mark.parametrize("pooling,cell,classes", [
    ("attention", "lstm", ["cat", "dog", "emu"]),
    ("last", "gru", [3, 7, 11]),
    ("last", "peephole_diagonal", ["x", 2, 3.5]),      # mixed: metadata only
])
def test_classifier_export_equals_predict(pooling, cell, classes):
    rng = np.random.default_rng(2)
    clf = fastrnn.SequenceClassifier(3, input_size=4, hidden_size=5, num_layers=2, cell=cell,
                                     pooling=pooling, bidirectional=True, backend="numpy", seed=0)
    clf.scaler = Standardizer(rng.normal(size=4), rng.uniform(0.5, 2, 4))
    clf.classes = classes
    data = fonnx.to_bytes(clf, lengths=True)
    sess = session(data)
    meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(meta["fastrnn.classes"]) == classes
    for T, B in SHAPES:
        x = rng.normal(size=(B, T, 4)).astype(np.float32)
        lengths = rng.integers(1, T + 1, B)
        out = run(sess, {"x": x, "lengths": lengths})
        np.testing.assert_allclose(out["probabilities"], clf.predict_proba(x, lengths),
                                   rtol=0, atol=ATOL)
        want = clf.predict(x, lengths)
        got = np.asarray(classes, dtype=object)[out["label_index"]]
        assert [str(v) for v in got] == [str(v) for v in want]     # predict: np.asarray(classes)
        if isinstance(classes[1], str) and isinstance(classes[2], str):
            assert list(out["label"]) == list(want)
        elif isinstance(classes[2], int):
            assert out["label"].dtype == np.int64 and list(out["label"]) == list(want)


def test_classifier_with_embedding_and_no_classes():
    rng = np.random.default_rng(3)
    clf = fastrnn.SequenceClassifier(2, vocab_size=9, embed_dim=4, hidden_size=5,
                                     pooling="attention", backend="numpy", dtype="float64",
                                     seed=0)        # exported in float32
    sess = session(fonnx.to_bytes(clf))
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities", "label_index"]
    for T, B in SHAPES:
        ids = rng.integers(0, 9, (B, T))
        out = run(sess, {"x": ids})
        np.testing.assert_allclose(out["probabilities"], clf.predict_proba(ids), rtol=0,
                                   atol=ATOL)
        assert np.array_equal(out["label_index"], clf.predict(ids))


@pytest.mark.parametrize("difference,lengths,cell", [(0, True, "peephole_full"),
                                                     (2, False, "lstm")])
def test_regressor_export_equals_predict_in_user_units(difference, lengths, cell):
    rng = np.random.default_rng(4)
    reg = fastrnn.SequenceRegressor(2, horizon=3, hidden_size=5, pooling="attention",
                                    cell=cell, bidirectional=True, backend="numpy", seed=0)
    reg.scaler = Standardizer(rng.normal(10, 1, size=2), rng.uniform(0.5, 2, 2))
    reg.target_scaler = Standardizer(rng.normal(10, 1, size=2), rng.uniform(2, 5, 2))
    reg.difference = difference
    sess = session(fonnx.to_bytes(reg, lengths=lengths))
    for T, B in SHAPES:
        T += difference
        x = rng.normal(10, 2, size=(B, T, 2)).astype(np.float32)
        ln = rng.integers(1, T + 1, B) if lengths else None
        out = run(sess, {"x": x, **({"lengths": ln} if lengths else {})})
        want = reg.predict(x, ln)
        assert out["prediction"].dtype == np.float64
        np.testing.assert_allclose(out["prediction"], want, rtol=1e-6, atol=ATOL)


# --------------------------------------------------------------------------- import
def _node_model(op, W, R, B, P, T, Bt, I, H, **attrs):
    from onnx import TensorProto, helper, numpy_helper
    D = W.shape[0]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    names = ["X", "W", "R", "B"]
    if P is not None:
        inits.append(numpy_helper.from_array(P, "P"))
        names += ["", "", "", "P"]
    node = helper.make_node(op, names, ["Y", "Y_h"], hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "n", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, Bt, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op,attrs,peep,cell", [
    ("LSTM", {}, True, "peephole_diagonal"),
    ("LSTM", {"direction": "bidirectional"}, False, "lstm"),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}, False, "gru"),
    ("GRU", {}, False, "gru_reset_before"),
    ("RNN", {"activations": ["Relu"]}, False, "rnn_relu"),
    ("RNN", {}, False, "rnn_tanh"),
])
def test_load_helper_built_node_equals_onnxruntime(op, attrs, peep, cell):
    rng = np.random.default_rng(5)
    T, Bt, I, H = 6, 3, 4, 5
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    f = lambda *s: rng.normal(0, 0.4, s).astype(np.float32)      # noqa: E731
    W, R, B = f(D, G * H, I), f(D, G * H, H), f(D, 2 * G * H)
    P = f(D, 3 * H) if peep else None
    model = _node_model(op, W, R, B, P, T, Bt, I, H, **attrs)
    x = f(T, Bt, I)
    Y, Y_h = session(model.SerializeToString()).run(None, {"X": x})
    (layer,) = fonnx.load(model.SerializeToString(), backend="numpy")
    assert layer.cell.name == cell and layer.num_directions == D
    y, st = layer.eval()(x)
    want = Y.transpose(0, 2, 1, 3).reshape(T, Bt, D * H)
    np.testing.assert_allclose(y, want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(st[0] if layer.cell.has_cell else st, Y_h, rtol=0, atol=ATOL)


@pytest.mark.parametrize("op,attrs,name", [
    ("LSTM", {"clip": 3.0}, "'clip'"),
    ("LSTM", {"input_forget": 1}, "'input_forget'"),
    ("GRU", {"activations": ["HardSigmoid", "Tanh"]}, "'activations'"),
    ("RNN", {"direction": "reverse"}, "'direction'='reverse'"),
    ("RNN", {"activations": ["Sigmoid"]}, "'activations'"),
    ("LSTM", {"activation_alpha": [1.0]}, "'activation_alpha'"),
])
def test_load_rejects_unsupported_attributes_by_name(op, attrs, name):
    rng = np.random.default_rng(6)
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    W, R, B = (rng.normal(size=s).astype(np.float32) for s in ((1, G * 2, 3), (1, G * 2, 2),
                                                                (1, 4 * G)))
    model = _node_model(op, W, R, B, None, 4, 1, 3, 2, **attrs)
    with pytest.raises(fonnx.UnsupportedONNX, match=name):
        fonnx.load(model.SerializeToString())
