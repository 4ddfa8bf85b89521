"""The whole package against its own state at an earlier git revision, in one
process: bitwise comparison of every cell's layer and backend results, and
interleaved timings of small training steps and inference.

    python bench/ab_package.py REV --bitwise
    python bench/ab_package.py REV --timing [--rounds 41]

``REV``'s ``fastrnn/`` and ``kernels/`` are written to a temporary folder as
the package ``fastrnn_old`` (its absolute imports of itself rewritten), so
both versions run side by side on the same inputs. Unlike
``bench/cpu_ab_revision.py`` (the CPU backend's files only) every module is
the old one: for changes of the layers, the functional core, the contract and
the routing around the kernels.

``--bitwise``: every cell of the registry, float32 and float64, through the
layers (one and two layers, bidirectional, full and random lengths, training
forward and backward with gradients, eval forward) and through the cpu
backend directly (forward, backward, inference; float32 also in the bfloat16
compute mode, on the machine's route and with the native and emulated routes
forced): every output must be bitwise equal. Exit status 1 on any difference.

``--timing``: LSTM and GRU layers at (T, B, I, H) = (10, 1, 16, 16) (the
per-call overhead), (200, 1, 32, 32) and (100, 32, 64, 128), float32: a training step (forward, backward) and an eval
forward, alternating old and new in each round (a 5 ms pause before each
sample lets the other version's worker thread go idle); prints medians and
the new/old ratios of medians and minima.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings

import numpy as np

import fastrnn
from fastrnn.cells import CELLS


def load_old(rev, name="fastrnn_old"):
    """The package at git revision ``rev``, imported as ``name``. The copy is
    kept in a folder named after the commit, so that a second run loads the
    compiled kernels from Numba's cache instead of compiling them again."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    sha = subprocess.run(["git", "rev-parse", rev], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip()
    tmp = os.path.join(tempfile.gettempdir(), f"fastrnn_ab_{sha}")
    pkg = os.path.join(tmp, name)
    if not os.path.isdir(pkg):
        part = tempfile.mkdtemp(prefix=f"fastrnn_ab_{sha}.part")
        _extract(root, sha, part, name)
        os.rename(part, tmp)
    sys.path.insert(0, tmp)
    mod = importlib.import_module(name)
    print(f"old: {rev} ({sha[:7]}) from {os.path.dirname(mod.__file__)}")
    return mod


def _extract(root, sha, tmp, name):
    tar = subprocess.run(["git", "archive", sha, "fastrnn", "kernels"], cwd=root,
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmp, filter="data")
    pkg = os.path.join(tmp, name)
    os.rename(os.path.join(tmp, "fastrnn"), pkg)
    os.rename(os.path.join(tmp, "kernels"), os.path.join(pkg, "kernels"))
    subs = [(re.compile(r"\bfastrnn\.(?=[a-z_])"), name + "."),
            (re.compile(r"\bimport fastrnn\b"), "import " + name),
            (re.compile(r"\bfrom fastrnn import\b"), f"from {name} import")]
    for d, _, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                with open(path) as fh:
                    src = fh.read()
                for pat, repl in subs:
                    src = pat.sub(repl, src)
                with open(path, "w") as fh:
                    fh.write(src)


# --------------------------------------------------------------------------- bitwise
def _layer_cases():
    for name, spec in CELLS.items():
        for dt in (np.float32, np.float64):
            for L, bi, lens in ((1, False, False), (2, True, True), (1, False, True)):
                yield name, spec, np.dtype(dt), L, bi, lens


def _layer_run(mod, spec, dt, L, bi, lens, T=7, B=5, I=6, H=16, seed=3):
    cls, options = spec.layer
    layer = getattr(mod, cls)(I, H, num_layers=L, bidirectional=bi, dtype=dt, seed=seed,
                              backend="cpu", **dict(options))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dt)
    lengths = rng.integers(1, T + 1, B) if lens else None
    D = 2 if bi else 1
    out = {}
    y, st = layer(x, lengths=lengths)
    st = st if isinstance(st, tuple) else (st,)
    out.update(y=y, **{f"state{k}": s for k, s in enumerate(st)})
    dy = rng.standard_normal((T, B, D * H)).astype(dt)
    dx, dst = layer.backward(dy)
    dst = dst if isinstance(dst, tuple) else (dst,)
    out.update(dx=dx, **{f"dstate{k}": s for k, s in enumerate(dst)})
    out.update({"g_" + k: v for k, v in layer.grads.items()})
    layer.eval()
    ye, ste = layer(x, lengths=lengths)
    out["y_eval"] = ye
    if B > 1:
        out["y_eval_b1"] = layer(x[:, :1])[0]
    return out


#: the bfloat16 mode's routes, each forced in turn (the machine's own choice first:
#: the AMX tiles where granted); a route the CPU lacks falls back as the package does
BF16_ROUTES = {"machine": {}, "native": dict(bf16_native=True, bf16_amx=False),
               "emulated": dict(bf16_native=False)}


def _backend_cases():
    for name, spec in CELLS.items():
        for dt, mode in ((np.float32, None), (np.float64, None),
                         *((np.float32, ("bfloat16", r)) for r in BF16_ROUTES)):
            for rev, lens in ((False, False), (True, True)):
                yield name, spec, np.dtype(dt), mode, rev, lens


def _backend_run(mod, spec, dt, mode, rev, lens, T=6, B=4, I=5, H=16, seed=5):
    cpu = importlib.import_module(mod.__name__ + ".kernels.cpu")
    mode, route = mode if isinstance(mode, tuple) else (mode, "machine")
    with cpu.configure(**BF16_ROUTES[route]):
        return _backend_call(mod, cpu, spec, dt, mode, rev, lens, T, B, I, H, seed)


def _backend_call(mod, cpu, spec, dt, mode, rev, lens, T, B, I, H, seed):
    Weights = importlib.import_module(mod.__name__ + ".contract").Weights
    cell = importlib.import_module(mod.__name__ + ".cells").CELLS[spec.name]
    rng = np.random.default_rng(seed)
    G = cell.gates
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(dt)  # noqa: E731
    peep = None if cell.peephole is None else f(3, *cell.peephole_shape(H))
    w = Weights(f(G * H, I), f(G * H, H), f(G * H), f(G * H), peep)
    x, h0, c0 = f(T, B, I), f(B, H), f(B, H)
    lengths = rng.integers(1, T + 1, B) if lens else None
    c0 = c0 if cell.has_cell else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the bf16 mode's once-per-process notes
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lengths, rev, True, compute_dtype=mode)
        yi, hi, ci, _ = cpu.forward(cell, x, h0, c0, w, lengths, rev, False, compute_dtype=mode)
    dy, dh = f(T, B, H), f(B, H)
    dc = f(B, H) if cell.has_cell else None
    dx, dh0, dc0, gw = cpu.backward(cell, cache, dy, dh, dc)
    out = dict(y=y, h=h, dx=dx, dh0=dh0, yi=yi, hi=hi)
    out.update({"dw_" + k: v for k, v in gw._asdict().items() if v is not None})
    if cell.has_cell:
        out.update(c=c, dc0=dc0, ci=ci)
    return out


def bitwise(old):
    bad = n = 0
    for what, cases, run in (("layer", _layer_cases, _layer_run),
                             ("backend", _backend_cases, _backend_run)):
        for case in cases():
            a, b = run(old, *case[1:]), run(fastrnn, *case[1:])
            label = f"{what} {case[0]} " + " ".join(map(str, case[2:]))
            assert a.keys() == b.keys(), (label, a.keys(), b.keys())
            for k in a:
                n += 1
                x, y = np.asarray(a[k]), np.asarray(b[k])
                if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                    bad += 1
                    print(f"DIFFERS {label} {k}")
    print(f"bitwise: {n - bad} of {n} arrays equal")
    return 1 if bad else 0


# --------------------------------------------------------------------------- timing
def _step_fns(mod, cls, T, B, I, H):
    rng = np.random.default_rng(0)
    layer = getattr(mod, cls)(I, H, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)

    def train():
        layer.train()
        layer(x)
        layer.backward(dy)

    def infer():
        layer.eval()
        layer(x)
    return train, infer


def timing(old, rounds):
    shapes = [(10, 1, 16, 16), (200, 1, 32, 32), (100, 32, 64, 128)]
    print(f"{'case':34s} {'old ms':>9s} {'new ms':>9s} {'new/old med':>12s} {'min':>7s}")
    for cls in ("LSTM", "GRU"):
        for shape in shapes:
            fo, fn = _step_fns(old, cls, *shape), _step_fns(fastrnn, cls, *shape)
            for k, kind in enumerate(("train", "infer")):
                a, b = fo[k], fn[k]
                a(), b(), a(), b()
                ta, tb = [], []
                for r in range(rounds):
                    for f, t in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
                        time.sleep(0.005)
                        t0 = time.perf_counter()
                        f()
                        t.append(time.perf_counter() - t0)
                ma, mb = statistics.median(ta), statistics.median(tb)
                print(f"{cls} {str(shape):22s} {kind:6s} {ma * 1e3:9.3f} {mb * 1e3:9.3f} "
                      f"{mb / ma:12.3f} {min(tb) / min(ta):7.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev")
    p.add_argument("--bitwise", action="store_true")
    p.add_argument("--timing", action="store_true")
    p.add_argument("--rounds", type=int, default=41)
    a = p.parse_args(argv)
    old = load_old(a.rev)
    rc = 0
    if a.bitwise:
        rc = bitwise(old)
    if a.timing:
        timing(old, a.rounds)
    return rc


if __name__ == "__main__":
    sys.exit(main())
