"""Same-process A/B of the whole package: fastrnn at a git revision (A) against
the installed fastrnn (B), interleaved, on the same inputs and weights.

    python bench/ab_package.py REV [--rounds 61] [--threads 2]

REV's ``fastrnn/`` and ``kernels/`` are written to a temporary folder as the
package ``fastrnn_ab_old`` (with ``kernels/`` as its ``kernels`` subpackage and
its absolute ``fastrnn`` imports renamed), so both versions run in one process.
For each case (LSTM and GRU layers, float32, a training step = forward +
backward, and inference; small shapes where the Python path between the layer
and the kernels is a visible part of a call, and larger ones) it alternates
A and B in every round, a short pause before each sample so the other
version's worker threads go idle, and prints the medians, minima and the
ratio A/B of the medians (> 1: B is faster). Outputs are compared bitwise
first (exit status 1 on any difference).
"""
import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import fastrnn

CASES = [("LSTM", 200, 1, 32, 32), ("LSTM", 100, 8, 64, 64), ("GRU", 100, 8, 64, 64),
         ("LSTM", 64, 32, 64, 256), ("GRU", 64, 32, 64, 256)]


def load_old(rev):
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="fastrnn_ab_")
    pkg = os.path.join(tmp, "fastrnn_ab_old")
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "fastrnn", "kernels"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if not f.endswith(".py"):
            continue
        src = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
        src = re.sub(r"\b(from|import) fastrnn\b", r"\1 fastrnn_ab_old", src)
        rel = f[len("fastrnn/"):] if f.startswith("fastrnn/") else f
        dest = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as fh:
            fh.write(src)
    sys.path.insert(0, tmp)
    return importlib.import_module("fastrnn_ab_old")


def _make(pkg, cell, I, H, seed=0):
    layer = getattr(pkg, cell)(I, H, seed=seed)
    return layer


def _step(layer, x, dy, training):
    if training:
        layer.train()
        y, _ = layer(x)
        layer.backward(dy)
        return [y] + [np.array(g) for g in layer.grads.values()]
    layer.eval()
    y, _ = layer(x)
    return [y]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev")
    p.add_argument("--rounds", type=int, default=61)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    old = load_old(args.rev)
    for pkg in (old, fastrnn):
        pkg.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    bad = 0
    print(f"A = {args.rev}, B = installed fastrnn ({os.path.dirname(fastrnn.__file__)}); "
          f"{args.threads} threads, {args.rounds} rounds, ms")
    print(f"{'case':<26}{'mode':<7}{'A med':>9}{'B med':>9}{'A min':>9}{'B min':>9}{'A/B':>7}")
    for cell, T, B, I, H in CASES:
        a, b = _make(old, cell, I, H), _make(fastrnn, cell, I, H)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = rng.standard_normal((T, B, H)).astype(np.float32)
        for training in (True, False):
            ra, rb = _step(a, x, dy, training), _step(b, x, dy, training)
            same = all(np.array_equal(u.view(np.uint8), v.view(np.uint8))
                       for u, v in zip(ra, rb)) and len(ra) == len(rb)
            bad += not same
            ta, tb = [], []
            for _ in range(args.rounds):
                for layer, out in ((a, ta), (b, tb)):
                    time.sleep(0.005)
                    t0 = time.perf_counter()
                    _step(layer, x, dy, training)
                    out.append((time.perf_counter() - t0) * 1e3)
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{str((cell, T, B, I, H)):<26}{'train' if training else 'infer':<7}"
                  f"{ma:9.3f}{mb:9.3f}{min(ta):9.3f}{min(tb):9.3f}{ma / mb:7.3f}"
                  + ("" if same else "  OUTPUTS DIFFER"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
