"""The training-step throughput of recurrent layers side by side, timed in
interleaved rounds (``fastrnn demo`` reports it)."""
from __future__ import annotations

import time

import numpy as np


def layer_throughput(layers, T=64, B=32, reps=3, seed=0):
    """Characters (time steps x batch) per second of one training step
    (forward + backward) of each layer in ``layers`` (name -> layer), on the
    same random data. Each layer is warmed up first (JIT compile time stays
    out), then the layers are timed in interleaved rounds so that load from
    other processes hits them alike; returns ``{name: median rate}``."""
    rng = np.random.default_rng(seed)
    first = next(iter(layers.values()))
    x = rng.standard_normal((T, B, first.input_size)).astype(first.dtype)
    dy = np.ones((T, B, first.hidden_size * (2 if first.bidirectional else 1)), first.dtype)
    on_gpu = {}
    if any(getattr(layer, "device", "cpu") == "cuda" for layer in layers.values()):
        from numba import cuda
        on_gpu = {"x": cuda.to_device(x), "dy": cuda.to_device(dy), "sync": cuda.synchronize}

    def step(layer):
        dev = getattr(layer, "device", "cpu") == "cuda"
        t0 = time.perf_counter()
        layer(on_gpu["x"] if dev else x)
        layer.backward(on_gpu["dy"] if dev else dy)
        if dev:
            on_gpu["sync"]()            # kernels run asynchronously: time them to the end
        return time.perf_counter() - t0

    for layer in layers.values():
        layer.train()
        step(layer)
    times = {k: [] for k in layers}
    for _ in range(reps):
        for k, layer in layers.items():
            times[k].append(step(layer))
    for layer in layers.values():
        layer.zero_grad()
    return {k: T * B / float(np.median(v)) for k, v in times.items()}
