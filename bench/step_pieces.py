"""Time the Python-side pieces of a character-LM training step, before and
after the compiled rewrite, side by side.

    python bench/step_pieces.py [--vocab 65 100] [--reps 200]

Sizes are those of the demo language model: batch 32 x bptt 64 = 2048 rows,
embedding 64, LSTM H=256, vocabulary ~65-100, float32. "before" runs the
previous implementation of each piece (the optimizers' NumPy ``_update``
path via ``fused = False``; for the rest, the former code, copied below),
"after" the library as it is. Both are warmed up first (JIT compile time
stays out), then timed in interleaved rounds, so load from other processes
hits them alike; the median of the rounds is printed in milliseconds.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from fastrnn.blocks import Embedding, Linear, softmax_cross_entropy
from fastrnn.models import LanguageModel
from fastrnn.optim import Adam, clip_grad_norm


# ------------------------------------------------ the former implementations
def old_global_norm(grads):
    total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** 2.0)) for g in grads.values())
    return total ** 0.5


def old_clip_grad_norm(grads, max_norm):
    norm = old_global_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return norm


def old_embedding(emb, idx, dy):
    emb.params["weight"][idx]                                    # forward (unchanged)
    gw = emb.grads["weight"]
    np.add.at(gw, idx.reshape(-1), dy.reshape(-1, gw.shape[1]))


def old_linear(lin, x, dy):
    x2 = x.reshape(-1, lin.in_features)
    y = x2 @ lin.params["weight"].T
    y += lin.params["bias"]
    dy2 = dy.reshape(-1, lin.out_features)
    lin.grads["weight"] += dy2.T @ x2
    lin.grads["bias"] += dy2.sum(axis=0)
    return y, (dy2 @ lin.params["weight"]).reshape(x.shape)


def old_softmax_cross_entropy(logits, targets, ignore_index=-100):
    C = logits.shape[-1]
    valid = targets != ignore_index
    safe_t = np.where(valid, targets, 0)
    if safe_t.size and (safe_t.min() < 0 or safe_t.max() >= C):
        raise ValueError
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    p_t = np.take_along_axis(z, safe_t[..., None], axis=-1)[..., 0]
    logp = np.log(np.maximum(p_t.astype(np.float64), np.finfo(logits.dtype).tiny))
    n = int(valid.sum())
    scale = 1.0 / max(n, 1)
    loss = -float(logp[valid].sum()) * scale
    grad = z
    np.put_along_axis(grad, safe_t[..., None],
                      np.take_along_axis(grad, safe_t[..., None], axis=-1) - 1, axis=-1)
    grad *= (valid * scale).astype(logits.dtype)[..., None]
    return loss, grad


def pieces(V, T=64, B=32, E=64, H=256, seed=0):
    """name -> (before, after) callables on the same data."""
    rng = np.random.default_rng(seed)
    lm = LanguageModel(V, E, H, seed=seed)
    params = lm.params
    grads = {k: rng.standard_normal(v.shape).astype(v.dtype) * 1e-2 for k, v in params.items()}
    pa = {k: v.copy() for k, v in params.items()}
    pb = {k: v.copy() for k, v in params.items()}
    adam_old, adam_new = Adam(pa, lr=1e-3), Adam(pb, lr=1e-3)
    adam_old.fused = False
    emb = Embedding(V, E, rng=rng)
    idx = rng.integers(0, V, (T, B))
    de = rng.standard_normal((T, B, E)).astype(np.float32)
    head = Linear(H, V, rng=rng)
    y = rng.standard_normal((T, B, H)).astype(np.float32)
    dlog = rng.standard_normal((T, B, V)).astype(np.float32)
    logits = rng.standard_normal((T, B, V)).astype(np.float32) * 3
    targets = rng.integers(0, V, (T, B))
    n2 = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))

    def clip_scale(fn):
        def run():
            fn(grads, n2 / 2)          # norm and an in-place scale of every gradient...
            for g in grads.values():
                g *= g.dtype.type(2)   # ...undone (exactly: powers of two), in both columns
        return run

    def embed_new():
        emb.forward(idx)
        emb.backward(de)

    def head_new():
        head.forward(y)
        head.backward(dlog)

    return {
        "adam (all LM params)": (lambda: adam_old.step(grads), lambda: adam_new.step(grads)),
        "clip_grad_norm (no clip)": (lambda: old_clip_grad_norm(grads, 1e9),
                                     lambda: clip_grad_norm(grads, 1e9)),
        "clip_grad_norm (clips)": (clip_scale(old_clip_grad_norm), clip_scale(clip_grad_norm)),
        "embedding fwd+bwd": (lambda: old_embedding(emb, idx, de), embed_new),
        "linear head fwd+bwd": (lambda: old_linear(head, y, dlog), head_new),
        "softmax cross-entropy": (lambda: old_softmax_cross_entropy(logits, targets),
                                  lambda: softmax_cross_entropy(logits, targets)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[65, 100])
    ap.add_argument("--reps", type=int, default=200, help="rounds (each times every piece once)")
    a = ap.parse_args(argv)
    for V in a.vocab:
        fns = pieces(V)
        for pair in fns.values():
            for f in pair:
                for _ in range(3):
                    f()
        times = {k: ([], []) for k in fns}
        for _ in range(a.reps):
            for k, pair in fns.items():
                for f, acc in zip(pair, times[k]):
                    t0 = time.perf_counter()
                    f()
                    acc.append(time.perf_counter() - t0)
        print(f"vocab {V}, T=64 B=32 E=64 H=256 float32: median ms of {a.reps} interleaved rounds")
        print(f"  {'piece':28s} {'before':>8s} {'after':>8s} {'speed-up':>9s}")
        total = [0.0, 0.0]
        for k, (tb, ta) in times.items():
            mb, ma = 1e3 * statistics.median(tb), 1e3 * statistics.median(ta)
            if k != "clip_grad_norm (no clip)":
                total[0] += mb
                total[1] += ma
            print(f"  {k:28s} {mb:8.3f} {ma:8.3f} {mb / ma:8.1f}x")
        print(f"  {'sum (without no-clip row)':28s} {total[0]:8.3f} {total[1]:8.3f}")


if __name__ == "__main__":
    main()
