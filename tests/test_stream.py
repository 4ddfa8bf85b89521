"""Streams (fastrnn.stream, kernels/latency.py): one step per call equals the
layer run over the whole sequence; state get/set/reset; weight snapshots and
refresh; model streams equal the models' one-shot predictions."""
import numpy as np
import pytest

import fastrnn
from fastrnn.optim import SGD
from fastrnn.stream import Stream
from fastrnn.testing import assert_close, cell_terms


def close(a, b, layer, T, dtype=np.float32, extra=0, scale=1.0):
    """Two compiled paths (the stream's latency kernels, the layer's sequence
    kernels) over ``T`` steps of ``layer``: fastrnn.testing's bound for both."""
    terms = 2 * cell_terms(layer.cell, T, 1, layer.input_size, layer.hidden_size,
                           layer.num_layers, layer.num_directions, dtype, approx=True,
                           backward=False) + extra
    assert_close(a, b, terms, scale=max(1.0, float(scale)), dtype=dtype)

# (layer class, constructor keywords) of every registered cell
CELLS = [
    (fastrnn.RNN, {}), (fastrnn.RNN, {"nonlinearity": "relu"}), (fastrnn.LSTM, {}),
    (fastrnn.GRU, {}), (fastrnn.GRU, {"reset_after": False}),
    (fastrnn.PeepholeLSTM, {}), (fastrnn.PeepholeLSTM, {"peephole": "full"}),
]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before", "peep_diag", "peep_full"]
DTYPES = [np.float32, np.float64]


def _layer(cls, kw, dtype, L=2, I=3, H=5, seed=0):
    return cls(I, H, num_layers=L, dtype=dtype, seed=seed, **kw).eval()


def _x(T, B, I, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(dtype)


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw", CELLS, ids=IDS)
def test_steps_equal_layer_over_1000_steps(cls, kw, dtype):
    """1,000 single steps, B = 1 (1-d inputs) and B = 3, a 2-layer stack, with
    the state set from outside at step 400 and one row reset at step 700: the
    outputs and the final state equal layer(x) run over the same pieces."""
    layer = _layer(cls, kw, dtype)
    for B in (1, 3):
        x = _x(1000, B, 3, dtype)
        s = layer.stream(batch_size=B)
        ys = np.empty((1000, B, 5), dtype)
        rng = np.random.default_rng(2)
        h0 = rng.standard_normal((2, B, 5)).astype(dtype) * 0.5
        st0 = (h0, h0 * 2) if layer.cell.has_cell else h0
        for t in range(1000):
            if t == 400:
                s.state = st0
            if t == 700:
                s.reset(B - 1)
            ys[t] = s.step(x[t, 0] if B == 1 else x[t])
        # the layer over the same pieces: [0, 400), [400, 700) from st0, [700, 1000)
        y1, sa = layer(x[:400])
        y2, sb = layer(x[400:700], st0)
        parts = tuple(np.array(p) for p in (sb if isinstance(sb, tuple) else (sb,)))
        for p in parts:
            p[:, B - 1] = 0
        y3, sc = layer(x[700:], parts if layer.cell.has_cell else parts[0])
        ref = np.concatenate([y1, y2, y3])
        close(ys, ref, layer, 1000, dtype, scale=np.abs(st0[1] if layer.cell.has_cell else st0).max())
        got = s.state
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        sc if isinstance(sc, tuple) else (sc,)):
            close(a, b, layer, 1000, dtype, scale=np.abs(st0[1] if layer.cell.has_cell else st0).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_continue_the_state(dtype):
    layer = _layer(fastrnn.LSTM, {}, dtype, L=2, I=4, H=6)
    x = _x(50, 2, 4, dtype)
    s = layer.stream(2)
    y = np.concatenate([s(x[:20]), s(x[20:21]), s(x[21:])])
    ref, (h, c) = layer(x)
    close(y, ref, layer, 50, dtype)
    close(s.state[1], c, layer, 50, dtype)
    # steps and chunks mix
    s.reset()
    a = s(x[:10])
    b = np.stack([s.step(x[t]).copy() for t in range(10, 50)])
    close(np.concatenate([a, b]), ref, layer, 50, dtype)


def test_batch_first_chunks():
    layer = fastrnn.GRU(3, 4, batch_first=True, seed=0).eval()
    x = _x(2, 7, 3, np.float32)                    # (B, T, I)
    ref, _ = layer(x)
    close(layer.stream(2)(x), ref, layer, 7)


def test_stream_keeps_old_weights_until_refresh():
    layer = _layer(fastrnn.LSTM, {}, np.float32)
    x = _x(30, 1, 3, np.float32)
    old, _ = layer(x)
    s = layer.stream()
    layer.train()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    SGD(layer, lr=0.5).step()
    layer.eval()
    new, _ = layer(x)
    assert np.abs(new - old).max() > 1e-3
    y_old = np.stack([s.step(x[t, 0]).copy() for t in range(30)])
    close(y_old, old[:, 0], layer, 30)
    s.refresh().reset()
    y_new = np.stack([s.step(x[t, 0]).copy() for t in range(30)])
    close(y_new, new[:, 0], layer, 30)


def test_output_buffer_reused_and_out():
    layer = fastrnn.LSTM(3, 4, seed=0).eval()
    s = layer.stream()
    x = np.ones(3, np.float32)
    a = s.step(x)
    a_val = a.copy()
    a[:] = 100                    # writing the returned buffer leaves the state alone
    b = s.step(x)
    assert b is a                 # the same buffer, overwritten by the next step
    s2 = layer.stream()
    s2.step(x)
    np.testing.assert_array_equal(s2.step(x), b)
    out = np.empty(4, np.float32)
    s3 = layer.stream()
    np.testing.assert_array_equal(s3.step(x, out=out), a_val)
    assert s3.step(x, out=out) is out
    np.testing.assert_array_equal(out, b)


def test_bad_input_is_refused_before_running():
    layer = fastrnn.GRU(3, 4, seed=0).eval()
    s = layer.stream(2)
    before = s.state.copy()
    with pytest.raises(TypeError, match="dtype float32"):
        s.step(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        s.step(np.zeros((3,), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        s.step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        s.step(np.zeros((2, 3), np.float32), out=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"shape \(T, B=2, 3\)"):
        s(np.zeros((5, 3, 3), np.float32))
    with pytest.raises(ValueError, match="rows must lie"):
        s.reset(2)
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)|shape"):
        s.state = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        layer.stream(0)
    np.testing.assert_array_equal(s.state, before)
    # a list is converted (the slow path), a non-contiguous row copied
    s.step([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    s.step(np.zeros((3, 2), np.float32).T)


def test_bidirectional_refused_with_the_reason():
    with pytest.raises(ValueError, match="bidirectional.*last step"):
        fastrnn.LSTM(3, 4, bidirectional=True).stream()


def test_no_bias_and_reset_rows():
    layer = fastrnn.RNN(3, 4, num_layers=2, bias=False, seed=0).eval()
    x = _x(12, 3, 3, np.float32)
    s = layer.stream(3)
    s(x)
    s.reset([0, 2])
    h = s.state
    assert not h[:, [0, 2]].any() and h[:, 1].any()
    s.reset()
    ref, _ = layer(x)
    close(s(x), ref, layer, 12)


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("hidden", [8, 16], ids=["loops", "panels"])
def test_language_model_stream_and_sample(hidden):
    lm = fastrnn.LanguageModel(11, embed_dim=6, hidden_size=hidden, num_layers=2, seed=0)
    lm.eval()
    toks = np.array([1, 4, 2, 9, 0, 3])
    ref, _ = lm(toks[:, None])
    s = lm.stream()
    got = np.stack([s.step(int(t)).copy() for t in toks])
    close(got, ref[:, 0], lm.rnn, 6, extra=hidden + 6)       # + the head, the embedding
    s2 = lm.stream(2)
    ref2, _ = lm(np.stack([toks, toks[::-1]], axis=1))
    got2 = np.stack([s2.step(np.array([a, b])).copy() for a, b in zip(toks, toks[::-1])])
    close(got2, ref2, lm.rnn, 6, extra=hidden + 6)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        s.step(11)
    # sample runs on the stream: greedy decoding equals the step-by-step argmax
    out = lm.sample(5, [1, 4], temperature=0)
    s.reset()
    s.step(1)
    last = s.step(4)
    for t in out:
        assert t == int(np.argmax(last))
        last = s.step(int(t))


def test_classifier_and_regressor_streams_equal_predict():
    from fastrnn.data import Standardizer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 2)) * 3 + 1                     # (B, T, F), raw units
    clf = fastrnn.SequenceClassifier(4, input_size=2, hidden_size=6, num_layers=2, seed=0)
    clf.scaler = Standardizer().fit(x.reshape(-1, 2), axis=0)
    s = clf.stream(3)
    for t in range(9):
        p = s.step(x[:, t].astype(np.float32))
    # + the head (6 terms) and a softmax over 4 classes
    close(p, clf.predict_proba(x).astype(np.float32), clf.rnn, 9, extra=6 + 4 + 8)
    reg = fastrnn.SequenceRegressor(2, output_size=2, horizon=3, hidden_size=6, seed=0,
                                    cell="gru")
    reg.scaler = Standardizer().fit(x.reshape(-1, 2), axis=0)
    reg.target_scaler = Standardizer(mean=[5.0, -2.0], std=[10.0, 0.5])
    s = reg.stream()
    for t in range(9):
        p = s.step(x[0, t].astype(np.float32))
    # + the head (6 terms) and the target scaler
    close(p, reg.predict(x[0], sequence=True).astype(np.float32), reg.rnn, 9, extra=6 + 2)
    att = fastrnn.SequenceClassifier(2, input_size=2, hidden_size=4, pooling="attention")
    with pytest.raises(ValueError, match="attention.*pooling='last'"):
        att.stream()


def test_stream_object_api():
    layer = fastrnn.LSTM(3, 4, seed=0)
    s = layer.stream()
    assert isinstance(s, Stream) and "batch_size=1" in repr(s)
    h, c = s.state
    assert h.shape == c.shape == (1, 1, 4)
    s.state = None
    assert not s.state[0].any()


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}),
                                    (fastrnn.PeepholeLSTM, {})], ids=["lstm", "gru", "peep"])
def test_panel_path_equals_sequence_kernels_bitwise(cls, kw, monkeypatch):
    """float32 stacks with H a multiple of the SIMD width run the sequence
    kernels' micro-kernels: a stream equals the sequence kernels bit for bit
    (one row, a pair of rows, more rows than one micro-kernel call takes)."""
    from fastrnn import prepared
    layer = cls(5, 32, num_layers=2, seed=0, **kw).eval()
    cases = [(layer, B) for B in (1, 2, 3, 7)]
    # H = 64: four panels of 16 (one row runs them in one call) or eight of 8
    cases.append((cls(5, 64, seed=0, **kw).eval(), 1))
    for layer, B in cases:
        x = _x(40, B, 5, np.float32)
        s = layer.stream(B)
        ys = np.stack([s.step(x[t]).copy() for t in range(40)])
        monkeypatch.setattr(prepared, "enabled", False)
        ref, st = layer(x)
        monkeypatch.setattr(prepared, "enabled", True)
        np.testing.assert_array_equal(ys, ref)
        np.testing.assert_array_equal(s.state[0] if layer.cell.has_cell else s.state, _h(st))


def test_panel_path_eight_wide(monkeypatch):
    """The AVX2 (8-wide) panels, as on a CPU without AVX-512."""
    from fastrnn import prepared
    from fastrnn.kernels import cpu
    with cpu.configure(vector_width=8):
        for cls in (fastrnn.LSTM, fastrnn.GRU):
            layer = cls(5, 24, num_layers=2, seed=0).eval()          # three panels of 8
            for B in (1, 2, 5):
                x = _x(30, B, 5, np.float32)
                s = layer.stream(B)
                ys = s(x)
                y_eval, _ = layer(x)                                   # the prepared path
                monkeypatch.setattr(prepared, "enabled", False)
                ref, _ = layer(x)
                monkeypatch.setattr(prepared, "enabled", True)
                np.testing.assert_array_equal(ys, ref)
                close(y_eval, ref, layer, 30)


def test_token_classifier_stream():
    """A classifier over token ids streams them through its embedding."""
    clf = fastrnn.SequenceClassifier(3, vocab_size=9, embed_dim=5, hidden_size=16, seed=0)
    toks = np.random.default_rng(0).integers(0, 9, (2, 7))
    s = clf.stream(2)
    for t in range(7):
        p = s.step(toks[:, t])
    np.testing.assert_allclose(p, clf.predict_proba(toks), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)


def test_without_compiled_kernels_streams_say_so_and_sample_falls_back(monkeypatch):
    """Where the compiled kernels do not load, a stream is a clear
    BackendUnavailable and LanguageModel.sample runs on the reference."""
    import sys
    lm = fastrnn.LanguageModel(7, 3, 4, seed=0)
    want = lm.sample(6, [1, 2], temperature=0)
    kernels = sys.modules["fastrnn.kernels"]
    monkeypatch.setitem(sys.modules, "fastrnn.kernels.latency", None)   # import fails
    monkeypatch.delattr(kernels, "latency", raising=False)
    from fastrnn import prepared
    monkeypatch.setattr(prepared, "_KERNELS", None)       # as in a process without them
    from fastrnn import stream
    assert not stream.available()
    with pytest.raises(fastrnn.BackendUnavailable, match="compiled CPU kernels"):
        fastrnn.LSTM(3, 4).stream()
    np.testing.assert_array_equal(lm.sample(6, [1, 2], temperature=0), want)
