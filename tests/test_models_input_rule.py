"""The models' one rule for array input (fastrnn.models.INPUT_RULE). A model records
at fit whether it was trained on tabular rows or on sequences; [n, F] to a
tabular model is n rows; an ambiguous 2-D array to any other model is an
error that shows the reshapes, unless sequence=True/False says which."""
import numpy as np
import pytest

from fastrnn import SequenceClassifier, SequenceRegressor, load_model

datasets = pytest.importorskip("sklearn.datasets")


def wine():
    X, y = datasets.load_wine(return_X_y=True)
    return X, y


def test_tabular_classifier_gives_one_label_per_row(tmp_path):
    X, y = wine()
    clf = SequenceClassifier(3, input_size=13, hidden_size=8, backend="numpy", seed=0)
    clf.fit(X, y, epochs=30, lr=1e-2)                  # (178, 13): rows, not one sequence
    assert clf.input_kind == "tabular"
    pred = clf.predict(X[:45])                         # was: one label for the (45, 13) array
    assert pred.shape == (45,)
    assert clf.score(X, y) > 0.9                       # rows, read as rows, learn wine
    assert clf.predict_proba(X[:45]).shape == (45, 3)
    assert clf.predict(X[0]).shape == ()              # one row [F]: one label
    back = load_model(clf.save(tmp_path / "w.npz"))    # the kind travels with the file
    assert back.input_kind == "tabular"
    np.testing.assert_array_equal(back.predict(X[:45]), pred)


def test_ambiguous_2d_array_to_a_sequence_model_shows_the_reshapes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 13))
    y = (x[:, :, 0].mean(1) > 0).astype(int)
    clf = SequenceClassifier(2, input_size=13, hidden_size=4, backend="numpy", seed=0)
    clf.fit(x, y, epochs=1)
    assert clf.input_kind == "sequence"
    X = rng.standard_normal((45, 13))
    with pytest.raises(ValueError) as e:
        clf.predict(X)
    msg = str(e.value)
    for hint in ("(45, 13) is ambiguous", "X[None]", "X[:, None, :]", "X[:, :, None]",
                 "sequence=True", "sequence=False"):
        assert hint in msg, (hint, msg)
    one = clf.predict(X, sequence=True)                # one sequence of 45 steps
    assert np.ndim(one) == 0
    assert one == clf.predict(X[None])[0]
    rows = clf.predict(X, sequence=False)              # 45 rows of one step
    np.testing.assert_array_equal(rows, clf.predict(X[:, None, :]))
    with pytest.raises(TypeError, match="sequence must be True or False"):
        clf.predict(X, sequence="yes")


def test_a_model_built_by_hand_refuses_to_guess_too():
    clf = SequenceClassifier(2, input_size=3, hidden_size=4, backend="numpy", seed=0)
    assert clf.input_kind is None
    with pytest.raises(ValueError, match="does not know whether it takes rows or sequences"):
        clf.predict(np.zeros((5, 3)))
    assert clf.predict(np.zeros((2, 5, 3))).shape == (2,)            # 3-D: no question
    uni = SequenceClassifier(2, input_size=1, hidden_size=4, backend="numpy", seed=0)
    assert uni.predict(np.zeros((4, 7))).shape == (4,)               # [B, T], F = 1
    with pytest.raises(ValueError, match="ambiguous"):
        uni.predict(np.zeros((4, 1)))                  # 4 steps of one sequence, or 4 rows?
    with pytest.raises(ValueError, match="does not fit this model"):
        clf.predict(np.zeros((5, 4)))


def test_dataframe_columns_are_kept_and_matched_by_name(tmp_path):
    frame = datasets.load_wine(as_frame=True)
    X, y = frame.data, frame.target
    clf = SequenceClassifier(3, input_size=13, hidden_size=8, backend="numpy", seed=0)
    clf.fit(X, y, epochs=20, lr=1e-2)
    assert clf.feature_names == list(X.columns)
    swapped = X[list(reversed(X.columns))]
    np.testing.assert_array_equal(clf.predict(swapped), clf.predict(X))   # by name
    with pytest.raises(ValueError, match=r"missing \['alcohol'\], unexpected \['alc'\]"):
        clf.predict(X.rename(columns={"alcohol": "alc"}))
    back = load_model(clf.save(tmp_path / "w.npz"))
    assert back.feature_names == list(X.columns)
    np.testing.assert_array_equal(back.predict(swapped), clf.predict(X))


def test_regressor_fits_rows_and_windows():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    reg = SequenceRegressor(4, output_size=1, hidden_size=8, backend="numpy", seed=0)
    reg.fit(X, y, epochs=30, lr=1e-2)
    assert reg.input_kind == "tabular"
    pred = reg.predict(X[:45])
    assert pred.shape == (45, 1, 1)
    assert np.sqrt(np.mean((pred[:, 0, 0] - y[:45]) ** 2)) < 0.5 * y.std()
    with pytest.raises(ValueError, match=r"y has shape \(7,\)"):
        reg.fit(X, y[:7], epochs=1)


def test_old_model_files_without_the_kind_still_load(tmp_path):
    clf = SequenceClassifier(2, input_size=3, hidden_size=4, backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 5, 3))
    path = clf.save(tmp_path / "old.npz")              # nothing recorded: as an old file
    back = load_model(path)
    assert back.input_kind is None and back.feature_names is None
    np.testing.assert_allclose(back.predict_proba(x), clf.predict_proba(x))
