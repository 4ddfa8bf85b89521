"""Every public constructor and method argument (layers, models, optimizers,
data) is checked: a bad value is rejected with an error naming the argument,
never accepted silently, and its valid neighbours still work."""
import numpy as np
import pytest

import fastrnn
from fastrnn.data import ArrayBatches, LMBatches, sliding_windows
from fastrnn.models import LanguageModel, SequenceClassifier, SequenceRegressor
from fastrnn.optim import SGD, Adagrad, Adam, AdamW, RMSprop
from fastrnn.train import EarlyStopping


_X = np.zeros((2, 3, 1), np.float32)


def _lm():
    return LanguageModel(5, 3, 4, backend="numpy", seed=0)


def _reg():
    return SequenceRegressor(1, hidden_size=3, backend="numpy", seed=0)


def _clf():
    return SequenceClassifier(2, input_size=1, hidden_size=3, backend="numpy", seed=0)


BAD_CALLS = [
    # layers: bools must be bools ("False" is truthy), floats finite, seeds valid
    (lambda: fastrnn.GRU(3, 4, bidirectional="False"), TypeError, "bidirectional must be True or False"),
    (lambda: fastrnn.LSTM(3, 4, bias="False"), TypeError, "bias must be True or False"),
    (lambda: fastrnn.RNN(3, 4, batch_first="False"), TypeError, "batch_first must be True or False"),
    (lambda: fastrnn.LSTM(3, 4, batch_first=None), TypeError, "batch_first must be True or False"),
    (lambda: fastrnn.LSTM(3, 4, forget_bias=float("nan")), ValueError, "forget_bias must be a finite"),
    (lambda: fastrnn.LSTM(3, 4, forget_bias="x"), TypeError, "forget_bias must be a real number"),
    (lambda: fastrnn.LSTM(3, 4, seed=-1), ValueError, "seed must be a non-negative integer"),
    (lambda: fastrnn.LSTM(3, 4, seed="abc"), TypeError, "seed must be None"),
    (lambda: fastrnn.LSTM(3, 4, dropout=True), ValueError, "dropout must be"),
    (lambda: fastrnn.LSTM(3.0, 4), ValueError, "input_size must be a positive integer"),
    (lambda: fastrnn.set_num_threads(2.5), TypeError, "number of threads"),
    (lambda: fastrnn.set_num_threads(None), TypeError, "number of threads"),
    (lambda: fastrnn.set_num_threads(True), TypeError, "number of threads"),
    (lambda: fastrnn.set_num_threads(0), ValueError, "number of threads"),
    # models
    (lambda: SequenceClassifier(0, input_size=2), ValueError, "num_classes must be a positive integer"),
    (lambda: SequenceClassifier(2.5, input_size=2), TypeError, "num_classes must be an integer"),
    (lambda: LanguageModel(0), ValueError, "vocab_size must be a positive integer"),
    (lambda: LanguageModel(5, hidden_size=0), ValueError, "hidden_size must be a positive integer"),
    (lambda: SequenceRegressor(1, horizon=0), ValueError, "horizon must be a positive integer"),
    (lambda: SequenceRegressor(1, dropout=1.5), ValueError, "dropout must lie in"),
    (lambda: SequenceClassifier(2, input_size=1, bidirectional="no"), TypeError, "bidirectional"),
    (lambda: LanguageModel(5, seed=-1), ValueError, "seed must be a non-negative"),
    (lambda: LanguageModel(5, dtype="int8"), TypeError, "dtype must be float32 or float64"),
    (lambda: _clf().predict(_X, lengths=[2.5, 3.0]), TypeError, "lengths must hold integers"),
    (lambda: _clf().predict(_X, lengths=[True, True]), TypeError, "lengths must hold integers"),
    (lambda: _clf().predict(_X, lengths=np.array([2.5, 3.0])), TypeError, "lengths must hold integers"),
    (lambda: _clf().predict(_X, lengths=[0, 3]), ValueError, r"lengths must lie in \[1, T\]"),
    (lambda: _clf().batch_loss((_X, np.array([0.5, 1.0]))), ValueError, r"y \(class labels\).*non-integral"),
    (lambda: _clf().batch_loss((_X, np.array([0, 2]))), ValueError, r"y \(class labels\) must lie in \[0, num_classes\)"),
    (lambda: _clf().batch_loss((_X, np.array(["a", "b"]))), TypeError, r"y \(class labels\)"),
    (lambda: _reg().batch_loss((_X, np.zeros((2, 3)))), ValueError, "y must have shape"),
    (lambda: _reg().batch_loss((_X, np.full((2, 1), np.nan))), ValueError, "y contains NaN"),
    (lambda: _reg().forecast(_X, -1), ValueError, "steps must be a positive integer"),
    (lambda: _reg().forecast(_X, 1.5), TypeError, "steps must be an integer"),
    (lambda: _lm().sample(-1), ValueError, "n must be a non-negative integer"),
    (lambda: _lm().sample(3, temperature=float("nan")), ValueError, "temperature must be a finite"),
    (lambda: _lm().sample(3, top_k=0), ValueError, "top_k must be a positive integer"),
    # optimizers
    (lambda: Adam(_lm(), betas=(1.5, 0.9)), ValueError, r"betas\[0\] must lie in \[0, 1\)"),
    (lambda: Adam(_lm(), betas=0.9), TypeError, "betas must be a pair"),
    (lambda: AdamW(_lm(), eps=-1e-8), ValueError, "eps must lie in"),
    (lambda: SGD(_lm(), momentum=-0.5), ValueError, "momentum must lie in"),
    (lambda: SGD(_lm(), lr=float("nan")), ValueError, "lr must be a finite"),
    (lambda: SGD(_lm(), nesterov="yes", momentum=0.9), TypeError, "nesterov must be True or False"),
    (lambda: RMSprop(_lm(), alpha=1.5), ValueError, "alpha must lie in"),
    (lambda: Adagrad(_lm(), lr_decay=-1), ValueError, "lr_decay must lie in"),
    # data
    (lambda: ArrayBatches(_X, np.zeros(2), batch_size=0), ValueError, "batch_size must be a positive integer"),
    (lambda: ArrayBatches(_X, np.zeros(2), batch_size=2.5), TypeError, "batch_size must be an integer"),
    (lambda: ArrayBatches(_X, np.zeros(2), shuffle="no"), TypeError, "shuffle must be True or False"),
    (lambda: LMBatches(np.arange(20), 0, 4), ValueError, "batch_size must be a positive integer"),
    (lambda: LMBatches(np.arange(20), 2, 0), ValueError, "bptt must be a positive integer"),
    (lambda: sliding_windows(np.arange(20.0), 0), ValueError, "window must be a positive integer"),
]


@pytest.mark.parametrize("call, exc, match", BAD_CALLS,
                         ids=[f"bad{i}" for i in range(len(BAD_CALLS))])
def test_bad_arguments_are_rejected_by_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_valid_neighbours_of_the_bad_arguments_still_work():
    assert fastrnn.GRU(3, 4, bidirectional=np.bool_(True)).bidirectional is True
    assert fastrnn.LSTM(3, 4, forget_bias=1).params["bias_ih_l0"][4:8].tolist() == [1.0] * 4
    clf = _clf()
    x = np.random.default_rng(0).standard_normal((2, 3, 1)).astype(np.float32)
    p = clf.predict(x, lengths=np.array([2, 3], np.int32))
    assert p.shape == (2,)
    # integral float labels (as read from a CSV) are taken as the same integers
    a, _ = clf.batch_loss((x, np.array([0.0, 1.0])), train=False)
    b, _ = clf.batch_loss((x, np.array([0, 1])), train=False)
    assert a == b
    reg = _reg()
    for y in (np.zeros((2, 1, 1)), np.zeros((2, 1)), np.zeros(2)):
        reg.batch_loss((x, y), train=False)
    assert len(_lm().sample(0)) == 0
    SGD(_lm(), lr=0.0, momentum=0)
    Adam(_lm(), betas=[0.0, 0.5])
    ArrayBatches(x, np.zeros(2), batch_size=np.int64(2))
    EarlyStopping()
