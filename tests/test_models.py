"""Models: finite-difference gradients (float64, NumPy backend), truncated
BPTT, sampling, save/load, and short training runs that must lower the loss."""
import numpy as np
import pytest

from _numeric import numgrad

from fastrnn.cells import CELLS
from fastrnn.data import ArrayBatches, LMBatches
from fastrnn.models import (CheckpointError, LanguageModel, SequenceClassifier,
                            SequenceRegressor, load_model)
from fastrnn.optim import Adam
from fastrnn.train import Trainer
from fastrnn.testing import assert_close, cell_terms

F64 = dict(dtype="float64", backend="numpy")


def check_model_grads(model, batch, rtol=1e-5, atol=1e-8):
    def loss():
        model.reset_state()
        return model.batch_loss(batch, train=False)[0]

    model.zero_grad()
    model.reset_state()
    model.batch_loss(batch, train=True)
    grads = {k: v.copy() for k, v in model.grads.items()}
    assert set(grads) == set(model.params)
    for name, p in model.params.items():
        np.testing.assert_allclose(grads[name], numgrad(loss, p), rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_language_model_gradients(cell):
    rng = np.random.default_rng(0)
    model = LanguageModel(5, embed_dim=3, hidden_size=4, cell=cell, seed=1, **F64)
    x = rng.integers(0, 5, (3, 2))
    y = rng.integers(0, 5, (3, 2))
    check_model_grads(model, (x, y))


def test_language_model_two_layers_gradients():
    rng = np.random.default_rng(0)
    model = LanguageModel(4, embed_dim=3, hidden_size=3, num_layers=2, cell="lstm", seed=2, **F64)
    check_model_grads(model, (rng.integers(0, 4, (4, 2)), rng.integers(0, 4, (4, 2))))


@pytest.mark.parametrize("pooling", ["last", "attention"])
@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("gru", True), ("rnn_tanh", True)])
def test_classifier_gradients(pooling, cell, bidirectional):
    rng = np.random.default_rng(0)
    model = SequenceClassifier(3, input_size=2, hidden_size=3, cell=cell, pooling=pooling,
                               bidirectional=bidirectional, attn_size=2, seed=3, **F64)
    x = rng.standard_normal((3, 4, 2))
    y = np.array([0, 2, 1])
    lengths = np.array([4, 2, 3])
    check_model_grads(model, (x, y, lengths))


def test_classifier_token_input_two_layers_gradients():
    rng = np.random.default_rng(0)
    model = SequenceClassifier(2, vocab_size=6, embed_dim=3, hidden_size=3, num_layers=2,
                               cell="lstm", pooling="attention", seed=4, **F64)
    x = rng.integers(0, 6, (2, 5))
    check_model_grads(model, (x, np.array([1, 0]), np.array([5, 3])))


@pytest.mark.parametrize("cell,horizon", [("lstm", 1), ("gru", 3)])
def test_regressor_gradients(cell, horizon):
    rng = np.random.default_rng(0)
    model = SequenceRegressor(2, horizon=horizon, hidden_size=3, cell=cell, seed=5, **F64)
    x = rng.standard_normal((3, 4, 2))
    y = rng.standard_normal((3, horizon, 2))
    check_model_grads(model, (x, y))


def test_classifier_last_step_ignores_padding():
    rng = np.random.default_rng(0)
    model = SequenceClassifier(2, input_size=2, hidden_size=3, seed=0, **F64)
    x = rng.standard_normal((2, 5, 2))
    lengths = np.array([5, 2])
    a = model(x, lengths)
    x2 = x.copy()
    x2[1, 2:] = 99.0
    np.testing.assert_allclose(model(x2, lengths), a)
    np.testing.assert_allclose(model(x[1:, :2]), a[1:])


def test_truncated_bptt_carries_state():
    rng = np.random.default_rng(0)
    model = LanguageModel(6, embed_dim=3, hidden_size=4, seed=0, **F64)
    x = rng.integers(0, 6, (6, 2))
    y = rng.integers(0, 6, (6, 2))
    full, _ = model.forward(x)
    model.reset_state()
    l1, _ = model.batch_loss((x[:3], y[:3]), train=False)
    l2, _ = model.batch_loss((x[3:], y[3:]), train=False)
    from fastrnn.blocks import softmax_cross_entropy
    expect = softmax_cross_entropy(full, y)[0]
    assert (l1 + l2) / 2 == pytest.approx(expect, rel=1e-12)
    model.reset_state()
    l2_fresh, _ = model.batch_loss((x[3:], y[3:]), train=False)
    assert l2_fresh != pytest.approx(l2)
    # evaluate() carries the state over the whole stream
    ids = rng.integers(0, 6, 41)
    ev = model.evaluate(ids, batch_size=2, bptt=7)
    T = 20
    xs = ids[:2 * T].reshape(2, T).T
    ys = ids[1:2 * T + 1].reshape(2, T).T
    model.eval()
    assert ev == pytest.approx(softmax_cross_entropy(model.forward(xs)[0], ys)[0], rel=1e-12)


def test_sample_is_seeded_and_greedy_is_deterministic():
    model = LanguageModel(7, embed_dim=3, hidden_size=5, seed=0, backend="numpy")
    a = model.sample(20, [1, 2], temperature=1.0, rng=3)
    b = model.sample(20, [1, 2], temperature=1.0, rng=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20,) and a.min() >= 0 and a.max() < 7
    g1 = model.sample(10, [1], temperature=0)
    g2 = model.sample(10, [1], temperature=0, rng=99)
    np.testing.assert_array_equal(g1, g2)
    k1 = model.sample(30, None, temperature=1.0, rng=0, top_k=1)
    np.testing.assert_array_equal(k1, model.sample(30, None, temperature=0))
    assert model.training                                       # mode restored
    with pytest.raises(ValueError):
        model.sample(3, temperature=-1)


def test_regressor_forecast_rolls_forward():
    model = SequenceRegressor(1, hidden_size=4, seed=0, backend="numpy")
    x = np.random.default_rng(0).standard_normal((2, 6, 1)).astype(np.float32)
    out = model.forecast(x, 3)
    assert out.shape == (2, 3, 1)
    # an LSTM of 4 units over 6 steps, then a head of 4 inputs
    terms = cell_terms("lstm", 6, 2, 1, 4, backward=False) + 4
    assert_close(out[:, :1], model.predict(x), terms, scale=1.0)
    x2 = np.concatenate([x[:, 1:], out[:, :1]], axis=1)
    assert_close(out[:, 1:2], model.predict(x2), terms, scale=1.0)


@pytest.mark.parametrize("make", [
    lambda: LanguageModel(5, 3, 4, cell="gru", seed=0, backend="numpy"),
    lambda: SequenceClassifier(3, input_size=2, hidden_size=4, pooling="attention",
                               bidirectional=True, seed=0, backend="numpy"),
    lambda: SequenceRegressor(2, horizon=2, hidden_size=4, cell="peephole", seed=0,
                              backend="numpy"),
])
def test_save_load_round_trip(tmp_path, make):
    model = make()
    model.meta["note"] = "hello"
    for v in model.params.values():
        v += 0.25
    path = model.save(tmp_path / "m")
    assert path.endswith(".npz")
    again = type(model).load(path)
    assert again.config == model.config and again.meta == {"note": "hello"}
    for k, v in model.params.items():
        np.testing.assert_array_equal(again.params[k], v)
    assert type(load_model(path)) is type(model)
    assert load_model(path, backend="numpy").backend == "numpy"


def test_load_errors(tmp_path):
    lm = LanguageModel(5, 3, 4, seed=0, backend="numpy")
    path = lm.save(tmp_path / "lm.npz")
    with pytest.raises(CheckpointError, match="holds a LanguageModel, not a SequenceClassifier"):
        SequenceClassifier.load(path)
    with pytest.raises(FileNotFoundError):
        LanguageModel.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a fastrnn model"):
        load_model(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.npz")
    other = LanguageModel(6, 3, 4, seed=0, backend="numpy")
    with pytest.raises(CheckpointError, match="shape"):
        other.load_state_dict(lm.params)


def test_params_are_shared_arrays_and_prefixed():
    model = SequenceClassifier(2, input_size=3, hidden_size=4, pooling="attention", seed=0,
                               backend="numpy")
    names = set(model.params)
    assert {"rnn.weight_ih_l0", "attn.v", "head.weight"} <= names
    model.params["head.bias"][...] = 7
    assert (model.head.params["bias"] == 7).all()
    model.grads["rnn.weight_hh_l0"][...] = 1
    model.zero_grad()
    assert not model.rnn.grads["weight_hh_l0"].any()
    model.eval()
    assert not model.rnn.training and not model.head.training
    model.train()
    assert model.rnn.training


def _fit(model, data, epochs, lr=1e-2):
    tr = Trainer(model, Adam(model, lr=lr), data, seed=0, progress=False)
    tr.fit(epochs)
    return tr.history["loss"]


def test_language_model_training_lowers_loss():
    text = np.array(list(b"abcabdabcabd" * 40)) - 97
    model = LanguageModel(4, 8, 16, seed=0, backend="numpy")
    hist = _fit(model, LMBatches(text, 4, 10), 6, lr=2e-2)
    assert hist[-1] < 0.5 * hist[0]


def test_classifier_training_lowers_loss_and_learns():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 2)).astype(np.float32)
    lengths = rng.integers(2, 7, 96)
    y = np.array([(x[b, :lengths[b], 0].sum() > 0) for b in range(96)], dtype=np.int64)
    model = SequenceClassifier(2, input_size=2, hidden_size=8, pooling="attention", seed=0,
                               backend="numpy")
    hist = _fit(model, ArrayBatches(x, y, lengths=lengths, batch_size=16), 15)
    assert hist[-1] < 0.6 * hist[0]
    assert np.mean(model.predict(x, lengths) == y) > 0.85


def test_regressor_training_lowers_loss():
    t = np.arange(400) * 0.3
    from fastrnn.data import sliding_windows
    X, Y = sliding_windows(np.sin(t).astype(np.float32), 12, horizon=2)
    model = SequenceRegressor(1, horizon=2, hidden_size=8, cell="gru", seed=0, backend="numpy")
    hist = _fit(model, ArrayBatches(X, Y, batch_size=32), 8)
    assert hist[-1] < 0.2 * hist[0]


# ------------------------------------------------ padding trimmed to the batch
def _padded_batch(rng, B=6, T_pad=104, T_max=26, F=3):
    lengths = rng.integers(1, T_max + 1, B)
    lengths[0] = T_max
    x = rng.standard_normal((B, T_pad, F))
    x[np.arange(T_pad)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


def _spy_steps(monkeypatch, model):
    seen = []
    real = model.rnn.forward

    def spy(x, state=None, lengths=None):
        seen.append(x.shape[0])
        return real(x, state, lengths)

    monkeypatch.setattr(model.rnn, "forward", spy)
    return seen


@pytest.mark.parametrize("pooling", ["last", "attention"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_runs_only_to_the_longest_sequence(monkeypatch, pooling, bidirectional):
    rng = np.random.default_rng(7)
    x, lengths = _padded_batch(rng)
    y = rng.integers(0, 3, len(x))
    out = {}
    for trim in (True, False):
        model = SequenceClassifier(3, input_size=3, hidden_size=5, pooling=pooling,
                                   bidirectional=bidirectional, seed=2, **F64)
        model._trim = trim
        seen = _spy_steps(monkeypatch, model)
        model.zero_grad()
        loss, _ = model.batch_loss((x, y, lengths))
        dx = model.backward(np.ones((len(x), 3)))              # shaped like x, zero-padded
        out[trim] = (loss, {k: v.copy() for k, v in model.grads.items()},
                     model.predict_proba(x, lengths), dx, seen)
    assert out[True][4] == [26, 26] and out[False][4] == [104, 104]
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-12)
    for k, g in out[False][1].items():
        np.testing.assert_allclose(out[True][1][k], g, rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(out[True][2], out[False][2], rtol=1e-12)
    assert out[True][3].shape == x.shape
    np.testing.assert_allclose(out[True][3], out[False][3], rtol=1e-10, atol=1e-13)
    assert not out[True][3][:, 26:].any()


def test_token_classifier_and_regressor_trim_too(monkeypatch):
    rng = np.random.default_rng(8)
    x, lengths = _padded_batch(rng, F=1)
    ids = (np.abs(x[..., 0]) * 3).astype(np.int64) % 7
    for make, data, target in (
            (lambda: SequenceClassifier(2, vocab_size=7, embed_dim=4, hidden_size=5,
                                        seed=1, **F64), ids, rng.integers(0, 2, len(x))),
            (lambda: SequenceRegressor(1, horizon=2, hidden_size=5, seed=1, **F64), x,
             rng.standard_normal((len(x), 2, 1)))):
        res = []
        for trim in (True, False):
            model = make()
            model._trim = trim
            seen = _spy_steps(monkeypatch, model)
            model.zero_grad()
            loss, _ = model.batch_loss((data, target, lengths))
            res.append((loss, {k: v.copy() for k, v in model.grads.items()}, seen[0]))
        assert (res[0][2], res[1][2]) == (26, 104)
        assert res[0][0] == pytest.approx(res[1][0], rel=1e-12)
        for k, g in res[1][1].items():
            np.testing.assert_allclose(res[0][1][k], g, rtol=1e-10, atol=1e-13, err_msg=k)


def test_trainer_on_bucketed_batches_runs_short_batches_short(monkeypatch):
    rng = np.random.default_rng(9)
    n = 64
    lengths = np.where(rng.random(n) < 0.7, rng.integers(1, 27, n), rng.integers(27, 105, n))
    x = rng.standard_normal((n, 104, 2)).astype(np.float32)
    x[np.arange(104)[None, :] >= lengths[:, None]] = 0.0
    y = rng.integers(0, 2, n)
    model = SequenceClassifier(2, input_size=2, hidden_size=4, seed=0, backend="numpy")
    seen = _spy_steps(monkeypatch, model)
    data = ArrayBatches(x, y, lengths=lengths, batch_size=8, bucket=True)
    Trainer(model, Adam(model), data, progress=False).fit(1)
    batches = list(data.batches(np.random.default_rng(0)))
    assert any(b[0].shape[1] <= 26 for b in batches)
    assert all(b[0].shape[1] == b[2].max() for b in batches)
    assert sorted(seen) == sorted(b[0].shape[1] for b in batches)


# ---------------------------------------- inference paths run the layers in eval
def _spy_training_flag(monkeypatch):
    from fastrnn import dispatch
    be = dispatch.get_backend("numpy")
    flags = []
    real = be.forward

    def spy(*a, **kw):
        flags.append(a[-1] if len(a) == 8 else kw.get("training"))
        return real(*a, **kw)

    monkeypatch.setattr(be, "forward", spy)
    return flags


def test_predict_forecast_and_scoring_use_inference_kernels(monkeypatch):
    rng = np.random.default_rng(10)
    flags = _spy_training_flag(monkeypatch)
    clf = SequenceClassifier(2, input_size=2, hidden_size=3, seed=0, **F64)
    x = rng.standard_normal((5, 4, 2))
    clf.predict(x)
    reg = SequenceRegressor(2, hidden_size=3, seed=0, **F64)
    reg.forecast(x, 3)
    lm = LanguageModel(5, 3, 4, seed=0, **F64)
    ids = rng.integers(0, 5, 60)
    lm.evaluate(ids, batch_size=4, bptt=5)
    tr = Trainer(lm, Adam(lm), LMBatches(ids, 2, 5), progress=False)
    tr.evaluate(LMBatches(ids, 2, 5))
    assert flags and not any(flags)
    assert clf.training and reg.training and lm.training          # modes restored
    assert clf.rnn._cache is None and lm.rnn._cache is None       # nothing saved
    flags.clear()
    lm.batch_loss((ids[:10].reshape(5, 2), ids[1:11].reshape(5, 2)))
    assert flags == [True]


def test_classifier_validation_scores_each_batch_once(monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((20, 4, 2))
    y = rng.integers(0, 2, 20)
    model = SequenceClassifier(2, input_size=2, hidden_size=3, seed=0, **F64)
    tr = Trainer(model, Adam(model), ArrayBatches(x, y, batch_size=5), progress=False)
    seen = _spy_steps(monkeypatch, model)
    val = ArrayBatches(x, y, batch_size=10, shuffle=False)
    res = tr.evaluate(val)
    assert len(seen) == 2                                          # not 4
    assert res["accuracy"] == pytest.approx(float(np.mean(model.predict(x) == y)))


def test_sample_text_prime_refuses_unknown_characters():
    from fastrnn.data import CharVocab
    vocab = CharVocab("abcab ")
    lm = LanguageModel(len(vocab), 3, 4, seed=0, backend="numpy")
    with pytest.raises(ValueError, match="no vocabulary"):
        lm.sample(3, "ab")
    lm.meta["vocab"] = vocab.to_dict()
    np.testing.assert_array_equal(lm.sample(5, "ab c", rng=0),
                                  lm.sample(5, vocab.encode("ab c"), rng=0))
    with pytest.raises(ValueError, match=r"never saw: 'x', 'z'") as info:
        lm.sample(3, "abzx z")
    assert "'a'" not in str(info.value)


def test_model_classes_pickle_and_load_under_fastrnn_models():
    """The classes live in fastrnn.models' modules but keep the module path
    users import them from, which pickles record (and pickles made before the
    package split hold); saved files name them through the checkpoint's table."""
    import pickle

    from fastrnn import checkpoint
    assert checkpoint.MODELS == {c.__name__: c for c in
                                 (LanguageModel, SequenceClassifier, SequenceRegressor)}
    for cls in checkpoint.MODELS.values():
        assert cls.__module__ == "fastrnn.models"
    reg = SequenceRegressor(2, hidden_size=3, seed=0)
    data = pickle.dumps(reg)
    assert b"fastrnn.models.regressor" not in data
    again = pickle.loads(data)
    assert type(again) is SequenceRegressor
    for k, v in reg.params.items():
        np.testing.assert_array_equal(again.params[k], v)
