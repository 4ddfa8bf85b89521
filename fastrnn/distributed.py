"""Data-parallel training and sharded inference over MPI (``mpi4py``).

Run one process per core (or per node, or per GPU) under an MPI launcher;
every process builds the same model and data objects, and this module keeps
them in step::

    mpiexec -n 4 fastrnn train lm --data corpus.txt --distributed

    # or in a script run with mpiexec -n 4 python train.py
    from fastrnn.distributed import DistributedTrainer, rank_world
    rank, world = rank_world()
    data = LMBatches(ids, batch_size=64, bptt=64, rank=rank, world=world)
    trainer = DistributedTrainer(model, Adam(model, lr=3e-3), data, checkpoint="lm.ckpt")
    trainer.fit(10)

What happens (``W`` processes, the *ranks*, of a communicator, by default
``MPI.COMM_WORLD``):

- At the start the parameters of rank 0 are broadcast to all ranks (one
  ``Bcast`` of a flat buffer), and so is the trainer's shuffling generator,
  so every rank starts from the same weights and draws the same batches.
- The data helpers (:class:`fastrnn.data.ArrayBatches`,
  :class:`fastrnn.data.LMBatches`) take ``rank``/``world``: ``batch_size``
  stays the *global* batch and each rank reads its contiguous shard of every
  batch (:func:`fastrnn.data.shard_range`), so the ranks together see every
  sample exactly once per epoch.
- Each step, every rank computes the gradient of its shard's mean loss; the
  gradients, each scaled by its shard's sample count, the counts and the
  loss sums are summed with **one** in-place ``Allreduce`` over a flat
  buffer allocated once (split into buckets of ``bucket_bytes`` when it is
  larger), then divided by the global count. That is the gradient of the
  global batch's mean loss, so with the same seed a ``W``-rank run equals a
  one-process run with the same global batch to float rounding (uneven and
  empty shards included). Clipping and the optimizer step then run on
  identical gradients on every rank, and the parameters stay identical
  without being sent again.
- Losses, sample counts, throughput, validation losses and metrics are
  reduced over the ranks; only rank 0 draws the progress bar, calls ``log``
  and writes checkpoints (and, in the CLI, the model, history and plot).
- A checkpoint holds nothing that depends on the world size (a language
  model's carried state of an open epoch is gathered to the global batch),
  so a run can resume from a checkpoint written by any number of ranks.
- Every collective of the training loop is bounded by ``timeout`` seconds
  (polling the non-blocking ``Iallreduce``/``Ibcast``/``Ibarrier``): a rank
  that died or hangs makes the others raise :class:`DistributedError`
  instead of waiting forever, and an unhandled exception on any rank aborts
  all of them (``MPI_Abort``) with a message saying which rank failed.

Gradients on a GPU (a ``backend="cuda"`` model): with a CUDA-aware MPI
library the device gradients are packed into a device buffer and reduced
there; otherwise they are staged through the host buffer (copied down,
reduced, copied back). :func:`transport` says which (``fastrnn info``
prints it).

Dropout: each rank draws its own masks (its generators are advanced by its
rank), so a run with dropout is not bit-comparable across world sizes; with
no dropout it is.

``mpi4py`` is optional (``pip install 'fastrnn[mpi]'`` brings it and the
MPICH wheel with ``mpiexec``); this module imports without it, and every
function that needs it raises an :class:`ImportError` that says so.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from . import prepared as _prepared
from .data import shard_range
from .dispatch import is_device_array
from .train import Trainer, _empty

__all__ = [
    "DistributedError", "available", "get_comm", "rank_world", "cuda_aware", "transport",
    "mpi_info", "default_timeout", "GradientReducer", "broadcast_params", "DistributedTrainer",
    "sharded_apply", "install_abort_hook", "abort", "DEFAULT_BUCKET_BYTES", "ABORT_GRACE",
]

#: largest Allreduce message; a larger gradient buffer is reduced in buckets of this size
DEFAULT_BUCKET_BYTES = 64 << 20

_INSTALL = "pip install 'fastrnn[mpi]'"


class DistributedError(RuntimeError):
    """A collective operation failed or did not complete in time (another rank
    died, hangs or diverged from this one)."""


# ------------------------------------------------------------------ MPI access
def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"fastrnn.distributed needs mpi4py and an MPI library: {_INSTALL} "
            f"(mpi4py and the MPICH wheel, which brings mpiexec) ({exc})") from exc
    return MPI


def available() -> bool:
    """Whether ``mpi4py`` (and so this module) can be used here.

    Returns
    -------
    bool
        True when ``from mpi4py import MPI`` works.
    """
    try:
        _mpi()
        return True
    except ImportError:
        return False


def get_comm(comm: Any = None) -> Any:
    """The communicator to use: ``comm`` itself, or ``MPI.COMM_WORLD``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        An intra-communicator (e.g. a ``Split`` of the world).

    Returns
    -------
    mpi4py.MPI.Comm

    Raises
    ------
    ImportError
        When mpi4py is not installed (the message names ``fastrnn[mpi]``).
    TypeError
        When ``comm`` is not an mpi4py communicator.
    """
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intra-communicator (e.g. MPI.COMM_WORLD), "
                        f"got {type(comm).__name__}")
    return comm


def rank_world(comm: Any = None) -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``comm`` (default
    ``MPI.COMM_WORLD``): what the data helpers' ``rank``/``world`` take.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).

    Returns
    -------
    tuple of int
    """
    comm = get_comm(comm)
    return comm.Get_rank(), comm.Get_size()


def default_timeout() -> float | None:
    """Seconds a rank waits in one collective before giving up:
    ``FASTRNN_MPI_TIMEOUT`` (``0`` or ``none``: wait forever), else 300.

    Returns
    -------
    float or None
        None means no limit.
    """
    v = os.environ.get("FASTRNN_MPI_TIMEOUT", "").strip().lower()
    if not v:
        return 300.0
    if v in ("0", "none", "inf"):
        return None
    try:
        t = float(v)
    except ValueError:
        raise ValueError(f"FASTRNN_MPI_TIMEOUT must be a number of seconds, got {v!r}") from None
    if not t > 0:
        raise ValueError(f"FASTRNN_MPI_TIMEOUT must be > 0 (0 or none: no limit), got {v!r}")
    return t


def _timeout_arg(timeout):
    if timeout == "default":
        return default_timeout()
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    return float(timeout)


def _mpi_libraries():
    """Paths of the MPI shared libraries loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libmpi" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith("libmpi"))


def cuda_aware() -> bool:
    """Whether the MPI library can reduce CUDA device buffers directly.

    ``FASTRNN_MPI_CUDA_AWARE=1`` or ``0`` forces the answer; otherwise
    ``MPIX_Query_cuda_support()`` of the loaded library (MPICH, Open MPI)
    decides, and a library without it counts as not CUDA-aware.

    Returns
    -------
    bool
    """
    env = os.environ.get("FASTRNN_MPI_CUDA_AWARE", "").strip()
    if env in ("0", "1"):
        return env == "1"
    MPI = _mpi()
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        try:
            return bool(query())
        except Exception:   # noqa: BLE001 - not implemented by this MPI
            return False
    for path in _mpi_libraries():
        try:
            fn = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype = ctypes.c_int
            return bool(fn())
    return False


def transport() -> str:
    """How gradients that live on a GPU are reduced: ``"cuda-aware"`` (in
    device memory, by the MPI library) or ``"host-staged"`` (copied to the
    host buffer and back).

    Returns
    -------
    str
    """
    return "cuda-aware" if cuda_aware() else "host-staged"


def mpi_info() -> dict[str, Any]:
    """What ``fastrnn info`` prints about MPI.

    Returns
    -------
    dict
        ``available`` (bool); with mpi4py: ``mpi4py`` (version), ``library``
        (first line of the MPI library's version), ``transport`` (see
        :func:`transport`); without: ``reason``.
    """
    try:
        MPI = _mpi()
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    import mpi4py
    lib = MPI.Get_library_version().strip().splitlines()
    return {"available": True, "mpi4py": mpi4py.__version__,
            "library": " ".join(lib[0].split()) if lib else "?", "transport": transport()}


# ------------------------------------------------------------ bounded waits
def _wait(reqs, comm, what, timeout):
    """Complete the requests ``reqs``, or raise DistributedError after
    ``timeout`` seconds (None: wait as long as it takes)."""
    MPI = _mpi()
    if timeout is None:
        MPI.Request.Waitall(reqs)
        return
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not MPI.Request.Testall(reqs):
        now = time.monotonic()
        if now > deadline:
            raise DistributedError(
                f"rank {comm.Get_rank()} of {comm.Get_size()}: {what} did not complete "
                f"within {timeout:g} s: another rank has died, hangs or stopped taking part "
                "(FASTRNN_MPI_TIMEOUT or timeout= sets this limit)")
        if now - t0 > 0.01:         # a long wait: stop spinning a core at full speed
            time.sleep(1e-4)


def _barrier(comm, what, timeout):
    _wait([comm.Ibarrier()], comm, what, timeout)


def _allgather(comm, obj, what, timeout):
    """``comm.allgather(obj)`` (pickled, small objects), after a bounded barrier
    so that a missing rank is an error, not a hang."""
    _barrier(comm, what, timeout)
    return comm.allgather(obj)


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
    """``buf *= factor`` for a 1-D device array (a small CUDA kernel)."""
    from ._mpi_cuda import scale
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


# ----------------------------------------------------------- abort on error
_HOOKED = []


def install_abort_hook(comm: Any = None) -> None:
    """Make an unhandled exception on this rank abort every rank.

    Without it, a rank that raises leaves the others waiting in their next
    collective (and its own ``MPI_Finalize`` waiting for them). The hook
    prints the traceback as usual, then one line naming the rank, then
    calls :func:`abort` (``comm.Abort(1)``). Installing it twice does nothing.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator to abort (default ``MPI.COMM_WORLD``).
    """
    comm = get_comm(comm)
    if _HOOKED:
        return
    previous = sys.excepthook

    def hook(tp, value, tb):
        try:
            previous(tp, value, tb)
        finally:
            try:
                sys.stderr.write(f"fastrnn.distributed: rank {comm.Get_rank()} of "
                                 f"{comm.Get_size()} failed ({tp.__name__}): aborting all ranks\n")
            finally:
                abort(comm, 1)

    sys.excepthook = hook
    _HOOKED.append(hook)


#: seconds between an error message and MPI_Abort: the launcher forwards a
#: rank's output through a pipe, and the abort would cut off what is still in it
ABORT_GRACE = 1.0


def abort(comm: Any = None, code: int = 1) -> None:
    """Flush this rank's output, wait :data:`ABORT_GRACE` seconds for the
    launcher to forward it, then ``comm.Abort(code)`` (ends every rank).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator to abort (default ``MPI.COMM_WORLD``).
    code : int, default 1
        The error code (the launcher's exit status, with MPICH).
    """
    comm = get_comm(comm)
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError, AttributeError):
            pass
    time.sleep(ABORT_GRACE)
    comm.Abort(code)


# ------------------------------------------------------------------ trainer
class DistributedTrainer(Trainer):
    """A :class:`fastrnn.train.Trainer` whose steps run data-parallel over
    the ranks of an MPI communicator (see the module docstring).

    Build it on every rank with the same model configuration, the same
    optimizer type and data objects sharded for this rank
    (``rank=``/``world=`` of :class:`fastrnn.data.ArrayBatches` and
    :class:`fastrnn.data.LMBatches`). Construction, :meth:`fit`,
    :meth:`evaluate`, :meth:`save_checkpoint` and :meth:`resume` are
    collective: every rank must call them, in the same order.

    Parameters
    ----------
    model : model
        As for :class:`Trainer`; rank 0's parameters are broadcast to all ranks
        here.
    optimizer : fastrnn.optim.Optimizer
        A fresh optimizer over ``model`` (its state is not broadcast; resume
        restores it on every rank from the checkpoint).
    train_data : data object or list of batches
        This rank's shard of the training data. A data object with
        ``rank``/``world`` attributes is checked against the communicator.
    val_data : same as ``train_data``, optional
        This rank's shard of the validation data; losses and metrics are
        reduced over the ranks.
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).
    timeout : float or None, optional
        Seconds any collective may wait for the other ranks before raising
        :class:`DistributedError` (default :func:`default_timeout`: 300, or
        ``FASTRNN_MPI_TIMEOUT``); None waits forever.
    bucket_bytes : int, default 64 MiB
        Largest single all-reduce message (see :class:`GradientReducer`).
    abort_on_error : bool, default True
        With more than one rank, install :func:`install_abort_hook`.
    **kwargs
        Every other :class:`Trainer` argument (``clip_norm``, ``schedule``,
        ``seed``, ``progress``, ``checkpoint``, ``max_seconds``...). On
        ranks other than 0, ``progress`` and ``log`` are turned off. The
        time budget and a ``"budget"`` schedule use the ranks' mean elapsed
        time, reduced with the gradients, so all ranks stop at the same step.
        Callbacks given in ``callbacks=`` run on every rank (a
        :class:`fastrnn.callbacks.ModelCheckpoint` needs that: saving is
        collective); one that prints should check ``comm.rank == 0`` itself.

    Attributes
    ----------
    rank, world : int
        This process's rank and the number of ranks.
    reducer : GradientReducer
        The gradient reduction (its ``seconds`` is the time spent in it).

    Examples
    --------
    >>> # run with: mpiexec -n 2 python script.py              # doctest: +SKIP
    >>> rank, world = rank_world()                              # doctest: +SKIP
    >>> data = ArrayBatches(X, y, batch_size=64, rank=rank, world=world)   # doctest: +SKIP
    >>> DistributedTrainer(model, Adam(model), data, progress=False).fit(5)  # doctest: +SKIP
    """

    def __init__(self, model: Any, optimizer: Any, train_data: Any, val_data: Any = None, *,
                 comm: Any = None, timeout: float | None | str = "default",
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, abort_on_error: bool = True,
                 **kwargs: Any) -> None:
        self.timeout = _timeout_arg(timeout)
        self.comm = get_comm(comm)
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            r, w = getattr(data, "rank", None), getattr(data, "world", None)
            if w is not None and (w, r) != (self.world, self.rank):
                raise ValueError(f"{name} is sharded for rank {r} of {w}, but this process is "
                                 f"rank {self.rank} of {self.world}: build it with "
                                 f"rank={self.rank}, world={self.world}")
        if self.rank != 0:
            kwargs["progress"] = False
            kwargs["log"] = None
        super().__init__(model, optimizer, train_data, val_data, **kwargs)
        self.reducer = GradientReducer(self.comm, bucket_bytes=bucket_bytes, timeout=self.timeout)
        self._t_reduced = 0.0
        if self.world > 1:
            if abort_on_error:
                install_abort_hook(self.comm)
            broadcast_params(model.params, self.comm, 0, self.timeout)
            _barrier(self.comm, "the generator broadcast", self.timeout)
            self.rng.bit_generator.state = self.comm.bcast(self.rng.bit_generator.state, root=0)
            self._spread_generators()

    def _spread_generators(self):
        """Give each rank its own dropout masks: rank r's model generators are
        rank 0's advanced by r jumps (the trainer's shuffle stays shared)."""
        if self.rank == 0 or not hasattr(self.model, "generators"):
            return
        for g in self.model.generators():
            bg = g.bit_generator
            if hasattr(bg, "jumped"):
                bg.state = bg.jumped(self.rank).state

    # ------------------------------------------------------- Trainer hooks
    def fit(self, epochs: float | None = None, steps: int | None = None) -> dict[str, list]:
        """As :meth:`Trainer.fit`, on every rank (collective)."""
        self._t_reduced = 0.0
        self._t_fit = time.perf_counter()
        return super().fit(epochs, steps)

    def _train_batch(self, batch):
        model = self.model
        model.zero_grad()
        if _empty(batch):
            loss, n = 0.0, 0
        else:
            loss, n = model.batch_loss(batch, train=True)
        if self.world == 1:
            return loss, n
        elapsed = time.perf_counter() - self._t_fit
        total, loss, (t_sum,) = self.reducer.reduce(model.grads, n, loss, (elapsed,))
        self._t_reduced = t_sum / self.world
        return loss, int(round(total))

    def _elapsed(self, t_start):
        if self.world == 1:
            return super()._elapsed(t_start)
        return self._t_reduced

    def _reduce_eval(self, total, count, metrics):
        if self.world == 1:
            return total, count, metrics
        parts = _allgather(self.comm, (total, count, metrics), "the validation reduction",
                           self.timeout)
        total = sum(p[0] for p in parts)
        count = sum(p[1] for p in parts)
        merged = {}
        for p in parts:
            for k, (s, c) in p[2].items():
                s0, c0 = merged.get(k, (0.0, 0))
                merged[k] = (s0 + s, c0 + c)
        return total, count, merged

    # --------------------------------------------------------- checkpoints
    def save_checkpoint(self, path):
        """Write the checkpoint on rank 0 (collective: every rank calls it;
        returns the path on rank 0, None elsewhere, once it is written).

        A language model's carried state of an open epoch is gathered from
        all ranks into the global batch's order, so the file is the same
        whatever the world size."""
        if self.world == 1:
            return super().save_checkpoint(path)
        carry = getattr(self.model, "carried_state", None) if self._open is not None else None
        out = None
        if carry is not None:
            _barrier(self.comm, "the checkpoint's state gather", self.timeout)
            parts = self.comm.gather(carry, root=0)
            if self.rank == 0:
                if isinstance(carry, tuple):
                    full = tuple(np.concatenate([p[i] for p in parts], axis=1)
                                 for i in range(len(carry)))
                else:
                    full = np.concatenate(parts, axis=1)
                self.model.carried_state = full
                try:
                    out = super().save_checkpoint(path)
                finally:
                    self.model.carried_state = carry
        elif self.rank == 0:
            out = super().save_checkpoint(path)
        _barrier(self.comm, "the checkpoint write", self.timeout)
        return out

    def resume(self, path):
        """As :meth:`Trainer.resume`, on every rank (each reads ``path``); a
        checkpoint written by any number of ranks works."""
        super().resume(path)
        carry = getattr(self.model, "carried_state", None)
        if carry is not None and self.world > 1:
            h = carry[0] if isinstance(carry, tuple) else carry
            lo, hi = shard_range(h.shape[1], self.rank, self.world)
            self.model.carried_state = (tuple(np.ascontiguousarray(a[:, lo:hi]) for a in carry)
                                        if isinstance(carry, tuple)
                                        else np.ascontiguousarray(carry[:, lo:hi]))
        self._spread_generators()
        return self


# ---------------------------------------------------------------- inference
def sharded_apply(fn: Callable[..., np.ndarray], *arrays: Any, comm: Any = None, root: int = 0,
                  timeout: float | None | str = "default") -> np.ndarray | None:
    """Apply ``fn`` to the rows of ``arrays`` split over the ranks and gather
    the results, in input order, on ``root``.

    Rank ``r`` calls ``fn`` on rows :func:`fastrnn.data.shard_range`
    ``(n, r, world)`` of every array (``None`` entries are passed as None);
    the parts are concatenated in rank order, which is the input order.

    Parameters
    ----------
    fn : callable
        ``fn(*row_slices) -> ndarray`` with one output row per input row
        (e.g. ``model.predict_proba``).
    *arrays : array_like or None
        Inputs with the same number of rows (first axis); None is passed
        through.
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).
    root : int, default 0
        The rank that receives the result.
    timeout : float or None
        Seconds to wait for the other ranks (see :class:`GradientReducer`).

    Returns
    -------
    ndarray or None
        All ``n`` output rows on ``root``; None on the other ranks.

    Raises
    ------
    ValueError
        When the arrays have different numbers of rows, or ``fn`` returns
        a number of rows other than it was given.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    timeout = _timeout_arg(timeout)
    sized = [a for a in arrays if a is not None]
    if not sized:
        raise ValueError("sharded_apply needs at least one array")
    n = len(sized[0])
    if any(len(a) != n for a in sized):
        raise ValueError(f"the arrays have different numbers of rows: {[len(a) for a in sized]}")
    comm = get_comm(comm)
    rank, world = comm.Get_rank(), comm.Get_size()
    lo, hi = shard_range(n, rank, world)
    part = None
    if hi > lo:
        part = np.asarray(fn(*(None if a is None else a[lo:hi] for a in arrays)))
        if len(part) != hi - lo:
            raise ValueError(f"fn returned {len(part)} rows for {hi - lo} input rows")
    if world == 1:
        return part
    _barrier(comm, "the prediction gather", timeout)
    parts = comm.gather(part, root=root)
    if rank != root:
        return None
    return np.concatenate([p for p in parts if p is not None], axis=0)
