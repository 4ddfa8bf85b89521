"""The MPI set-up of a ``--distributed`` command: joining the world, each
rank's share of the cores, rank 0 as the one that prints and writes files,
and the ``rank``/``world`` arguments of the data helpers. Without
``--distributed`` the world is one rank."""
from __future__ import annotations

import os
import sys

from .parser import CLIError


class _Dist:
    """The MPI context of a ``--distributed`` command (world 1 without one)."""

    rank, world, comm = 0, 1, None


DIST = _Dist()


def setup_distributed(args):
    """``--distributed``: join the MPI world, give each rank its share of the
    cores (unless ``--threads``), silence stdout on ranks other than 0 and
    make an error on any rank abort them all."""
    try:
        from .. import distributed
        comm = distributed.get_comm()
    except ImportError as exc:
        raise CLIError(f"--distributed: {exc}") from None
    DIST.comm, DIST.rank, DIST.world = comm, comm.Get_rank(), comm.Get_size()
    if args.threads is None and DIST.world > 1:
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)        # the ranks on this node
        args.threads = max(1, (os.cpu_count() or 1) // local.Get_size())
        local.Free()
    if DIST.rank != 0:
        sys.stdout = open(os.devnull, "w")                      # rank 0 speaks for all
    if DIST.world > 1:
        distributed.install_abort_hook(comm)


def is_root():
    """Rank 0 (or not distributed): the process that prints and writes files."""
    return DIST.rank == 0


def shard():
    """``rank``/``world`` arguments of the data helpers."""
    return {"rank": DIST.rank, "world": DIST.world}
