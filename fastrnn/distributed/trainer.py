"""The data-parallel trainer of :mod:`fastrnn.distributed`:
:class:`DistributedTrainer`, a :class:`fastrnn.train.Trainer` whose steps
reduce gradients over the ranks, whose evaluation reduces losses and metrics,
and whose checkpoints are written by rank 0 whatever the world size.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..data import shard_range
from ..train import Trainer, _empty
from .comm import _allgather, _barrier, _timeout_arg, get_comm, install_abort_hook
from .reduce import DEFAULT_BUCKET_BYTES, GradientReducer, broadcast_params


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
