"""The MPI side of :mod:`fastrnn.distributed`: access to ``mpi4py`` (optional:
every function that needs it raises an :class:`ImportError` naming the
``fastrnn[mpi]`` extra), the communicator, the collective timeout, what the MPI
library can do with device buffers (:func:`cuda_aware`, :func:`transport`,
:func:`mpi_info`), the bounded waits every collective goes through, and
aborting all ranks when one fails.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any

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
