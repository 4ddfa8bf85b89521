"""The sequence encoder's array steps on the GPU: :class:`DeviceEncoderOps`,
the layers' :class:`~fastrnn.kernels.cuda_ops.DeviceOps` plus the methods of
:class:`fastrnn.models.encoder._HostEncoderOps` (batch layout, last-step
pooling and its gradient) as device kernels. Loaded only for a model on the
GPU (it imports ``numba.cuda``).

A batch may be given on the host (cut, converted and copied over once) or on
the device (taken as it is: its dtype must be the model's).
"""
from __future__ import annotations

import numpy as np

from .. import _device
from ..kernels.cuda_ops import DeviceOps


class DeviceEncoderOps(DeviceOps):
    """The encoder's steps on device arrays (see the module docstring)."""

    def __init__(self, kernels):
        self._k = kernels                 # fastrnn.kernels.cuda_blocks

    @staticmethod
    def batch(x):
        return x if _device.on_device(x) else np.asarray(x)

    @staticmethod
    def lengths(lengths):
        return _device.to_host(lengths)

    def ids_time_major(self, x):
        return self._k.swap01(x) if _device.on_device(x) else x.T          # [T, B]

    def feature_axis(self, x):
        if _device.on_device(x):
            return self._k.contiguous(x).reshape(tuple(x.shape) + (1,))
        return x[:, :, None]                                             # [B, T, 1]

    def time_major(self, x, dtype):
        if _device.on_device(x):
            if np.dtype(x.dtype) != dtype:
                raise TypeError(f"x must have dtype {dtype} like the model, got "
                                f"{np.dtype(x.dtype)}")
            return self._k.swap01(x)                                     # [T, B, F]
        return self.from_host(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=dtype))

    def zeros(self, shape, dtype):
        return self._k.zeros(shape, dtype)       # filled on the device, not copied over

    def pool_last(self, h_n, D):
        return self._k.pool_last(h_n, D)

    def unpool_last(self, dpooled, shape, D, dtype):
        return self._k.unpool_last(dpooled, shape, D)        # dpooled has the model's dtype

    @staticmethod
    def cast(a, dtype):
        return a                                 # device gradients have the model's dtype

    def batch_major(self, dx, T_in):
        return self._k.swap01(dx, T_in)                     # [B, T_in, F], zero-padded


_OPS = []


def device_ops():
    """The :class:`DeviceEncoderOps`, after checking that the CUDA backend can
    run (:func:`fastrnn._device.kernels`)."""
    k = _device.kernels()
    if not _OPS:
        _OPS.append(DeviceEncoderOps(k))
    return _OPS[0]
