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
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import sys
import time

import numpy as np

from ..data import _is_number, read_csv_rows   # CSV reading lives in fastrnn.data
from ..metrics import unigram_bits   # moved to fastrnn.metrics; still importable from here

__all__ = ["main"]


class CLIError(Exception):
    """An error reported as one line, exit status 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, without "(default: None/False)" noise."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
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


# ----------------------------------------------------------------- helpers
def _read_text(path):
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a text file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        raise CLIError(f"{path} is empty: a corpus needs some text")
    return text


def _read_csv(path, need_label=False):
    """:func:`fastrnn.data.read_csv_rows`, its errors reported as :class:`CLIError`.
    ``need_label`` is kept for callers; the rule is the same."""
    try:
        return read_csv_rows(path)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None


_LABEL_NAMES = ("label", "target", "class")
_INDEX_NAMES = ("", "unnamed: 0", "index")


def _column(spec, header, ncol, path, option):
    """Column index of ``spec``: a header name, or an integer index (0 is the
    first column, -1 the last)."""
    if header and spec in header:
        return header.index(spec)
    if header:
        low = [h.lower() for h in header]
        if spec.lower() in low and low.count(spec.lower()) == 1:
            return low.index(spec.lower())
    try:
        j = int(spec)
    except ValueError:
        raise CLIError(f"{path}: {option} {spec!r}: no such column"
                       + (f" (columns: {', '.join(repr(h) for h in header)})" if header
                          else " (the file has no header: give an index, 0 = first)")) from None
    if not -ncol <= j < ncol:
        raise CLIError(f"{path}: {option} {spec}: column index out of range "
                       f"(0..{ncol - 1}, or -1 for the last)")
    return j % ncol


def _col_name(header, j):
    return repr(header[j]) if header else f"{j}"


def _index_columns(header, rows, exclude=()):
    """``[0]`` when the first column is a pandas index, else ``[]``: a column
    with no name (or ``Unnamed: 0``, ``index``) holding distinct integers, in
    any order (after a shuffle or ``train_test_split`` a frame keeps its
    original index, so it no longer counts 0, 1, 2...). Not data."""
    if not header or 0 in exclude or header[0].strip().lower() not in _INDEX_NAMES:
        return []
    try:
        vals = [int(r[0]) for r in rows]
    except (ValueError, IndexError):
        return []
    return [0] if vals and len(set(vals)) == len(vals) else []


def _index_note(header, skipped):
    """The summary's words on a skipped index column."""
    return ("skipped index column " + ", ".join(_col_name(header, j) for j in skipped)
            + " (unnamed, distinct integers: a pandas index)")


def _float(cell, path, line, col):
    if not cell.strip():
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: missing value (empty cell)")
    try:
        v = float(cell)
    except ValueError:
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is not finite")
    if abs(v) > _F32_MAX:
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is out of the "
                       f"float32 range the models compute in (|x| <= {_F32_MAX:.3g})")
    return v


_F32_MAX = float(np.finfo(np.float32).max)


def default_corpus():
    """The demo corpus: the topic help texts that ship with CPython
    (``pydoc_data.topics``, about 0.45 MB of English prose and code)."""
    import pydoc_data.topics as topics
    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))


def _progress_ok(args):
    return not getattr(args, "no_progress", False)


def _optimizer(name, model, lr):
    from ..optim import get_optimizer
    return get_optimizer(name, model, lr=lr)


# ------------------------------------------------------------- distributed
class _Dist:
    """The MPI context of a ``--distributed`` command (world 1 without one)."""

    rank, world, comm = 0, 1, None


_DIST = _Dist()


def _setup_distributed(args):
    """``--distributed``: join the MPI world, give each rank its share of the
    cores (unless ``--threads``), silence stdout on ranks other than 0 and
    make an error on any rank abort them all."""
    try:
        from .. import distributed
        comm = distributed.get_comm()
    except ImportError as exc:
        raise CLIError(f"--distributed: {exc}") from None
    _DIST.comm, _DIST.rank, _DIST.world = comm, comm.Get_rank(), comm.Get_size()
    if args.threads is None and _DIST.world > 1:
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)        # the ranks on this node
        args.threads = max(1, (os.cpu_count() or 1) // local.Get_size())
        local.Free()
    if _DIST.rank != 0:
        sys.stdout = open(os.devnull, "w")                      # rank 0 speaks for all
    if _DIST.world > 1:
        distributed.install_abort_hook(comm)


def _root():
    """Rank 0 (or not distributed): the process that prints and writes files."""
    return _DIST.rank == 0


def _shard():
    """``rank``/``world`` arguments of the data helpers."""
    return {"rank": _DIST.rank, "world": _DIST.world}


def layer_throughput(layers, T=64, B=32, reps=3, seed=0):
    """Characters (time steps x batch) per second of one training step
    (forward + backward) of each layer in ``layers`` (name -> layer), on the
    same random data. Each layer is warmed up first (JIT compile time stays
    out), then the layers are timed in interleaved rounds so that load from
    other processes hits them alike; returns ``{name: median rate}``."""
    rng = np.random.default_rng(seed)
    first = next(iter(layers.values()))
    x = rng.standard_normal((T, B, first.input_size)).astype(first.dtype)
    dy = np.ones((T, B, first.hidden_size * (2 if first.bidirectional else 1)), first.dtype)
    on_gpu = {}
    if any(getattr(layer, "device", "cpu") == "cuda" for layer in layers.values()):
        from numba import cuda
        on_gpu = {"x": cuda.to_device(x), "dy": cuda.to_device(dy), "sync": cuda.synchronize}

    def step(layer):
        dev = getattr(layer, "device", "cpu") == "cuda"
        t0 = time.perf_counter()
        layer(on_gpu["x"] if dev else x)
        layer.backward(on_gpu["dy"] if dev else dy)
        if dev:
            on_gpu["sync"]()            # kernels run asynchronously: time them to the end
        return time.perf_counter() - t0

    for layer in layers.values():
        layer.train()
        step(layer)
    times = {k: [] for k in layers}
    for _ in range(reps):
        for k, layer in layers.items():
            times[k].append(step(layer))
    for layer in layers.values():
        layer.zero_grad()
    return {k: T * B / float(np.median(v)) for k, v in times.items()}


# ------------------------------------------------------------------- demo
def cmd_demo(args):
    from ..data import CharVocab, LMBatches
    from ..dispatch import resolve_backend
    from ..models import LanguageModel, make_recurrent
    from ..optim import Adam, CosineDecay
    from ..train import Trainer

    t_all = time.perf_counter()
    seconds = args.seconds if args.seconds is not None else (8.0 if args.quick else 100.0)
    hidden = 32 if args.quick else args.hidden
    text = default_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.95)
    train_ids, test_ids = ids[:cut], ids[cut:]
    if args.quick:
        test_ids = test_ids[:5000]
    backend = resolve_backend(args.backend)
    print(f"corpus: pydoc_data.topics, {len(ids):,} characters, vocabulary {len(vocab)}; "
          f"held out: last {len(test_ids):,} characters")
    model = LanguageModel(len(vocab), embed_dim=32, hidden_size=hidden, cell="lstm",
                          backend=args.backend, seed=args.seed)
    model.meta["vocab"] = vocab.to_dict()
    print(f"model: char LSTM, hidden {hidden}, {model.num_params():,} parameters, "
          f"backend {backend!r}; training for {seconds:g} s"
          + (f" or {args.steps} steps" if args.steps else ""))
    # compile (or load from Numba's cache) the kernels before the clock starts
    t0 = time.perf_counter()
    warm = train_ids[:8].reshape(4, 2)
    model.batch_loss((warm, warm))
    model.zero_grad()
    model.evaluate(train_ids[:64], batch_size=2, bptt=16)
    print(f"kernels ready in {time.perf_counter() - t0:.1f} s (JIT compile or cache load)")
    opt = Adam(model, lr=args.lr)
    # the learning rate follows a cosine over the budget (time or steps), so the
    # model ends its run annealed whatever the machine's speed
    trainer = Trainer(model, opt, LMBatches(train_ids, args.batch_size, args.bptt),
                      schedule=CosineDecay(args.lr, 1.0, args.lr / 20), schedule_unit="budget",
                      clip_norm=1.0, seed=args.seed, progress=_progress_ok(args),
                      max_seconds=seconds, max_steps=args.steps, unit="char")
    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    chars = sum(h * t for h, t in zip(trainer.history["throughput"], trainer.history["time"]))
    bpc = model.evaluate(test_ids, batch_size=64, bptt=256) / math.log(2)
    base = unigram_bits(train_ids, test_ids, len(vocab))
    why = {"time": f"the {seconds:g} s budget ran out",
           "steps": f"--steps {args.steps} reached"}.get(trainer.stop_reason,
                                                          trainer.stop_reason or "done")
    print(f"trained {trainer.global_step} steps ({chars / 1e6:.2f} M characters) in "
          f"{train_s:.0f} s; stopped: {why}")
    print(f"held-out bits per character: LSTM {bpc:.3f}   unigram baseline {base:.3f}")
    rng = np.random.default_rng(args.seed)
    for prime, temp in (("The ", 0.5), ("def ", 0.8)):
        out = vocab.decode(model.sample(200 if not args.quick else 60, vocab.encode(prime),
                                        temperature=temp, rng=rng))
        print(f"\nsample (temperature {temp}, prime {prime!r}):\n{prime}{out}")
    print("\nthroughput, one training step (forward + backward) of the LSTM layer, "
          "T=64 B=32:")
    layers = {}
    for be in dict.fromkeys((backend, "numpy")):
        layers[be] = make_recurrent("lstm", 32, hidden, backend=be, seed=0)
        layers[be].load_state_dict(model.rnn.state_dict())
    rates = layer_throughput(layers, reps=1 if args.quick else 3)
    for be, r in rates.items():
        label = "NumPy reference" if be == "numpy" else f"compiled ({be})"
        print(f"  {label:<18} {r:12,.0f} char/s")
    if backend == "numpy":
        print("  (the compiled CPU backend is not available here: the demo ran the NumPy reference)")
    else:
        print(f"  speed-up {rates[backend] / rates['numpy']:.1f}x")
    if args.save:
        path = model.save(args.save)
        print(f"model saved to {path}")
    print(f"total time {time.perf_counter() - t_all:.0f} s")
    return 0


# ------------------------------------------------------------------ train
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


def _fit(args, model, train_data, val_data, unit):
    from ..train import EarlyStopping, Trainer
    es = EarlyStopping(args.patience) if args.patience else None
    cls, extra = Trainer, {}
    if getattr(args, "distributed", False):
        from ..distributed import DistributedTrainer
        cls, extra = DistributedTrainer, {"comm": _DIST.comm}
    trainer = cls(model, _optimizer(args.optimizer, model, args.lr), train_data, val_data,
                  clip_norm=args.clip or None, seed=args.seed, progress=_progress_ok(args),
                  early_stopping=es, checkpoint=args.checkpoint,
                  max_seconds=args.seconds, unit=unit, **extra)
    if args.resume:
        if not args.checkpoint:
            raise CLIError("--resume needs --checkpoint PATH")
        if os.path.exists(args.checkpoint) or os.path.exists(args.checkpoint + ".npz"):
            trainer.resume(args.checkpoint)
            print(f"resumed from {args.checkpoint} after epoch {trainer.epoch} "
                  f"(step {trainer.global_step})")
        else:
            print(f"no checkpoint at {args.checkpoint} yet: training from the start")
    epochs = args.epochs
    if epochs is None:
        n = len(train_data) if hasattr(train_data, "__len__") else 0
        epochs = 10 if not n else min(200, max(10, -(-300 // n)))
        if epochs > 10:
            print(f"training for {epochs} epochs of {n} steps (a small data set: at least "
                  "300 steps; set --epochs to choose)", flush=True)
    trainer.fit(epochs)
    trainer.stop_line = _stop_line(args, trainer, epochs)
    if _root():
        print(trainer.stop_line)
    if es is not None and es.best_epoch is not None and trainer.history.get("epoch"):
        last = trainer.history["epoch"][-1]
        if es.restore_best and es.best_epoch != last:
            scale, unit = trainer._loss_display()
            print(f"early stopping: kept the weights of epoch {es.best_epoch} (best "
                  f"validation loss {es.best * scale:.4g}{' ' + unit if unit else ''}), "
                  f"not those of the last epoch {last}")
    return trainer


def _stop_line(args, trainer, epochs):
    """One line saying why training stopped: the epochs were done, the
    ``--seconds`` budget ran out, or early stopping (``--patience``)."""
    done = trainer.epoch
    spent = sum(trainer.history.get("time", []))
    why = trainer.stop_reason
    if why == "time":
        return (f"stopped: the --seconds {args.seconds:g} budget ran out during epoch {done} "
                f"of {epochs} ({spent:.1f} s of training)")
    if why == "early_stopping":
        return (f"stopped early after epoch {done} of {epochs}: no better validation loss for "
                f"{args.patience} epoch(s) (--patience {args.patience})")
    if why is not None:
        return f"stopped after epoch {done} of {epochs}: {why}"
    budget = (f", within the --seconds {args.seconds:g} budget" if getattr(args, "seconds", None)
              else "")
    return f"stopped: all {epochs} epochs done ({spent:.1f} s of training{budget})"


def _fingerprint(path, **held_out):
    """What a model file keeps of its training file (``meta["data"]``): the
    name, size and SHA-256 of the bytes, and which part was held out
    (``held_out``: ``rows`` data-row numbers, ``rows_from`` the first held-out
    row of a series, ``chars_from`` the first held-out character), so that
    ``fastrnn evaluate`` knows the training file again and scores only that
    part by default."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": os.path.basename(path), "size": os.path.getsize(path),
            "sha256": h.hexdigest(), "held_out": held_out}


def _training_file(model, path):
    """``meta["data"]["held_out"]`` when ``path`` holds the bytes the model
    was trained on (same size and SHA-256), else None."""
    d = model.meta.get("data") or {}
    if not d.get("sha256") or not os.path.isfile(path) or os.path.getsize(path) != d.get("size"):
        return None
    return d.get("held_out") if _fingerprint(path)["sha256"] == d["sha256"] else None


def _stem(path):
    return path[:-4] if path.endswith(".npz") else path


def _save(args, model, default, trainer=None, metric=None, metric_scale=1.0,
          metric_label=None, forecast=None):
    """Save the model, then ``<out>.history.json`` and (matplotlib installed,
    no ``--no-plot``) ``<out>.png``; on rank 0 only (``--distributed``)."""
    if not _root():
        return None
    path = model.save(args.out or default)
    print(f"model saved to {path}")
    if trainer is None:
        return path
    from ..plot import plot_history, write_history
    stem = _stem(str(path))
    history, units = trainer.history_with_units()      # a language model's losses in bits
    hist = write_history(history, stem + ".history.json", units=units,
                         stop_reason=trainer.stop_reason or "epochs",
                         stopped=getattr(trainer, "stop_line", None))
    print(f"training history saved to {hist} (losses in {units.get('loss', '?')})")
    if not getattr(args, "no_plot", False):
        png = plot_history(history, stem + ".png",
                           title=f"{type(model).__name__} ({os.path.basename(str(path))})",
                           metric=metric, metric_scale=metric_scale, metric_label=metric_label,
                           loss_label=("loss (bits per character)" if trainer.unit == "char"
                                       else "loss (nats)" if trainer.unit == "seq"
                                       else "loss (MSE, standardised)"),
                           forecast=forecast)
        if png:
            print(f"training curves saved to {png}")
        else:
            print("(no plot: matplotlib is not installed; pip install matplotlib, or --no-plot)")
    return path


def cmd_train_lm(args):
    from ..data import CharVocab, LMBatches
    from ..models import LanguageModel
    text = _read_text(args.data)
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1 - args.val_fraction))
    if cut < args.batch_size * 2 + 1 or len(ids) - cut < 3:
        raise CLIError(f"{args.data} is too short ({len(ids)} characters) to train a "
                       "language model; give more text or a smaller --batch-size")
    print(f"read {args.data}: {len(ids):,} characters, vocabulary {len(vocab)}; "
          f"last {len(ids) - cut:,} characters held out for validation", flush=True)
    model = LanguageModel(len(vocab), embed_dim=args.embed, hidden_size=args.hidden,
                          num_layers=args.layers, cell=args.cell, dropout=args.dropout,
                          backend=args.backend, seed=args.seed, compute_dtype=args.compute_dtype)
    model.meta["vocab"] = vocab.to_dict()
    if args.batch_size < _DIST.world:
        raise CLIError(f"--batch-size {args.batch_size} is smaller than the {_DIST.world} ranks: "
                       "each rank needs at least one row of the text")
    val_batch = max(min(args.batch_size, max(1, (len(ids) - cut - 1) // 2)), _DIST.world)
    val = LMBatches(ids[cut:], val_batch, args.bptt, **_shard())
    trainer = _fit(args, model, LMBatches(ids[:cut], args.batch_size, args.bptt, **_shard()),
                   val, "char")
    if not _root():
        return 0
    bpc = model.evaluate(ids[cut:], args.batch_size, args.bptt) / math.log(2)
    print(f"validation bits per character: {bpc:.3f} (unigram "
          f"{unigram_bits(ids[:cut], ids[cut:], len(vocab)):.3f})")
    model.meta["data"] = _fingerprint(args.data, chars_from=cut)
    _save(args, model, "lm.npz", trainer, metric="val_loss",
          metric_label="validation bits per character")
    return 0


class _Table:
    """What was read from a classification CSV (see :func:`_read_classify`)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _pick_label(header, ncol, spec, path):
    """``(column, how it was chosen)`` of the label column."""
    if spec is not None:
        j = _column(spec, header, ncol, path, "--label")
        return j, f"label column {_col_name(header, j)} (--label)"
    if header:
        for want in _LABEL_NAMES:
            for j, h in enumerate(header):
                if h.strip().lower() == want:
                    return j, f"label column {h!r} (named {want!r})"
        return 0, (f"label column {header[0]!r}: the first column, as no column is named "
                   f"label, target or class (choose with --label NAME|INDEX)")
    return 0, "labels in the first column (no header; choose with --label INDEX)"


_NUMBERED = re.compile(r"^\D*?(\d+)$")
_GRID = re.compile(r"^\D*?(\d+)\D+(\d+)$")


def _infer_features(n, ragged, names):
    """``(features per step, how)`` for rows of ``n`` values (or ragged rows)."""
    if ragged:
        return 1, ("1 value per step: the rows have different lengths (set --features F "
                   "when each step has F values)")
    if names:
        grid = [_GRID.match(h) for h in names]
        if all(grid):
            F = len({m.group(2) for m in grid})
            if F > 1 and n % F == 0 and len({m.group(1) for m in grid}) * F == n:
                return F, "from the column names (step_feature)"
        if not all(_NUMBERED.match(h) for h in names):
            return n, "named columns: one step of every column per row"
    root = int(round(math.sqrt(n)))
    if n >= 16 and root * root == n:
        return root, (f"{n} values read as {root} rows of {root}, like an image row by row "
                      "(set --features to change)")
    return 1, "1 value per step (set --features F when each step has F values)"


def _read_classify(path, features=None, label=None, *, header_rows=None, has_label=True,
                   model_meta=None, missing="error"):
    """Read a classification CSV: the label column (``--label`` name or index;
    default a column named label/target/class, else the first), a pandas index
    column skipped, the other columns as values, ``features`` per step
    (inferred when None). ``has_label=False`` reads unlabelled rows;
    ``model_meta`` (``meta["csv"]`` of a trained model) finds the training
    layout again, and its ``feature_names`` the columns by name (see
    :func:`_match_names`). A missing value (see :func:`_missing_cells`) is an
    error naming its line and column, unless ``missing="drop"`` drops its
    row. Returns a :class:`_Table`."""
    header, rows = header_rows if header_rows is not None else _read_csv(path)
    ncol = max(len(r) for r in rows)
    first = 2 if header else 1
    lab, how = None, "no labels"
    info = model_meta or {}
    if has_label is True and label is None and info:      # evaluate: the training label column
        if header and info.get("label_name") in header:
            lab = header.index(info["label_name"])
            how = f"label column {info['label_name']!r} (as in training)"
        elif not header and info.get("label_index") is not None:
            lab = _label_index_again(info, ncol, path)
            how = f"labels in column {lab} (as in training)"
        else:
            lab, how = _pick_label(header, ncol, label, path)
    elif has_label is True:
        lab, how = _pick_label(header, ncol, label, path)
    elif has_label == "auto":                    # predict: the label column if the file has it
        info = model_meta or {}
        if label is not None:
            lab, how = _pick_label(header, ncol, label, path)
        elif header and info.get("label_name") in header:
            lab = header.index(info["label_name"])
            how = f"label column {info['label_name']!r} ignored"
        elif (not header and info.get("label_index") is not None
              and ncol in (info.get("columns"), info.get("columns", 0) - len(info.get("skipped", ())))):
            lab = _label_index_again(info, ncol, path)
            how = f"label column {lab} ignored"
    skip = _index_columns(header, rows, exclude=() if lab is None else (lab,))
    feat = [j for j in range(ncol) if j != lab and j not in skip]
    feat, order_note = _match_names(path, header, feat, info.get("feature_names"))
    holes = _missing_cells(header, rows, feat)
    dropped = []
    if holes and missing == "drop":
        dropped = sorted(holes)
    elif holes:
        i, j = min(holes.items())
        more = f" ({len(holes)} rows have one)" if len(holes) > 1 else ""
        raise CLIError(f"bad CSV {path}: line {i + first}, column {j + 1}"
                       + (f" ({header[j]!r})" if header and j < len(header) else "")
                       + f": missing value (empty cell){more}; fill it in, or drop such "
                         "rows with --missing drop")
    gone = set(dropped)
    labels, values, row_ids = [], [], []
    for i, r in enumerate(rows):
        if i in gone:
            continue
        line = i + first
        if lab is not None:
            if lab >= len(r) or not r[lab].strip():
                raise CLIError(f"bad CSV {path}: line {line}: empty label")
            labels.append(r[lab].strip())
        cells = [(j, r[j]) for j in feat if j < len(r) and r[j].strip()]
        if not cells:
            raise CLIError(f"bad CSV {path}: line {line}: no feature values"
                           + (" after the label" if lab is not None else ""))
        values.append([_float(c, path, line, j + 1) for j, c in cells])
        row_ids.append(i)
    if not values:
        raise CLIError(f"{path}: every row has a missing value (--missing drop left none)")
    sizes = {len(v) for v in values}
    ragged = len(sizes) > 1
    names = [header[j] for j in feat] if header else None
    if features is None:
        features, fhow = _infer_features(len(values[0]), ragged, names)
    else:
        fhow = "--features"
    seqs = []
    for i, v in enumerate(values):
        if len(v) % features:
            raise CLIError(f"bad CSV {path}: line {i + first}: {len(v)} values is not a "
                           f"multiple of --features {features}")
        seqs.append(np.array(v, dtype=np.float32).reshape(-1, features))
    return _Table(header=header, labels=labels, seqs=seqs, label_col=lab, label_how=how,
                  skipped=skip, features=features, features_how=fhow, ncol=ncol,
                  ragged=ragged, feature_names=names, row_ids=np.array(row_ids, np.int64),
                  dropped=[i + first for i in dropped], n_rows=len(rows),
                  order_note=order_note)


def _label_index_again(info, ncol, path):
    """The training label column's index in a headerless file of ``ncol``
    columns: as in training, or shifted when the file lacks the pandas index
    column the training file had (``info["skipped"]``)."""
    lab, cols = info["label_index"], info.get("columns")
    skipped = info.get("skipped") or []
    if ncol == cols or cols is None:
        return lab
    if ncol == cols - len(skipped) and lab not in skipped:
        return lab - sum(j < lab for j in skipped)
    raise CLIError(f"{path} has {ncol} columns and no header; the model was trained on "
                   f"{cols} columns with the labels in column {lab}: choose it with --label INDEX")


def _missing_cells(header, rows, feat):
    """``{row index: first column index}`` of the rows with a missing value
    among the feature columns ``feat``.

    An empty cell before a value is always a missing value. Empty cells at the
    end of a row are missing values too when the columns are named features
    (a header of names that are not numbered steps), or when most rows are
    complete (the file's rows otherwise have one length); they end a shorter
    sequence only in a file of numbered or unnamed columns where most rows
    are shorter than the longest (variable-length sequences, padded at the
    end)."""
    ends, out = [], {}
    for i, r in enumerate(rows):
        full = [j < len(r) and bool(r[j].strip()) for j in feat]
        last = max((k for k, f in enumerate(full) if f), default=-1)
        hole = next((k for k in range(last) if not full[k]), None)
        if hole is not None:
            out[i] = feat[hole]
        ends.append(last + 1)
    named = bool(header) and not all(_NUMBERED.match(header[j]) for j in feat if j < len(header))
    complete = sum(e == len(feat) for e in ends)
    if named or complete > len(rows) / 2:
        for i, e in enumerate(ends):
            if e < len(feat) and i not in out:
                out[i] = feat[e]
    return out


def _match_names(path, header, feat, names):
    """The feature columns ``feat`` put in the order of the training names
    ``names`` (a model's ``feature_names``), by the file's header. Returns
    ``(columns, note)``: the note says when they were reordered. Names missing
    from the file, or columns the model does not know, are an error naming
    them; a file without a header cannot be checked, and a warning says so."""
    if not names:
        return feat, None
    if not header:
        print(f"warning: {path} has no header: its columns cannot be checked against the "
              f"model's feature names; read in the training order "
              f"{_short_list(names, 6)}", file=sys.stderr)
        return feat, None
    have = [header[j].strip() for j in feat]
    missing = [n for n in names if n not in have]
    unexpected = [h for h in have if h not in names]
    if missing or unexpected:
        raise CLIError(f"{path}: the columns do not match the model's features: "
                       + "; ".join(p for p in (
                           f"missing {', '.join(repr(n) for n in missing)}" if missing else "",
                           f"unexpected {', '.join(repr(n) for n in unexpected)}"
                           if unexpected else "") if p)
                       + f" (the model was trained on {len(names)} columns: "
                         f"{', '.join(repr(n) for n in names)})")
    cols = [feat[have.index(n)] for n in names]
    return cols, (None if cols == feat else "columns put in the training order by name")



def _load_classify_csv(path, features, label=None):
    """``(labels as str, sequences [T_i, features])`` of a classification CSV."""
    t = _read_classify(path, features, label)
    return t.labels, t.seqs


def _natural_labels(labels):
    """CSV labels as integers when every one is an integer literal, else as
    the strings read (so a file's ``0, 1, 2`` come back as written)."""
    try:
        ints = [int(v) for v in labels]
    except ValueError:
        return list(labels)
    return ints if all(str(i) == v.lstrip("+") for i, v in zip(ints, labels)) else list(labels)


def _summary_classify(path, t, classes=None):
    steps = sorted({len(s) for s in t.seqs})
    span = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    parts = [f"read {path}: {len(t.seqs)} rows"]
    if classes is not None:
        parts.append(f"{len(classes)} classes {_short_list(classes)}")
    parts.append(t.label_how)
    if t.skipped:
        parts.append(_index_note(t.header, t.skipped))
    if t.dropped:
        parts.append(f"dropped {len(t.dropped)} row(s) with missing values (--missing drop: "
                     f"line(s) {_short_list(t.dropped)[1:-1]})")
    if t.order_note:
        parts.append(t.order_note)
    parts.append(f"each row {span} step(s) x {t.features} feature(s) ({t.features_how})")
    return "; ".join(parts)


def _short_list(seq, n=8):
    seq = [str(v) for v in seq]
    return "(" + ", ".join(seq[:n]) + (f", ... {len(seq)} in all" if len(seq) > n else "") + ")"


def cmd_train_classify(args):
    from ..data import ArrayBatches, Standardizer, pad_sequences, train_val_split
    from ..models import SequenceClassifier
    t = _read_classify(args.data, args.features, args.label, missing=args.missing)
    labels = _natural_labels(t.labels)
    classes = sorted(set(labels))
    print(_summary_classify(args.data, t, classes), flush=True)
    if len(classes) < 2:
        raise CLIError(f"{args.data}: need at least two classes, found {classes}"
                       + ("" if args.label else ": is the label column the right one? "
                          "(choose it with --label NAME|INDEX)"))
    if len(classes) > max(2, len(labels) // 2) and _root():
        print(f"warning: {len(classes)} classes in {len(labels)} rows: is "
              f"{t.label_how.split(' (')[0]} really the label? (--label NAME|INDEX)",
              file=sys.stderr)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    raw, lengths = pad_sequences(t.seqs, dtype=np.float64)
    tr, va = train_val_split(len(y), args.val_fraction, rng=args.seed)
    if len(va) == 0:
        tr, va = tr, tr
    model = SequenceClassifier(len(classes), input_size=t.features, hidden_size=args.hidden,
                               num_layers=args.layers, cell=args.cell, pooling=args.pooling,
                               bidirectional=args.bidirectional, dropout=args.dropout,
                               backend=args.backend, seed=args.seed,
                               compute_dtype=args.compute_dtype)
    model.classes = classes
    model.scaler = Standardizer().fit(np.concatenate([t.seqs[i] for i in tr]).astype(np.float64))
    model.meta["csv"] = {"label_name": t.header[t.label_col] if t.header else None,
                         "label_index": t.label_col, "columns": t.ncol,
                         "features": t.features, "skipped": list(t.skipped)}
    if t.feature_names and len(set(t.feature_names)) == len(t.feature_names):
        model.meta["feature_names"] = t.feature_names        # predict/evaluate match by name
    model.input_kind = "tabular" if max(len(q) for q in t.seqs) == 1 else "sequence"
    model.meta["data"] = _fingerprint(args.data, rows=sorted(int(i) for i in t.row_ids[va]))
    x = model._preprocess(raw, lengths)
    trainer = _fit(args, model, ArrayBatches(x[tr], y[tr], lengths=lengths[tr],
                                             batch_size=args.batch_size, **_shard()),
                   ArrayBatches(x[va], y[va], lengths=lengths[va], batch_size=256,
                                shuffle=False, **_shard()), "seq")
    if not _root():
        return 0
    acc = model.score(raw[va], np.asarray(labels, dtype=object)[va], lengths[va])
    majority = float(np.mean(y[va] == np.bincount(y[tr]).argmax()))
    print(f"validation accuracy: {acc:.4f} (majority class {majority:.4f})")
    _save(args, model, "classifier.npz", trainer, metric="val_accuracy",
          metric_label="validation accuracy")
    return 0


# ---------------------------------------------------------------- forecast
def _read_series(path, column, meta=None):
    """``(series [N, C] float64, column names, how chosen)``: the column(s) of
    ``--column`` (a name, an index, ``a,b`` or ``all``), or the only numeric
    column; several numeric columns and no ``--column`` is an error."""
    header, rows = _read_csv(path)
    first = 2 if header else 1
    ncol = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != ncol:
            raise CLIError(f"bad CSV {path}: line {i + first} has {len(r)} columns, expected {ncol}")
    skip = _index_columns(header, rows)
    numeric = [j for j in range(ncol) if j not in skip
               and all(_is_number(r[j]) for r in rows if r[j].strip())
               and any(r[j].strip() for r in rows)]
    if column is None and meta is not None:            # predict/evaluate: the training columns
        names = meta.get("columns")
        if names and header and all(n in header for n in names):
            cols = [header.index(n) for n in names]
        elif len(numeric) == len(names or [None]) or not numeric:
            cols = numeric
        else:
            raise CLIError(f"{path}: the model was trained on column(s) {names}; this file "
                           f"has {[_col_name(header, j) for j in numeric]}: choose with --column")
        how = "the model's column(s)"
    elif column is None:
        if len(numeric) == 1 or (len(numeric) == 0 and ncol == 1):
            cols = numeric or [0]
            how = "the only numeric column" if ncol > 1 else "the only column"
        else:
            names = ", ".join(_col_name(header, j) for j in numeric) or "none"
            raise CLIError(f"{path} has {len(numeric)} numeric columns ({names}): choose the "
                           "series with --column NAME|INDEX (or --column all for all of them)")
    elif column.strip().lower() == "all":
        cols, how = numeric, "--column all"
        if not cols:
            raise CLIError(f"{path}: no numeric columns")
    else:
        cols = [_column(c.strip(), header, ncol, path, "--column") for c in column.split(",")]
        how = "--column"
    data = []
    for i, r in enumerate(rows):
        data.append([_float(r[c], path, i + first, c + 1) for c in cols])
    names = [header[c] if header else str(c) for c in cols]
    return np.array(data, dtype=np.float64), names, how, [_col_name(header, j) for j in skip]


def _load_series_csv(path, column):
    return _read_series(path, column)[0]


def _difference(series, lag):
    return series[lag:] - series[:-lag] if lag else series


def _vs_persistence(rmse, base):
    if base <= 0:
        return "(the series repeats exactly: persistence is perfect)"
    pct = 100 * (1 - rmse / base)
    if pct >= 0:
        return f"({pct:.1f}% better than persistence)"
    return f"({-pct:.1f}% worse than persistence)"


def cmd_train_forecast(args):
    from ..data import ArrayBatches, Standardizer, sliding_windows
    from ..models import SequenceRegressor
    series, names, how, skipped = _read_series(args.data, args.column)
    n = len(series)
    lag = args.difference or 0
    n_test = max(int(n * args.val_fraction), args.horizon)
    if n - n_test < args.window + args.horizon + lag + 1:
        raise CLIError(f"{args.data}: {n} rows are too few for --window {args.window} "
                       f"and --horizon {args.horizon}" + (f" with --difference {lag}" if lag else ""))
    d = _difference(series, lag)
    print(f"read {args.data}: {n} rows; series {', '.join(repr(c) for c in names)} ({how})"
          + (f"; skipped index column {', '.join(skipped)}" if skipped else "")
          + (f"; differenced at lag {lag}" if lag else "")
          + f"; windows of {args.window} steps -> {args.horizon} ahead; last {n_test} rows "
            "held out for testing", flush=True)
    fit_part = d[:n - n_test - lag]
    scaler = Standardizer().fit(fit_part)
    z = scaler.transform(d)
    if not (np.isfinite(scaler.std).all() and np.isfinite(z).all()
            and (np.abs(z) <= _F32_MAX).all()):
        raise CLIError(f"{args.data}: the values are too large to standardise")
    z = z.astype(np.float32)
    # one huge value can make the standardised float32 series lose the rest of
    # the data (most values round to one number): refuse instead of training on noise
    for c in range(d.shape[1]):
        kept, had = len(np.unique(z[:, c])), len(np.unique(d[:, c]))
        if kept < 0.5 * had:
            raise CLIError(f"{args.data}: the values span too wide a range to train on in "
                           f"float32 (largest |value| {np.abs(series[:, c]).max():.3g}; only "
                           f"{kept} of {had} distinct values survive): remove or clip the outliers")
    X, Y = sliding_windows(z, args.window, args.horizon)
    # the same windows in original units (lag more steps, to difference them)
    Xr, Yr = sliding_windows(series, args.window + lag, args.horizon)
    # a window belongs to the test tail when its first target lies there
    target_start = np.arange(len(X)) + args.window + lag
    te = target_start >= n - n_test
    F = series.shape[1]
    model = SequenceRegressor(F, horizon=args.horizon, hidden_size=args.hidden,
                              num_layers=args.layers, cell=args.cell, dropout=args.dropout,
                              backend=args.backend, seed=args.seed,
                              compute_dtype=args.compute_dtype)
    model.scaler = scaler
    model.target_scaler = scaler
    model.difference = lag
    model.meta.update(window=args.window, columns=names)
    trainer = _fit(args, model, ArrayBatches(X[~te], Y[~te], batch_size=args.batch_size,
                                             **_shard()),
                   ArrayBatches(X[te], Y[te], batch_size=256, shuffle=False, **_shard()), "win")
    if not _root():
        return 0
    pred = model.predict(Xr[te])
    true = Yr[te]
    persist = np.repeat(Xr[te][:, -1:], args.horizon, axis=1)
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    base = float(np.sqrt(np.mean((persist - true) ** 2)))
    if not (math.isfinite(rmse) and all(np.isfinite(v).all() for v in model.params.values())):
        raise CLIError(f"{args.data}: training failed (test RMSE {rmse:.4g}, the model has "
                       "non-finite values); the model was not saved. Check the data for "
                       "extreme values, or lower --lr")
    print(f"test RMSE: {rmse:.4g}   persistence baseline {base:.4g}   {_vs_persistence(rmse, base)}")
    if base > 0 and rmse > base and not lag:
        print("hint: a series that trends is usually better forecast as changes: "
              "try --difference (or --difference P for a season of P steps)")
    model.meta["data"] = _fingerprint(args.data, rows_from=n - n_test)
    # the plot's second panel: the held-out rows, one step ahead, against the actual values
    shown = {"x": (target_start[te]).tolist(), "actual": true[:, 0, 0].tolist(),
             "forecast": pred[:, 0, 0].tolist(),
             "label": f"held-out {names[0]!r}: forecast 1 step ahead vs actual"}
    _save(args, model, "forecaster.npz", trainer, forecast=shown)
    return 0


# ------------------------------------------------------- predict / evaluate
def _load_any(path, backend=None):
    from ..models import load_model
    if not os.path.exists(path) and not os.path.exists(path + ".npz"):
        raise CLIError(f"no such file: {path}")
    return load_model(path, backend=backend)


def _open_out(path):
    if path in (None, "-"):
        return sys.stdout, False
    return open(path, "w", newline="", encoding="utf-8"), True


def _classify_rows(args, model, need_labels):
    from ..data import pad_sequences
    meta = dict(model.meta.get("csv", {}), feature_names=model.meta.get("feature_names"))
    t = _read_classify(args.data, model.input_size if model.embed is None else None,
                       args.label, has_label=True if need_labels else
                       (False if args.no_label else "auto"), model_meta=meta,
                       missing=getattr(args, "missing", "error"))
    if t.order_note:
        print(f"{args.data}: {t.order_note}", file=sys.stderr)
    x, lengths = pad_sequences(t.seqs, dtype=np.float64)
    return t, x, lengths


def _lm_scores(model, vocab, text, path, report=False):
    """Bits of each character of ``text`` after the ones before it
    (the first character has no context and is not scored). With
    ``report``, returns ``(bits, unseen)`` where ``unseen`` is a boolean mask
    of the scored characters the model never saw (read as ``<unk>``)."""
    missing = sorted({c for c in text if c not in vocab.stoi})
    if missing and vocab.unk not in vocab.stoi:
        raise CLIError(f"{path}: characters the model never saw: "
                       f"{''.join(missing)[:40]!r}")
    if report:
        bits = _lm_scores(model, vocab, text, path)
        gone = set(missing)
        return bits, np.fromiter((c in gone for c in text[1:]), bool, len(text) - 1)
    ids = vocab.encode(text)
    if len(ids) < 2:
        raise CLIError(f"{path}: need at least two characters to score")
    model.eval()
    bits, state = [], None
    for s in range(0, len(ids) - 1, 512):
        chunk = ids[s:min(s + 512, len(ids) - 1)]
        logits, state = model.forward(chunk[:, None], state)
        z = logits[:, 0].astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nxt = ids[s + 1:s + 1 + len(chunk)]
        bits.append(-logp[np.arange(len(chunk)), nxt] / math.log(2))
    return np.concatenate(bits)


def _report_unseen(unseen, bits, text, out):
    """Say how many scored characters the model never saw, what they cost
    and the mean without them (on ``out``); nothing when there are none."""
    k = int(unseen.sum())
    if not k:
        return
    chars = sorted({c for c, u in zip(text[1:], unseen) if u})
    rest = bits[~unseen]
    print(f"warning: {k} of {len(bits)} characters scored are ones the model never saw "
          f"({len(chars)} distinct: {', '.join(repr(c) for c in chars[:10])}"
          f"{', ...' if len(chars) > 10 else ''}), read as <unk>: {float(bits[unseen].mean()):.1f} "
          f"bits each on average; the mean without them is "
          + (f"{float(rest.mean()):.4f} bits per character" if len(rest) else "undefined"),
          file=out)


def _lm_vocab(model, path):
    from ..data import _Vocab
    if "vocab" not in model.meta:
        raise CLIError(f"{path} has no vocabulary: train it with `fastrnn train lm`")
    return _Vocab.from_dict(model.meta["vocab"])


def _predict_proba(args, model, x, lengths):
    """A classifier's probabilities: with ``--distributed`` the rows are split
    over the ranks and gathered on rank 0 in input order (None elsewhere)."""
    if not getattr(args, "distributed", False):
        return model.predict_proba(x, lengths)
    from ..distributed import sharded_apply
    return sharded_apply(model.predict_proba, x, lengths, comm=_DIST.comm)


def cmd_predict(args):
    from ..models import LanguageModel, SequenceClassifier
    model = _load_any(args.model, args.backend)
    if not isinstance(model, SequenceClassifier) and not _root():
        return 0           # scoring a text, a forecast: one sequence, run on rank 0
    if isinstance(model, LanguageModel):
        vocab = _lm_vocab(model, args.model)
        if args.data is None:
            return _generate(model, vocab, args)
        text = _read_text(args.data)
        bits, unseen = _lm_scores(model, vocab, text, args.data, report=True)
        out, close = _open_out(args.output)
        try:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["position", "char", "bits"])
            for k, b in enumerate(bits, start=1):
                w.writerow([k, text[k], f"{b:.4f}"])
        finally:
            if close:
                out.close()
        print(f"{args.data}: {float(bits.mean()):.4f} bits per character over {len(bits)} "
              "characters", file=sys.stderr if not close else sys.stdout)
        _report_unseen(unseen, bits, text, sys.stderr if not close else sys.stdout)
        return 0
    if args.data is None:
        raise CLIError("--data is required for a classifier or a forecaster")
    if isinstance(model, SequenceClassifier):
        t, x, lengths = _classify_rows(args, model, need_labels=False)
        p = _predict_proba(args, model, x, lengths)
        if not _root():
            return 0
        out, close = _open_out(args.output)
        try:
            w = csv.writer(out, lineterminator="\n")
            classes = model.classes or list(range(model.num_classes))
            if args.proba:
                w.writerow([str(c) for c in classes])
                for row in p:
                    w.writerow([f"{v:.6f}" for v in row])
            else:
                name = (model.meta.get("csv") or {}).get("label_name") or "label"
                w.writerow([name])
                idx = p.argmax(axis=-1)                 # as model.predict does
                for v in (idx if model.classes is None else np.asarray(model.classes)[idx]):
                    w.writerow([v])
        finally:
            if close:
                out.close()
        if close:
            print(f"{len(x)} predictions written to {args.output}")
        return 0
    # forecaster: the next values after the file's last window
    lag = model.difference
    window = int(model.meta.get("window") or 0)
    series, names, _, _ = _read_series(args.data, args.column, meta=model.meta)
    if series.shape[1] != model.input_size:
        raise CLIError(f"{args.data}: the model takes {model.input_size} column(s), "
                       f"got {series.shape[1]}: choose them with --column")
    need = (window or len(series)) + lag
    if len(series) < need:
        raise CLIError(f"{args.data}: {len(series)} rows, the model needs {need} "
                       f"(window {window}" + (f" + difference {lag})" if lag else ")"))
    steps = args.steps or model.horizon
    pred = model.forecast(series[None, -need:], steps)[0]          # one window [1, T, F]
    out, close = _open_out(args.output)
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["step"] + names)
        for k, row in enumerate(np.atleast_2d(pred), start=1):
            w.writerow([k] + [f"{v:.6g}" for v in row])
    finally:
        if close:
            out.close()
    if close:
        print(f"{steps} forecast step(s) written to {args.output}")
    return 0


def _scored_part(args, model, n, unit, held):
    """``(mask or None, words)``: which of ``n`` items (rows, windows,
    characters) ``fastrnn evaluate`` scores, and a phrase saying so. The
    training file (recognised by its size and SHA-256, see
    :func:`_fingerprint`) is scored on its held-out part only, unless
    ``--all``."""
    if held is None:
        note = (" (not the training file)" if model.meta.get("data") else
                " (the model file does not record its training file)")
        return None, f"all {n} {unit} of {args.data}{note}"
    if args.all:
        return None, (f"all {n} {unit} of {args.data}, the training file (--all: the "
                      "model was trained on most of them)")
    return "held", (f"the held-out part of {args.data}, the training file: {{k}} of {n} "
                    f"{unit}, as held out in training (--all scores every one)")


def cmd_evaluate(args):
    from ..data import sliding_windows
    from ..models import LanguageModel, SequenceClassifier
    model = _load_any(args.model, args.backend)
    held = _training_file(model, args.data)
    if isinstance(model, LanguageModel):
        vocab = _lm_vocab(model, args.model)
        text = _read_text(args.data)
        mask, part = _scored_part(args, model, len(text), "characters", held)
        if mask is not None:
            cut = int(held.get("chars_from", 0))
            text = text[cut:]
            part = part.format(k=len(text))
        bits, unseen = _lm_scores(model, vocab, text, args.data, report=True)
        print(f"bits per character: {float(bits.mean()):.4f} ({len(bits)} characters scored: "
              f"{part})")
        _report_unseen(unseen, bits, text, sys.stdout)
        return 0
    if isinstance(model, SequenceClassifier):
        t, x, lengths = _classify_rows(args, model, need_labels=True)
        labels = _natural_labels(t.labels) if model.classes is None or all(
            isinstance(c, int) for c in model.classes) else t.labels
        mask, part = _scored_part(args, model, t.n_rows, "rows", held)
        if mask is not None:
            keep = np.isin(t.row_ids, np.asarray(held.get("rows", []), np.int64))
            x, lengths = x[keep], lengths[keep]
            labels = [v for v, k in zip(labels, keep) if k]
            part = part.format(k=int(keep.sum()))
            if not len(labels):
                raise CLIError(f"{args.data}: no held-out rows to score (training held out "
                               "none: --val-fraction 0?); --all scores every row")
        if t.dropped:
            part += f"; {len(t.dropped)} row(s) with missing values dropped (--missing drop)"
        known = set(model.classes if model.classes is not None else range(model.num_classes))
        unknown = sum(v not in known for v in labels)
        acc = model.score(x, np.asarray(labels, dtype=object), lengths)
        vals, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
        print(f"accuracy: {acc:.4f} ({len(labels)} rows; {t.label_how}; "
              f"most frequent label {str(vals[counts.argmax()])!r} {counts.max() / len(labels):.4f})")
        print(f"scored {part}")
        if unknown:
            print(f"warning: {unknown} rows have labels the model never saw (counted as wrong)",
                  file=sys.stderr)
        return 0
    lag, window = model.difference, int(model.meta.get("window") or 0)
    if not window:
        raise CLIError(f"{args.model} has no window length: train it with `fastrnn train forecast`")
    series, names, _, _ = _read_series(args.data, args.column, meta=model.meta)
    if len(series) < window + lag + model.horizon:
        raise CLIError(f"{args.data}: {len(series)} rows are too few for the model's window "
                       f"{window}" + (f" + difference {lag}" if lag else "")
                       + f" + horizon {model.horizon}")
    X, Y = sliding_windows(series, window + lag, model.horizon)
    mask, part = _scored_part(args, model, len(X), "windows", held)
    if mask is not None:
        keep = np.arange(len(X)) + window + lag >= int(held.get("rows_from", 0))
        X, Y = X[keep], Y[keep]
        part = part.format(k=f"{len(X)} (those whose first target is in the last "
                             f"{len(series) - int(held.get('rows_from', 0))} rows)")
    pred = model.predict(X)
    rmse = float(np.sqrt(np.mean((pred - Y) ** 2)))
    base = float(np.sqrt(np.mean((np.repeat(X[:, -1:], model.horizon, axis=1) - Y) ** 2)))
    print(f"RMSE: {rmse:.4g} over {len(X)} windows   persistence baseline {base:.4g}   "
          f"{_vs_persistence(rmse, base)}")
    print(f"scored {part}")
    return 0


# ---------------------------------------------------------------- generate
def _generate(model, vocab, args):
    prime = None
    if args.prime:
        # characters the model never saw are refused, naming them (not read as <unk>)
        unknown = sorted({c for c in args.prime if c not in vocab.stoi or c == vocab.unk})
        if unknown:
            raise CLIError("--prime has characters the model never saw: "
                           + ", ".join(repr(c) for c in unknown)
                           + f" (its vocabulary has {len(vocab)} characters; "
                           "the text it was trained on had none of these)")
        prime = vocab.encode(args.prime)
    out = model.sample(args.length, prime, temperature=args.temperature, rng=args.seed)
    print((args.prime or "") + vocab.decode(out))
    return 0


def cmd_generate(args):
    from ..models import CheckpointError, LanguageModel
    if not os.path.exists(args.model) and not os.path.exists(args.model + ".npz"):
        raise CLIError(f"no such file: {args.model}")
    try:
        model = LanguageModel.load(args.model, backend=args.backend)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    return _generate(model, _lm_vocab(model, args.model), args)


# -------------------------------------------------------------------- info
def _version(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return None


def cmd_info(args):
    from .. import __version__
    from ..dispatch import BackendUnavailable, get_backend, resolve_backend
    print(f"fastrnn  {__version__}")
    print(f"python   {platform.python_version()} ({platform.platform()})")
    for mod in ("numpy", "numba", "scipy", "torch", "matplotlib"):
        v = _version(mod)
        print(f"{mod:<8} {v if v else 'not installed'}")
    print("backends:")
    for name in ("numpy", "cpu", "cuda"):
        try:
            get_backend(name)
            status = "available"
        except (BackendUnavailable, ImportError, Exception) as exc:   # noqa: BLE001
            status = f"unavailable ({' '.join(str(exc).split())})"     # the whole reason
        print(f"  {name:<6} {status}")
    print(f"  'auto' resolves to {resolve_backend('auto')!r} for host arrays")
    print(f"cpu cores {os.cpu_count()}")
    try:
        import numba
        print(f"numba threads {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS} "
              f"(threading layer {numba.config.THREADING_LAYER})")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        # one line per kind of pool: two copies of one library (libgomp of the
        # system and of torch) are one line, with their thread counts
        kinds = {}
        for pool in threadpool_info():
            kinds.setdefault((pool.get("user_api"), pool.get("internal_api")), []).append(pool)
        for (api, internal), pools in kinds.items():
            threads = sorted({p.get("num_threads") for p in pools})
            copies = f", {len(pools)} copies loaded" if len(pools) > 1 else ""
            print(f"{api} threads {'/'.join(str(t) for t in threads)} ({internal}{copies})")
    except ImportError:
        pass
    try:
        from .. import get_num_threads
        print(f"fastrnn kernel BLAS threads (most) {get_num_threads()}")
        from ..kernels import cpu as _cpu
        print(f"cpu kernels: {_cpu.describe()}")
    except ImportError:
        pass
    print(_bf16_info())
    print(f"GPU: {_gpu_info()}")
    print(f"MPI: {_mpi_info()}")
    return 0


def _bf16_info():
    """One line on the bfloat16 compute mode: the CPU's bf16 instructions and,
    where the CPU kernels say it, which bf16 path runs."""
    from ..bf16 import has_amx_bf16, has_avx512_bf16
    yes = {True: "yes", False: "no"}
    line = (f"bfloat16: avx512_bf16 {yes[has_avx512_bf16()]}, amx_bf16 {yes[has_amx_bf16()]}")
    try:
        from ..kernels import cpu as _cpu
        describe = getattr(_cpu, "describe_bf16", None)
    except ImportError:
        describe = None
    if describe is not None:
        try:
            line += f"; {describe()}"
        except Exception as exc:    # noqa: BLE001 - info reports, it does not fail
            line += f"; describe_bf16() failed: {' '.join(str(exc).split())}"
    else:
        line += ("; the CPU kernels here have no bfloat16 mode: compute_dtype='bfloat16' "
                 "runs on backend='numpy'")
    return line


def _mpi_info():
    """One line on MPI: mpi4py and the library, and whether GPU gradients are
    reduced in device memory (a CUDA-aware library) or staged through the
    host. Asked in a child process, so that ``fastrnn info`` does not start
    MPI in this one (the query needs an initialised MPI)."""
    import importlib.util
    import json
    import subprocess
    if importlib.util.find_spec("mpi4py") is None:
        return "not installed (--distributed needs it: pip install 'fastrnn[mpi]')"
    if "mpi4py.MPI" in sys.modules:                  # already started here: ask here
        from ..distributed import mpi_info
        d = mpi_info()
    else:
        # not a rank of the launcher's job: the child starts MPI on its own
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_"))}
        code = "import json; from fastrnn.distributed import mpi_info; print(json.dumps(mpi_info()))"
        r = None
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60, env=env)
            d = json.loads(r.stdout.strip().splitlines()[-1])
        except Exception:   # noqa: BLE001 - a broken MPI install is reported, not raised
            why = " ".join(r.stderr.split())[-300:] if r is not None and r.stderr else "no answer"
            return f"mpi4py installed, but MPI does not start ({why})"
    if not d["available"]:
        return f"unusable ({d['reason']})"
    how = ("CUDA-aware: GPU gradients are reduced in device memory" if d["transport"] == "cuda-aware"
           else "not CUDA-aware: GPU gradients are staged through host memory")
    return f"mpi4py {d['mpi4py']}, {d['library']}; {how}"


def _gpu_info():
    try:
        from numba import cuda
    except ImportError:
        return "numba.cuda not importable"
    try:
        if not cuda.is_available():
            return "none (numba.cuda sees no CUDA device)"
        devs = [f"{d.id}: {d.name.decode() if isinstance(d.name, bytes) else d.name}"
                for d in cuda.gpus]
        return ", ".join(devs)
    except Exception as exc:   # noqa: BLE001 - driver errors vary
        return f"none ({exc})"


def cmd_bench(rest):
    try:
        from .. import bench
    except ImportError as exc:
        raise CLIError(f"the benchmark module fastrnn.bench is not available ({exc})") from None
    if not hasattr(bench, "main"):
        raise CLIError("fastrnn.bench has no main(); the benchmark CLI is not installed")
    try:
        return bench.main(rest) or 0
    except KeyboardInterrupt:    # bench has stopped its busy processes on the way out
        print("fastrnn bench: interrupted", file=sys.stderr)
        return 130


def cmd_export(rest):
    """``fastrnn export --model M.npz --onnx M.onnx``: a saved model as ONNX."""
    p = _Parser(prog="fastrnn export", description="Write a saved model as an ONNX model "
                "(dynamic batch and time; see fastrnn.onnx for its inputs and outputs).")
    p.add_argument("--model", required=True, help="a model saved by `fastrnn train` or save()")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--lengths", action="store_true",
                   help="classifier/regressor: add a lengths input (valid steps per sequence)")
    p.add_argument("--initial-state", action="store_true",
                   help="language model: add h0 (and c0) inputs")
    args = p.parse_args(rest)
    try:
        from .. import onnx as fonnx
        from ..models import load_model
        fonnx._onnx()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    model = load_model(args.model, backend="numpy")
    data = fonnx.to_bytes(model, lengths=args.lengths, initial_state=args.initial_state)
    with open(args.onnx, "wb") as f:
        f.write(data)
    print(f"wrote {args.onnx}: {type(model).__name__} ({len(data):,} bytes)")
    return 0


# -------------------------------------------------------------------- main
def build_parser():
    from .. import __version__
    p = _Parser(prog="fastrnn", description="Fast recurrent networks on NumPy arrays.")
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
            _setup_distributed(args)
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
    if _DIST.world == 1:
        print(f"fastrnn: error: {exc}", file=sys.stderr)
        return 2
    print(f"fastrnn: error: (rank {_DIST.rank} of {_DIST.world}) {exc}", file=sys.stderr)
    from ..distributed import abort
    abort(_DIST.comm, 2)
    return 2              # pragma: no cover - Abort does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
