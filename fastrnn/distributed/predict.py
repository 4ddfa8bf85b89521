"""Sharded inference of :mod:`fastrnn.distributed`: :func:`sharded_apply` runs a
function on each rank's rows and gathers the results, in input order, on one rank.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..data import shard_range
from .comm import _barrier, _timeout_arg, get_comm


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
