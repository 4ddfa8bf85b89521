"""The ``fastrnn`` command line.

::

    fastrnn demo [--seconds S | --quick]       char-level LSTM LM on Python's own docs
    fastrnn train lm --data corpus.txt         character language model
    fastrnn train classify --data rows.csv     label,x_1,x_2,... per row
    fastrnn train forecast --data series.csv   numeric column(s), one row per time step
    fastrnn generate --model lm.npz --prime "def "
    fastrnn info                               versions, backends, threads, GPU
    fastrnn bench [...]                        the benchmark grid (fastrnn.bench)

Every error a user can cause (a bad option value, a missing file or a
directory, an empty corpus, a bad CSV, a broken checkpoint or one of another
model, training that diverged) ends with one ``fastrnn: error: ...`` line and
exit status 2, not a traceback (``FASTRNN_DEBUG=1`` shows the traceback of a
rejected argument).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import platform
import sys
import time

import numpy as np

from .metrics import unigram_bits   # moved to fastrnn.metrics; still importable from here

__all__ = ["main"]


class CLIError(Exception):
    """An error reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``fastrnn: error:`` line (a
    :class:`CLIError`) instead of a usage block; sub-parsers inherit it."""

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


_POSITIVE = _int_at_least(1)
_NONNEG = _int_at_least(0)
_POSITIVE_FLOAT = _float_in(0.0, lo_open=True)
_NONNEG_FLOAT = _float_in(0.0)
_FRACTION = _float_in(0.0, 1.0, hi_open=True)     # dropout, --val-fraction


def _choices():
    from .dispatch import BACKENDS
    from .models import CELL_TYPES
    from .optim import _OPTIMIZERS
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


def _is_number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _read_csv(path, need_label=False):
    """Parse a numeric CSV; returns (header or None, rows as lists of str).

    ``need_label``: the first column holds labels (text or numbers), so only
    the other columns say whether the first row is a header, unless the first
    row alone has a non-numeric label where every other row has a number."""
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a CSV file")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise CLIError(f"{path} is empty: no CSV rows")
    header = None
    first = rows[0]
    if need_label:
        is_header = (not all(_is_number(c) for c in first[1:] if c.strip())
                     or (not _is_number(first[0]) and len(rows) > 1
                         and all(_is_number(r[0]) for r in rows[1:])))
    else:
        is_header = not all(_is_number(c) for c in first if c.strip())
    if is_header:
        header, rows = rows[0], rows[1:]
    if not rows:
        raise CLIError(f"{path} has a header but no data rows")
    return header, rows


def _float(cell, path, line, col):
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
    from .optim import get_optimizer
    return get_optimizer(name, model, lr=lr)


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

    def step(layer):
        t0 = time.perf_counter()
        layer(x)
        layer.backward(dy)
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
    from .data import CharVocab, LMBatches
    from .dispatch import resolve_backend
    from .models import LanguageModel, make_recurrent
    from .optim import Adam, CosineDecay
    from .train import Trainer

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
    print(f"trained {trainer.global_step} steps ({chars / 1e6:.2f} M characters) in {train_s:.0f} s")
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
                   help="lstm, gru, rnn, peephole, ...")
    p.add_argument("--hidden", type=_POSITIVE, default=64)
    p.add_argument("--layers", type=_POSITIVE, default=1)
    p.add_argument("--dropout", type=_FRACTION, default=0.0)
    p.add_argument("--epochs", type=_POSITIVE, default=10)
    p.add_argument("--seconds", type=_POSITIVE_FLOAT, default=None, help="wall-time budget")
    p.add_argument("--batch-size", type=_POSITIVE, default=32)
    p.add_argument("--lr", type=_POSITIVE_FLOAT, default=3e-3)
    p.add_argument("--optimizer", default="adam", type=str.lower, choices=optimizers)
    p.add_argument("--clip", type=_NONNEG_FLOAT, default=1.0,
                   help="global gradient-norm clip (0: none)")
    p.add_argument("--patience", type=_POSITIVE, default=None, help="early stopping")
    p.add_argument("--val-fraction", type=_FRACTION, default=0.1)
    p.add_argument("--seed", type=_NONNEG, default=0)
    p.add_argument("--backend", default="auto", choices=backends)
    p.add_argument("--out", default=None, help="where to save the model (.npz)")
    p.add_argument("--checkpoint", default=None, help="training checkpoint written every epoch")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint")
    p.add_argument("--no-progress", action="store_true")


def _fit(args, model, train_data, val_data, unit):
    from .train import EarlyStopping, Trainer
    es = EarlyStopping(args.patience) if args.patience else None
    trainer = Trainer(model, _optimizer(args.optimizer, model, args.lr), train_data, val_data,
                      clip_norm=args.clip or None, seed=args.seed, progress=_progress_ok(args),
                      early_stopping=es, checkpoint=args.checkpoint,
                      max_seconds=args.seconds, unit=unit)
    if args.resume:
        if not args.checkpoint:
            raise CLIError("--resume needs --checkpoint PATH")
        if os.path.exists(args.checkpoint) or os.path.exists(args.checkpoint + ".npz"):
            trainer.resume(args.checkpoint)
    trainer.fit(args.epochs)
    return trainer


def _save(args, model, default):
    path = model.save(args.out or default)
    print(f"model saved to {path}")


def cmd_train_lm(args):
    from .data import CharVocab, LMBatches
    from .models import LanguageModel
    text = _read_text(args.data)
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1 - args.val_fraction))
    if cut < args.batch_size * 2 + 1 or len(ids) - cut < 3:
        raise CLIError(f"{args.data} is too short ({len(ids)} characters) to train a "
                       "language model; give more text or a smaller --batch-size")
    model = LanguageModel(len(vocab), embed_dim=args.embed, hidden_size=args.hidden,
                          num_layers=args.layers, cell=args.cell, dropout=args.dropout,
                          backend=args.backend, seed=args.seed)
    model.meta["vocab"] = vocab.to_dict()
    val = LMBatches(ids[cut:], min(args.batch_size, max(1, (len(ids) - cut - 1) // 2)), args.bptt)
    _fit(args, model, LMBatches(ids[:cut], args.batch_size, args.bptt), val, "char")
    bpc = model.evaluate(ids[cut:], args.batch_size, args.bptt) / math.log(2)
    print(f"validation bits per character: {bpc:.3f} (unigram "
          f"{unigram_bits(ids[:cut], ids[cut:], len(vocab)):.3f})")
    _save(args, model, "lm.npz")
    return 0


def _load_classify_csv(path, features):
    header, rows = _read_csv(path, need_label=True)
    labels, seqs = [], []
    first = 2 if header else 1
    for i, r in enumerate(rows):
        line = i + first
        cells = [c for c in r[1:] if c.strip()]
        if not r[0].strip():
            raise CLIError(f"bad CSV {path}: line {line}: empty label")
        if not cells:
            raise CLIError(f"bad CSV {path}: line {line}: no feature values after the label")
        if len(cells) % features:
            raise CLIError(f"bad CSV {path}: line {line}: {len(cells)} values is not a "
                           f"multiple of --features {features}")
        labels.append(r[0].strip())
        vals = [_float(c, path, line, j + 2) for j, c in enumerate(cells)]
        seqs.append(np.array(vals, dtype=np.float32).reshape(-1, features))
    return labels, seqs


def cmd_train_classify(args):
    from .data import ArrayBatches, Standardizer, pad_sequences, train_val_split
    from .models import SequenceClassifier
    labels, seqs = _load_classify_csv(args.data, args.features)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise CLIError(f"{args.data}: need at least two classes, found {classes}")
    y = np.array([classes.index(c) for c in labels], dtype=np.int64)
    x, lengths = pad_sequences(seqs, dtype=np.float32)
    tr, va = train_val_split(len(y), args.val_fraction, rng=args.seed)
    if len(va) == 0:
        tr, va = tr, tr
    scaler = Standardizer().fit(np.concatenate([seqs[i] for i in tr]))
    x = scaler.transform(x).astype(np.float32)
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
    model = SequenceClassifier(len(classes), input_size=args.features, hidden_size=args.hidden,
                               num_layers=args.layers, cell=args.cell, pooling=args.pooling,
                               bidirectional=args.bidirectional, dropout=args.dropout,
                               backend=args.backend, seed=args.seed)
    model.meta.update(classes=classes, scaler=scaler.to_dict())
    _fit(args, model, ArrayBatches(x[tr], y[tr], lengths=lengths[tr], batch_size=args.batch_size),
         ArrayBatches(x[va], y[va], lengths=lengths[va], batch_size=256, shuffle=False), "seq")
    acc = float(np.mean(model.predict(x[va], lengths[va]) == y[va]))
    majority = float(np.mean(y[va] == np.bincount(y[tr]).argmax()))
    print(f"validation accuracy: {acc:.4f} (majority class {majority:.4f})")
    _save(args, model, "classifier.npz")
    return 0


def _load_series_csv(path, column):
    header, rows = _read_csv(path)
    first = 2 if header else 1
    ncol = len(rows[0])
    if column is None:
        cols = list(range(ncol))
    else:
        if header and column in header:
            cols = [header.index(column)]
        else:
            try:
                cols = [int(column)]
            except ValueError:
                raise CLIError(f"{path}: no column {column!r}"
                               + (f" (columns: {header})" if header else "")) from None
            if not 0 <= cols[0] < ncol:
                raise CLIError(f"{path}: column index {column} out of range (0..{ncol - 1})")
    data = []
    for i, r in enumerate(rows):
        if len(r) != ncol:
            raise CLIError(f"bad CSV {path}: line {i + first} has {len(r)} columns, expected {ncol}")
        data.append([_float(r[c], path, i + first, c + 1) for c in cols])
    return np.array(data, dtype=np.float64)


def cmd_train_forecast(args):
    from .data import ArrayBatches, Standardizer, sliding_windows
    from .models import SequenceRegressor
    series = _load_series_csv(args.data, args.column)
    n = len(series)
    n_test = max(int(n * args.val_fraction), args.horizon)
    if n - n_test < args.window + args.horizon + 1:
        raise CLIError(f"{args.data}: {n} rows are too few for --window {args.window} "
                       f"and --horizon {args.horizon}")
    scaler = Standardizer().fit(series[:n - n_test])
    z = scaler.transform(series)
    if not (np.isfinite(scaler.std).all() and np.isfinite(z).all()
            and (np.abs(z) <= _F32_MAX).all()):
        raise CLIError(f"{args.data}: the values are too large to standardise")
    z = z.astype(np.float32)
    # one huge value can make the standardised float32 series lose the rest of
    # the data (most values round to one number): refuse instead of training on noise
    for c in range(series.shape[1]):
        kept, had = len(np.unique(z[:, c])), len(np.unique(series[:, c]))
        if kept < 0.5 * had:
            raise CLIError(f"{args.data}: the values span too wide a range to train on in "
                           f"float32 (largest |value| {np.abs(series[:, c]).max():.3g}; only "
                           f"{kept} of {had} distinct values survive): remove or clip the outliers")
    X, Y = sliding_windows(z, args.window, args.horizon)
    # a window belongs to the test tail when its first target lies there
    target_start = np.arange(len(X)) + args.window
    te = target_start >= n - n_test
    F = series.shape[1]
    model = SequenceRegressor(F, horizon=args.horizon, hidden_size=args.hidden,
                              num_layers=args.layers, cell=args.cell, dropout=args.dropout,
                              backend=args.backend, seed=args.seed)
    model.meta.update(scaler=scaler.to_dict(), window=args.window)
    _fit(args, model, ArrayBatches(X[~te], Y[~te], batch_size=args.batch_size),
         ArrayBatches(X[te], Y[te], batch_size=256, shuffle=False), "win")
    pred = scaler.inverse_transform(model.predict(X[te]).astype(np.float64))
    true = scaler.inverse_transform(Y[te].astype(np.float64))
    persist = np.repeat(scaler.inverse_transform(X[te][:, -1:].astype(np.float64)),
                        args.horizon, axis=1)
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    base = float(np.sqrt(np.mean((persist - true) ** 2)))
    if not (math.isfinite(rmse) and all(np.isfinite(v).all() for v in model.params.values())):
        raise CLIError(f"{args.data}: training failed (test RMSE {rmse:.4g}, the model has "
                       "non-finite values); the model was not saved. Check the data for "
                       "extreme values, or lower --lr")
    better = (f"({100 * (1 - rmse / base):+.1f}% better)" if base > 0
              else "(the series repeats exactly: persistence is perfect)")
    print(f"test RMSE: {rmse:.4g}   persistence baseline {base:.4g}   {better}")
    _save(args, model, "forecaster.npz")
    return 0


# ---------------------------------------------------------------- generate
def cmd_generate(args):
    from .data import _Vocab
    from .models import CheckpointError, LanguageModel
    if not os.path.exists(args.model) and not os.path.exists(args.model + ".npz"):
        raise CLIError(f"no such file: {args.model}")
    try:
        model = LanguageModel.load(args.model, backend=args.backend)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    if "vocab" not in model.meta:
        raise CLIError(f"{args.model} has no vocabulary: train it with `fastrnn train lm`")
    vocab = _Vocab.from_dict(model.meta["vocab"])
    try:
        prime = vocab.encode(args.prime) if args.prime else None
    except KeyError as exc:
        raise CLIError(f"--prime: {exc.args[0]}") from None
    out = model.sample(args.length, prime, temperature=args.temperature, rng=args.seed)
    print((args.prime or "") + vocab.decode(out))
    return 0


# -------------------------------------------------------------------- info
def _version(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return None


def cmd_info(args):
    from . import __version__
    from .dispatch import BackendUnavailable, get_backend, resolve_backend
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
            status = f"unavailable ({str(exc).splitlines()[0][:100]})"
        print(f"  {name:<6} {status}")
    print(f"  'auto' resolves to {resolve_backend('auto')!r} for host arrays")
    print(f"cpu cores {os.cpu_count()}")
    try:
        import numba
        print(f"numba threads {numba.config.NUMBA_NUM_THREADS} "
              f"(threading layer {numba.config.THREADING_LAYER})")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"{pool.get('user_api')} threads {pool.get('num_threads')} "
                  f"({pool.get('internal_api')})")
    except ImportError:
        pass
    print(f"GPU: {_gpu_info()}")
    return 0


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
        from . import bench
    except ImportError as exc:
        raise CLIError(f"the benchmark module fastrnn.bench is not available ({exc})") from None
    if not hasattr(bench, "main"):
        raise CLIError("fastrnn.bench has no main(); the benchmark CLI is not installed")
    try:
        return bench.main(rest) or 0
    except KeyboardInterrupt:    # bench has stopped its busy processes on the way out
        print("fastrnn bench: interrupted", file=sys.stderr)
        return 130


# -------------------------------------------------------------------- main
def build_parser():
    p = _Parser(prog="fastrnn", description="Fast recurrent networks on NumPy arrays.")
    backends = _choices()[2]
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="train a character-level LSTM on Python's own docs")
    d.add_argument("--seconds", type=_POSITIVE_FLOAT, default=None,
                   help="training time budget (default 100, or 8 with --quick)")
    d.add_argument("--steps", type=_POSITIVE, default=None,
                   help="stop after this many steps (exactly repeatable, unlike a time budget)")
    d.add_argument("--quick", action="store_true", help="a tiny model for a few seconds (tests)")
    d.add_argument("--hidden", type=_POSITIVE, default=128)
    d.add_argument("--batch-size", type=_POSITIVE, default=32)
    d.add_argument("--bptt", type=_POSITIVE, default=64)
    d.add_argument("--lr", type=_POSITIVE_FLOAT, default=2e-2)
    d.add_argument("--seed", type=_NONNEG, default=0)
    d.add_argument("--backend", default="auto", choices=backends)
    d.add_argument("--save", default=None, help="save the trained model (.npz)")
    d.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", help="train a model on your data")
    ts = t.add_subparsers(dest="task", metavar="TASK")
    lm = ts.add_parser("lm", help="character language model on a text file")
    _common_train_args(lm)
    lm.add_argument("--embed", type=_POSITIVE, default=32)
    lm.add_argument("--bptt", type=_POSITIVE, default=64)
    cl = ts.add_parser("classify", help="sequence classification from a CSV (label, values...)")
    _common_train_args(cl)
    cl.add_argument("--features", type=_POSITIVE, default=1, help="values per time step")
    cl.add_argument("--pooling", choices=("last", "attention"), default="last")
    cl.add_argument("--bidirectional", action="store_true")
    fc = ts.add_parser("forecast", help="time-series forecasting from a CSV")
    _common_train_args(fc)
    fc.add_argument("--column", default=None, help="column name or index (default: all)")
    fc.add_argument("--window", type=_POSITIVE, default=24)
    fc.add_argument("--horizon", type=_POSITIVE, default=1)

    g = sub.add_parser("generate", help="sample text from a trained language model")
    g.add_argument("--model", required=True)
    g.add_argument("--prime", default="")
    g.add_argument("--length", type=_NONNEG, default=300)
    g.add_argument("--temperature", type=_NONNEG_FLOAT, default=0.8)
    g.add_argument("--seed", type=_NONNEG, default=None)
    g.add_argument("--backend", default=None, choices=backends)

    p.train_parser = t
    sub.add_parser("info", help="versions, backends, threads, GPU")
    sub.add_parser("bench", help="benchmark against NumPy, PyTorch and onnxruntime: the cell "
                                 "grid, --busy N load test, --train model throughput "
                                 "(options: fastrnn bench --help)",
                   add_help=False)
    return p


def main(argv=None):
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .checkpoint import CheckpointError
    from .dispatch import BackendUnavailable
    try:
        if argv and argv[0] == "bench":
            return cmd_bench(argv[1:])      # options belong to bench
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "train" and args.task is None:
            parser.train_parser.print_help()
            return 2
        handlers = {"demo": cmd_demo, "generate": cmd_generate, "info": cmd_info,
                    "train": lambda a: {"lm": cmd_train_lm, "classify": cmd_train_classify,
                                        "forecast": cmd_train_forecast}[a.task](a)}
        return handlers[args.command](args)
    except (CLIError, CheckpointError, BackendUnavailable, FloatingPointError, OSError) as exc:
        # user errors: bad options or files, broken checkpoints, a backend that
        # cannot run here, training that diverged, a path that cannot be written
        print(f"fastrnn: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # an argument the library rejected (it names it); a traceback helps no user
        if os.environ.get("FASTRNN_DEBUG"):
            raise
        print(f"fastrnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
