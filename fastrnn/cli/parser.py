"""The ``fastrnn`` command's arguments: the option types (positive integers,
numbers in an interval, ``--compute-dtype``), the parser of every command
but ``bench`` and ``export`` (which parse their own options), and
:class:`CLIError`, the one-line user error every module of the command raises."""
from __future__ import annotations

import argparse
import math


class CLIError(ValueError):
    """An error reported as one line, exit status 2. A ``ValueError``, as
    every rejected input in fastrnn is, so that the input readers can be
    called (and tested) as functions; ``main`` catches it first, so the
    line it prints is the same."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, without "(default: None/False)" noise."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``fastrnn: error:`` line (a
    :class:`CLIError`) instead of a usage block; sub-parsers inherit it, and
    every ``--help`` shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(lo):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(
                f"must be {'a positive integer' if lo == 1 else f'an integer >= {lo}'}, got {text!r}")
        return v
    return parse


def _float_in(lo=None, hi=None, lo_open=False, hi_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        bad = (not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo)))
               or (hi is not None and (v > hi or (hi_open and v == hi))))
        if bad:
            interval = (("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}") + ", "
                        + ("inf" if hi is None else f"{hi:g}") + (")" if hi_open or hi is None else "]"))
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}")
        return v
    return parse


def _compute_dtype(text):
    """``--compute-dtype``: ``float32`` (None) or ``bfloat16``, as the models take it."""
    from ..bf16 import check_compute_dtype
    try:
        return check_compute_dtype(text, "--compute-dtype")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("None or 'bfloat16'",
                                                          "float32 or bfloat16")) from None


_POSITIVE = _int_at_least(1)
_NONNEG = _int_at_least(0)
_POSITIVE_FLOAT = _float_in(0.0, lo_open=True)
_NONNEG_FLOAT = _float_in(0.0)
_FRACTION = _float_in(0.0, 1.0, hi_open=True)     # dropout, --val-fraction


def _choices():
    from ..dispatch import BACKENDS
    from ..models import CELL_TYPES
    from ..optim import _OPTIMIZERS
    return sorted(CELL_TYPES), sorted(_OPTIMIZERS), list(BACKENDS)


def _common_train_args(p):
    cells, optimizers, backends = _choices()
    p.add_argument("--data", required=True, help="input file")
    p.add_argument("--cell", default="lstm", choices=cells, metavar="CELL",
                   help="recurrent cell: " + ", ".join(cells))
    p.add_argument("--hidden", type=_POSITIVE, default=64, help="hidden units per layer")
    p.add_argument("--layers", type=_POSITIVE, default=1, help="stacked recurrent layers")
    p.add_argument("--dropout", type=_FRACTION, default=0.0,
                   help="dropout between layers and before the head")
    p.add_argument("--epochs", type=_POSITIVE, default=None,
                   help="passes over the training data (default: 10, or more for a small "
                        "data set: enough for 300 steps, at most 200 epochs; printed)")
    p.add_argument("--seconds", type=_POSITIVE_FLOAT, default=None,
                   help="wall-time budget in seconds (stops earlier than --epochs)")
    p.add_argument("--batch-size", type=_POSITIVE, default=32, help="sequences per step")
    p.add_argument("--lr", type=_POSITIVE_FLOAT, default=3e-3, help="learning rate")
    p.add_argument("--optimizer", default="adam", type=str.lower, choices=optimizers,
                   help="optimizer")
    p.add_argument("--clip", type=_NONNEG_FLOAT, default=1.0,
                   help="global gradient-norm clip (0: none)")
    p.add_argument("--patience", type=_POSITIVE, default=None,
                   help="early stopping after this many epochs without a better validation "
                        "loss (the best weights are restored, and said so)")
    p.add_argument("--val-fraction", type=_FRACTION, default=0.1,
                   help="fraction of the data held out for validation")
    p.add_argument("--seed", type=_NONNEG, default=0, help="random seed")
    p.add_argument("--backend", default="auto", choices=backends, help="compute backend")
    p.add_argument("--compute-dtype", type=_compute_dtype, default=None, metavar="DTYPE",
                   help="float32, or bfloat16: the recurrent layers' matrix products on "
                        "bfloat16 operands summed in float32 (parameters and optimizer "
                        "state stay float32; CPU backends only; default: float32)")
    p.add_argument("--out", default=None,
                   help="where to save the model (.npz); <out>.history.json and <out>.png "
                        "are written beside it (default: the task's name, e.g. classifier.npz)")
    p.add_argument("--checkpoint", default=None, help="training checkpoint written every epoch")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true",
                   help="do not draw <out>.png (the training curves; needs matplotlib)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the MPI ranks (run under mpiexec; needs "
                        "fastrnn[mpi]): --batch-size is the global batch, split over the ranks")


def build_parser():
    from .. import __version__
    p = Parser(prog="fastrnn", description="Fast recurrent networks on NumPy arrays.")
    p.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    p.add_argument("--threads", type=_POSITIVE, default=None,
                   help="threads of the compiled CPU kernels and their BLAS "
                        "(default: as the libraries choose)")
    backends = _choices()[2]
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="train a character-level LSTM on Python's own docs")
    d.add_argument("--seconds", type=_POSITIVE_FLOAT, default=None,
                   help="training time budget (default 100, or 8 with --quick)")
    d.add_argument("--steps", type=_POSITIVE, default=None,
                   help="stop after this many steps (exactly repeatable, unlike a time budget)")
    d.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (tests)")
    d.add_argument("--hidden", type=_POSITIVE, default=128, help="LSTM hidden units")
    d.add_argument("--batch-size", type=_POSITIVE, default=32, help="sequences per step")
    d.add_argument("--bptt", type=_POSITIVE, default=64, help="truncated-BPTT length (characters)")
    d.add_argument("--lr", type=_POSITIVE_FLOAT, default=2e-2, help="peak learning rate")
    d.add_argument("--seed", type=_NONNEG, default=0, help="random seed")
    d.add_argument("--backend", default="auto", choices=backends, help="compute backend")
    d.add_argument("--save", default=None, help="save the trained model (.npz)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train a model on your data")
    ts = t.add_subparsers(dest="task", metavar="TASK")
    lm = ts.add_parser("lm", help="character language model on a text file")
    _common_train_args(lm)
    lm.add_argument("--embed", type=_POSITIVE, default=32, help="character embedding size")
    lm.add_argument("--bptt", type=_POSITIVE, default=64, help="truncated-BPTT length (characters)")
    cl = ts.add_parser("classify", help="sequence classification from a CSV (a label column, "
                                        "values...)")
    _common_train_args(cl)
    cl.add_argument("--label", default=None, metavar="NAME|INDEX",
                    help="the label column: a header name or an index (0 = first, -1 = last); "
                         "default: the column named label, target or class, else the first")
    cl.add_argument("--features", type=_POSITIVE, default=None,
                    help="values per time step (default: inferred and printed: named columns "
                         "are one step; n*n values are n steps of n; else 1)")
    cl.add_argument("--pooling", choices=("last", "attention"), default="last",
                    help="how a sequence becomes one vector")
    cl.add_argument("--missing", choices=("error", "drop"), default="error",
                    help="a row with a missing value (an empty cell): an error naming its line "
                         "and column, or dropped (said in the summary)")
    cl.add_argument("--bidirectional", action="store_true", help="bidirectional recurrent layers")
    fc = ts.add_parser("forecast", help="time-series forecasting from a CSV")
    _common_train_args(fc)
    fc.add_argument("--column", default=None, metavar="NAME|INDEX",
                    help="the series: a column name, an index, 'a,b' or 'all' (required when "
                         "the file has several numeric columns)")
    fc.add_argument("--window", type=_POSITIVE, default=24, help="input steps per prediction")
    fc.add_argument("--horizon", type=_POSITIVE, default=1, help="steps predicted at once")
    fc.add_argument("--difference", type=_POSITIVE, nargs="?", const=1, default=None,
                    metavar="LAG",
                    help="model the changes x[t] - x[t-LAG] instead of the values (for a "
                         "trending series; LAG 1 without a value, e.g. 4 or 12 for seasons); "
                         "predictions are turned back into values")

    g = sub.add_parser("generate", help="sample text from a trained language model")
    g.add_argument("--model", required=True, help="a model saved by `fastrnn train lm`")
    _generate_args(g, backends)

    pr = sub.add_parser("predict", help="use a trained model: labels or probabilities, the "
                                        "next values of a series, or per-character bits")
    pr.add_argument("--model", required=True, help="a model saved by `fastrnn train`")
    pr.add_argument("--data", default=None,
                    help="CSV rows to classify, a series CSV to continue, or a text file to "
                         "score (language model; without --data it generates text)")
    pr.add_argument("--output", "-o", default=None, help="write the CSV here (default: stdout)")
    pr.add_argument("--proba", action="store_true",
                    help="classifier: one probability column per class instead of labels")
    pr.add_argument("--label", default=None, metavar="NAME|INDEX",
                    help="classifier: the label column to leave out (default: the training "
                         "label column when the file has it)")
    pr.add_argument("--no-label", action="store_true",
                    help="classifier: the file has no label column")
    pr.add_argument("--column", default=None, metavar="NAME|INDEX",
                    help="forecaster: the series column(s) (default: the training ones)")
    pr.add_argument("--steps", type=_POSITIVE, default=None,
                    help="forecaster: steps to forecast (default: the model's horizon)")
    pr.add_argument("--distributed", action="store_true",
                    help="classifier: split the rows over the MPI ranks (run under mpiexec; "
                         "needs fastrnn[mpi]); one output in input order, from rank 0")
    _generate_args(pr, backends, lm_only=True)

    ev = sub.add_parser("evaluate", help="score a trained model on labelled data: accuracy, "
                                         "RMSE against persistence, or bits per character")
    ev.add_argument("--model", required=True, help="a model saved by `fastrnn train`")
    ev.add_argument("--data", required=True, help="labelled CSV, series CSV or text file")
    ev.add_argument("--label", default=None, metavar="NAME|INDEX",
                    help="classifier: the label column (default: the training one)")
    ev.add_argument("--column", default=None, metavar="NAME|INDEX",
                    help="forecaster: the series column(s) (default: the training ones)")
    ev.add_argument("--backend", default=None, choices=backends,
                    help="compute backend (default: the saved one)")
    ev.add_argument("--all", action="store_true",
                    help="score every row (window, character) of the training file, not only "
                         "the part held out in training (the default for that file)")
    ev.add_argument("--missing", choices=("error", "drop"), default="error",
                    help="classifier: a row with a missing value is an error, or dropped")
    ev.set_defaults(no_label=False)

    p.train_parser = t
    sub.add_parser("info", help="versions, backends, threads, GPU, MPI")
    sub.add_parser("bench", help="benchmark against NumPy, PyTorch and onnxruntime: the cell "
                                 "grid, --busy N load test, --train model throughput "
                                 "(options: fastrnn bench --help)",
                   add_help=False)
    sub.add_parser("export", help="write a saved model as ONNX (fastrnn export --help)",
                   add_help=False)
    return p


def _generate_args(g, backends, lm_only=False):
    pre = "language model without --data: " if lm_only else ""
    g.add_argument("--prime", default="", help=pre + "text to start from")
    g.add_argument("--length", type=_NONNEG, default=300, help=pre + "characters to generate")
    g.add_argument("--temperature", type=_NONNEG_FLOAT, default=0.8,
                   help=pre + "sampling temperature (0: always the most likely character)")
    g.add_argument("--seed", type=_NONNEG, default=None, help=pre + "random seed")
    g.add_argument("--backend", default=None, choices=backends,
                   help="compute backend (default: the saved one)")
