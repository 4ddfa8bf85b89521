"""Trainer callbacks (Keras-style) and the progress bar.

A :class:`Callback` follows the loop of :class:`fastrnn.train.Trainer`
through six hooks; each gets a ``logs`` dict, and ``self.trainer`` (and
``self.model``) is the trainer running it:

===================================  ==========================================
hook                                 ``logs``
===================================  ==========================================
``on_train_begin(logs)``             ``epochs``: the epoch ``fit`` trains to
                                     (None: no limit); ``steps``: this call's
                                     step bound (None: none)
``on_epoch_begin(epoch, logs)``      ``epochs``; ``batches``: batches per
                                     epoch (None: unknown); the epoch so far:
                                     ``batch`` (batches done), ``items``,
                                     ``loss_sum`` (Σ loss·count),
                                     ``loss_count`` (Σ count), ``time``
``on_batch_begin(batch, logs)``      ``step``: optimizer steps so far
``on_batch_end(batch, logs)``        ``loss``: the batch's mean loss; ``size``:
                                     its count; ``step``: steps so far
``on_epoch_end(epoch, logs)``        the epoch's history row: ``epoch``
                                     (``epoch + 1``), ``loss``, ``lr``,
                                     ``time``, ``throughput``, ``val_*``
``on_train_end(logs)``               ``stop_reason``, ``epoch``, ``step``
===================================  ==========================================

``epoch`` is the 0-based index of the epoch and ``batch`` the index of the
batch in its epoch. ``on_epoch_begin`` runs each time ``fit`` enters an
epoch: an epoch left open by ``fit(steps=...)`` is entered again by the next
``fit`` (``logs["batch"] > 0``); ``on_epoch_end`` runs once, when its last
batch is done. A ``fit`` call with nothing to train calls no hook.

Stopping: a callback sets ``trainer.stop_training = True`` (Keras's
``model.stop_training``). Set in ``on_batch_end`` it ends the epoch at that
batch (the epoch is still validated and recorded, as when a time budget runs
out); set in ``on_epoch_end`` it stops after that epoch. Training has then
*stopped* (``EarlyStopping(restore_best=True)`` restores the best weights);
:attr:`Trainer.stop_reason` is ``"callback"`` unless the callback set its own.

The Trainer's keyword arguments are shortcuts that build callbacks when
``fit`` starts (from the trainer's attributes at that moment), in this order
around the user's ``callbacks``::

    LearningRateScheduler(schedule, schedule_unit)     schedule=
    a time/step budget                                 max_seconds=, max_steps=
    ProgressLogger()                                   progress=True
    a per-epoch log line                               log=
    early_stopping (the EarlyStopping itself)          early_stopping=
    *callbacks
    ModelCheckpoint(checkpoint)                        checkpoint=

Early stopping runs before the user's callbacks and the checkpoint last, so
the file holds every callback's state of the epoch.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

from . import _device

__all__ = ["Callback", "LearningRateScheduler", "EarlyStopping", "ModelCheckpoint",
           "ProgressLogger", "ProgressBar"]


class Callback:
    """Base class of the Trainer's callbacks: every hook does nothing (see the
    module docstring for when each runs and what its ``logs`` hold)."""

    trainer: Any = None

    def set_trainer(self, trainer: Any) -> None:
        """Called by the trainer before the first hook of each ``fit``."""
        self.trainer = trainer

    @property
    def model(self) -> Any:
        return None if self.trainer is None else self.trainer.model

    def on_train_begin(self, logs: dict | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        pass

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        pass

    def on_train_end(self, logs: dict | None = None) -> None:
        pass


# ------------------------------------------------------------ learning rate
SCHEDULE_UNITS = ("epoch", "step", "budget")


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate to ``schedule(t)``.

    Parameters
    ----------
    schedule : callable
        ``t -> lr``, e.g. :class:`fastrnn.optim.StepDecay`.
    unit : {"epoch", "step", "budget"}, default "epoch"
        What ``t`` is: the 0-based epoch (set when the epoch begins), the
        global step (before every batch) or the fraction of the budget spent,
        in [0, 1] (before every batch: ``global_step / max_steps`` or the
        elapsed time over ``max_seconds``, whichever is further; the trainer
        needs one of them).
    """

    def __init__(self, schedule: Callable[[float], float], unit: str = "epoch") -> None:
        if unit not in SCHEDULE_UNITS:
            raise ValueError("schedule_unit must be 'epoch', 'step' or 'budget'")
        self.schedule, self.unit = schedule, unit

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self.trainer.optimizer.lr = float(self.schedule(epoch))

    def on_batch_begin(self, batch, logs=None):
        tr = self.trainer
        if self.unit == "step":
            tr.optimizer.lr = float(self.schedule(tr.global_step))
        elif self.unit == "budget":
            tr.optimizer.lr = float(self.schedule(tr._spent(tr._t_start)))


# ----------------------------------------------------------- early stopping
class EarlyStopping(Callback):
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
    monitor : str, optional
        The key of the epoch's logs to watch (e.g. ``"val_accuracy"`` with
        ``mode="max"``); by default ``val_loss``, or ``loss`` without
        validation data.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, restore_best: bool = True,
                 mode: str = "min", monitor: str | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.restore_best, self.mode, self.monitor = bool(restore_best), mode, monitor
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

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            if self.monitor not in logs:
                raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which the epoch's "
                               f"logs do not hold (they have {sorted(logs)})")
            value = logs[self.monitor]
        else:
            value = logs.get("val_loss", logs["loss"])
        if self.step(value, epoch + 1, self.trainer.model):
            self.trainer.stop_reason = "early_stopping"
            self.trainer.stop_training = True

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


# -------------------------------------------------------------- checkpoints
class ModelCheckpoint(Callback):
    """Write a training checkpoint after every epoch.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` written (atomically) by :meth:`Trainer.save_checkpoint`:
        everything needed to resume, and a model file for
        :func:`fastrnn.load_model`.
    """

    def __init__(self, path: Any) -> None:
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.save_checkpoint(self.path)


# -------------------------------------------------------- budget and log line
class _Budget(Callback):
    """End training after ``max_seconds`` of this ``fit`` call or at
    ``max_steps`` optimizer steps in total (checked after every batch)."""

    def __init__(self, max_seconds: float | None, max_steps: int | None) -> None:
        self.max_seconds, self.max_steps = max_seconds, max_steps

    def on_batch_end(self, batch, logs=None):
        tr = self.trainer
        if self.max_seconds is not None and tr._elapsed(tr._t_start) > self.max_seconds:
            tr.stop_reason, tr.stop_training = "time", True
        elif self.max_steps is not None and tr.global_step >= self.max_steps:
            tr.stop_reason, tr.stop_training = "steps", True


class _EpochLog(Callback):
    """One line per epoch through ``log`` (loss, learning rate, time,
    throughput, validation results; losses in the trainer's display units)."""

    def __init__(self, log: Callable[[str], Any]) -> None:
        self.log = log

    def on_epoch_end(self, epoch, logs=None):
        self.log(f"epoch {epoch + 1}: " + "  ".join(
            self.trainer._shown(k, v, ".4g") for k, v in logs.items() if k != "epoch"))


# ------------------------------------------------------------- progress bar
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


class ProgressLogger(Callback):
    """A :class:`ProgressBar` per epoch on the trainer's ``file``, counting
    its ``unit``: running loss (in bits per token for a language model),
    throughput, ETA (never past the time budget), the validation results when
    the epoch ends, ``(paused)`` when ``fit(steps=...)`` leaves it open.
    ``Trainer(progress=True)`` adds one."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        tr = self.trainer
        scale, loss_unit = tr._loss_display()
        epochs = logs.get("epochs")
        desc = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs is not None else "")
        self.bar = ProgressBar(
            logs.get("batches"), desc=desc, unit=tr.unit, file=tr.file,
            deadline=None if tr.max_seconds is None else tr._t_start + tr.max_seconds,
            loss_scale=scale, loss_unit=loss_unit, initial=logs["batch"], items=logs["items"],
            loss_sum=logs["loss_sum"], loss_n=logs["loss_count"], elapsed=logs["time"])

    def on_batch_end(self, batch, logs=None):
        self.bar.update(logs["size"], logs["loss"], logs["size"])

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close("  ".join(self.trainer._shown(k, v, ".4f") for k, v in logs.items()
                                 if k.startswith("val_")))
        self.bar = None

    def on_train_end(self, logs=None):
        if self.bar is not None:                 # the epoch stays open: fit(steps=...)
            self.bar.close("(paused)")
            self.bar = None
