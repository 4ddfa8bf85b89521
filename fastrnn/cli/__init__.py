"""The ``fastrnn`` command line.

::

    fastrnn demo [--seconds S | --quick]       char-level LSTM LM on Python's own docs
    fastrnn train lm --data corpus.txt         character language model
    fastrnn train classify --data rows.csv     label,x_1,x_2,... per row
    fastrnn train forecast --data series.csv   numeric column(s), one row per time step
    fastrnn generate --model lm.npz --prime "def "
    fastrnn predict --model M.npz --data D     labels (--proba), next values, or bits per char
    fastrnn evaluate --model M.npz --data D    accuracy, RMSE vs persistence, or bits per char
    fastrnn info                               versions, backends, threads, GPU, MPI
    fastrnn bench [...]                        the benchmark grid (fastrnn.bench)

Data-parallel over MPI (``pip install 'fastrnn[mpi]'``, see
:mod:`fastrnn.distributed`): ``mpiexec -n 4 fastrnn train lm --data
corpus.txt --distributed`` (the same for ``classify`` and ``forecast``;
``--batch-size`` is the global batch, split over the ranks), and
``mpiexec -n 4 fastrnn predict ... --distributed`` (a classifier's rows are
split over the ranks; one output, in input order). Only rank 0 prints and
writes files; each rank uses cores/ranks-per-node threads unless
``--threads`` says otherwise.

Every error a user can cause (a bad option value, a missing file or a
directory, an empty corpus, a bad CSV, a broken checkpoint or one of another
model, training that diverged) ends with one ``fastrnn: error: ...`` line and
exit status 2, not a traceback (``FASTRNN_DEBUG=1`` shows the traceback of a
rejected argument).

The package, one concern a module: :mod:`~fastrnn.cli.parser` (option types
and the parser), :mod:`~fastrnn.cli.inputs` (text and CSV files: labels,
index and feature columns, series), :mod:`~fastrnn.cli.mpi` (the
``--distributed`` set-up), :mod:`~fastrnn.cli.train` (``train``),
:mod:`~fastrnn.cli.demo`, :mod:`~fastrnn.cli.use` (``predict``,
``evaluate``, ``generate``, ``export``), :mod:`~fastrnn.cli.info` and
:mod:`~fastrnn.cli.bench`; this module runs a command and reports its errors.
"""
from __future__ import annotations

import os
import sys

from ..metrics import unigram_bits   # moved to fastrnn.metrics; still importable from here
from .bench import cmd_bench
from .demo import cmd_demo, default_corpus   # default_corpus: bench scripts import it from here
from .info import cmd_info
from .mpi import DIST, setup_distributed
from .parser import CLIError, build_parser
from .train import cmd_train_classify, cmd_train_forecast, cmd_train_lm
from .use import cmd_evaluate, cmd_export, cmd_generate, cmd_predict

__all__ = ["main"]


_LIMITS = []


def _set_threads(n):
    """``--threads N``: the compiled kernels' BLAS cap, every BLAS/OpenMP pool
    in the process (threadpoolctl, when installed) and Numba's threads."""
    if n is None:
        return
    from .. import set_num_threads
    try:
        set_num_threads(n)
    except ImportError as exc:            # no compiled kernels here: only BLAS matters
        print(f"warning: --threads: the compiled CPU kernels are not available ({exc})",
              file=sys.stderr)
    try:
        from threadpoolctl import threadpool_limits
        _LIMITS.append(threadpool_limits(limits=n))      # kept for the process's life
    except ImportError:
        pass
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:   # noqa: BLE001 - numba missing or no threading layer
        pass


def main(argv=None):
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..checkpoint import CheckpointError
    from ..dispatch import BackendUnavailable
    try:
        if argv and argv[0] == "bench":
            return cmd_bench(argv[1:])      # options belong to bench
        if argv and argv[0] == "export":
            return cmd_export(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "train" and args.task is None:
            parser.train_parser.print_help()
            raise CLIError("train needs a task: lm (a text file), classify (a CSV of labelled "
                           "rows) or forecast (a CSV series), e.g. `fastrnn train classify "
                           "--data rows.csv` (see `fastrnn train --help`)")
        if getattr(args, "distributed", False):
            setup_distributed(args)
        if getattr(args, "compute_dtype", None) and getattr(args, "backend", None) == "cuda":
            raise CLIError(f"--compute-dtype {args.compute_dtype} runs on the CPU backends "
                           "only: use --backend auto, cpu or numpy with it")
        if getattr(args, "backend", None) == "cuda":
            from ..dispatch import get_backend
            get_backend("cuda")         # no GPU here: one line saying so, before any work
        _set_threads(args.threads)
        handlers = {"demo": cmd_demo, "generate": cmd_generate, "info": cmd_info,
                    "predict": cmd_predict, "evaluate": cmd_evaluate,
                    "train": lambda a: {"lm": cmd_train_lm, "classify": cmd_train_classify,
                                        "forecast": cmd_train_forecast}[a.task](a)}
        rc = handlers[args.command](args)
        sys.stdout.flush()                  # a closed pipe shows up here, not at exit
        return rc
    except BrokenPipeError:
        # `fastrnn info | head`: the reader left; stop quietly, as `yes | head` does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except (CLIError, CheckpointError, BackendUnavailable, FloatingPointError, OSError) as exc:
        # user errors: bad options or files, broken checkpoints, a backend that
        # cannot run here, training that diverged, a path that cannot be written
        return _error(exc)
    except ValueError as exc:
        # an argument the library rejected (it names it); a traceback helps no user
        if os.environ.get("FASTRNN_DEBUG"):
            raise
        return _error(exc)


def _error(exc):
    """Report a user error (exit status 2). Under ``--distributed`` with more
    than one rank, name the rank and abort them all: the others may be
    waiting for this one in a collective."""
    if DIST.world == 1:
        print(f"fastrnn: error: {exc}", file=sys.stderr)
        return 2
    print(f"fastrnn: error: (rank {DIST.rank} of {DIST.world}) {exc}", file=sys.stderr)
    from ..distributed import abort
    abort(DIST.comm, 2)
    return 2              # pragma: no cover - Abort does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
