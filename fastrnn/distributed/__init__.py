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

Layout: :mod:`~fastrnn.distributed.comm` (mpi4py, the communicator, timeouts,
bounded waits, aborting), :mod:`~fastrnn.distributed.reduce` (flat buffers,
:class:`GradientReducer`, :func:`broadcast_params`),
:mod:`~fastrnn.distributed.trainer` (:class:`DistributedTrainer`) and
:mod:`~fastrnn.distributed.predict` (:func:`sharded_apply`); every public name
is importable from here.
"""
from __future__ import annotations

from .comm import (ABORT_GRACE, DistributedError, abort, available, cuda_aware, default_timeout,
                   get_comm, install_abort_hook, mpi_info, rank_world, transport)
from .predict import sharded_apply
from .reduce import DEFAULT_BUCKET_BYTES, GradientReducer, broadcast_params
from .reduce import _unpack  # noqa: F401 - tests/test_prepared.py reaches it here
from .trainer import DistributedTrainer

__all__ = [
    "DistributedError", "available", "get_comm", "rank_world", "cuda_aware", "transport",
    "mpi_info", "default_timeout", "GradientReducer", "broadcast_params", "DistributedTrainer",
    "sharded_apply", "install_abort_hook", "abort", "DEFAULT_BUCKET_BYTES", "ABORT_GRACE",
]
