"""``fastrnn bench``: time the CPU kernels against the NumPy reference and PyTorch.

For each cell and grid shape ``(T, B, I, H)`` (float32, one layer, one
direction) it times a training step (forward with ``training=True`` plus
backward) and inference (forward with ``training=False``) for

- ``numpy``: the reference backend (:mod:`fastrnn.reference`),
- ``cpu``:   the fused Numba kernels (:mod:`fastrnn.kernels.cpu`),
- ``torch``: ``torch.nn.RNN/LSTM/GRU`` when PyTorch is installed (the peephole
  LSTM has no PyTorch twin),

all through the backend contract of :mod:`fastrnn.dispatch`, in one process
and one run, so that the ratios compare like with like on a shared machine.
It prints medians, speed-up ratios, GFLOP/s and the fraction of the float32
GEMM peak measured in the same run, and reports JIT compile time (cold: a new
process with an empty Numba cache; cached: a second new process) apart from
the timings.

Usage::

    fastrnn bench [--cells lstm,gru] [--quick] [--threads 2] [--json out.json]
    python -m fastrnn.bench --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .cells import get_cell
from .dispatch import Weights

#: bench cell name -> (registry cell, torch.nn class name or None); the default grid
BENCH_CELLS = {
    "rnn_tanh": ("rnn_tanh", "RNN"),
    "lstm": ("lstm", "LSTM"),
    "gru": ("gru", "GRU"),
    "peephole_lstm": ("peephole_diagonal", None),
}
#: further cells ``--cells`` accepts (not run by default)
EXTRA_CELLS = {
    "rnn_relu": ("rnn_relu", "RNN"),
    "gru_reset_before": ("gru_reset_before", None),
    "peephole_diagonal": ("peephole_diagonal", None),
    "peephole_full": ("peephole_full", None),
}

#: (T, B, I, H)
GRID = [(200, 1, 32, 32), (100, 8, 64, 64), (100, 32, 64, 128),
        (100, 64, 128, 256), (50, 64, 256, 512)]

IMPLS = ("numpy", "cpu", "torch")
MODES = ("train", "infer")


# --------------------------------------------------------------------------- timing
def _median_time(fn, min_time, min_reps, max_reps):
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time
                                    and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def _interleaved_medians(fns, min_time, min_rounds, max_rounds, burst_s=0.2, settle_s=0.2):
    """Median seconds per call of each ``fns[name]()``, timed in alternating bursts.

    Each round runs every implementation for a burst (~``burst_s``), so all of
    them see the same slowly varying load of a shared machine. Before each
    burst the process sleeps ``settle_s`` and makes one untimed call: OpenBLAS
    worker threads keep spinning for ~0.1 s after their last call (their
    default thread timeout) and torch's OpenMP workers for a while too, and a
    burst that starts while the *other* library's workers still spin runs on
    one core instead of two. Back-to-back short bursts measured torch's LSTM
    2-3x slower than it runs alone; with the pause each library is timed as it
    runs by itself. Returns ``{name: (median_s, calls)}``."""
    reps = {}
    for name, fn in fns.items():      # warm-up (compiles) and burst calibration
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(burst_s / max(time.perf_counter() - t0, 1e-9)))
    times = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < min_time
                                  and rounds < max_rounds):
        for name, fn in fns.items():
            if len(fns) > 1:
                time.sleep(settle_s)
                fn()
            for _ in range(reps[name]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: (statistics.median(v), len(v)) for name, v in times.items()}


def gemm_peak_gflops(threads, n=2048, reps=5):
    """Measured float32 GEMM rate (n x n x n through NumPy's BLAS) in GFLOP/s."""
    from .kernels import cpu
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    if cpu._blas_set_threads is not None:
        cpu._blas_set_threads(threads)
    med, _ = _median_time(lambda: np.matmul(a, b, out=c), 0.5, reps, 4 * reps)
    return 2.0 * n ** 3 / med / 1e9


def layer_flops(cell, T, B, I, H, mode):
    """GEMM FLOPs of one layer: forward 2 T B G H (I + H); training is 3x that."""
    fwd = 2.0 * T * B * cell.gates * H * (I + H)
    return fwd if mode == "infer" else 3.0 * fwd


# --------------------------------------------------------------------------- runners
def _make_inputs(cell, T, B, I, H, seed=0):
    rng = np.random.default_rng(seed)
    G = cell.gates
    s = 1.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(np.float32)

    peep = None if cell.peephole is None else u(3, *cell.peephole_shape(H))
    w = Weights(u(G * H, I), u(G * H, H), u(G * H), u(G * H), peep)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    c0 = np.zeros((B, H), np.float32) if cell.has_cell else None
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    return x, h0, c0, w, dy


def _backend_runner(backend, cell, inputs, mode):
    x, h0, c0, w, dy = inputs
    dh = np.zeros_like(h0)
    dc = np.zeros_like(h0) if cell.has_cell else None
    if mode == "infer":
        return lambda: backend.forward(cell, x, h0, c0, w, None, False, False)

    def step():
        y, h, c, cache = backend.forward(cell, x, h0, c0, w, None, False, True)
        backend.backward(cell, cache, dy, dh, dc)
    return step


def _torch_runner(torch, cls_name, cell, inputs, mode):
    x, h0, c0, w, dy = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    cls = getattr(torch.nn, cls_name)
    m = cls(I, H, nonlinearity="relu") if cell.name == "rnn_relu" else cls(I, H)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(w.w_ih))
        m.weight_hh_l0.copy_(torch.from_numpy(w.w_hh))
        m.bias_ih_l0.copy_(torch.from_numpy(w.b_ih))
        m.bias_hh_l0.copy_(torch.from_numpy(w.b_hh))
    tx = torch.from_numpy(x)
    state = torch.from_numpy(h0)[None]
    if cell.has_cell:
        state = (state, torch.from_numpy(c0)[None])
    tdy = torch.from_numpy(dy)
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                m(tx, state)
        return infer
    txg = tx.clone().requires_grad_(True)

    def step():
        m.zero_grad(set_to_none=True)
        txg.grad = None
        out, _ = m(txg, state)
        out.backward(tdy)
    return step


# --------------------------------------------------------------------------- compile time
_COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fastrnn.kernels import cpu
from fastrnn.bench import _make_inputs, _backend_runner
from fastrnn.cells import get_cell
t_import = time.perf_counter() - t0
out = {"import_s": t_import, "cells": {}}
for name in sys.argv[1].split(","):
    cell = get_cell(name)
    inputs = _make_inputs(cell, 3, 2, 3, 4)
    t1 = time.perf_counter()
    _backend_runner(cpu, cell, inputs, "train")()
    out["cells"][name] = time.perf_counter() - t1
out["total_s"] = time.perf_counter() - t0
print("JSON" + json.dumps(out))
"""


def compile_times(registry_cells):
    """Cold and cached first-call time (fwd + bwd, float32) in fresh processes."""
    res = {}
    with tempfile.TemporaryDirectory(prefix="fastrnn-numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for label in ("cold", "cached"):
            p = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET, ",".join(registry_cells)],
                               env=env, capture_output=True, text=True, timeout=900)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON")]
            if p.returncode != 0 or not line:
                res[label] = {"error": (p.stderr or p.stdout)[-2000:]}
            else:
                res[label] = json.loads(line[-1][4:])
    return res


# --------------------------------------------------------------------------- main
def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="fastrnn bench",
        description="Time the fused CPU kernels against the NumPy reference and PyTorch.")
    ap.add_argument("--cells", default=",".join(BENCH_CELLS),
                    help=f"comma list of {','.join(BENCH_CELLS)} (default: these) "
                         f"or {','.join(EXTRA_CELLS)}")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions (a smoke run; medians are noisier)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="BLAS / torch threads (default: min(2, cores))")
    ap.add_argument("--json", metavar="PATH", help="write one record per measurement to PATH")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma list of numpy,cpu,torch (default: all available)")
    ap.add_argument("--shapes", default=None,
                    help="semicolon list of T,B,I,H to replace the grid, e.g. '50,8,32,64'")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the cold/cached compile-time measurement")
    args = ap.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in BENCH_CELLS and c not in EXTRA_CELLS]
    if bad:
        ap.error(f"unknown cell(s) {bad}; expected some of "
                 f"{list(BENCH_CELLS) + list(EXTRA_CELLS)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown implementation(s) {bad}; expected some of {list(IMPLS)}")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    shapes = GRID
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
            assert all(len(s) == 4 and min(s) >= 1 for s in shapes)
        except (ValueError, AssertionError):
            ap.error("--shapes wants 'T,B,I,H;T,B,I,H...' with positive ints")
    return args, cells, impls, shapes


def _cell_entry(name):
    return BENCH_CELLS[name] if name in BENCH_CELLS else EXTRA_CELLS[name]


def _geomean(v):
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def main(argv=None):
    """Entry point of ``fastrnn bench``; returns 0 on success."""
    args, cells, impls, shapes = _parse(argv)
    from . import reference
    from .kernels import cpu

    ok, why = cpu.available()
    if not ok:
        print(f"the cpu backend is not available: {why}", file=sys.stderr)
        return 1
    torch = None
    if "torch" in impls:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: skipping the PyTorch columns")
            impls = [i for i in impls if i != "torch"]
    cpu.set_num_threads(args.threads)
    if cpu._blas_set_threads is not None:
        cpu._blas_set_threads(args.threads)    # the reference's NumPy BLAS threads
    min_time, min_reps, max_reps = (0.05, 2, 3) if args.quick else (1.0, 5, 30)
    burst = dict(burst_s=0.02, settle_s=0.05) if args.quick else {}

    print(f"fastrnn bench: float32, 1 layer, 1 direction, {args.threads} thread(s); "
          f"medians of >= {min_reps} interleaved rounds; times in ms")
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_start is not None and load_start > 0.5:
        print(f"WARNING: load average {load_start:.2f} at start: other work shares the CPU, "
              "absolute times and GEMM peak are noisy; the interleaved ratios less so")
    compile_info = None
    if not args.no_compile and "cpu" in impls:
        compile_info = compile_times([_cell_entry(c)[0] for c in cells])
        for label, r in compile_info.items():
            if "error" in r:
                print(f"compile ({label}): failed: {r['error'][-300:]}")
            else:
                per = ", ".join(f"{k} {v:.2f}s" for k, v in r["cells"].items())
                print(f"compile ({label}, new process, fwd+bwd first call): import "
                      f"{r['import_s']:.2f}s; {per}; total {r['total_s']:.2f}s")
    peak = gemm_peak_gflops(args.threads, reps=3 if args.quick else 5)
    print(f"float32 GEMM peak (2048^3, {args.threads} thread(s)): {peak:.0f} GFLOP/s")

    records = []
    hdr = (f"{'cell':<17}{'T,B,I,H':<18}{'mode':<6}" + "".join(f"{i:>10}" for i in impls)
           + f"{'cpu/np':>8}{'cpu/torch':>10}{'GF/s':>7}{'%peak':>7}")
    print(hdr)
    print("-" * len(hdr))
    ratios = {}
    for cname in cells:
        reg, tname = _cell_entry(cname)
        cell = get_cell(reg)
        for shape in shapes:
            T, B, I, H = shape
            inputs = _make_inputs(cell, T, B, I, H)
            for mode in MODES:
                fns = {}
                for impl in impls:
                    if impl == "torch":
                        if tname is not None:
                            fns[impl] = _torch_runner(torch, tname, cell, inputs, mode)
                    else:
                        be = reference if impl == "numpy" else cpu
                        fns[impl] = _backend_runner(be, cell, inputs, mode)
                res = _interleaved_medians(fns, min_time, min_reps, max_reps, **burst)
                med = {impl: m for impl, (m, _) in res.items()}
                flops = layer_flops(cell, T, B, I, H, mode)
                for impl, (m, n) in res.items():
                    records.append(dict(cell=cname, registry_cell=reg, shape=list(shape),
                                        T=T, B=B, I=I, H=H, mode=mode, impl=impl,
                                        median_s=m, calls=n, gflops=flops / m / 1e9,
                                        peak_fraction=flops / m / 1e9 / peak))
                row = f"{cname:<17}{','.join(map(str, shape)):<18}{mode:<6}"
                row += "".join(f"{med[i] * 1e3:>10.3f}" if i in med else f"{'-':>10}"
                               for i in impls)
                r_np = med["numpy"] / med["cpu"] if "numpy" in med and "cpu" in med else None
                r_t = med["torch"] / med["cpu"] if "torch" in med and "cpu" in med else None
                row += f"{r_np:>8.2f}" if r_np else f"{'-':>8}"
                row += f"{r_t:>10.2f}" if r_t else f"{'-':>10}"
                if "cpu" in med:
                    gf = layer_flops(cell, T, B, I, H, mode) / med["cpu"] / 1e9
                    row += f"{gf:>7.1f}{100 * gf / peak:>6.0f}%"
                print(row, flush=True)
                for key, r in (("numpy", r_np), ("torch", r_t)):
                    if r:
                        ratios.setdefault((cname, mode, key), []).append((shape, r))

    peak_end = gemm_peak_gflops(args.threads, reps=3 if args.quick else 5)
    print(f"\nfloat32 GEMM peak again at the end: {peak_end:.0f} GFLOP/s "
          f"(%peak above uses the start value, {peak:.0f})")
    print("\nsummary (cpu speed-up; geometric mean over the grid, min, at which shape)")
    summary = []
    for (cname, mode, key), v in ratios.items():
        rs = [r for _, r in v]
        worst = min(v, key=lambda sr: sr[1])
        summary.append(dict(cell=cname, mode=mode, versus=key, geomean=_geomean(rs),
                            min=worst[1], min_shape=list(worst[0])))
        print(f"  {cname:<17}{mode:<6}vs {key:<6} geomean {_geomean(rs):6.2f}x   "
              f"min {worst[1]:6.2f}x at {worst[0]}")
    big = [r for r in records if r["cell"] == "lstm" and r["mode"] == "train"
           and r["impl"] == "cpu" and tuple(r["shape"]) == GRID[-1]]
    if big:
        r = big[0]
        print(f"  lstm train at {GRID[-1]}: {r['gflops']:.0f} GFLOP/s = "
              f"{100 * r['peak_fraction']:.0f}% of the measured GEMM peak")
    if args.json:
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        meta = dict(threads=args.threads, quick=args.quick, gemm_peak_gflops=peak,
                    gemm_peak_gflops_end=peak_end,
                    loadavg_start=load_start, loadavg_end=load_end,
                    compile=compile_info, summary=summary, dtype="float32",
                    torch=None if torch is None else torch.__version__,
                    numpy=np.__version__)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, records=records), f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
