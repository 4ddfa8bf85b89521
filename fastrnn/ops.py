"""The array operations a layer needs between kernel calls, on either side.

:class:`HostOps` works on host ndarrays; :func:`device_ops` returns its twin
for GPU arrays (:class:`fastrnn.kernels.cuda_ops.DeviceOps`, imported on
first use: numba.cuda loads only when a layer goes to the GPU). Code written
against these methods (stacking layers and directions, dropout masks,
gradient accumulation, the layers' input checks through ``ops.on_device`` and
``ops.asarray``) runs unchanged on both sides: the layers
(:mod:`fastrnn.layers`), the streams' state checks (:mod:`fastrnn.stream`)
and the functional API's device path (:mod:`fastrnn.functional`) take them
from here. This module imports nothing of fastrnn at import time.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HostOps", "device_ops"]


class HostOps:
    """The array operations a layer needs between kernel calls, on host arrays.

    :class:`fastrnn.kernels.cuda_ops.DeviceOps` implements the same methods for
    GPU arrays, so the layer code is written once for both.
    """

    on_device = False

    asarray = staticmethod(np.asarray)
    from_host = staticmethod(np.ascontiguousarray)
    zeros = staticmethod(np.zeros)
    empty = staticmethod(np.empty)
    stack0 = staticmethod(np.stack)
    add = staticmethod(np.add)
    mul = staticmethod(np.multiply)

    @staticmethod
    def to_host(a):
        return np.array(a, copy=True)

    @staticmethod
    def contiguous3(a, swap=False):
        return np.ascontiguousarray(a.transpose(1, 0, 2) if swap else a)

    @staticmethod
    def concat_last(parts):
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    @staticmethod
    def take_last(a, lo, hi):
        return np.ascontiguousarray(a[:, :, lo:hi])

    @staticmethod
    def iadd(a, b):
        a += b

    @staticmethod
    def fill0(a):
        a[...] = 0

    @staticmethod
    def set_index0(dst, i, src):
        dst[i] = src


def device_ops():
    """A :class:`fastrnn.kernels.cuda_ops.DeviceOps` (imports numba.cuda)."""
    from .kernels.cuda_ops import DeviceOps
    return DeviceOps()
