"""The one place a backend is chosen.

Backends implement the contract of :mod:`fastrnn.contract` (``forward``,
``backward``, ``available``); this module loads them by name and resolves
``"auto"``. ``Weights``, ``BackendUnavailable`` and ``is_device_array`` live in
:mod:`fastrnn.contract` and are re-exported here.
"""
from __future__ import annotations

import importlib

from .contract import BackendUnavailable, Weights, is_device_array

__all__ = ["BACKENDS", "BackendUnavailable", "Weights", "check_backend_name", "get_backend",
           "is_device_array", "resolve_backend"]

BACKENDS = ("auto", "numpy", "cpu", "cuda")


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
