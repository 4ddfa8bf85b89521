"""Training quality of the bfloat16 compute mode against float32 (issue 23).

The same model, data, optimizer, steps and seed are trained twice, with
``compute_dtype=None`` and with ``compute_dtype="bfloat16"``, and the end
metrics compared against the issue's limits:

- **LM**: ``fastrnn bench --train``'s character LM (LSTM, embedding 64,
  H=256, batch 32, bptt 64, Adam 2e-3, clip 1.0) on ``--text`` (a file; give
  one of at least 1M characters for the issue's check) or on CPython's help
  texts; held-out bits per character, limit 0.02.
- **classifier**: ``bench --train``'s classifier shape (LSTM H=64, 16
  features, 10 classes, lengths 5..26) on synthetic sequences whose class sets
  the mean of noisy steps (learnable, not saturated); test accuracy on 20,000
  held-out sequences (``--clf-test``; the 2,000 of the training data's draw
  alone leave ~0.4 points of sampling noise in a difference), limit 0.5
  points, with the standard error of the difference from the test set.
- **forecaster**: a ``SequenceRegressor`` (LSTM H=32, window 24) on a noisy
  two-sine series; test RMSE, limit 2% relative.

    python bench/bf16_quality.py [--text big.txt] [--steps 2000] [--json out.json]
    python bench/bf16_quality.py --quick --backend numpy      # a smoke run

A real text of at least 1M characters where no corpus is at hand: the first
2,000,000 characters of the vim help files (``/usr/share/vim/vim90/doc/*.txt``
in name order, concatenated).

The differences of a single pair of runs include the divergence of two
trajectories that start equal and drift apart by rounding; a pass means the
mode trains as well, not that the two runs are the same. ``--baseline`` adds
a float32 run from initial weights one float32 ulp away: the size of that
divergence within float32 itself, to read the bf16 difference against.
"""
import argparse
import json
import math
import sys
import time

import numpy as np

import fastrnn
from fastrnn.data import CharVocab, LMBatches

#: the runs of each task: name -> compute_dtype ("nudged": float32 from initial
#: weights moved by one float32 ulp, the floor of trajectory divergence)
RUNS = {"float32": None, "bfloat16": "bfloat16"}
BASELINE = {"nudged": None}


def _runs(baseline):
    return {**RUNS, **(BASELINE if baseline else {})}


def _nudge(model, name):
    """One float32 ulp up on every initial parameter, for the "nudged" run."""
    if name == "nudged":
        model.load_state_dict({k: np.nextafter(v, np.float32(np.inf))
                               for k, v in model.state_dict().items()})
LIMITS = {"lm": ("bits/char", 0.02, "abs"), "classifier": ("accuracy %", 0.5, "abs"),
          "forecaster": ("RMSE", 0.02, "rel")}


def lm(text, steps, backend, quick, seed=0, baseline=False):
    """Held-out bits per character after ``steps`` training steps, per mode."""
    from fastrnn.optim import Adam
    from fastrnn.train import Trainer
    E, H, B, bptt = (8, 16, 4, 16) if quick else (64, 256, 32, 64)
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.95)
    out = {}
    for name, mode in _runs(baseline).items():
        m = fastrnn.LanguageModel(len(vocab), embed_dim=E, hidden_size=H, backend=backend,
                                  seed=seed, compute_dtype=mode)
        _nudge(m, name)
        tr = Trainer(m, Adam(m, lr=2e-3), LMBatches(ids[:cut], B, bptt), clip_norm=1.0,
                     seed=seed, progress=False)
        t0 = time.perf_counter()
        tr.fit(steps=steps)
        out[name] = dict(metric=m.evaluate(ids[cut:], B, bptt) / math.log(2),
                         seconds=time.perf_counter() - t0)
    return out, dict(chars=len(ids), held_out=len(ids) - cut, steps=steps, E=E, H=H, B=B,
                     bptt=bptt)


def _clf_data(n, rng, F=16, C=10, lo=5, hi=26, noise=3.0, mu=None):
    """``(x, y, lengths, mu)``: ``n`` sequences whose class ``y`` sets the mean
    ``mu[y]`` of every step (``mu`` drawn here unless given)."""
    if mu is None:
        mu = rng.standard_normal((C, F))
    y = rng.integers(0, C, n)
    lengths = rng.integers(lo, hi + 1, n)
    x = np.zeros((n, hi, F))
    for i in range(n):
        x[i, :lengths[i]] = mu[y[i]] + noise * rng.standard_normal((lengths[i], F))
    return x, y, lengths, mu


def classifier(epochs, backend, quick, seed=0, baseline=False, test=None):
    """Test accuracy (percent) after ``epochs`` of ``fit``, per mode.

    The training data are ``n`` sequences and the first ``n // 2`` test
    sequences come from the same draw; ``test`` (default ``10 * n // 2``, or
    ``n // 2`` with ``quick``) sequences in all are scored, the rest drawn from the same class means
    by a generator of their own, so the training is the same whatever
    ``test`` is. Two models of about the same accuracy disagree on a few
    percent of the sequences: on 2,000 the standard error of the difference
    of their accuracies is ~0.4 points (``diff_se``), at the 0.5-point limit.
    """
    rng = np.random.default_rng(seed)
    n = 300 if quick else 4000
    test = (n // 2 if quick else 10 * (n // 2)) if test is None else int(test)
    x, y, lengths, mu = _clf_data(n + n // 2, rng)
    if test > n // 2:
        xe, ye, le, _ = _clf_data(test - n // 2, np.random.default_rng([seed, 1]), mu=mu)
        xt, yt, lt = (np.concatenate([x[n:], xe]), np.concatenate([y[n:], ye]),
                      np.concatenate([lengths[n:], le]))
    else:
        xt, yt, lt = x[n:n + test], y[n:n + test], lengths[n:n + test]
    out = {}
    for name, mode in _runs(baseline).items():
        m = fastrnn.SequenceClassifier(10, input_size=16, hidden_size=8 if quick else 64,
                                       backend=backend, seed=seed, compute_dtype=mode)
        _nudge(m, name)
        t0 = time.perf_counter()
        m.fit(x[:n], y[:n], lengths[:n], epochs=epochs, seed=seed)
        right = np.asarray(m.predict(xt, lt)) == yt
        out[name] = dict(metric=100 * float(np.mean(right)), right=right,
                         seconds=time.perf_counter() - t0)
    return out, dict(train=n, test=len(yt), epochs=epochs)


def _paired_se(a, b):
    """Standard error (points) of the difference of two accuracies measured on
    the same test sequences (``a``, ``b``: right or wrong per sequence): the
    sampling noise of the test set alone, from the sequences they disagree on."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return 100 * float(np.std(d, ddof=1) / np.sqrt(len(d)))


def forecaster(epochs, backend, quick, seed=0, baseline=False):
    """Test RMSE of one-step forecasts after ``epochs`` of ``fit``, per mode."""
    rng = np.random.default_rng(seed)
    N, W = (600, 12) if quick else (6000, 24)
    t = np.arange(N)
    series = (np.sin(2 * np.pi * t / 37) + 0.5 * np.sin(2 * np.pi * t / 11)
              + 0.1 * rng.standard_normal(N))
    X = np.stack([series[i:i + W] for i in range(N - W)])[:, :, None]
    Y = series[W:][:, None]
    cut = int(0.8 * len(X))
    out = {}
    for name, mode in _runs(baseline).items():
        m = fastrnn.SequenceRegressor(1, hidden_size=8 if quick else 32, backend=backend,
                                      seed=seed, compute_dtype=mode)
        _nudge(m, name)
        t0 = time.perf_counter()
        m.fit(X[:cut], Y[:cut], epochs=epochs, seed=seed)
        pred = np.asarray(m.predict(X[cut:])).reshape(-1)
        out[name] = dict(metric=float(np.sqrt(np.mean((pred - Y[cut:, 0]) ** 2))),
                         seconds=time.perf_counter() - t0)
    return out, dict(points=N, window=W, epochs=epochs)


def verdict(task, res):
    unit, limit, kind = LIMITS[task]

    def gap(a, b):
        return abs(b - a) if kind == "abs" else abs(b - a) / max(abs(a), 1e-12)

    a, b = res["float32"]["metric"], res["bfloat16"]["metric"]
    out = dict(task=task, unit=unit, float32=a, bfloat16=b, diff=gap(a, b), kind=kind,
               limit=limit, ok=gap(a, b) <= limit,
               seconds={k: r["seconds"] for k, r in res.items()})
    if "nudged" in res:
        out.update(nudged=res["nudged"]["metric"], nudged_diff=gap(a, res["nudged"]["metric"]))
    if "right" in res["float32"]:
        out.update(diff_se=_paired_se(res["float32"]["right"], res["bfloat16"]["right"]))
        if "nudged" in res:
            out.update(nudged_diff_se=_paired_se(res["float32"]["right"], res["nudged"]["right"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", help="the LM's text (default: CPython's help texts)")
    ap.add_argument("--steps", type=int, default=1000, help="LM training steps")
    ap.add_argument("--epochs", type=int, default=10, help="classifier / forecaster epochs")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tasks", default="lm,classifier,forecaster")
    ap.add_argument("--seed", type=int, default=0, help="initial weights, data, shuffling")
    ap.add_argument("--baseline", action="store_true",
                    help="a third run per task: float32 from initial weights one ulp away, "
                         "the float32-vs-float32 divergence the bf16 difference compares with")
    ap.add_argument("--clf-test", type=int, default=None,
                    help="classifier test sequences (default 20000; 2000 = the draw of the "
                         "training data alone; the training is the same either way)")
    ap.add_argument("--quick", action="store_true", help="tiny models, a smoke run")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows, info = [], {}
    for task in tasks:
        if task == "lm":
            if args.text:
                with open(args.text, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            else:
                from fastrnn.bench.train import corpus
                text, _ = corpus()
            if args.quick:
                text = text[:20000]
            res, info[task] = lm(text, 5 if args.quick else args.steps, args.backend,
                                 args.quick, args.seed, args.baseline)
        elif task == "classifier":
            res, info[task] = classifier(1 if args.quick else args.epochs, args.backend,
                                         args.quick, args.seed, args.baseline, args.clf_test)
        elif task == "forecaster":
            res, info[task] = forecaster(1 if args.quick else args.epochs, args.backend,
                                         args.quick, args.seed, args.baseline)
        else:
            ap.error(f"unknown task {task!r}")
        v = verdict(task, res)
        rows.append(v)
        fmt = (lambda d: f"{d:.4f}") if v["kind"] == "abs" else (lambda d: f"{100 * d:.2f}%")
        lim = f"{v['limit']}" if v["kind"] == "abs" else f"{100 * v['limit']:.0f}%"
        base = (f"  float32 nudged {v['nudged']:.4f} (diff {fmt(v['nudged_diff'])})"
                if "nudged" in v else "")
        if "diff_se" in v:
            base += f"  (test-set noise of a diff: se {v['diff_se']:.2f}"
            base += (f" / nudged {v['nudged_diff_se']:.2f})" if "nudged_diff_se" in v else ")")
        secs = " / ".join(f"{t:.0f}" for t in v["seconds"].values())
        print(f"{task:<11} {v['unit']:<11} float32 {v['float32']:.4f}  bfloat16 "
              f"{v['bfloat16']:.4f}  diff {fmt(v['diff'])} (limit {lim}) "
              f"{'ok' if v['ok'] else 'OVER'}{base}  [{secs} s]  {info[task]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=args.backend, quick=args.quick, seed=args.seed, rows=rows,
                           info=info), f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
