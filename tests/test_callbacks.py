"""Trainer callbacks: the hooks a user callback sees, stopping from a
callback, and the keyword shortcuts equal to the callbacks they build."""
import numpy as np
import pytest

from fastrnn.callbacks import (Callback, EarlyStopping, LearningRateScheduler,
                               ModelCheckpoint, ProgressLogger)
from fastrnn.data import ArrayBatches
from fastrnn.models import SequenceClassifier
from fastrnn.optim import Adam, StepDecay
from fastrnn.train import Trainer


def _trainer(seed=0, **kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5, 2)).astype(np.float32)
    lengths = rng.integers(2, 6, 64)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    model = SequenceClassifier(2, input_size=2, hidden_size=6, dropout=0.2,
                               pooling="attention", seed=1, backend="numpy")
    train = ArrayBatches(x[:48], y[:48], lengths=lengths[:48], batch_size=8)     # 6 batches
    val = ArrayBatches(x[48:], y[48:], lengths=lengths[48:], batch_size=16, shuffle=False)
    kw.setdefault("progress", False)
    return Trainer(model, Adam(model, lr=1e-2), train, val, clip_norm=1.0, seed=seed, **kw)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", dict(logs)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch, dict(logs)))

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch, dict(logs)))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))

    def hooks(self, name):
        return [c for c in self.calls if c[0] == name]


def _same_weights(a, b):
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(v, b.model.params[k], err_msg=k)


def test_a_user_callback_sees_every_epoch_batch_and_the_logs():
    rec = Recorder()
    tr = _trainer(callbacks=[rec])
    tr.fit(2)
    assert rec.trainer is tr and rec.model is tr.model
    names = [c[0] for c in rec.calls]
    epoch = ["epoch_begin"] + ["batch_begin", "batch_end"] * 6 + ["epoch_end"]
    assert names == ["train_begin"] + epoch * 2 + ["train_end"]
    assert rec.calls[0][1] == {"epochs": 2, "steps": None}
    assert [c[1] for c in rec.hooks("epoch_begin")] == [0, 1]
    assert rec.hooks("epoch_begin")[0][2] == {
        "epochs": 2, "batches": 6, "batch": 0, "items": 0, "loss_sum": 0.0,
        "loss_count": 0, "time": 0.0}
    ends = rec.hooks("batch_end")
    assert [c[1] for c in ends] == list(range(6)) * 2
    assert [c[2]["step"] for c in ends] == list(range(1, 13))
    assert [c[2]["step"] for c in rec.hooks("batch_begin")] == list(range(12))
    assert all(c[2]["size"] == 8 and np.isfinite(c[2]["loss"]) for c in ends)
    # the epoch's loss is the count-weighted mean of its batches' losses
    first = [c[2] for c in ends[:6]]
    assert tr.history["loss"][0] == pytest.approx(
        sum(d["loss"] * d["size"] for d in first) / sum(d["size"] for d in first))
    for i, (_, e, logs) in enumerate(rec.hooks("epoch_end")):
        assert e == i and logs["epoch"] == i + 1
        assert logs == {k: v[i] for k, v in tr.history.items()}       # the history row
        assert {"val_loss", "val_accuracy", "lr"} <= set(logs)
    assert rec.calls[-1][1] == {"stop_reason": None, "epoch": 2, "step": 12}


def test_callbacks_leave_training_bit_for_bit_unchanged():
    plain, watched = _trainer(), _trainer(callbacks=[Recorder()])
    plain.fit(2)
    watched.fit(2)
    _same_weights(plain, watched)
    assert plain.history["loss"] == watched.history["loss"]


class StopAfter(Callback):
    """Stops training like Keras's ``model.stop_training = True``."""

    def __init__(self, epochs=None, steps=None):
        self.epochs, self.steps = epochs, steps

    def on_batch_end(self, batch, logs=None):
        if self.steps is not None and logs["step"] >= self.steps:
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.epochs is not None and epoch + 1 == self.epochs:
            self.trainer.stop_training = True


def test_a_callback_stops_training_after_an_epoch():
    rec = Recorder()
    tr = _trainer(callbacks=[StopAfter(epochs=2), rec])
    tr.fit(10)
    assert tr.stop_reason == "callback" and tr.epoch == 2 and tr.global_step == 12
    assert rec.calls[-1][1]["stop_reason"] == "callback"
    assert len(rec.hooks("epoch_end")) == 2         # later callbacks still see the epoch
    tr.fit(3)                                       # fit resets stop_training: trains on
    assert tr.epoch == 3 and tr.stop_reason is None
    none = _trainer(callbacks=[StopAfter(epochs=3)])
    none.fit()                                      # no epoch limit: the callback stops it
    assert none.epoch == 3 and none.stop_reason == "callback"


def test_a_callback_stopping_mid_epoch_closes_the_epoch_and_restores_the_best():
    es = EarlyStopping(patience=100, min_delta=10.0)     # the best epoch stays the first
    tr = _trainer(early_stopping=es, callbacks=[StopAfter(steps=9)])
    tr.fit(5)
    assert tr.stop_reason == "callback" and tr.global_step == 9
    assert tr.epoch == 2 and tr.history["epoch"] == [1, 2] and tr._open is None
    for k, v in tr.model.params.items():               # training stopped: best restored
        np.testing.assert_array_equal(v, es.best_params[k])


def test_a_paused_epoch_is_entered_again_and_ended_once():
    whole, rec_w = _trainer(), Recorder()
    whole.callbacks.append(rec_w)
    whole.fit(2)
    parts, rec_p = _trainer(), Recorder()
    parts.callbacks.append(rec_p)
    parts.fit(steps=4)
    assert rec_p.calls[-1][1]["stop_reason"] == "paused"
    parts.fit(2)
    begins = rec_p.hooks("epoch_begin")
    assert [(e, logs["batch"]) for _, e, logs in begins] == [(0, 0), (0, 4), (1, 0)]
    assert begins[1][2]["items"] == 32 and begins[1][2]["loss_count"] == 32
    assert [c[1] for c in rec_p.hooks("epoch_end")] == [0, 1]
    _same_weights(whole, parts)
    assert ([c[2]["loss"] for c in rec_w.hooks("epoch_end")]
            == [c[2]["loss"] for c in rec_p.hooks("epoch_end")])


def test_shortcuts_equal_the_callbacks_they_build(tmp_path):
    short = _trainer(schedule=StepDecay(1e-2, 1, 0.5),
                     early_stopping=EarlyStopping(patience=1, min_delta=10.0),
                     checkpoint=tmp_path / "a.npz")
    short.fit(5)
    es = EarlyStopping(patience=1, min_delta=10.0)
    explicit = _trainer(callbacks=[LearningRateScheduler(StepDecay(1e-2, 1, 0.5)), es,
                                   ModelCheckpoint(tmp_path / "b.npz")])
    assert explicit.early_stopping is es             # it also serves as early_stopping
    explicit.fit(5)
    assert short.stop_reason == explicit.stop_reason == "early_stopping"
    assert short.history["lr"] == explicit.history["lr"] == [1e-2, 5e-3]
    assert short.history["loss"] == explicit.history["loss"]
    _same_weights(short, explicit)
    a, b = _trainer(early_stopping=EarlyStopping()), _trainer(early_stopping=EarlyStopping())
    a.resume(tmp_path / "a.npz")
    b.resume(tmp_path / "b.npz")
    assert a.epoch == b.epoch == 2 and a.early_stopping.state() == b.early_stopping.state()
    _same_weights(a, b)


def test_step_schedule_and_progress_as_callbacks():
    import io
    seen = []

    class Spy(Callback):
        def on_batch_begin(self, batch, logs=None):
            seen.append(self.trainer.optimizer.lr)

    buf = io.StringIO()
    tr = _trainer(callbacks=[LearningRateScheduler(lambda t: 0.01 / (1 + t), unit="step"),
                             Spy(), ProgressLogger()], file=buf)
    tr.fit(1)
    assert seen == pytest.approx([0.01 / (1 + t) for t in range(6)])
    assert "epoch 1/1" in buf.getvalue() and "val_loss" in buf.getvalue()


def test_early_stopping_monitors_a_named_value():
    es = EarlyStopping(patience=1, mode="max", monitor="val_accuracy", restore_best=False)
    tr = _trainer(early_stopping=es)
    tr.fit(8)
    acc = tr.history["val_accuracy"]
    assert es.best == max(acc[:es.best_epoch]) and es.best == acc[es.best_epoch - 1]
    with pytest.raises(KeyError, match="val_nothing"):
        _trainer(early_stopping=EarlyStopping(monitor="val_nothing")).fit(1)


def test_callback_arguments_are_checked():
    with pytest.raises(TypeError, match="Callback"):
        _trainer(callbacks=[object()])
    with pytest.raises(ValueError, match="one EarlyStopping"):
        _trainer(early_stopping=EarlyStopping(), callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="one EarlyStopping"):
        _trainer(callbacks=[EarlyStopping(), EarlyStopping()])
    with pytest.raises(ValueError, match="schedule_unit"):
        LearningRateScheduler(lambda t: 0.1, unit="batch")
    same = EarlyStopping()
    assert _trainer(early_stopping=same, callbacks=[same]).early_stopping is same


@pytest.mark.parametrize("cls", [LearningRateScheduler, EarlyStopping, ModelCheckpoint])
def test_callback_parameters_are_documented(cls):
    import inspect
    doc = inspect.getdoc(cls)
    section = doc.split("Parameters\n----------\n", 1)[1]
    for p in list(inspect.signature(cls.__init__).parameters)[1:]:
        assert f"\n{p} :" in "\n" + section, p
