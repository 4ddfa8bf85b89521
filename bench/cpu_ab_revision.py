"""The CPU backend against its own state at an earlier git revision, in one
process: bitwise comparison of every path, and interleaved timings.

    python bench/cpu_ab_revision.py REV --bitwise [--force rows|panels] [--vw 8]
    python bench/cpu_ab_revision.py REV --timing [--rounds 41]

``REV``'s ``kernels/cpu.py``, ``packed.py``, ``packed_cells.py``, ``simd.py`` and
``simd_cells.py`` are written to a temporary folder under other module names
(their imports of each other rewritten), so both versions run side by side on
the same inputs. Written for the split of the CPU runtime (issue 20:
``REV = fa33e55``, the last revision before it). A revision with the split
runtime (``kernels/plan.py`` exists) has its threads' modules copied too
(``packed_lstm``, ``packed_gru_rnn``, ``sync``, ``worker``, ``plan``,
``task_gemm``: its own worker thread and back-off), sharing this revision's
``cpu_settings`` (one ``configure`` sets both) and ``simd``/``simd_cells``.

``--bitwise``: every cell, float32 and float64, four shapes, full and random
lengths, both directions; training forward, inference forward and backward;
1 and 2 threads; the packed kernels and the loops (the loops also with the
batch split): every output must be bitwise equal. ``--force`` makes two
threads share every call from the smallest one on (panels, or rows), ``--vw 8``
forces the 256-bit variant. Exit status 1 on any difference.

``--timing``: LSTM and GRU at (200,1,32,32) and (100,32,64,128) (``--grid``: every
shape of ``fastrnn bench``'s grid), training step
and inference, float32, alternating old and new in each round (a 5 ms pause
before each sample lets the other version's partner thread go idle); prints
medians and the new/old ratios of medians and minima.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from fastrnn.cells import CELLS
from fastrnn.contract import Weights

_FILES = {"cpu": "old_cpu", "packed": "old_packed", "packed_cells": "old_packed_cells",
          "simd": "old_simd", "simd_cells": "old_simd_cells"}
_SPLIT_FILES = {n: "old_" + n for n in ("cpu", "packed", "packed_cells", "packed_lstm",
                                         "packed_gru_rnn", "sync", "worker", "plan", "task_gemm")}
SPLIT = False


def load_old(rev):
    """The CPU backend of git revision ``rev`` as a module (``old_cpu``)."""
    global SPLIT
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    SPLIT = subprocess.run(["git", "cat-file", "-e", f"{rev}:kernels/plan.py"], cwd=root,
                           capture_output=True).returncode == 0
    files = _SPLIT_FILES if SPLIT else _FILES
    tmp = tempfile.mkdtemp(prefix="fastrnn_old_")
    for name, new in files.items():
        src = subprocess.run(["git", "show", f"{rev}:kernels/{name}.py"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        for other, repl in files.items():
            src = src.replace(f"from fastrnn.kernels import {other} as ", f"import {repl} as ")
            src = src.replace(f"from fastrnn.kernels import {other}\n",
                              f"import {repl} as {other}\n")
            src = src.replace(f"from fastrnn.kernels.{other} import", f"from {repl} import")
        with open(os.path.join(tmp, new + ".py"), "w") as f:
            f.write(src)
    sys.path.insert(0, tmp)
    return importlib.import_module("old_cpu")


def _weights(cell, I, H, dtype, rng):
    G = cell.gates
    s = 1 / np.sqrt(H)
    f = lambda *sh: rng.uniform(-s, s, sh).astype(dtype)  # noqa: E731
    peep = {"diagonal": lambda: f(3, H), "full": lambda: f(3, H, H)}.get(cell.peephole)
    return Weights(f(G * H, I), f(G * H, H), f(G * H), f(G * H), peep and peep())


def _run(mod, cell, x, h0, c0, w, lens, rev, dy, dh, dc):
    y, h, c, cache = mod.forward(cell, x, h0, c0, w, lens, rev, True)
    yi, hi, ci, _ = mod.forward(cell, x, h0, c0, w, lens, rev, False)
    g = mod.backward(cell, cache, dy, dh, dc)
    return [y, h, c, yi, hi, ci, g[0], g[1], g[2], *g[3]]


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


def _old_backoff(old):
    return sys.modules["old_plan"].backoff if SPLIT else old._packed._backoff


def bitwise(old, force, vw):
    from fastrnn.kernels import cpu, plan
    old_packed = sys.modules["old_packed"]
    if force:
        cpu.configure(two_thread_step_flops=0.0, row_split_flops=0.0, split_gemm_flops=0.0,
                      late_wait=2.0, row_split_bytes=(1 << 40) if force == "rows" else -1)
        old_packed._TWO_THREAD_STEP_FLOPS = old_packed._ROW_SPLIT_FLOPS = 0.0
        old_packed._SPLIT_GEMM_FLOPS, old_packed._LATE_WAIT = 0.0, 2.0
        old_packed._ROW_SPLIT_BYTES = (1 << 40) if force == "rows" else -1
    if vw:
        cpu.configure(vector_width=vw)
        if not SPLIT:
            old_packed.set_vector_width(vw)
    shapes = [(5, 3, 4, 6), (7, 1, 3, 16), (12, 9, 10, 40), (30, 16, 32, 64)]
    n = bad = 0
    for threads in ((2,) if force else (1, 2)):
        cpu.set_num_threads(threads)
        old.set_num_threads(threads)
        for use_packed, split in ([(True, False)] if force else
                                  [(True, False), (False, False), (False, True)]):
            old.use_packed = use_packed
            old._SPLIT_MIN_FLOPS = 0.0 if split else float("inf")
            with cpu.configure(use_packed=use_packed,
                               split_min_flops=0.0 if split else float("inf")):
                for name, cell in CELLS.items():
                    for dtype in (np.float32, np.float64):
                        for si, (T, B, I, H) in enumerate(shapes):
                            for k, (lk, rev) in enumerate([(a, b) for a in ("full", "random")
                                                           for b in (False, True)]):
                                rng = np.random.default_rng([si, k, len(name)])
                                x = rng.standard_normal((T, B, I)).astype(dtype)
                                h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
                                c0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype) \
                                    if cell.has_cell else None
                                w = _weights(cell, I, H, dtype, rng)
                                lens = None if lk == "full" else rng.integers(1, T + 1, B)
                                dy = rng.standard_normal((T, B, H)).astype(dtype)
                                dh = rng.standard_normal((B, H)).astype(dtype)
                                dc = rng.standard_normal((B, H)).astype(dtype) \
                                    if cell.has_cell else None
                                out = []
                                for mod in (old, cpu):     # the same thread plans on both
                                    plan.backoff["until"] = _old_backoff(old)["until"] = 0.0
                                    out.append(_run(mod, cell, x, h0, c0, w, lens, rev, dy, dh,
                                                    dc))
                                n += 1
                                diff = [i for i, (a, b) in enumerate(zip(*out)) if not _same(a, b)]
                                if diff:
                                    bad += 1
                                    print("DIFF", dict(threads=threads, packed=use_packed,
                                                       split=split, cell=name,
                                                       dtype=np.dtype(dtype).name,
                                                       shape=(T, B, I, H), lengths=lk,
                                                       reverse=rev, outputs=diff))
    print(f"{n} cases, {bad} with differences")
    return 1 if bad else 0


def timing(old, rounds, grid=False):
    from fastrnn.bench import GRID
    from fastrnn.kernels import cpu
    shapes = GRID if grid else [(200, 1, 32, 32), (100, 32, 64, 128)]
    print(f"threads: {cpu.get_num_threads()} (both versions)")
    for (T, B, I, H) in shapes:
        for name in ("lstm", "gru"):
            cell = CELLS[name]
            rng = np.random.default_rng(0)
            w = _weights(cell, I, H, np.float32, rng)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            h0 = np.zeros((B, H), np.float32)
            c0 = h0.copy() if cell.has_cell else None
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            for mode in ("train", "infer"):
                def step(mod):
                    if mode == "infer":
                        return mod.forward(cell, x, h0, c0, w, None, False, False)
                    y, h, c, cache = mod.forward(cell, x, h0, c0, w, None, False, True)
                    return mod.backward(cell, cache, dy, h0, c0)
                for mod in (old, cpu, old, cpu):
                    step(mod)
                t0 = time.perf_counter()
                step(cpu)
                reps = max(1, int(0.05 / max(1e-5, time.perf_counter() - t0)))
                ta, tb = [], []
                for r in range(rounds):
                    order = ((old, ta), (cpu, tb)) if r % 2 == 0 else ((cpu, tb), (old, ta))
                    for mod, acc in order:
                        time.sleep(0.005)
                        t0 = time.perf_counter()
                        for _ in range(reps):
                            step(mod)
                        acc.append((time.perf_counter() - t0) / reps)
                ma, mb = np.median(ta), np.median(tb)
                print(f"{name:4s} {mode:5s} ({T},{B},{I},{H}): old {ma * 1e3:8.3f} ms  "
                      f"new {mb * 1e3:8.3f} ms  new/old median {mb / ma:.3f}  "
                      f"min {min(tb) / min(ta):.3f}", flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision to compare against (e.g. fa33e55)")
    ap.add_argument("--bitwise", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--force", choices=["rows", "panels"])
    ap.add_argument("--vw", type=int, choices=[8, 16])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--grid", action="store_true", help="--timing over the whole bench grid")
    args = ap.parse_args(argv)
    old = load_old(args.rev)
    rc = 0
    if args.bitwise or not args.timing:
        rc |= bitwise(old, args.force, args.vw)
    if args.timing:
        rc |= timing(old, args.rounds, args.grid)
    return rc


if __name__ == "__main__":
    sys.exit(main())
