"""Training loop: mini-batch epochs, validation, early stopping, a progress
bar, metrics history and resumable checkpoints.

The Trainer drives any model with the protocol of :mod:`fastrnn.models`
(``params``, ``grads``, ``zero_grad``, ``train``/``eval``,
``batch_loss(batch, train) -> (loss, count)``, optional ``batch_metrics``,
``reset_state`` and ``generators``) over data objects with
``batches(rng)`` (see :mod:`fastrnn.data`) or plain lists of batches.

A checkpoint (one ``.npz``) holds the parameters, the optimizer state, the
epoch, the history, the early-stopping state and every random generator's
state, so that ``fit(4)`` equals ``fit(2)``, save, ``resume``, ``fit(4)``
bit for bit. It is also a model file: :func:`fastrnn.models.load_model`
reads it.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from . import _device
from . import checkpoint as _ckpt
from .optim import clip_grad_norm, clip_grad_value

__all__ = ["Trainer", "EarlyStopping", "ProgressBar"]


def _fmt_time(s):
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt_rate(r):
    for unit, k in (("M", 1e6), ("k", 1e3)):
        if r >= k:
            return f"{r / k:.1f}{unit}"
    return f"{r:.0f}"


class _Tqdm(tqdm):
    """tqdm whose format fields include the training statistics of the
    :class:`ProgressBar` that owns it (read when the line is drawn)."""

    def __init__(self, *args, owner=None, **kwargs):
        self.owner = owner                       # before tqdm's first draw
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict
        if getattr(self, "owner", None) is not None:
            d.update(self.owner._fields())
        return d


def _isatty(file):
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Training progress on ``file`` (stderr), drawn by :mod:`tqdm`: step
    count, bar, running loss, throughput in ``unit`` per second and ETA.

    On a terminal the bar is a live :class:`tqdm.tqdm` line redrawn at most
    every ``interval`` seconds (0.1 by default). On anything else (a log
    file, a pipe, a notebook's stream) there is no live bar: a plain line is
    written every ``interval`` seconds (10 by default) and when the bar is
    closed, so logs get one line per epoch without carriage returns.
    ``disable=True`` prints nothing.

    Parameters
    ----------
    total : int, optional
        Steps (batches) expected; ``None`` when unknown (no bar, no ETA).
    desc : str
        Text in front of the line, e.g. ``"epoch 3/10"``.
    unit : str
        What the ``items`` of :meth:`update` count (``"samples"``, ``"char"``).
    disable : bool
        Print nothing at all.
    file : file-like, optional
        Where to write (default ``sys.stderr``).
    interval : float, optional
        Seconds between redraws (see above).
    deadline : float, optional
        ``time.perf_counter()`` time by which the run must end; the ETA
        never goes past it.
    loss_scale : float
        Factor applied to the running loss and to ``*loss`` values passed to
        :meth:`close` for display (``1 / ln 2`` shows nats as bits).
    loss_unit : str
        Unit written after each loss value (e.g. ``"bits/char"``), or ``""``.
    initial, items, loss_sum, loss_n, elapsed
        State of an epoch being resumed: steps, items and weighted loss so
        far, and the seconds it has already run.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "samples",
                 disable: bool = False, file=None, interval: float | None = None,
                 deadline: float | None = None, loss_scale: float = 1.0,
                 loss_unit: str = "", initial: int = 0, items: int = 0,
                 loss_sum: float = 0.0, loss_n: float = 0, elapsed: float = 0.0):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, bool(disable)
        self.file = file if file is not None else sys.stderr
        self.live = not self.disable and _isatty(self.file)
        self.interval = interval if interval is not None else (0.1 if self.live else 10.0)
        self.deadline = deadline
        self.loss_scale, self.loss_unit = float(loss_scale), loss_unit
        self.count, self.items = int(initial), items
        self.loss_sum, self.loss_n = loss_sum, loss_n
        self.start = time.perf_counter() - elapsed
        self._last = time.perf_counter()
        self._extra = ""
        self._tq = None
        if self.live:
            self._tq = _Tqdm(total=total, initial=self.count, file=self.file,
                             mininterval=self.interval, dynamic_ncols=True, leave=True,
                             bar_format=self._format(), unit=unit, owner=self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.items / max(self.elapsed, 1e-9)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.loss_n, 1)

    def update(self, items: int = 0, loss: float | None = None, weight: float = 1) -> None:
        """One step: ``items`` processed, its mean ``loss`` weighted by ``weight``."""
        self.count += 1
        self.items += items
        if loss is not None:
            self.loss_sum += loss * weight
            self.loss_n += weight
        if self._tq is not None:
            self._tq.update(1)
        elif not self.disable:
            now = time.perf_counter()
            if now - self._last >= self.interval:
                self._last = now
                self.file.write(self._line() + "\n")
                self.file.flush()

    def _format(self):
        return "{head}{n_fmt}/{total_fmt} [{bar}]  {stats}" if self.total else "{head}{n_fmt}  {stats}"

    def _fields(self, extra=None):
        extra = self._extra if extra is None else extra
        parts = []
        if self.loss_n:
            parts.append(f"loss {self.loss * self.loss_scale:.4f}"
                         + (f" {self.loss_unit}" if self.loss_unit else ""))
        parts.append(f"{_fmt_rate(self.rate)} {self.unit}/s")
        if self.total and self.count:
            eta = self.elapsed / self.count * max(self.total - self.count, 0)
            if self.deadline is not None:
                eta = max(0.0, min(eta, self.deadline - time.perf_counter()))
            parts.append(f"ETA {_fmt_time(eta)}")
        else:
            parts.append(_fmt_time(self.elapsed))
        if extra:
            parts.append(extra)
        return {"head": f"{self.desc}  " if self.desc else "", "stats": "  ".join(parts)}

    def _line(self, extra: str = "") -> str:
        """The bar's text as a plain line (what a non-terminal gets)."""
        return _Tqdm.format_meter(self.count, self.total, self.elapsed, ncols=None,
                                  ascii=True, bar_format=self._format(),
                                  **self._fields(extra or None))

    def close(self, extra: str = "") -> None:
        """Finish the line, with ``extra`` (e.g. validation results) after it."""
        if self.disable:
            return
        self._extra = extra
        if self._tq is not None:
            self._tq.close()
            self._tq = None
        else:
            self.file.write(self._line() + "\n")
            self.file.flush()


class EarlyStopping:
    """Stop when the monitored value has not improved by more than
    ``min_delta`` for ``patience`` epochs; ``restore_best`` puts the best
    parameters back when training stops (:meth:`Trainer.fit` explains when,
    and how a later ``fit`` continues from the trained ones).

    Parameters
    ----------
    patience : int, default 5
        Epochs without improvement before stopping.
    min_delta : float, default 0.0
        Smallest change that counts as an improvement.
    restore_best : bool, default True
        Keep a copy of the best parameters and put them back when training
        stops.
    mode : {"min", "max"}, default "min"
        Whether lower (a loss) or higher (an accuracy) is better.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, restore_best: bool = True,
                 mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.restore_best, self.mode = bool(restore_best), mode
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.best_params = None
        self.stopped = False

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value, epoch=None, model=None):
        """Record one epoch's value; returns True when training should stop."""
        if self._improved(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            if self.restore_best and model is not None:
                self.best_params = {k: _device.host_copy(v) for k, v in model.params.items()}
        else:
            self.wait += 1
        self.stopped = self.wait >= self.patience
        return self.stopped

    def restore(self, model):
        if self.restore_best and self.best_params is not None:
            model.load_state_dict(self.best_params)

    def state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped": self.stopped}

    def load_state(self, d, best_params=None):
        self.best, self.best_epoch = d["best"], d["best_epoch"]
        self.wait, self.stopped = d["wait"], d["stopped"]
        self.best_params = best_params


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
                 log: Callable[[str], Any] | None = None) -> None:
        if schedule_unit not in ("epoch", "step", "budget"):
            raise ValueError("schedule_unit must be 'epoch', 'step' or 'budget'")
        if schedule_unit == "budget" and max_seconds is None and max_steps is None:
            raise ValueError("schedule_unit='budget' needs max_seconds or max_steps")
        self.model, self.optimizer = model, optimizer
        self.train_data, self.val_data = train_data, val_data
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.schedule, self.schedule_unit = schedule, schedule_unit
        self.early_stopping = early_stopping
        self.rng = np.random.default_rng(seed)
        self.progress, self.checkpoint = progress, checkpoint
        self.max_seconds, self.max_steps, self.unit = max_seconds, max_steps, unit
        self.file = file if file is not None else sys.stderr
        self.log = log                      # callable(str) for per-epoch lines
        self.epoch = 0                      # epochs completed
        self.global_step = 0
        self.history = {}
        self.stop_reason = None
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
        ``max_seconds``, ``max_steps`` or early stopping) sets no epoch limit.

        So repeated calls equal one call: ``fit(6); fit(12)`` gives the
        history and weights of ``fit(12)``, and so do ``fit(steps=50)``
        calls that add up to the same steps.

        ``max_seconds`` and ``max_steps`` (of the constructor) are budgets of
        the whole training: when one is spent the epoch in progress is closed
        (validated and recorded) and training ends.

        ``EarlyStopping(restore_best=True)`` puts the best parameters into the
        model when training *stops*: by early stopping, by a budget, or by
        reaching the requested ``epochs`` — not when a ``steps`` pause returns.
        The trained (last) parameters are kept aside, and a later ``fit``
        continues from them (unless the model's parameters were changed in
        between), so continuing is the same as never having stopped.
        """
        model, opt = self.model, self.optimizer
        if steps is not None:
            if isinstance(steps, bool) or int(steps) != steps or steps < 0:
                raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
            steps = int(steps)
        if epochs is None:
            if (steps is None and self.max_seconds is None and self.max_steps is None
                    and self.early_stopping is None):
                raise ValueError("fit(epochs=None) needs max_seconds, max_steps, "
                                 "early_stopping or steps")
            epochs = math.inf
        t_start = time.perf_counter()
        self.stop_reason = None
        if steps == 0:
            return self.history
        if self._open is None and self.epoch >= epochs:      # nothing left to train
            if self._last_params is None:                    # e.g. resumed at the last epoch
                self._restore_best()
            return self.history
        self._take_back_last_params()
        step_limit = None if steps is None else self.global_step + steps
        n_batches = _len(self.train_data)
        while self.epoch < epochs:
            epoch = self.epoch
            if step_limit is not None and self.global_step >= step_limit:
                self.stop_reason = "paused"
                break
            if self.schedule is not None and self.schedule_unit == "epoch":
                opt.lr = float(self.schedule(epoch))
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
            scale, loss_unit = self._loss_display()
            bar = ProgressBar(n_batches, desc=f"epoch {epoch + 1}" + (f"/{epochs}" if epochs != math.inf else ""),
                              unit=self.unit, disable=not self.progress, file=self.file,
                              deadline=None if self.max_seconds is None
                              else t_start + self.max_seconds,
                              loss_scale=scale, loss_unit=loss_unit,
                              initial=ep["count"], items=ep["items"], loss_sum=ep["loss_sum"],
                              loss_n=ep["loss_n"], elapsed=ep["time"])
            t0 = time.perf_counter()
            paused = False
            for batch in ep["iter"]:
                if self.schedule is not None and self.schedule_unit == "step":
                    opt.lr = float(self.schedule(self.global_step))
                elif self.schedule is not None and self.schedule_unit == "budget":
                    opt.lr = float(self.schedule(self._spent(t_start)))
                loss, n = self._train_batch(batch)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}, "
                                             f"step {self.global_step}: lower the learning "
                                             "rate or clip gradients")
                grads = model.grads
                if self.clip_value is not None:
                    clip_grad_value(grads, self.clip_value)
                if self.clip_norm is not None:
                    clip_grad_norm(grads, self.clip_norm)
                opt.step(grads)
                self.global_step += 1
                ep["count"] += 1
                ep["items"] += n
                bar.update(n, loss, n)
                if self.max_seconds is not None and self._elapsed(t_start) > self.max_seconds:
                    self.stop_reason = "time"
                    break
                if self.max_steps is not None and self.global_step >= self.max_steps:
                    self.stop_reason = "steps"
                    break
                if step_limit is not None and self.global_step >= step_limit:
                    # the epoch stays open unless that was its last batch
                    paused = n_batches is None or ep["count"] < n_batches
                    break
            ep["time"] += time.perf_counter() - t0
            ep["loss_sum"], ep["loss_n"] = bar.loss_sum, bar.loss_n
            if paused:
                self.stop_reason = "paused"
                bar.close("(paused)")
                break
            self._open = None
            dt = ep["time"]
            row = {"epoch": epoch + 1, "loss": bar.loss, "lr": opt.lr, "time": dt,
                   "throughput": ep["items"] / max(dt, 1e-9)}
            if self.val_data is not None:
                for k, v in self.evaluate(self.val_data).items():
                    row["val_" + k] = v
            if hasattr(model, "reset_state"):
                model.reset_state()                 # the epoch's carried state ends with it
            self._record(**row)
            self.epoch = epoch + 1
            extra = "  ".join(self._shown(k, v, ".4f") for k, v in row.items()
                              if k.startswith("val_"))
            bar.close(extra)
            if self.log is not None:
                self.log(f"epoch {epoch + 1}: " + "  ".join(
                    self._shown(k, v, ".4g") for k, v in row.items() if k != "epoch"))
            es = self.early_stopping
            if es is not None:
                monitor = row.get("val_loss", row["loss"])
                if es.step(monitor, epoch + 1, model):
                    self.stop_reason = "early_stopping"
            if self.checkpoint is not None:
                self.save_checkpoint(self.checkpoint)
            if self.stop_reason is not None:
                break
        if self._open is None and (self.stop_reason is not None or self.epoch >= epochs):
            self._restore_best()
        return self.history

    def _loss_display(self):
        """``(scale, unit)`` of the losses shown: bits per ``unit`` for a model
        whose loss is a cross-entropy per token (``model.loss_in_bits``, the
        language model), else the loss as computed (no unit). The history
        keeps the losses as computed (nats)."""
        if getattr(self.model, "loss_in_bits", False):
            return 1 / math.log(2), f"bits/{self.unit}"
        return 1.0, ""

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
        """Write everything needed to resume to ``path`` (``.npz``)."""
        model, opt = self.model, self.optimizer
        arrays = {"param/" + k: _device.to_host(v) for k, v in model.params.items()}
        ost = opt.state_dict()
        scalars = {}
        for name, st in ost.pop("state").items():
            for buf, v in st.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{name}/{buf}"] = v
                else:
                    scalars.setdefault(name, {})[buf] = v
        es = self.early_stopping
        if es is not None and es.best_params is not None:
            arrays.update({"es_best/" + k: v for k, v in es.best_params.items()})
        trainer = {
            "epoch": self.epoch, "global_step": self.global_step, "history": self.history,
            "rng": [g.bit_generator.state for g in self._generators()],
            "optimizer": ost, "optimizer_scalars": scalars,
            "early_stopping": None if es is None else es.state(),
        }
        trainer["open_epoch"] = self._open_epoch_state(arrays)
        header = {"format": "fastrnn-model/1", "model": type(model).__name__,
                  "config": getattr(model, "config", {}), "meta": getattr(model, "meta", {})}
        # atomic (temporary file in the same folder, fsync, rename; removed on failure)
        return _ckpt.atomic_savez(path, {"__header__": np.array(json.dumps(header)),
                                         "__trainer__": np.array(json.dumps(trainer)), **arrays})

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
        extras = self._read_open_epoch(path)
        _ckpt.resume_trainer(self, path)
        self._open, self._last_params, carry = extras
        if carry is not None:
            self.model.carried_state = carry
        return self

    # the in-epoch state of a checkpoint (see fit(steps=...) and _restore_best)
    _OPEN_KEYS = ("rng_start", "count", "items", "loss_sum", "loss_n", "time")

    def _open_epoch_state(self, arrays):
        """Add the open epoch's carried state and the kept-aside trained
        parameters to ``arrays``; return the open epoch's JSON (or None)."""
        if self._last_params is not None:
            arrays.update({"last/" + k: v for k, v in self._last_params.items()})
        ep = self._open
        if ep is None:
            return None
        out = {k: ep[k] for k in self._OPEN_KEYS}
        carry = getattr(self.model, "carried_state", None)
        out["carry"] = None if carry is None else (len(carry) if isinstance(carry, tuple) else 0)
        if carry is not None:
            for i, a in enumerate(carry if isinstance(carry, tuple) else (carry,)):
                arrays[f"carry/{i}"] = _device.to_host(a)
        return out

    def _read_open_epoch(self, path):
        """``(open epoch, trained parameters, carried state)`` of a checkpoint
        (each None when absent), checked before :meth:`resume` writes anything."""
        path, arrays = _ckpt.read_npz(path, what="training checkpoint")
        if "__trainer__" not in arrays:
            return None, None, None               # resume_trainer reports the error
        st = _ckpt.read_json_entry(path, arrays, "__trainer__", "trainer state")
        last = {k[5:]: v for k, v in arrays.items() if k.startswith("last/")} or None
        if last is not None:
            try:
                last = _ckpt.check_state_dict(self.model.params, last, type(self.model).__name__)
            except _ckpt.CheckpointError as exc:
                raise _ckpt.CheckpointError(
                    f"{path!r}: kept-aside trained parameters: {exc}") from None
        ep = st.get("open_epoch") if isinstance(st, dict) else None
        if ep is None:
            return None, last, None
        if not isinstance(ep, dict) or any(k not in ep for k in self._OPEN_KEYS + ("carry",)):
            raise _ckpt.CheckpointError(f"{path!r} has a corrupt open-epoch state")
        n = ep["carry"]
        carry = None
        if n is not None:
            parts = []
            for i in range(max(n, 1)):
                a = arrays.get(f"carry/{i}")
                if a is None or a.dtype.kind != "f" or a.ndim != 3:
                    raise _ckpt.CheckpointError(f"{path!r} has a corrupt carried state (carry/{i})")
                parts.append(a)
            carry = tuple(parts) if n else parts[0]
        open_ep = {k: ep[k] for k in self._OPEN_KEYS}
        open_ep["iter"] = None                    # rebuilt by fit(): replays the epoch's shuffle
        return open_ep, last, carry
