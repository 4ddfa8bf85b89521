"""Argument checks shared by the layers, models, optimizers, data and CLI.

Each check takes the argument's *name* (as the user wrote it) and its value,
and raises a :class:`ValueError` or :class:`TypeError` whose message starts
with that name, or returns the value normalised (``int``, ``float``, ``bool``,
an int64 array). The recurrent layers' input checks (at the end) take the
layer's facts they need as arguments and return the checked arrays. Nothing
here imports from the rest of the package except :mod:`fastrnn.contract` (for
device arrays), so any module may use it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .contract import is_device_array

__all__ = ["boolean", "positive_int", "nonneg_int", "optional_positive_int", "finite_float",
           "seed", "lengths", "class_labels", "layer_size", "dropout_rate", "layer_array",
           "finite_array", "sequence_input", "initial_state", "output_gradient",
           "final_state_gradient", "state_dict"]


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


# ----------------------------------------------------------------- recurrent layers
# The checks of fastrnn.layers: each takes the values (and the layer's facts it
# needs: dtype, placement ``ops``, expected shape) and returns the normalised
# arrays or raises. ``ops`` is the layer's HostOps / DeviceOps: ``ops.on_device``
# says where the parameters live, ``ops.asarray`` views an array without a copy.

def layer_size(name, value):
    """A layer's size argument: a positive integer; every refusal is a ValueError."""
    try:
        return positive_int(name, value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None


def dropout_rate(name, value):
    """A real number in [0, 1) (not a bool); every refusal is a ValueError."""
    if _is_bool(value) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def layer_array(name, a, dtype, ops):
    """``a`` on the layer's side (host or GPU, as ``ops.on_device``) and of its
    ``dtype``; returns it as an array (``ops.asarray``, no copy). TypeError otherwise."""
    on_gpu = not isinstance(a, np.ndarray) and is_device_array(a)   # a host array: no question
    if ops.on_device and not on_gpu:
        raise TypeError(f"{name} is a host array but this layer lives on the GPU: pass a device "
                        "array (e.g. numba.cuda.to_device(x)), or move the layer with layer.to('cpu')")
    if on_gpu and not ops.on_device:
        raise TypeError(f"{name} is a GPU array but this layer's parameters are on the host: "
                        "move the layer with layer.to('cuda') first")
    a = ops.asarray(a)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the layer, got {a.dtype}"
                        f" (convert with .astype(np.{dtype}))")
    return a


def finite_array(name, a, on_device):
    """Refuse NaN or infinity in a host array (a device-wide scan would cost a
    reduction and a sync, so device arrays pass unchecked)."""
    if not on_device and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return a


def sequence_input(x, input_size, batch_first, dtype, ops):
    """The input ``x`` of a recurrent layer: 3-D ``(T, B, I)`` (``(B, T, I)``
    with ``batch_first``), ``I == input_size``, ``T, B >= 1``, finite.
    Returns ``(x, T, B)``."""
    x = layer_array("x", x, dtype, ops)
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D {layout}, got shape {x.shape}")
    if x.shape[2] != input_size:
        raise ValueError(f"x must have {input_size} features (input_size) in its last "
                         f"axis {layout}, got shape {x.shape}")
    if 0 in x.shape[:2]:
        raise ValueError(f"x must have at least one time step and one batch entry, got shape {x.shape}")
    finite_array("x", x, ops.on_device)
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    return x, T, B


def _state_parts(value, has_cell, layer_name, arg, parts):
    """Split a state argument into its parts: ``(h, c)`` for the LSTM family
    (a 2-tuple or list is required), ``(h,)`` otherwise."""
    if not has_cell:
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{arg} must be a tuple {parts} for "
                        f"{layer_name}, got {type(value).__name__}")
    return tuple(value)


def initial_state(state, shape, has_cell, layer_name, dtype, ops):
    """The initial state of a recurrent layer: ``None``, ``h_0``, or ``(h_0,
    c_0)`` for the LSTM family, each of ``shape`` ``(L*D, B, H)``, finite.
    Returns ``(h_0, c_0)`` (``c_0`` None without a cell state; both None for
    ``state=None``)."""
    if state is None:
        return None, None
    parts = _state_parts(state, has_cell, layer_name, "state", "(h_0, c_0)")
    names = ("state[0] (h_0)", "state[1] (c_0)") if has_cell else ("state (h_0)",)
    out = []
    for name, s in zip(names, parts):
        s = layer_array(name, s, dtype, ops)
        if tuple(s.shape) != shape:
            raise ValueError(f"{name} must have shape (num_layers*num_directions, B, H) = "
                             f"{shape}, got {s.shape}")
        out.append(finite_array(name, s, ops.on_device))
    return out[0], (out[1] if has_cell else None)


def output_gradient(dy, shape, dtype, ops):
    """``dy`` of the shape of the layer's output; checked for NaN by the
    caller after the final-state gradients (see :func:`final_state_gradient`)."""
    dy = layer_array("dy", dy, dtype, ops)
    if tuple(dy.shape) != shape:
        raise ValueError(f"dy must have the shape of the output y, {shape}, got {dy.shape}")
    return dy


def final_state_gradient(dstate, shape, has_cell, layer_name, dtype, ops):
    """The gradient of the final state: ``None``, ``dh_n``, or ``(dh_n, dc_n)``
    for the LSTM family (either part may be None), each of ``shape``, finite.
    Returns ``(dh_n, dc_n)``, None where not given."""
    if dstate is None:
        return None, None
    parts = _state_parts(dstate, has_cell, layer_name, "dstate",
                         "(dh_n, dc_n) (either may be None)")
    names = ("dstate[0] (dh_n)", "dstate[1] (dc_n)") if has_cell else ("dstate (dh_n)",)
    out = []
    for name, p in zip(names, parts):
        if p is not None:
            p = layer_array(name, p, dtype, ops)
            if tuple(p.shape) != shape:
                raise ValueError(f"{name} must have the shape of the final state {shape}, got {p.shape}")
            finite_array(name, p, ops.on_device)
        out.append(p)
    return out[0], (out[1] if has_cell else None)


def state_dict(value, shapes, owner):
    """A state dict to load into ``owner`` (a class name), whose parameters have
    ``shapes`` (name -> shape): a mapping with exactly those names, of
    floating-point arrays (or anything ``np.asarray`` takes, torch tensors
    too) of those shapes. Returns name -> host ndarray (not yet cast)."""
    if not hasattr(value, "keys"):
        raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(value).__name__}")
    missing = [k for k in shapes if k not in value]
    unexpected = [k for k in value if k not in shapes]
    if missing or unexpected:
        raise ValueError(f"state_dict does not match this {owner}: "
                         f"missing {missing}, unexpected {unexpected}")
    out = {}
    for k, v in value.items():
        if hasattr(v, "detach"):        # torch tensors (possibly requiring grad)
            v = v.detach().cpu()
        a = np.asarray(v)
        if a.dtype.kind != "f":
            raise TypeError(f"state_dict[{k!r}] must hold floating-point values, got dtype {a.dtype}")
        if a.shape != shapes[k]:
            raise ValueError(f"state_dict[{k!r}] has shape {a.shape}, expected {shapes[k]}")
        out[k] = a
    return out
