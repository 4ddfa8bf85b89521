"""The scikit-learn estimators (fastrnn.sklearn): clone,
Pipeline, GridSearchCV and cross_val_score on the wine data, and
scikit-learn's own estimator checks."""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_wine  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fastrnn.sklearn import (GRUClassifier, GRURegressor, LSTMClassifier,  # noqa: E402
                             RNNClassifier, RNNRegressor)

FAST = dict(hidden_size=8, epochs=15, backend="numpy", random_state=0)


def test_clone_pipeline_grid_search_and_cross_val_on_wine():
    X, y = load_wine(return_X_y=True)
    est = LSTMClassifier(**FAST)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert GRUClassifier().cell == "gru" and RNNClassifier(cell="rnn_tanh").cell == "rnn_tanh"
    pipe = make_pipeline(StandardScaler(), est).fit(X, y)
    assert pipe.score(X, y) > 0.9
    grid = GridSearchCV(make_pipeline(StandardScaler(), LSTMClassifier(**FAST)),
                        {"lstmclassifier__hidden_size": [4, 8]}, cv=3).fit(X, y)
    assert grid.best_params_["lstmclassifier__hidden_size"] in (4, 8)
    assert grid.best_score_ > 0.8
    scores = cross_val_score(make_pipeline(StandardScaler(), GRUClassifier(**FAST)), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8


def test_fitted_attributes_and_names_from_a_dataframe(tmp_path):
    frame = load_wine(as_frame=True)
    clf = LSTMClassifier(**FAST).fit(frame.data, frame.target)
    assert list(clf.feature_names_in_) == list(frame.data.columns)
    assert clf.n_features_in_ == 13
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict_proba(frame.data[:5]).shape == (5, 3)
    assert clf.model_.feature_names == list(frame.data.columns)   # saved with model_.save
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict(frame.data), clf.predict(frame.data))


def test_regressor_keeps_the_shape_of_y_and_sequences_by_features():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6))
    y = X[:, 0] - X[:, 3]
    reg = GRURegressor(**FAST).fit(X, y)
    assert reg.predict(X[:4]).shape == (4,) and reg.score(X, y) > 0.5
    Y2 = np.stack([y, 2 * y], axis=1)
    assert RNNRegressor(**FAST).fit(X, Y2).predict(X[:4]).shape == (4, 2)
    seq = RNNRegressor(features=2, **FAST).fit(X, y)          # 6 values = 3 steps of 2
    assert seq.model_.input_size == 2 and seq.model_.input_kind == "sequence"
    with pytest.raises(ValueError, match="features=4"):
        RNNRegressor(features=4, **FAST).fit(X, y)


@pytest.mark.parametrize("est", [RNNClassifier(**FAST), RNNRegressor(**FAST)],
                         ids=["classifier", "regressor"])
def test_sklearn_estimator_checks(est):
    """Every check of scikit-learn's check_estimator passes, but the array-API
    one, which scikit-learn skips unless SCIPY_ARRAY_API is set (the models
    compute in NumPy)."""
    from sklearn.utils.estimator_checks import check_estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None)
    bad = [(r["check_name"], r["status"], str(r["exception"])[:200]) for r in results
           if r["status"] != "passed" and r["check_name"] != "check_array_api_input"]
    assert not bad, bad
    assert sum(r["status"] == "passed" for r in results) >= 45
