"""How much of the character-LM training step (``fastrnn bench --train``'s model)
is its LSTM layer, in fastrnn and in PyTorch: the whole step and the layer's
forward + backward alone (T=64, B=32, I=64, H=256), interleaved in one process,
medians of 25 rounds, torch at 1 and 2 threads (the faster kept per item).

    python bench/lm_split.py
"""
import statistics
import time

import numpy as np
import torch

import fastrnn
from fastrnn.bench import train as bt


def main():
    V, tr, ev, _ = bt.lm_data(32, 64)
    pair = bt.LMPair(torch, V, tr, ev)
    T, B, E, H = 64, 32, 64, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, E)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = fastrnn.LSTM(E, H, seed=0)

    def f_lstm():
        layer.forward(x)
        layer.backward(dy)

    tl = torch.nn.LSTM(E, H)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def t_lstm():
        tl.zero_grad(set_to_none=True)
        tx.grad = None
        y, _ = tl(tx)
        y.backward(tdy)

    best = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fns = {"fastrnn step": pair.fastrnn_train_step, "fastrnn LSTM fwd+bwd": f_lstm,
               "torch step": pair.torch_train_step, "torch LSTM fwd+bwd": t_lstm}
        for f in fns.values():
            for _ in range(3):
                f()
        ts = {k: [] for k in fns}
        for _ in range(25):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - t0)
        for k in fns:
            best[k] = min(best.get(k, 1e9), statistics.median(ts[k]))
    for who in ("fastrnn", "torch"):
        step, lstm = best[f"{who} step"], best[f"{who} LSTM fwd+bwd"]
        print(f"{who:8s} step {step * 1e3:6.2f} ms  LSTM fwd+bwd {lstm * 1e3:6.2f} ms "
              f"({100 * lstm / step:.0f}% of the step)  rest {1e3 * (step - lstm):5.2f} ms")


if __name__ == "__main__":
    main()
