"""Training loop: mini-batch epochs, validation, gradient clipping and
callbacks (:mod:`fastrnn.callbacks`: learning-rate schedules, early stopping,
the progress bar, resumable checkpoints and the user's own).

The Trainer drives any model with the protocol of :mod:`fastrnn.models`
(``params``, ``grads``, ``zero_grad``, ``train``/``eval``,
``batch_loss(batch, train) -> (loss, count)``, optional ``batch_metrics``,
``reset_state`` and ``generators``) over data objects with
``batches(rng)`` (see :mod:`fastrnn.data`) or plain lists of batches.

A checkpoint (one ``.npz``, written and read by :mod:`fastrnn.checkpoint`)
holds the parameters, the optimizer state, the epoch, the history, the
early-stopping state and every random generator's state, so that ``fit(4)``
equals ``fit(2)``, save, ``resume``, ``fit(4)`` bit for bit. It is also a
model file: :func:`fastrnn.models.load_model` reads it.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from . import _device
from . import checkpoint as _ckpt
from .callbacks import (SCHEDULE_UNITS, Callback, EarlyStopping, LearningRateScheduler,
                        ModelCheckpoint, ProgressBar, ProgressLogger, _Budget, _EpochLog)
from .optim import clip_grad_norm, clip_grad_value

__all__ = ["Trainer", "EarlyStopping", "ProgressBar"]


def _batches(data, rng):
    if hasattr(data, "batches"):
        return data.batches(rng)
    if callable(data):
        return data(rng)
    return iter(data)


def _empty(batch):
    """A batch with no samples: a data-parallel rank's shard of a last batch
    smaller than the world (see :class:`fastrnn.data.ArrayBatches`)."""
    return isinstance(batch, (tuple, list)) and any(
        isinstance(a, np.ndarray) and a.size == 0 for a in batch)


def _len(data):
    try:
        return len(data)
    except TypeError:
        return None


class Trainer:
    """Mini-batch training with validation.

    Parameters
    ----------
    model : model
        A fastrnn model, or anything with its protocol (see the module
        docstring).
    optimizer : fastrnn.optim.Optimizer
        An optimizer over ``model``'s parameters.
    train_data : data object or list of batches
        An object with ``batches(rng)`` (:mod:`fastrnn.data`), a callable
        ``rng -> batches``, or a list of batches.
    val_data : same as ``train_data``, optional
        Evaluated after every epoch (``val_loss`` and the model's metrics).
    clip_norm : float, optional
        Clip the gradients' global norm to this value.
    clip_value : float, optional
        Clip every gradient value to ``[-clip_value, clip_value]``.
    schedule : callable, optional
        ``t -> lr``, of the epoch (``schedule_unit="epoch"``), of the global
        step (``"step"``), or of the fraction of the budget spent, in
        [0, 1] (``"budget"``: ``global_step / max_steps`` or elapsed time /
        ``max_seconds``, whichever is further; for runs bounded by time,
        which are then not exactly repeatable).
    schedule_unit : {"epoch", "step", "budget"}, default "epoch"
        What ``schedule`` is a function of (see above).
    early_stopping : EarlyStopping, optional
        Early stopping on the validation loss (on the training loss without
        validation data).
    seed : int, default 0
        Seeds the trainer's generator (shuffling).
    progress : bool, default True
        Show the progress bar (:class:`ProgressBar`, through tqdm): a live
        bar on a terminal, one plain line per epoch elsewhere; a language
        model's losses in bits per character. ``False``: nothing.
    checkpoint : str, optional
        Path written after every epoch (see :meth:`save_checkpoint`).
    max_seconds : float, optional
        Stop training after this much wall time (checked every step; the
        current epoch is then validated and recorded).
    max_steps : int, optional
        Stop after this many optimizer steps in total (same way).
    unit : str, default "samples"
        Name of what ``batch_loss``'s count measures (for throughput).
    file : file-like, optional
        Where the progress bar writes (default ``sys.stderr``).
    log : callable, optional
        Called with one string per epoch (loss, learning rate, time,
        throughput, validation results), e.g. ``print`` or ``logging.info``.
    callbacks : sequence of fastrnn.callbacks.Callback, optional
        Called at the start and end of training, of every epoch and of every
        batch (Keras-style; see :mod:`fastrnn.callbacks`); one may stop
        training with ``trainer.stop_training = True``. ``schedule``,
        ``early_stopping``, ``checkpoint``, ``progress``, ``log``,
        ``max_seconds`` and ``max_steps`` are shortcuts for callbacks built
        around these (an :class:`EarlyStopping` among them also serves as
        ``early_stopping``).

    Attributes
    ----------
    epoch, global_step : int
        Epochs completed and optimizer steps taken.
    history : dict of lists
        One entry per completed epoch: ``epoch``, ``loss``, ``lr``, ``time``,
        ``throughput`` and the validation results (``val_loss``...).
    stop_reason : str or None
        Why the last ``fit`` ended early: ``"early_stopping"``, ``"time"``,
        ``"steps"`` (``max_steps``), ``"paused"`` (its ``steps`` ran out),
        ``"callback"``; None when it trained the requested epochs.
    stop_training : bool
        Set by a callback to stop training (reset by each ``fit``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import SequenceClassifier, Adam, Trainer
    >>> from fastrnn.data import ArrayBatches
    >>> X = np.random.default_rng(0).standard_normal((64, 5, 2)).astype(np.float32)
    >>> y = (X[:, 0, 0] > 0).astype(np.int64)
    >>> model = SequenceClassifier(2, input_size=2, hidden_size=8, seed=0)
    >>> trainer = Trainer(model, Adam(model, lr=1e-2), ArrayBatches(X, y, batch_size=16),
    ...                   progress=False)
    >>> history = trainer.fit(3)
    >>> history["epoch"]
    [1, 2, 3]
    """

    def __init__(self, model: Any, optimizer: Any, train_data: Any, val_data: Any = None, *,
                 clip_norm: float | None = None, clip_value: float | None = None,
                 schedule: Callable[[float], float] | None = None, schedule_unit: str = "epoch",
                 early_stopping: EarlyStopping | None = None, seed: int = 0,
                 progress: bool = True, checkpoint: str | None = None,
                 max_seconds: float | None = None, max_steps: int | None = None,
                 unit: str = "samples", file: Any = None,
                 log: Callable[[str], Any] | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        if schedule_unit not in SCHEDULE_UNITS:
            raise ValueError("schedule_unit must be 'epoch', 'step' or 'budget'")
        if schedule_unit == "budget" and max_seconds is None and max_steps is None:
            raise ValueError("schedule_unit='budget' needs max_seconds or max_steps")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fastrnn.callbacks.Callback instances, "
                                f"got {type(cb).__name__}")
        stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
        if len(stoppers) > 1 or (stoppers and early_stopping not in (None, stoppers[0])):
            raise ValueError("give one EarlyStopping, either as early_stopping= or in callbacks")
        if stoppers:
            early_stopping = stoppers[0]
        self.model, self.optimizer = model, optimizer
        self.train_data, self.val_data = train_data, val_data
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.schedule, self.schedule_unit = schedule, schedule_unit
        self.early_stopping = early_stopping
        self.callbacks = callbacks
        self.rng = np.random.default_rng(seed)
        self.progress, self.checkpoint = progress, checkpoint
        self.max_seconds, self.max_steps, self.unit = max_seconds, max_steps, unit
        self.file = file if file is not None else sys.stderr
        self.log = log                      # callable(str) for per-epoch lines
        self.epoch = 0                      # epochs completed
        self.global_step = 0
        self.history = {}
        self.stop_reason = None
        self.stop_training = False
        self._t_start = None                # perf_counter() at the start of fit()
        self._open = None                   # the epoch in progress after fit(steps=...)
        self._last_params = None            # trained parameters while the best are restored

    # ------------------------------------------------------------------ loop
    def _record(self, **kv):
        for k, v in kv.items():
            self.history.setdefault(k, []).append(v)

    def evaluate(self, data):
        """Mean loss (weighted by counts) and mean metrics over ``data``."""
        total, count, metrics = self._reduce_eval(*self._evaluate_sums(data))
        out = {"loss": total / max(count, 1)}
        out.update({k: s / max(c, 1) for k, (s, c) in metrics.items()})
        return out

    def _evaluate_sums(self, data):
        """``(loss sum, count, {metric: (weighted sum, weight)})`` over ``data``."""
        model = self.model
        was = model.training
        carried = getattr(model, "carried_state", None)      # an open epoch's LM state
        model.eval()
        if hasattr(model, "reset_state"):
            model.reset_state()
        total, count, metrics = 0.0, 0, {}
        try:
            for batch in _batches(data, np.random.default_rng(0)):
                if _empty(batch):
                    continue
                loss, n = model.batch_loss(batch, train=False)
                total += loss * n
                count += n
                if hasattr(model, "batch_metrics"):
                    for k, v in model.batch_metrics(batch).items():
                        w = len(batch[1])
                        s, c = metrics.get(k, (0.0, 0))
                        metrics[k] = (s + v * w, c + w)
        finally:
            model.train(was)
            if hasattr(model, "reset_state"):
                model.reset_state()
            if carried is not None:
                model.carried_state = carried
        return total, count, metrics

    # hooks of the data-parallel trainer (fastrnn.distributed.DistributedTrainer),
    # which combines these per-process values over all ranks
    def _reduce_eval(self, total, count, metrics):
        """The evaluation sums of all processes (here: this one's)."""
        return total, count, metrics

    def _train_batch(self, batch):
        """Forward and backward of one batch: ``(mean loss, count)``, with the
        model's gradients those of the mean loss (of the whole step's batch)."""
        self.model.zero_grad()
        return self.model.batch_loss(batch, train=True)

    def _elapsed(self, t_start):
        """Seconds of this ``fit`` call so far (for the time budget)."""
        return time.perf_counter() - t_start

    def _spent(self, t_start):
        """Fraction of the step / time budget used so far, in [0, 1]."""
        f = 0.0
        if self.max_steps:
            f = self.global_step / self.max_steps
        if self.max_seconds:
            f = max(f, self._elapsed(t_start) / self.max_seconds)
        return min(f, 1.0)

    def fit(self, epochs: float | None = None, steps: int | None = None) -> dict[str, list]:
        """Train, continuing from where the trainer stands; returns :attr:`history`.

        ``epochs`` is the *total* number of epochs to have completed (not a
        count of more epochs): a trainer at :attr:`epoch` 6 asked for
        ``fit(12)`` trains epochs 7 to 12. ``steps`` bounds this call to that
        many more optimizer steps: when it runs out mid-epoch the epoch stays
        open (:attr:`stop_reason` ``"paused"``) and the next ``fit`` call
        resumes it at its next batch, with the language model's carried state;
        an epoch is validated, recorded, checkpointed and counted only once
        its last batch is done. ``epochs=None`` (with ``steps``, or with
        ``max_seconds``, ``max_steps``, early stopping or callbacks, which
        may stop training) sets no epoch limit.

        So repeated calls equal one call: ``fit(6); fit(12)`` gives the
        history and weights of ``fit(12)``, and so do ``fit(steps=50)``
        calls that add up to the same steps.

        ``max_steps`` (of the constructor) bounds the optimizer steps of the
        whole training, ``max_seconds`` the wall time of each ``fit`` call:
        when one is spent the epoch in progress is closed (validated and
        recorded) and training ends. A callback that sets
        :attr:`stop_training` ends it the same way (see
        :mod:`fastrnn.callbacks`).

        ``EarlyStopping(restore_best=True)`` puts the best parameters into the
        model when training *stops*: by early stopping, by a budget or a
        callback, or by reaching the requested ``epochs`` — not when a
        ``steps`` pause returns. The trained (last) parameters are kept
        aside, and a later ``fit`` continues from them (unless the model's
        parameters were changed in between), so continuing is the same as
        never having stopped.
        """
        model, opt = self.model, self.optimizer
        if steps is not None:
            if isinstance(steps, bool) or int(steps) != steps or steps < 0:
                raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
            steps = int(steps)
        if epochs is None:
            if (steps is None and self.max_seconds is None and self.max_steps is None
                    and self.early_stopping is None and not self.callbacks):
                raise ValueError("fit(epochs=None) needs max_seconds, max_steps, "
                                 "early_stopping, callbacks or steps")
            epochs = math.inf
        self._t_start = time.perf_counter()
        self.stop_reason = None
        self.stop_training = False
        if steps == 0:
            return self.history
        if self._open is None and self.epoch >= epochs:      # nothing left to train
            if self._last_params is None:                    # e.g. resumed at the last epoch
                self._restore_best()
            return self.history
        self._take_back_last_params()
        step_limit = None if steps is None else self.global_step + steps
        n_batches = _len(self.train_data)
        target = None if epochs == math.inf else epochs
        cbs = self._callbacks()
        _call(cbs, "on_train_begin", {"epochs": target, "steps": steps})
        while self.epoch < epochs:
            epoch = self.epoch
            if step_limit is not None and self.global_step >= step_limit:
                self.stop_reason = "paused"
                break
            model.train()
            ep = self._open
            if ep is None:
                if hasattr(model, "reset_state"):
                    model.reset_state()
                ep = self._open = {"rng_start": self.rng.bit_generator.state,
                                   "iter": None, "count": 0, "items": 0,
                                   "loss_sum": 0.0, "loss_n": 0, "time": 0.0}
            if ep["iter"] is None:
                ep["iter"] = self._epoch_iterator(ep)
            _call(cbs, "on_epoch_begin", epoch, {
                "epochs": target, "batches": n_batches, "batch": ep["count"],
                "items": ep["items"], "loss_sum": ep["loss_sum"], "loss_count": ep["loss_n"],
                "time": ep["time"]})
            t0 = time.perf_counter()
            paused = False
            for batch in ep["iter"]:
                _call(cbs, "on_batch_begin", ep["count"], {"step": self.global_step})
                loss, n = self._step(batch, epoch)
                ep["count"] += 1
                ep["items"] += n
                ep["loss_sum"] += loss * n
                ep["loss_n"] += n
                _call(cbs, "on_batch_end", ep["count"] - 1,
                      {"loss": loss, "size": n, "step": self.global_step})
                if self.stop_training:
                    break
                if step_limit is not None and self.global_step >= step_limit:
                    # the epoch stays open unless that was its last batch
                    paused = n_batches is None or ep["count"] < n_batches
                    break
            ep["time"] += time.perf_counter() - t0
            if paused:
                self.stop_reason = "paused"
                break
            self._open = None
            dt = ep["time"]
            row = {"epoch": epoch + 1, "loss": ep["loss_sum"] / max(ep["loss_n"], 1),
                   "lr": opt.lr, "time": dt, "throughput": ep["items"] / max(dt, 1e-9)}
            if self.val_data is not None:
                for k, v in self.evaluate(self.val_data).items():
                    row["val_" + k] = v
            if hasattr(model, "reset_state"):
                model.reset_state()                 # the epoch's carried state ends with it
            self._record(**row)
            self.epoch = epoch + 1
            _call(cbs, "on_epoch_end", epoch, dict(row))
            if self.stop_training:
                break
        if self.stop_training and self.stop_reason is None:
            self.stop_reason = "callback"
        if self._open is None and (self.stop_reason is not None or self.epoch >= epochs):
            self._restore_best()
        _call(cbs, "on_train_end", {"stop_reason": self.stop_reason, "epoch": self.epoch,
                                    "step": self.global_step})
        return self.history

    def _step(self, batch, epoch):
        """One optimizer step on ``batch``: forward and backward, the loss
        check, clipping, the update. Returns ``(mean loss, count)``."""
        loss, n = self._train_batch(batch)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}, "
                                     f"step {self.global_step}: lower the learning "
                                     "rate or clip gradients")
        grads = self.model.grads
        if self.clip_value is not None:
            clip_grad_value(grads, self.clip_value)
        if self.clip_norm is not None:
            clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(grads)
        self.global_step += 1
        return loss, n

    def _callbacks(self):
        """The callbacks of one ``fit``: the keyword shortcuts, built from the
        trainer's attributes now, around the user's (order: see
        :mod:`fastrnn.callbacks`)."""
        cbs = []
        if self.schedule is not None:
            cbs.append(LearningRateScheduler(self.schedule, self.schedule_unit))
        if self.max_seconds is not None or self.max_steps is not None:
            cbs.append(_Budget(self.max_seconds, self.max_steps))
        if self.progress:
            cbs.append(ProgressLogger())
        if self.log is not None:
            cbs.append(_EpochLog(self.log))
        if self.early_stopping is not None and self.early_stopping not in self.callbacks:
            cbs.append(self.early_stopping)
        cbs += self.callbacks
        if self.checkpoint is not None:
            cbs.append(ModelCheckpoint(self.checkpoint))
        for cb in cbs:
            cb.set_trainer(self)
        return cbs

    def _loss_display(self):
        """``(scale, unit)`` of the losses shown: bits per ``unit`` for a model
        whose loss is a cross-entropy per token (``model.loss_in_bits``, the
        language model), else the loss as computed (no unit). The history
        keeps the losses as computed (nats)."""
        if getattr(self.model, "loss_in_bits", False):
            return 1 / math.log(2), f"bits/{self.unit}"
        return 1.0, ""

    def history_with_units(self) -> tuple[dict[str, list], dict[str, str]]:
        """``(history, units)``: a copy of :attr:`history` with the losses in
        the units the progress bar shows (bits per token for a language
        model, whose :attr:`history` keeps nats), and the unit of every key,
        for a file that must say what its numbers are (``fastrnn train``
        writes both to ``<out>.history.json``).

        The loss unit is the model's ``loss_unit`` when it declares one (the
        classifier: ``"nats per sequence"``; the regressor: the mean squared
        error of the targets as the model sees them), else ``"as computed"``."""
        scale, shown = self._loss_display()
        word = {"char": "character", "seq": "sequence", "win": "window"}.get(self.unit, self.unit)
        loss_unit = f"bits per {word}" if shown else getattr(self.model, "loss_unit",
                                                              "as computed")
        hist, units = {}, {}
        for k, v in self.history.items():
            if k.endswith("loss"):
                hist[k] = [x * scale if x is not None else None for x in v]
                units[k] = loss_unit
            else:
                hist[k] = list(v)
                units[k] = {"epoch": "count", "lr": "learning rate", "time": "seconds",
                            "throughput": f"{word}s per second"}.get(
                                k, "fraction" if k.endswith("accuracy") else "as computed")
        return hist, units

    def _shown(self, key, value, fmt):
        """``"key value"`` for the bar and the log, losses in display units."""
        scale, unit = self._loss_display()
        if unit and key.endswith("loss"):
            return f"{key} {value * scale:{fmt}} {unit}"
        return f"{key} {value:{fmt}}"

    def _epoch_iterator(self, ep):
        """The batches of the open epoch ``ep``; after a resume from a
        checkpoint written mid-epoch, replays the epoch's shuffle from its
        start and skips the batches already trained on."""
        if ep["count"] == 0:
            return iter(_batches(self.train_data, self.rng))
        now = self.rng.bit_generator.state
        self.rng.bit_generator.state = ep["rng_start"]
        it = iter(_batches(self.train_data, self.rng))
        for _ in range(ep["count"]):
            next(it)
        self.rng.bit_generator.state = now
        return it

    def _restore_best(self):
        """Training stopped: put EarlyStopping's best parameters into the model,
        keeping the last ones aside for a later :meth:`fit`."""
        es = self.early_stopping
        if es is None or not es.restore_best or es.best_params is None:
            return
        self._last_params = {k: _device.host_copy(v) for k, v in self.model.params.items()}
        es.restore(self.model)

    def _take_back_last_params(self):
        """Continue training from the last parameters rather than the restored
        best ones, unless the model was changed since the restore."""
        last, self._last_params = self._last_params, None
        es = self.early_stopping
        if last is None or es is None or es.best_params is None:
            return
        params = self.model.params
        if all(k in params and np.array_equal(_device.to_host(params[k]), v)
               for k, v in es.best_params.items()):
            self.model.load_state_dict(last)

    # ----------------------------------------------------------- checkpoints
    def _generators(self):
        gens = [self.rng]
        if hasattr(self.model, "generators"):
            gens += self.model.generators()
        return gens

    def save_checkpoint(self, path):
        """Write everything needed to resume to ``path`` (``.npz``, atomically;
        the format is :mod:`fastrnn.checkpoint`'s)."""
        return _ckpt.save_trainer(self, path)

    def resume(self, path):
        """Restore the state saved by :meth:`save_checkpoint` into this trainer
        (built with the same model architecture and optimizer type).

        Everything in the file is checked against this trainer before anything
        is written, so a failed resume leaves the trainer as it was; a broken
        or mismatched file raises :class:`fastrnn.CheckpointError` naming it.

        A checkpoint written while an epoch is open (after ``fit(steps=...)``)
        resumes inside that epoch, at its next batch, with the language
        model's carried state; one written while the best parameters are
        restored keeps the trained ones for the next :meth:`fit`."""
        _ckpt.resume_trainer(self, path)
        return self


def _call(callbacks, hook, *args):
    for cb in callbacks:
        getattr(cb, hook)(*args)
