"""The commands that use a saved model: ``fastrnn predict`` (labels or
probabilities, the next values of a series, per-character bits, or text),
``fastrnn evaluate`` (accuracy, RMSE against persistence, bits per
character; on the training file only its held-out part), ``fastrnn
generate`` and ``fastrnn export`` (ONNX)."""
from __future__ import annotations

import csv
import math
import os
import sys

import numpy as np

from .inputs import natural_labels, read_classify, read_series, read_text, training_file
from .mpi import DIST, is_root
from .parser import CLIError, Parser
from .train import vs_persistence


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
    t = read_classify(args.data, model.input_size if model.embed is None else None,
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
    return sharded_apply(model.predict_proba, x, lengths, comm=DIST.comm)


def cmd_predict(args):
    from ..models import LanguageModel, SequenceClassifier
    model = _load_any(args.model, args.backend)
    if not isinstance(model, SequenceClassifier) and not is_root():
        return 0           # scoring a text, a forecast: one sequence, run on rank 0
    if isinstance(model, LanguageModel):
        vocab = _lm_vocab(model, args.model)
        if args.data is None:
            return _generate(model, vocab, args)
        text = read_text(args.data)
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
        if not is_root():
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
    series, names, _, _ = read_series(args.data, args.column, meta=model.meta)
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
    :func:`fingerprint`) is scored on its held-out part only, unless
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
    held = training_file(model, args.data)
    if isinstance(model, LanguageModel):
        vocab = _lm_vocab(model, args.model)
        text = read_text(args.data)
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
        labels = natural_labels(t.labels) if model.classes is None or all(
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
    series, names, _, _ = read_series(args.data, args.column, meta=model.meta)
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
          f"{vs_persistence(rmse, base)}")
    print(f"scored {part}")
    return 0


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


def cmd_export(rest):
    """``fastrnn export --model M.npz --onnx M.onnx``: a saved model as ONNX."""
    p = Parser(prog="fastrnn export", description="Write a saved model as an ONNX model "
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
