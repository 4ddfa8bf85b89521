"""Gradient reduction and parameter broadcast of :mod:`fastrnn.distributed`:
the flat buffers (where each array lives in them, packing and unpacking host
and device arrays), :class:`GradientReducer` (one count-weighted, bucketed,
in-place all-reduce per step) and :func:`broadcast_params`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import prepared as _prepared
from ..dispatch import is_device_array
from .comm import DistributedError, _allgather, _mpi, _timeout_arg, _wait, cuda_aware, get_comm

#: largest Allreduce message; a larger gradient buffer is reduced in buckets of this size
DEFAULT_BUCKET_BYTES = 64 << 20


# ------------------------------------------------------------- flat buffers
class _Layout:
    """Where each array of a name -> array dict lives in a flat buffer."""

    def __init__(self, arrays, split_device):
        self.key = tuple((k, tuple(np.shape(a)), str(a.dtype), is_device_array(a))
                         for k, a in arrays.items())
        dtypes = [np.dtype(a.dtype) for a in arrays.values()]
        for k, dt in zip(arrays, dtypes):
            if dt.kind != "f":
                raise TypeError(f"{k}: only floating-point arrays can be reduced, got {dt}")
        self.dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
        self.host, self.device = [], []           # (name, lo, hi, shape)
        n_host = n_dev = 0
        for k, a in arrays.items():
            size = int(np.prod(np.shape(a), dtype=np.int64))
            if split_device and is_device_array(a):
                self.device.append((k, n_dev, n_dev + size, tuple(a.shape)))
                n_dev += size
            else:
                self.host.append((k, n_host, n_host + size, tuple(np.shape(a))))
                n_host += size
        self.n_host, self.n_dev = n_host, n_dev


def _buckets(n, itemsize, bucket_bytes):
    step = max(1, min(bucket_bytes // itemsize, 2 ** 31 - 1))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]


def _pack(arrays, layout, buf, scale=None):
    """Copy ``arrays`` into the host part of ``buf`` (device arrays staged down)."""
    for k, lo, hi, shape in layout.host:
        a = arrays[k]
        view = buf[lo:hi].reshape(shape)
        if is_device_array(a):
            if np.dtype(a.dtype) == buf.dtype:
                a.copy_to_host(view)
            else:
                view[...] = a.copy_to_host()
        else:
            view[...] = a
        if scale is not None:
            view *= scale


def _unpack(arrays, layout, buf, divisor=None):
    """Write the host part of ``buf`` back into ``arrays`` (in place)."""
    _prepared.bump()        # parameters (or gradients) change here: nothing prepared stays
    for k, lo, hi, shape in layout.host:
        a = arrays[k]
        view = buf[lo:hi].reshape(shape)
        if is_device_array(a):
            if divisor is not None:
                view = view / divisor
            a.copy_to_device(np.ascontiguousarray(view, dtype=a.dtype))
        elif divisor is not None:
            np.divide(view, divisor, out=a, casting="same_kind")
        else:
            a[...] = view


def _scale_device(buf, factor):
    """``buf *= factor`` for a 1-D device array (``factor`` cast to its dtype)."""
    # imported here, as device gradients are met: numba.cuda is not loaded otherwise
    from ..kernels.cuda_optim import scale
    scale(buf, factor)


class GradientReducer:
    """Averages gradients over the ranks of a communicator, weighted by each
    rank's sample count: one in-place ``Allreduce`` per step over a flat
    buffer that is allocated once and reused.

    The buffer holds every gradient times its rank's count, then the count,
    the loss times the count and any ``extra`` values; after the sum each
    gradient is divided by the global count, which gives the gradient of
    the global batch's mean loss whatever the shard sizes (a rank with an
    empty shard contributes zeros). A buffer above ``bucket_bytes`` is
    reduced in several ``Iallreduce`` calls over consecutive slices, all in
    flight at once. On a single rank nothing is sent or changed.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).
    bucket_bytes : int, default 64 MiB
        Largest single message.
    timeout : float or None, default from :func:`default_timeout`
        Seconds to wait for the other ranks before raising
        :class:`DistributedError`; None waits forever (blocking ``Allreduce``).
    cuda_aware : bool, optional
        Reduce device gradients in device memory (default: :func:`cuda_aware`);
        False stages them through the host buffer.

    Attributes
    ----------
    seconds : float
        Time spent in the reductions so far (including waiting for the
        slowest rank to arrive).
    calls : int
        Steps reduced.
    nbytes : int
        Bytes of the last step's buffers (the message size).
    """

    def __init__(self, comm: Any = None, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 timeout: float | None | str = "default", cuda_aware: bool | None = None) -> None:
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) \
                or bucket_bytes < 8:
            raise ValueError(f"bucket_bytes must be an integer >= 8, got {bucket_bytes!r}")
        self.bucket_bytes = int(bucket_bytes)
        self.timeout = _timeout_arg(timeout)
        self.comm = get_comm(comm)
        self._cuda_aware = cuda_aware
        self._layout = None
        self._buf = self._dbuf = None
        self.seconds, self.calls, self.nbytes = 0.0, 0, 0

    def _setup(self, grads, n_extra):
        key = tuple((k, tuple(np.shape(a)), str(a.dtype), is_device_array(a))
                    for k, a in grads.items())
        if self._layout is not None and self._layout.key == key and self._n_extra == n_extra:
            return
        has_dev = any(k[3] for k in key)
        aware = False
        if has_dev:
            aware = cuda_aware() if self._cuda_aware is None else bool(self._cuda_aware)
        lay = _Layout(grads, split_device=aware)
        self._layout, self._n_extra = lay, n_extra
        # gradients, then count, loss * count and the extras
        self._buf = np.zeros(lay.n_host + 2 + n_extra, lay.dtype)
        self._dbuf = None
        if lay.n_dev:
            from numba import cuda
            self._dbuf = cuda.device_array(lay.n_dev, lay.dtype)

    def reduce(self, grads: dict, count: float, loss: float = 0.0,
               extra: tuple = ()) -> tuple[float, float, tuple]:
        """Replace ``grads`` (in place) by their count-weighted mean over all ranks.

        Parameters
        ----------
        grads : dict of str to array
            This rank's gradients of its mean loss (host or device arrays);
            the same names and shapes on every rank.
        count : float
            Samples (or tokens) behind this rank's mean; 0 for an empty shard
            (its gradients are ignored).
        loss : float
            This rank's mean loss.
        extra : tuple of float
            More values to sum over the ranks in the same message.

        Returns
        -------
        tuple
            ``(global count, global mean loss, sums of extra)``.

        Raises
        ------
        DistributedError
            When the other ranks do not join within ``timeout``.
        """
        extra = tuple(float(v) for v in extra)
        if self.comm.Get_size() == 1:
            return count, loss, extra
        MPI = _mpi()
        self._setup(grads, len(extra))
        lay, buf = self._layout, self._buf
        c = float(count)
        _pack(grads, lay, buf, scale=buf.dtype.type(c))
        n = lay.n_host
        buf[n], buf[n + 1] = c, (loss * c if c else 0.0)
        buf[n + 2:] = extra
        if self._dbuf is not None:
            for k, lo, hi, _ in lay.device:
                self._dbuf[lo:hi].copy_to_device(grads[k].reshape(hi - lo))
            _scale_device(self._dbuf, c)
            from numba import cuda
            cuda.synchronize()            # the MPI library reads the buffer now
        t0 = time.perf_counter()
        reqs = [self.comm.Iallreduce(MPI.IN_PLACE, buf[lo:hi], op=MPI.SUM)
                for lo, hi in _buckets(len(buf), buf.itemsize, self.bucket_bytes)]
        if self._dbuf is not None:
            reqs += [self.comm.Iallreduce(MPI.IN_PLACE, self._dbuf[lo:hi], op=MPI.SUM)
                     for lo, hi in _buckets(lay.n_dev, buf.itemsize, self.bucket_bytes)]
        _wait(reqs, self.comm, f"the gradient all-reduce of step {self.calls + 1}", self.timeout)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.nbytes = buf.nbytes + (0 if self._dbuf is None else self._dbuf.nbytes)
        total = float(buf[n])
        if not total > 0:
            raise DistributedError("no rank had any samples in this step's batch")
        _unpack(grads, lay, buf, divisor=buf.dtype.type(total))
        if self._dbuf is not None:
            _scale_device(self._dbuf, 1.0 / total)
            for k, lo, hi, _ in lay.device:
                grads[k].reshape(hi - lo).copy_to_device(self._dbuf[lo:hi])
        return total, float(buf[n + 1]) / total, tuple(float(v) for v in buf[n + 2:])


def broadcast_params(params: dict, comm: Any = None, root: int = 0,
                     timeout: float | None | str = "default") -> None:
    """Overwrite ``params`` (in place) on every rank with those of ``root``:
    one ``Bcast`` of a flat buffer (device arrays staged through the host).

    Parameters
    ----------
    params : dict of str to array
        The same names and shapes on every rank (checked).
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).
    root : int, default 0
        The rank whose values everyone takes.
    timeout : float or None
        Seconds to wait for the other ranks (see :class:`GradientReducer`).

    Raises
    ------
    DistributedError
        When the ranks hold different parameter names or shapes, or do not
        join in time.
    """
    comm = get_comm(comm)
    timeout = _timeout_arg(timeout)
    if comm.Get_size() == 1:
        return
    lay = _Layout(params, split_device=False)
    keys = _allgather(comm, lay.key, "the parameter broadcast", timeout)
    if any(k != keys[root] for k in keys):
        bad = [r for r, k in enumerate(keys) if k != keys[root]]
        raise DistributedError(f"ranks {bad} hold other parameter names, shapes or dtypes than "
                               f"rank {root}: build the same model on every rank")
    buf = np.empty(lay.n_host, lay.dtype)
    if comm.Get_rank() == root:
        _pack(params, lay, buf)
    _wait([comm.Ibcast(buf, root=root)], comm, "the parameter broadcast", timeout)
    if comm.Get_rank() != root:
        _unpack(params, lay, buf)
