"""Training curves and history files (used by ``fastrnn train`` and the examples)."""
from __future__ import annotations

import json
import math
import os

__all__ = ["plot_history", "write_history"]


def write_history(history, path, **extra):
    """Write a Trainer's ``history`` (dict of per-epoch lists) as JSON to
    ``path``, atomically; ``extra`` keys are added beside the lists."""
    data = {k: list(v) for k, v in history.items()}
    data.update(extra)
    text = json.dumps(data, indent=1, default=float)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def plot_history(history, path, title=None, loss_keys=("loss", "val_loss"), metric=None,
                 metric_scale=1.0, metric_label=None, x=None, xlabel="epoch",
                 loss_label="loss", loss_scale=1.0, forecast=None):
    """Save a PNG of training curves; returns ``path``, or ``None`` when
    matplotlib is not installed.

    Parameters
    ----------
    history : dict of lists
        A :class:`fastrnn.train.Trainer` history (``epoch``, ``loss``,
        ``val_loss``, ``val_accuracy``...).
    path : str
        Where to write the PNG.
    metric : str, optional
        A second panel with this history key (e.g. ``"val_accuracy"``),
        multiplied by ``metric_scale`` and titled ``metric_label``.
    x, xlabel : list, str
        The x values (default ``history["epoch"]``) and their name, e.g.
        training steps for runs whose "epochs" are slices of a stream.
    loss_label : str
        The y label of the loss panel (its unit).
    loss_scale : float
        Factor applied to the ``loss_keys`` curves, e.g. ``1 / ln 2`` to draw
        a language model's losses (nats in the history) in bits.
    forecast : dict, optional
        A panel of a forecast against the actual values: ``x`` (row
        numbers), ``actual``, ``forecast`` (equal-length lists) and ``label``
        (the panel's title), e.g. a forecaster's held-out part.

    A run with a single point is drawn with markers, so it is visible.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = list(history.get("epoch", [])) if x is None else list(x)
    panels = [k for k in (metric,) if k and k in history]
    extra = 1 if forecast else 0
    fig, axes = plt.subplots(1, 1 + len(panels) + extra,
                             figsize=(5 * (1 + len(panels) + extra), 3.5), squeeze=False)
    style = dict(marker="o" if len(xs) <= 30 else None)
    ax = axes[0, 0]
    for k in loss_keys:
        ys = history.get(k)
        if ys and len(ys) == len(xs):
            ys = [v * loss_scale if v is not None else float("nan") for v in ys]
            ax.plot(xs, ys, label=k.replace("_", " "), **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(loss_label)
    if title:
        ax.set_title(title)
    if ax.lines:
        ax.legend()
    for k, a in zip(panels, axes[0, 1:]):
        ys = [v * metric_scale if v is not None and math.isfinite(v) else float("nan")
              for v in history[k]]
        a.plot(xs, ys, **style)
        a.set_xlabel(xlabel)
        a.set_title(metric_label or k.replace("_", " "))
    if len(xs) == 1:                                   # one point: give it some room
        for a in axes[0][:len(axes[0]) - extra]:
            a.set_xlim(xs[0] - 1, xs[0] + 1)
    if forecast:
        a = axes[0, -1]
        a.plot(forecast["x"], forecast["actual"], label="actual", color="black", lw=1)
        a.plot(forecast["x"], forecast["forecast"], label="forecast", color="tab:red", lw=1)
        a.set_xlabel("row")
        a.set_title(forecast.get("label", "forecast vs actual"), fontsize="medium")
        a.legend()
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
