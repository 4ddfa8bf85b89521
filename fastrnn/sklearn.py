"""scikit-learn estimators around the fastrnn models (``pip install
'fastrnn[sklearn]'``; scikit-learn is imported only here).

:class:`RNNClassifier` and :class:`RNNRegressor` take any cell (``cell=``:
``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"peephole"``..., see
:data:`fastrnn.models.CELL_TYPES`); :class:`LSTMClassifier`,
:class:`GRUClassifier`, :class:`LSTMRegressor` and :class:`GRURegressor` are
the same estimators with another default cell. They follow scikit-learn's
conventions, so ``clone``, ``Pipeline``, ``GridSearchCV`` and
``cross_val_score`` work with them:

- every parameter is an ``__init__`` keyword stored as given
  (``get_params``/``set_params`` come from ``BaseEstimator``); ``fit`` does
  the work and sets the fitted attributes, ending in ``_``: ``model_`` (the
  :class:`fastrnn.SequenceClassifier` / :class:`~fastrnn.SequenceRegressor`,
  which ``model_.save(path)`` writes as a fastrnn model file),
  ``history_``, ``n_features_in_``, ``feature_names_in_`` (a DataFrame's
  columns, also kept as the model's ``feature_names``), and ``classes_`` for
  a classifier;
- ``fit(X, y)`` returns the estimator; ``predict``, ``predict_proba``
  (classifier) and ``score`` (accuracy, R²) as scikit-learn's mixins define.

In float32 (the default ``dtype``) a prediction's last bits depend on the
batch it is computed in (the order of the float32 sums), so scikit-learn's
``check_methods_subset_invariance`` (rtol 1e-7) can fail for the regressors;
``dtype="float64"`` passes every check (tests/test_sklearn.py runs them).

The input rule: ``X`` is 2-D, ``n`` samples of ``n_features`` values. With
``features=None`` (the default) a sample is one step of all its features
(tabular data, what scikit-learn's data sets are); with ``features=F`` a
sample of ``n_features = T * F`` values is a sequence of ``T`` steps of ``F``
features, read step by step (``load_digits``' 64 pixels with ``features=8``
are 8 rows of 8). A 3-D ``X`` ``(n, T, F)`` is taken as sequences as it is.

Examples
--------
>>> from sklearn.datasets import load_wine
>>> from sklearn.pipeline import make_pipeline
>>> from sklearn.preprocessing import StandardScaler
>>> from fastrnn.sklearn import LSTMClassifier
>>> X, y = load_wine(return_X_y=True)
>>> clf = make_pipeline(StandardScaler(), LSTMClassifier(hidden_size=8, epochs=20,
...                                                      random_state=0))
>>> clf.fit(X, y).score(X, y) > 0.9
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["RNNClassifier", "RNNRegressor", "LSTMClassifier", "GRUClassifier",
           "LSTMRegressor", "GRURegressor"]


# dataclass writes the explicit keyword __init__ that scikit-learn requires (every
# parameter stored as given, nothing else), once for the base and each default cell
@dataclass(kw_only=True, repr=False, eq=False)
class _RNNEstimator(BaseEstimator):
    """The parameters shared by the classifier and the regressor.

    Parameters
    ----------
    cell : str, default "lstm"
        The recurrent cell (:data:`fastrnn.models.CELL_TYPES`).
    hidden_size : int, default 32
        Hidden units per layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    bidirectional : bool, default False
        Bidirectional layers.
    pooling : {"last", "attention"}, default "last"
        How a sequence becomes one vector.
    dropout : float, default 0.0
        Dropout between layers and before the head.
    features : int or None, default None
        Values per time step: ``None``, a sample is one step of all its
        features; ``F``, a sample of ``T * F`` values is ``T`` steps.
    epochs : int, default 30
        Passes over the data in ``fit``.
    batch_size : int, default 32
        Samples per optimizer step.
    lr : float, default 1e-2
        Learning rate.
    optimizer : str, default "adam"
        :func:`fastrnn.optim.get_optimizer` name.
    clip_norm : float, default 1.0
        Global gradient-norm clip (0: none).
    standardize : bool, default True
        Standardise the inputs (and a regressor's targets) on the training
        data inside the model (a ``StandardScaler`` in a pipeline does the
        inputs as well).
    backend : str, default "auto"
        ``"auto"``, ``"cpu"``, ``"numpy"`` or ``"cuda"``.
    dtype : str, default "float32"
        The model's parameter dtype.
    random_state : int, RandomState or None, default None
        Seeds the weights, dropout and shuffling (an int: repeatable fits).
    verbose : bool, default False
        Show the training progress.
    """

    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    pooling: str = "last"
    dropout: float = 0.0
    features: int | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-2
    optimizer: str = "adam"
    clip_norm: float = 1.0
    standardize: bool = True
    backend: str = "auto"
    dtype: str = "float32"
    random_state: int | None = None
    verbose: bool = False

    def _sequences(self, X, y=None, reset=True, **kw):
        """Validate ``X`` (and ``y``) the scikit-learn way (``n_features_in_``,
        ``feature_names_in_``), and read it as ``[n, T, F]`` sequences by the
        module's input rule."""
        if y is None:
            X = validate_data(self, X, reset=reset, allow_nd=True, dtype=np.float64)
        else:
            X, y = validate_data(self, X, y, reset=reset, allow_nd=True, dtype=np.float64, **kw)
        if X.ndim == 2:
            F = X.shape[1] if self.features is None else int(self.features)
            if F < 1 or X.shape[1] % F:
                raise ValueError(f"features={self.features!r}: each sample has {X.shape[1]} "
                                 "values, not a whole number of steps of that many features")
            X = X.reshape(len(X), X.shape[1] // F, F)
        elif X.ndim != 3:
            raise ValueError(f"X must be 2-D (n_samples, n_features) or 3-D (n, T, F), got "
                             f"{X.ndim}-D")
        elif not reset and X.shape[2] != self.model_.input_size:
            raise ValueError(f"X has {X.shape[2]} features per step; the model was fitted on "
                             f"{self.model_.input_size}")
        return X if y is None else (X, y)

    def _model_args(self):
        return dict(hidden_size=self.hidden_size, num_layers=self.num_layers, cell=self.cell,
                    pooling=self.pooling, bidirectional=self.bidirectional,
                    dropout=self.dropout, backend=self.backend, dtype=self.dtype)

    def _fit_model(self, model, X, y):
        seed = self._seed()
        model.fit(X, y, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                  optimizer=self.optimizer, val_fraction=0.0, standardize=self.standardize,
                  clip_norm=self.clip_norm, seed=seed, progress=bool(self.verbose))
        names = getattr(self, "feature_names_in_", None)
        if names is not None and len(names) == model.input_size:
            model.feature_names = [str(n) for n in names]
        self.model_ = model
        self.history_ = model.history
        return self

    def _need_y(self, y):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")

    # pickling (joblib, GridSearchCV with n_jobs): the fitted model travels as its
    # class, config, meta and parameters, rebuilt as a model file is read
    def __getstate__(self):
        state = dict(super().__getstate__())      # a copy: the estimator keeps its model
        m = state.get("model_")
        if m is not None:
            state["model_"] = {"model": type(m).__name__, "config": dict(m.config),
                               "meta": dict(m.meta), "params": m.state_dict()}
        return state

    def __setstate__(self, state):
        m = state.get("model_")
        if isinstance(m, dict):
            from .checkpoint import build_model
            from .models import _MODELS
            state = dict(state, model_=build_model("<pickled estimator>", m, m["params"],
                                                   _MODELS))
        super().__setstate__(state)

    def _seed(self):
        # the weights' seed, drawn from random_state (as the training's is)
        return int(check_random_state(self.random_state).randint(2 ** 31 - 1))


@dataclass(kw_only=True, repr=False, eq=False)
class RNNClassifier(ClassifierMixin, _RNNEstimator):
    """A recurrent classifier with scikit-learn's interface (parameters: see
    :class:`_RNNEstimator`; the input rule: the module docstring).

    Attributes
    ----------
    classes_ : ndarray
        The labels seen by ``fit``, sorted; ``predict_proba``'s columns.
    model_ : fastrnn.SequenceClassifier
        The trained model.
    history_ : dict
        The training history (losses in nats per sequence).
    n_features_in_, feature_names_in_
        As scikit-learn defines them.
    """

    def fit(self, X, y):
        """Train on ``X`` (2-D, or 3-D sequences) and labels ``y``; returns self."""
        from .models import SequenceClassifier
        self._need_y(y)
        X, y = self._sequences(X, y, reset=True)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        model = SequenceClassifier(len(self.classes_), input_size=X.shape[2],
                                   seed=self._seed(), **self._model_args())
        return self._fit_model(model, X, y_enc.astype(np.int64))

    def predict_proba(self, X):
        """Class probabilities ``(n, len(classes_))``."""
        check_is_fitted(self)
        return self.model_.predict_proba(self._sequences(X, reset=False))

    def predict(self, X):
        """The most probable label of each sample (from ``classes_``)."""
        p = self.predict_proba(X)                 # checks that fit ran first
        return self.classes_[p.argmax(axis=1)]


@dataclass(kw_only=True, repr=False, eq=False)
class RNNRegressor(RegressorMixin, _RNNEstimator):
    """A recurrent regressor with scikit-learn's interface: ``y`` of shape
    ``(n,)`` or ``(n, k)``, predicted in the same shape (parameters: see
    :class:`_RNNEstimator`; the input rule: the module docstring).

    Attributes
    ----------
    model_ : fastrnn.SequenceRegressor
        The trained model (``output_size = k``, horizon 1).
    history_ : dict
        The training history (mean squared error of standardised targets).
    n_features_in_, feature_names_in_
        As scikit-learn defines them.
    """

    def fit(self, X, y):
        """Train on ``X`` (2-D, or 3-D sequences) and targets ``y``; returns self."""
        from .models import SequenceRegressor
        self._need_y(y)
        X, y = self._sequences(X, y, reset=True, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        y2 = y.reshape(len(y), -1)
        model = SequenceRegressor(X.shape[2], output_size=y2.shape[1], horizon=1,
                                  seed=self._seed(), **self._model_args())
        return self._fit_model(model, X, y2[:, None, :])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True          # y (n, k): k outputs
        return tags

    def predict(self, X):
        """Predictions, ``(n,)`` or ``(n, k)`` as ``y`` was."""
        check_is_fitted(self)
        out = self.model_.predict(self._sequences(X, reset=False))[:, 0, :]
        return out[:, 0] if self._y_ndim == 1 else out


@dataclass(kw_only=True, repr=False, eq=False)
class LSTMClassifier(RNNClassifier):
    """:class:`RNNClassifier` with ``cell="lstm"``."""

    cell: str = "lstm"


@dataclass(kw_only=True, repr=False, eq=False)
class GRUClassifier(RNNClassifier):
    """:class:`RNNClassifier` with ``cell="gru"``."""

    cell: str = "gru"


@dataclass(kw_only=True, repr=False, eq=False)
class LSTMRegressor(RNNRegressor):
    """:class:`RNNRegressor` with ``cell="lstm"``."""

    cell: str = "lstm"


@dataclass(kw_only=True, repr=False, eq=False)
class GRURegressor(RNNRegressor):
    """:class:`RNNRegressor` with ``cell="gru"``."""

    cell: str = "gru"
