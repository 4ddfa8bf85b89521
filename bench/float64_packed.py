"""float64 training step (forward + backward) on the cpu backend: the packed
kernels against the BLAS-per-step loops, and against a classic NumPy LSTM.

    python bench/float64_packed.py [--shape 50 32 64 128] [--rounds 30] [--threads 1]

``--shape`` is time-major ``(T, B, I, H)``. Per round, interleaved (so load
from other processes hits every variant alike): the NumPy LSTM written the
CS231n way (``x`` ``(N, T, D)``, ``Wx`` ``(D, 4H)``, its own loop and cache,
the numerically stable sigmoid), then for each cell the cpu backend's
``forward(training=True)`` + ``backward`` with float64 routed to the loops
(``cpu.settings.packed_dtypes`` without float64) and to the packed kernels, and the
float32 packed kernels for scale. Everything is compiled before timing.
Prints the median and minimum of the rounds in ms and the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fastrnn.cells import CELLS
from fastrnn.dispatch import Weights
from fastrnn.kernels import cpu


# ------------------------------------------------ a classic NumPy LSTM (CS231n style)
def sigmoid(x):
    pos = x >= 0
    neg = ~pos
    z = np.zeros_like(x)
    z[pos] = np.exp(-x[pos])
    z[neg] = np.exp(x[neg])
    top = np.ones_like(x)
    top[neg] = z[neg]
    return top / (1 + z)


def np_lstm_forward(x, h0, Wx, Wh, b):
    N, T, D = x.shape
    H = h0.shape[1]
    h = np.zeros((N, T, H), x.dtype)
    prev_h, prev_c = h0, np.zeros_like(h0)
    cache = []
    for t in range(T):
        a = x[:, t] @ Wx + prev_h @ Wh + b
        i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H])
        g = np.tanh(a[:, 3 * H:])
        next_c = f * prev_c + i * g
        tc = np.tanh(next_c)
        next_h = o * tc
        cache.append((x[:, t], prev_h, prev_c, i, f, o, g, tc))
        h[:, t] = next_h
        prev_h, prev_c = next_h, next_c
    return h, (cache, Wx, Wh)


def np_lstm_backward(dh, state):
    cache, Wx, Wh = state
    N, T, H = dh.shape
    dx = np.empty((N, T, Wx.shape[0]), dh.dtype)
    dWx, dWh = np.zeros_like(Wx), np.zeros_like(Wh)
    db = np.zeros(4 * H, dh.dtype)
    dnext_h = np.zeros((N, H), dh.dtype)
    dnext_c = np.zeros((N, H), dh.dtype)
    for t in reversed(range(T)):
        x, prev_h, prev_c, i, f, o, g, tc = cache[t]
        dnh = dh[:, t] + dnext_h
        dc = dnext_c + dnh * o * (1 - tc * tc)
        da = np.hstack([dc * g * i * (1 - i), dc * prev_c * f * (1 - f),
                        dnh * tc * o * (1 - o), dc * i * (1 - g * g)])
        dx[:, t] = da @ Wx.T
        dnext_h = da @ Wh.T
        dnext_c = dc * f
        dWx += x.T @ da
        dWh += prev_h.T @ da
        db += da.sum(axis=0)
    return dx, dnext_h, dWx, dWh, db


# ------------------------------------------------ the cpu backend
def make_step(name, T, B, I, H, dtype, rng):
    cell = CELLS[name]
    G = cell.gates
    s = 1 / np.sqrt(H)
    u = lambda *sh: rng.uniform(-s, s, sh).astype(dtype)  # noqa: E731
    w = Weights(u(G * H, I), u(G * H, H), u(G * H), u(G * H), None)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    c0 = np.zeros((B, H), dtype) if cell.has_cell else None
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = np.zeros((B, H), dtype)

    def step():
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, None, False, True)
        return cpu.backward(cell, cache, dy, dh, dh if cell.has_cell else None)
    return step


def routed(step, f64_packed):
    def run():
        keep = cpu.settings.packed_dtypes
        with cpu.configure(packed_dtypes=(keep | {np.dtype(np.float64)} if f64_packed
                                          else keep - {np.dtype(np.float64)})):
            return step()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[50, 32, 64, 128],
                    metavar=("T", "B", "I", "H"))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None,
                    help="cpu.set_num_threads (default: the library's)")
    ap.add_argument("--cells", default="lstm,gru,rnn_tanh")
    args = ap.parse_args()
    T, B, I, H = args.shape
    if args.threads:
        cpu.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I))
    Wx, Wh = rng.uniform(-.1, .1, (I, 4 * H)), rng.uniform(-.1, .1, (H, 4 * H))
    b, h0, dh = np.zeros(4 * H), np.zeros((B, H)), rng.standard_normal((B, T, H))
    variants = {"numpy lstm f64":
                lambda: np_lstm_backward(dh, np_lstm_forward(x, h0, Wx, Wh, b)[1])}
    for name in args.cells.split(","):
        f64 = make_step(name, T, B, I, H, np.float64, rng)
        variants[f"{name} f64 loops"] = routed(f64, False)
        variants[f"{name} f64 packed"] = routed(f64, True)
        variants[f"{name} f32 packed"] = make_step(name, T, B, I, H, np.float32, rng)
    for f in variants.values():          # compile and warm up
        f()
        f()
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"(T, B, I, H) = {(T, B, I, H)}, {args.rounds} rounds, threads "
          f"{cpu.get_num_threads()}; ms: median / min")
    for k, v in times.items():
        print(f"  {k:22s} {med[k]:8.2f} / {min(v):8.2f}")
    print("ratios of medians:")
    np_ms = med["numpy lstm f64"]
    for name in args.cells.split(","):
        lo, pk = med[f"{name} f64 loops"], med[f"{name} f64 packed"]
        line = f"  {name}: f64 packed vs loops {lo / pk:.2f}x"
        if name == "lstm":
            line += f", vs NumPy {np_ms / pk:.2f}x (loops vs NumPy {np_ms / lo:.2f}x)"
        print(line)


if __name__ == "__main__":
    main()
