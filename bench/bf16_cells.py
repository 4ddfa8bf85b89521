"""GRU and RNN training step and inference in the bfloat16 compute mode: fastrnn
bf16 vs fastrnn float32 vs torch bf16 vs torch float32 (each the faster of 1
and 2 threads; torch's module and input ``.to(torch.bfloat16)``), interleaved in
one process (the LSTM's is bench/bf16_lstm.py).

    python bench/bf16_cells.py [--cells gru,rnn_tanh,rnn_relu,gru_reset_before] [--rounds 15]
                               [--shapes 64,32,64,256 100,32,64,128 ...]
                               [--route amx|native|emulated] [--no-torch]

Prints, per cell, shape and mode (train = forward + backward, infer = forward
without a cache), the median and minimum milliseconds of each contender and
the ratios of the medians.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bf16_lstm import torch_run   # (bench/ is on the path when run as a script)

SHAPES = [(64, 32, 64, 256), (100, 32, 64, 128)]
GATES = {"gru": 3, "gru_reset_before": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _fastrnn(cell, T, B, I, H, compute_dtype, train, rng, threads):
    from fastrnn.cells import get_cell
    from fastrnn.contract import Weights
    from fastrnn.kernels import cpu
    spec = get_cell(cell)
    G = GATES[cell]
    k = 1 / np.sqrt(H)
    f = lambda *s, a=1.0: rng.uniform(-a, a, s).astype(np.float32)  # noqa: E731
    w = Weights(f(G * H, I, a=k), f(G * H, H, a=k), f(G * H, a=k), f(G * H, a=k), None)
    x, h0 = f(T, B, I), f(B, H)
    dy, dh = f(T, B, H), f(B, H)

    def run():
        cpu.set_num_threads(threads)
        y, h, _, cache = cpu.forward(spec, x, h0, None, w, training=train,
                                     compute_dtype=compute_dtype)
        if train:
            cpu.backward(spec, cache, dy, dh)
    return run


def _torch(cell, T, B, I, H, dtype, train, threads):
    import torch
    if cell == "gru":
        m = torch.nn.GRU(I, H)
    else:
        m = torch.nn.RNN(I, H, nonlinearity="relu" if cell == "rnn_relu" else "tanh")
    return torch_run(m, torch.randn(T, B, I), dtype, train, threads)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="gru,rnn_tanh")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--route", choices=("amx", "native", "emulated"), default=None,
                    help="force a route of fastrnn.kernels.cpu.route_bf16 (default: the "
                         "machine's)")
    a = ap.parse_args(argv)
    from fastrnn.kernels import cpu
    if a.route is not None:
        cpu.configure(bf16_native=a.route != "emulated", bf16_amx=a.route == "amx")
    shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split(",")) for s in a.shapes]
    rng = np.random.default_rng(0)
    try:
        import torch
    except ImportError:
        torch = None
    print(f"fastrnn: {cpu.describe_bf16()}; {cpu.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    for cell in a.cells.split(","):
        for shape in shapes:
            for train in (True, False):
                runs = {}
                for nm, cd in (("fastrnn bf16", "bfloat16"), ("fastrnn f32", None)):
                    for t in (1, 2):
                        runs[f"{nm} {t}t"] = _fastrnn(cell, *shape, cd, train, rng, t)
                # torch has no reset-before GRU
                if torch is not None and not a.no_torch and cell != "gru_reset_before":
                    for nm, dt in (("torch bf16", torch.bfloat16), ("torch f32", torch.float32)):
                        for t in (1, 2):
                            runs[f"{nm} {t}t"] = _torch(cell, *shape, dt, train, t)
                times = {k: [] for k in runs}
                for fn in runs.values():            # warm up (compiles)
                    fn()
                for _ in range(a.rounds):
                    for k, fn in runs.items():
                        t0 = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t0)
                med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
                mn = {k: 1e3 * float(np.min(v)) for k, v in times.items()}
                for nm in ("fastrnn bf16", "fastrnn f32", "torch bf16", "torch f32"):
                    ks = [k for k in med if k.startswith(nm)]
                    if ks:
                        best = min(ks, key=med.get)
                        med[nm], mn[nm] = med[best], mn[best]
                mode = "train" if train else "infer"
                print(f"{cell} {shape} {mode}: " + ", ".join(
                    f"{k} {med[k]:.2f} (min {mn[k]:.2f}) ms" for k in
                    ("fastrnn bf16", "fastrnn f32", "torch bf16", "torch f32") if k in med))
                fb = med["fastrnn bf16"]
                rat = [f"bf16/f32 fastrnn speedup {med['fastrnn f32'] / fb:.2f}x"]
                if "torch bf16" in med:
                    rat += [f"vs torch bf16 {med['torch bf16'] / fb:.2f}x",
                            f"vs torch f32 {med['torch f32'] / fb:.2f}x"]
                print("    " + ", ".join(rat), flush=True)


if __name__ == "__main__":
    main()
