"""Host-side helpers for arrays that may live on the GPU.

The blocks, optimizers, models and trainer call these to tell a device array
from a host one and to move values across; :mod:`fastrnn.kernels.cuda_blocks`
(which imports ``numba.cuda``) is loaded only when a device array is met, so
a CPU-only install never imports it.
"""
from __future__ import annotations

import numpy as np

from .dispatch import get_backend, is_device_array


def on_device(a) -> bool:
    """True for a GPU array (numba device array, or ``__cuda_array_interface__``):
    :func:`fastrnn.contract.is_device_array`, which is False for None and ndarrays."""
    return is_device_array(a)


def kernels():
    """:mod:`fastrnn.kernels.cuda_blocks` (the device side of the blocks, losses,
    optimizers and array helpers, as one namespace), after checking that the CUDA
    backend can run (a GPU or the simulator): raises
    :class:`fastrnn.dispatch.BackendUnavailable` with the reason otherwise."""
    get_backend("cuda")
    from .kernels import cuda_blocks
    return cuda_blocks


def to_host(a):
    """``a`` as a host ndarray: device arrays are copied back, anything else
    goes through ``np.asarray`` (no copy for ndarrays)."""
    if on_device(a):
        return kernels().to_host(a)
    return np.asarray(a)


def host_copy(a):
    """A fresh host copy of ``a`` (host or device)."""
    if on_device(a):
        return kernels().to_host(a)
    return np.array(a, copy=True)


def assign(dst, src):
    """``dst[...] = src`` in place, for host or device ``dst`` and ``src``
    (cast to ``dst``'s dtype)."""
    if on_device(dst):
        k = kernels()
        if on_device(src) and np.dtype(src.dtype) == np.dtype(dst.dtype):
            k.view(dst).copy_to_device(k.contiguous(src))
        else:
            k.view(dst).copy_to_device(np.ascontiguousarray(to_host(src), dtype=dst.dtype))
    else:
        dst[...] = to_host(src)
    from . import prepared      # parameters are written through here: prepared copies are stale
    prepared.bump()


def placement(device) -> bool:
    """``True`` for ``"cuda"`` (checked to be available), ``False`` for the
    host names ``"cpu"``, ``"numpy"`` and ``"auto"``; anything else is a ValueError."""
    if device == "cuda":
        get_backend("cuda")
        return True
    if device in ("cpu", "numpy", "auto"):
        return False
    raise ValueError(f"device must be 'cuda' or 'cpu' (also 'numpy', 'auto'), got {device!r}")
