"""model.to_torch(): a torch.nn.Module twin of each fastrnn model, whose
outputs equal the model's (forward, predict_proba, predict) to 1e-5, and
model.state_dict(as_torch=True). fastrnn runs on the NumPy reference backend
(nothing compiles). Skipped without torch."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn                                      # noqa: E402
from fastrnn.data import Standardizer              # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def test_language_model_twin():
    rng = np.random.default_rng(0)
    lm = fastrnn.LanguageModel(11, embed_dim=5, hidden_size=6, num_layers=2, dropout=0.2,
                               backend="numpy", seed=0).eval()
    twin = lm.to_torch()
    assert isinstance(twin, torch.nn.Module) and not twin.training
    tok = rng.integers(0, 11, (7, 3))
    h0, c0 = (rng.normal(size=(2, 3, 6)).astype(np.float32) for _ in range(2))
    logits, (h, c) = lm(tok, (h0, c0))
    with torch.no_grad():
        tl, (th, tc) = twin(torch.from_numpy(tok), (torch.from_numpy(h0), torch.from_numpy(c0)))
    np.testing.assert_allclose(tl.numpy(), logits, **TOL)
    np.testing.assert_allclose(th.numpy(), h, **TOL)
    np.testing.assert_allclose(tc.numpy(), c, **TOL)
    sd = lm.state_dict(as_torch=True)
    assert set(sd) == set(twin.state_dict()) and all(isinstance(v, torch.Tensor)
                                                     for v in sd.values())


@pytest.mark.parametrize("pooling,cell,dtype", [("attention", "gru", "float32"),
                                                ("last", "lstm", "float64"),
                                                ("last", "rnn_relu", "float32")])
def test_classifier_twin(pooling, cell, dtype):
    rng = np.random.default_rng(1)
    clf = fastrnn.SequenceClassifier(3, input_size=4, hidden_size=5, num_layers=2, cell=cell,
                                     pooling=pooling, bidirectional=True, backend="numpy",
                                     dtype=dtype, seed=0)
    clf.scaler = Standardizer(rng.normal(size=4), rng.uniform(0.5, 2, 4))
    clf.classes = ["a", "b", "c"]
    twin = clf.to_torch()
    x = rng.normal(size=(5, 6, 4))
    lengths = np.array([6, 2, 5, 1, 3])
    xt = x.astype(dtype)
    with torch.no_grad():
        logits = twin(torch.from_numpy(xt), torch.from_numpy(lengths)).numpy()
        proba = twin.predict_proba(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    clf.eval()
    np.testing.assert_allclose(logits, clf(xt, lengths), **TOL)
    np.testing.assert_allclose(proba, clf.predict_proba(x, lengths), **TOL)
    assert twin.classes == clf.classes


def test_classifier_twin_with_embedding():
    rng = np.random.default_rng(2)
    clf = fastrnn.SequenceClassifier(2, vocab_size=9, embed_dim=4, hidden_size=5,
                                     pooling="attention", backend="numpy", seed=0)
    twin = clf.to_torch()
    ids = rng.integers(0, 9, (4, 6))
    with torch.no_grad():
        p = twin.predict_proba(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(p, clf.predict_proba(ids), **TOL)


@pytest.mark.parametrize("difference", [0, 2])
def test_regressor_twin_predicts_in_user_units(difference):
    rng = np.random.default_rng(3)
    reg = fastrnn.SequenceRegressor(2, horizon=3, hidden_size=5, cell="gru", backend="numpy",
                                    seed=0)
    reg.scaler = Standardizer(rng.normal(10, 1, size=2), rng.uniform(0.5, 2, 2))
    reg.target_scaler = Standardizer(rng.normal(10, 1, size=2), rng.uniform(2, 5, 2))
    reg.difference = difference
    twin = reg.to_torch()
    x = rng.normal(10, 2, size=(4, 8, 2))
    with torch.no_grad():
        pred = twin.predict(torch.from_numpy(x)).numpy()
        raw = twin(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(pred, reg.predict(x), **TOL)
    reg.eval()
    np.testing.assert_allclose(raw, reg(x.astype(np.float32)), **TOL)


def test_cells_without_a_torch_twin_are_refused():
    clf = fastrnn.SequenceClassifier(2, input_size=3, hidden_size=4, cell="peephole",
                                     backend="numpy", seed=0)
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        clf.to_torch()
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        clf.state_dict(as_torch=True)
