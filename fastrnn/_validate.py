"""Argument checks shared by the layers, models, optimizers, data and CLI.

Each check takes the argument's *name* (as the user wrote it) and its value,
and raises a :class:`ValueError` or :class:`TypeError` whose message starts
with that name, or returns the value normalised (``int``, ``float``, ``bool``,
an int64 array). Nothing here imports from the rest of the package except
``dispatch`` (for device arrays), so any module may use it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["boolean", "positive_int", "nonneg_int", "optional_positive_int", "finite_float",
           "seed", "lengths", "class_labels"]


def _is_bool(v):
    return isinstance(v, (bool, np.bool_))


def boolean(name, value):
    """``value`` must be a real bool (``True``/``False`` or a NumPy bool), not a
    string, number or None: ``bidirectional="False"`` would otherwise be True."""
    if not _is_bool(value):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def _integer(name, value):
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def positive_int(name, value):
    """An integer >= 1 (not a bool, not a float such as 2.5 or 2.0)."""
    v = _integer(name, value)
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


def nonneg_int(name, value):
    """An integer >= 0 (not a bool, not a float)."""
    v = _integer(name, value)
    if v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return v


def optional_positive_int(name, value):
    return None if value is None else positive_int(name, value)


def finite_float(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real number (not a bool or string) within ``[lo, hi]``
    (``(lo, ...`` / ``..., hi)`` when ``lo_open`` / ``hi_open``)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad = ((lo is not None and (v < lo or (lo_open and v == lo)))
           or (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        interval = ("(" if lo_open or lo is None else "[") + f"{left}, {right}" + (
            ")" if hi_open or hi is None else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return v


def seed(name, value):
    """None, a non-negative integer, or a NumPy ``Generator`` /
    ``SeedSequence`` / ``BitGenerator`` (what ``np.random.default_rng`` takes)."""
    if value is None or isinstance(value, (np.random.Generator, np.random.SeedSequence,
                                           np.random.BitGenerator)):
        return value
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None, a non-negative integer or a numpy Generator, "
                        f"got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def lengths(value, T, B, name="lengths"):
    """Sequence lengths: ``(B,)`` integers in ``[1, T]``; a list/tuple must
    hold Python or NumPy integers (no floats, no bools). Returns int64."""
    from .dispatch import is_device_array
    if is_device_array(value):
        raise TypeError(f"{name} must be a host array or list of ints, not a device array")
    if isinstance(value, (list, tuple)):
        for v in value:
            if _is_bool(v) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must hold integers, got {v!r} ({type(v).__name__})")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), got {arr.shape}")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"{name} must lie in [1, T] = [1, {T}], got min {arr.min()} max {arr.max()}")
    return arr.astype(np.int64)


def class_labels(value, name="targets", num_classes=None, batch=None):
    """Integer class labels. Float labels are accepted when every value is a
    whole number (``1.0``, as read from a CSV), else rejected by name; bools
    and other dtypes are rejected. With ``num_classes`` / ``batch`` the
    labels must lie in ``[0, num_classes)`` / have shape ``(batch,)``.
    Returns an integer array."""
    arr = _labels(value, name)
    if batch is not None and arr.shape != (batch,):
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {arr.shape}")
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, num_classes) = [0, {num_classes}), "
                         f"got min {arr.min()} max {arr.max()}")
    return arr


def _labels(value, name):
    arr = np.asarray(value)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must be integer class labels, got NaN or infinity")
        if not (arr == np.round(arr)).all():
            bad = arr[arr != np.round(arr)].ravel()[0]
            raise ValueError(f"{name} must be integer class labels, got the non-integral "
                             f"value {bad!r}")
        return arr.astype(np.int64)
    raise TypeError(f"{name} must be integer class labels, got dtype {arr.dtype}")


def float_dtype(name, value):
    """float32 or float64 (anything ``np.dtype`` takes that means one of them)."""
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {value!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def model_args(required=None, optional=None, dropout=None, bidirectional=None, seed_=None,
               dtype=None):
    """Check a model constructor's arguments before anything is built:
    ``required`` / ``optional`` map names to values that must be positive
    integers (``optional`` ones may be None)."""
    for name, v in (required or {}).items():
        positive_int(name, v)
    for name, v in (optional or {}).items():
        optional_positive_int(name, v)
    if dropout is not None:
        finite_float("dropout", dropout, 0.0, 1.0, hi_open=True)
    if bidirectional is not None:
        boolean("bidirectional", bidirectional)
    seed("seed", seed_)
    if dtype is not None:
        float_dtype("dtype", dtype)


def regression_targets(value, pred_shape, name="y"):
    """Regression targets of the prediction's shape ``(B, horizon, F)``, or
    ``(B, horizon * F)`` (``(B, F)`` for horizon 1), or ``(B,)`` when there is
    one value per sample; finite. Returns them reshaped like the prediction."""
    y = np.asarray(value)
    B, n = pred_shape[0], int(np.prod(pred_shape[1:]))
    if y.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
    ok = (tuple(y.shape) == tuple(pred_shape) or tuple(y.shape) == (B, n)
          or (n == 1 and tuple(y.shape) == (B,)))
    if not ok:
        raise ValueError(f"{name} must have shape (B, horizon, output_size) = {tuple(pred_shape)}"
                         f" (or ({B}, {n})), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return y.reshape(pred_shape)


_OPTIM_RANGES = {   # name -> (low, high, high is open); torch.optim's checks, and a few more
    "lr": (0.0, None, False), "momentum": (0.0, None, False), "dampening": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False), "eps": (0.0, None, False), "alpha": (0.0, 1.0, False),
    "lr_decay": (0.0, None, False), "initial_accumulator_value": (0.0, None, False),
}


def optimizer_args(**kw):
    """Check optimizer hyper-parameters by name: finite numbers in range
    (``lr``, ``momentum``, ``weight_decay``, ``eps``... >= 0; ``alpha`` and
    ``dampening`` in [0, 1]), ``betas`` two numbers in [0, 1), and real bools
    (``nesterov``, ``amsgrad``, ``centered``)."""
    for name, v in kw.items():
        if name in _OPTIM_RANGES:
            lo, hi, hi_open = _OPTIM_RANGES[name]
            finite_float(name, v, lo, hi, hi_open=hi_open)
        elif name == "betas":
            if (isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2):
                raise TypeError(f"betas must be a pair (beta1, beta2), got {v!r}")
            for k, b in enumerate(v):
                finite_float(f"betas[{k}]", b, 0.0, 1.0, hi_open=True)
        elif name in ("nesterov", "amsgrad", "centered"):
            boolean(name, v)
        else:   # pragma: no cover - a programming error
            raise KeyError(name)
