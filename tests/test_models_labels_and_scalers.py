"""Models carry their preprocessing (input and target scalers) and their labels."""
import numpy as np
import pytest

from fastrnn import SequenceClassifier, SequenceRegressor, load_model
from fastrnn.data import Standardizer, sliding_windows
from fastrnn.testing import assert_close, cell_terms


def data(n=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5, 3)) * 20 + 100           # raw: far from standardised
    y = np.where(x[:, :, 0].mean(1) > 100, "high", "low")
    return x, y


def test_fit_keeps_scaler_and_string_labels_through_save(tmp_path):
    x, y = data()
    clf = SequenceClassifier(2, input_size=3, hidden_size=16, backend="numpy", seed=0)
    clf.fit(x, y, epochs=15, lr=1e-2)
    assert clf.classes == ["high", "low"] and clf.scaler is not None
    assert clf.score(x, y) >= 0.85
    path = clf.save(tmp_path / "c.npz")
    back = load_model(path)
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    assert back.predict(x).dtype.kind == "U"
    with pytest.raises(ValueError, match=r"ambiguous.*X\[None\].*sequence=True"):
        back.predict(x[0])                       # one sequence [T, F], or T rows? (issue 25)
    assert back.predict(x[0], sequence=True) in ("high", "low")  # unbatched [T, F]
    p = back.predict_proba(x[0], sequence=True)
    assert p.shape == (2,) and p.sum() == pytest.approx(1)
    assert "classes=['high', 'low']" in repr(back) and "scaler=Standardizer" in repr(back)


def test_raw_input_is_scaled_by_the_model():
    x, y = data()
    clf = SequenceClassifier(2, input_size=3, hidden_size=8, backend="numpy", seed=0)
    clf.scaler = Standardizer().fit(x.reshape(-1, 3))
    z = clf.scaler.transform(x).astype(np.float32)
    want = np.exp(clf._infer(z, None).astype(np.float64))
    # the same logits; a softmax over 2 classes (float32 exponentials) on either side
    assert_close(clf.predict_proba(x), want / want.sum(1, keepdims=True), 2 + 8,
                 dtype=np.float32)


def test_string_labels_without_classes_explain_what_to_do():
    x, y = data(8)
    clf = SequenceClassifier(2, input_size=3, hidden_size=4, backend="numpy")
    with pytest.raises(TypeError, match="model.classes"):
        clf.batch_loss((x.astype(np.float32), y))
    clf.classes = ["high", "low"]
    loss, n = clf.batch_loss((x.astype(np.float32), y))      # original labels now map
    assert n == 8 and np.isfinite(loss)
    with pytest.raises(ValueError, match="'medium' is not one of the model's classes"):
        clf.encode_labels(["high", "medium"])


def test_models_without_metadata_behave_as_before():
    x, _ = data(6)
    clf = SequenceClassifier(3, input_size=3, hidden_size=4, backend="numpy", seed=0)
    out = clf.predict(x.astype(np.float32))
    assert out.dtype.kind == "i" and out.shape == (6,)


def test_unbatched_and_ragged_input():
    clf = SequenceClassifier(2, input_size=3, hidden_size=4, backend="numpy", seed=0)
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((t, 3)).astype(np.float32) for t in (2, 5, 3)]
    batch = clf.predict_proba(seqs)                           # padded, lengths from the list
    for s, p in zip(seqs, batch):
        # one sequence alone or in a padded batch: an LSTM of 4 units over 5 steps,
        # a head of 4 inputs, a softmax over 2 classes
        assert_close(clf.predict_proba(s, sequence=True), p,
                     cell_terms("lstm", 5, 3, 3, 4, backward=False) + 4 + 10)
    with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
        clf.predict(np.zeros((2, 4, 5), np.float32))          # was: a message about (T, B, I)
    uni = SequenceClassifier(2, input_size=1, hidden_size=4, backend="numpy", seed=0)
    assert uni.predict_proba(np.zeros(7, np.float32)).shape == (2,)


def test_regressor_predicts_in_original_units_with_differencing(tmp_path):
    t = np.arange(300, dtype=np.float64)
    series = 1000 + 5 * t + np.sin(t / 3) * 4                 # a trend
    lag, W = 1, 12
    d = np.diff(series)
    sc = Standardizer().fit(d[:250])
    X, Y = sliding_windows(sc.transform(d).astype(np.float32), W, 1)
    reg = SequenceRegressor(1, hidden_size=16, backend="numpy", seed=0)
    reg.scaler = reg.target_scaler = sc
    reg.difference = lag
    from fastrnn.data import ArrayBatches
    from fastrnn import Adam, Trainer
    Trainer(reg, Adam(reg, lr=1e-2), ArrayBatches(X, Y, batch_size=32), progress=False).fit(15)
    raw = series[-(W + lag):]
    nxt = reg.predict(raw)                                     # one raw window, unbatched
    assert nxt.shape == (1, 1) and abs(nxt[0, 0] - (series[-1] + 5)) < 5
    back = load_model(reg.save(tmp_path / "r.npz"))
    np.testing.assert_allclose(back.forecast(raw, 3), reg.forecast(raw, 3))
    assert back.forecast(raw, 3).shape == (3, 1)


def test_regressor_fit_helper_keeps_target_scaler():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6, 2)) * 50 + 500
    y = x[:, -1:, :1] * 2
    reg = SequenceRegressor(2, output_size=1, hidden_size=16, backend="numpy", seed=0)
    reg.fit(x, y, epochs=20, lr=1e-2)
    pred = reg.predict(x)
    assert pred.shape == (200, 1, 1)
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.5 * y.std()
