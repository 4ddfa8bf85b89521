"""The one place a backend is chosen.

The backend contract
--------------------
A backend is an object with two functions that run ONE layer in ONE direction
over a whole sequence. The layers (stacking, directions, dropout, batch_first,
argument checking) are written once on top of it, in :mod:`fastrnn.layers`.

``forward(cell, x, h0, c0, weights, lengths, reverse, training)``
    cell     : :class:`fastrnn.cells.CellSpec`
    x        : [T, B, I]  C-contiguous, float32 or float64
    h0       : [B, H]     same dtype
    c0       : [B, H]     LSTM family only, else None
    weights  : :class:`Weights` ``(w_ih [G*H, I], w_hh [G*H, H], b_ih [G*H],
               b_hh [G*H], peep)``; ``peep`` is None, ``[3, H]`` (diagonal) or
               ``[3, H, H]`` (full), rows in the order ``p_i, p_f, p_o``.
               A layer built with ``bias=False`` passes zero biases.
    lengths  : None or int64 [B] with ``1 <= lengths[b] <= T`` (already checked)
    reverse  : process each sequence from ``lengths[b]-1`` down to 0
    training : keep what backward needs; when False keep nothing (O(B*H) memory)
    returns ``(y [T, B, H], h_n [B, H], c_n [B, H] or None, cache)``;
    ``y[t, b] = 0`` for ``t >= lengths[b]``; ``cache`` is None unless training.

``backward(cell, cache, dy, dh_n, dc_n)``
    dy [T, B, H]; dh_n [B, H]; dc_n [B, H] (LSTM family) or None.
    Entries of ``dy`` at padded steps are ignored.
    returns ``(dx [T, B, I], dh0 [B, H], dc0 [B, H] or None, dweights)`` where
    ``dweights`` is a :class:`Weights` of fresh gradient arrays (``peep`` None
    for cells without peepholes).

Inputs are never modified. Every array a backend returns is newly allocated.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Optional

import numpy as np

BACKENDS = ("auto", "numpy", "cpu", "cuda")


class Weights(NamedTuple):
    """The parameters of one layer and direction, as the backends take them."""

    w_ih: np.ndarray            # [G*H, I]
    w_hh: np.ndarray            # [G*H, H]
    b_ih: np.ndarray            # [G*H]
    b_hh: np.ndarray            # [G*H]
    peep: Optional[np.ndarray] = None   # None | [3, H] | [3, H, H]


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here (no Numba, no GPU...)."""


# name -> (module path, why it might be missing)
_MODULES = {
    "numpy": "fastrnn.reference",
    "cpu": "fastrnn.kernels.cpu",
    "cuda": "fastrnn.kernels.cuda",
}
_loaded = {}


def check_backend_name(backend):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def get_backend(name):
    """Return the backend module for ``"numpy"``, ``"cpu"`` or ``"cuda"``.

    Raises :class:`BackendUnavailable` with the reason when it cannot load.
    """
    check_backend_name(name)
    if name == "auto":
        raise ValueError("resolve 'auto' with resolve_backend() first")
    if name in _loaded:
        return _loaded[name]
    try:
        mod = importlib.import_module(_MODULES[name])
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailable(
            f"backend {name!r} is not available: {exc}. "
            "Use backend='numpy' (always available) or install what it needs."
        ) from exc
    available = getattr(mod, "available", None)
    if available is not None:
        ok, why = available()
        if not ok:
            raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    _loaded[name] = mod
    return mod


def is_device_array(a) -> bool:
    """True for arrays that live on a CUDA device: anything with
    ``__cuda_array_interface__`` (numba, CuPy, torch) or a numba device array
    (including the CUDA simulator's, which has no such attribute)."""
    if isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("numba.cuda")


def resolve_backend(backend, x=None):
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend name.

    ``"auto"`` is ``"cuda"`` when ``x`` lives on a GPU, else ``"cpu"`` when the
    compiled CPU kernels load, else ``"numpy"``.
    """
    check_backend_name(backend)
    if backend != "auto":
        return backend
    if x is not None and is_device_array(x):
        return "cuda"
    try:
        get_backend("cpu")
        return "cpu"
    except BackendUnavailable:
        return "numpy"
