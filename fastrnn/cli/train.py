"""The training commands, ``fastrnn train lm|classify|forecast``: the
model built from the options, the training loop (early stopping,
checkpoints, ``--distributed``), the line saying why training stopped, and
the model saved with its history and curves."""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from ..metrics import unigram_bits
from .inputs import (F32_MAX, fingerprint, natural_labels, read_classify, read_series,
                     read_text, summary_classify)
from .mpi import DIST, is_root, shard
from .parser import CLIError


def _progress_ok(args):
    return not getattr(args, "no_progress", False)


def _optimizer(name, model, lr):
    from ..optim import get_optimizer
    return get_optimizer(name, model, lr=lr)


def _fit(args, model, train_data, val_data, unit):
    from ..train import EarlyStopping, Trainer
    es = EarlyStopping(args.patience) if args.patience else None
    cls, extra = Trainer, {}
    if getattr(args, "distributed", False):
        from ..distributed import DistributedTrainer
        cls, extra = DistributedTrainer, {"comm": DIST.comm}
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
    if is_root():
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


def _stem(path):
    return path[:-4] if path.endswith(".npz") else path


def _save(args, model, default, trainer=None, metric=None, metric_scale=1.0,
          metric_label=None, forecast=None):
    """Save the model, then ``<out>.history.json`` and (matplotlib installed,
    no ``--no-plot``) ``<out>.png``; on rank 0 only (``--distributed``)."""
    if not is_root():
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
    text = read_text(args.data)
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
    if args.batch_size < DIST.world:
        raise CLIError(f"--batch-size {args.batch_size} is smaller than the {DIST.world} ranks: "
                       "each rank needs at least one row of the text")
    val_batch = max(min(args.batch_size, max(1, (len(ids) - cut - 1) // 2)), DIST.world)
    val = LMBatches(ids[cut:], val_batch, args.bptt, **shard())
    trainer = _fit(args, model, LMBatches(ids[:cut], args.batch_size, args.bptt, **shard()),
                   val, "char")
    if not is_root():
        return 0
    bpc = model.evaluate(ids[cut:], args.batch_size, args.bptt) / math.log(2)
    print(f"validation bits per character: {bpc:.3f} (unigram "
          f"{unigram_bits(ids[:cut], ids[cut:], len(vocab)):.3f})")
    model.meta["data"] = fingerprint(args.data, chars_from=cut)
    _save(args, model, "lm.npz", trainer, metric="val_loss",
          metric_label="validation bits per character")
    return 0


def cmd_train_classify(args):
    from ..data import ArrayBatches, Standardizer, pad_sequences, train_val_split
    from ..models import SequenceClassifier
    t = read_classify(args.data, args.features, args.label, missing=args.missing)
    labels = natural_labels(t.labels)
    classes = sorted(set(labels))
    print(summary_classify(args.data, t, classes), flush=True)
    if len(classes) < 2:
        raise CLIError(f"{args.data}: need at least two classes, found {classes}"
                       + ("" if args.label else ": is the label column the right one? "
                          "(choose it with --label NAME|INDEX)"))
    if len(classes) > max(2, len(labels) // 2) and is_root():
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
    model.meta["data"] = fingerprint(args.data, rows=sorted(int(i) for i in t.row_ids[va]))
    x = model._preprocess(raw, lengths)
    trainer = _fit(args, model, ArrayBatches(x[tr], y[tr], lengths=lengths[tr],
                                             batch_size=args.batch_size, **shard()),
                   ArrayBatches(x[va], y[va], lengths=lengths[va], batch_size=256,
                                shuffle=False, **shard()), "seq")
    if not is_root():
        return 0
    acc = model.score(raw[va], np.asarray(labels, dtype=object)[va], lengths[va])
    majority = float(np.mean(y[va] == np.bincount(y[tr]).argmax()))
    print(f"validation accuracy: {acc:.4f} (majority class {majority:.4f})")
    _save(args, model, "classifier.npz", trainer, metric="val_accuracy",
          metric_label="validation accuracy")
    return 0


def _difference(series, lag):
    return series[lag:] - series[:-lag] if lag else series


def vs_persistence(rmse, base):
    if base <= 0:
        return "(the series repeats exactly: persistence is perfect)"
    pct = 100 * (1 - rmse / base)
    if pct >= 0:
        return f"({pct:.1f}% better than persistence)"
    return f"({-pct:.1f}% worse than persistence)"


def cmd_train_forecast(args):
    from ..data import ArrayBatches, Standardizer, sliding_windows
    from ..models import SequenceRegressor
    series, names, how, skipped = read_series(args.data, args.column)
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
            and (np.abs(z) <= F32_MAX).all()):
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
                                             **shard()),
                   ArrayBatches(X[te], Y[te], batch_size=256, shuffle=False, **shard()), "win")
    if not is_root():
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
    print(f"test RMSE: {rmse:.4g}   persistence baseline {base:.4g}   {vs_persistence(rmse, base)}")
    if base > 0 and rmse > base and not lag:
        print("hint: a series that trends is usually better forecast as changes: "
              "try --difference (or --difference P for a season of P steps)")
    model.meta["data"] = fingerprint(args.data, rows_from=n - n_test)
    # the plot's second panel: the held-out rows, one step ahead, against the actual values
    shown = {"x": (target_start[te]).tolist(), "actual": true[:, 0, 0].tolist(),
             "forecast": pred[:, 0, 0].tolist(),
             "label": f"held-out {names[0]!r}: forecast 1 step ahead vs actual"}
    _save(args, model, "forecaster.npz", trainer, forecast=shown)
    return 0
