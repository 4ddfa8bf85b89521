"""Streaming inference: a trained model fed one frame per call, as a live
sensor loop would, with the latency of every call measured.

A SequenceRegressor learns to predict the next sample of a noisy signal
(a sum of drifting sines) from the samples before it. A stream
(`model.stream()`) then runs over a new stretch of the signal frame by
frame: each `step(frame)` updates the recurrent state and returns the
prediction for the next sample at once, in original units (the model's
scalers are folded into the stream's prepared weights). The script prints
the latency percentiles of `step`, its error against persistence (predict
the last sample again), and checks that the stream agrees with
`model.predict` on the same samples.

    python streaming.py                 # ~20 s on 2 cores (mostly training)
    python streaming.py --frames 20000 --hidden 64
"""
import argparse
import time

import numpy as np

import fastrnn


def signal(n, rng):
    """A live-like signal: two sines with slowly drifting frequency, plus noise."""
    t = np.arange(n)
    f = 0.02 + 0.005 * np.sin(t / 900.0)
    return (np.sin(np.cumsum(2 * np.pi * f)) + 0.5 * np.sin(t / 37.0)
            + 0.05 * rng.standard_normal(n)).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--window", type=int, default=64, help="training window (steps)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--frames", type=int, default=5000, help="frames streamed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    # ---- train on windows of the past
    past = signal(20000, rng)
    W = args.window
    starts = rng.integers(0, len(past) - W - 1, 2000)
    x = np.stack([past[s:s + W] for s in starts])[:, :, None]         # [N, W, 1]
    y = past[starts + W][:, None]                                      # the next sample
    model = fastrnn.SequenceRegressor(1, hidden_size=args.hidden, seed=args.seed)
    t0 = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=32, lr=5e-3, seed=args.seed)
    print(f"trained {args.epochs} epochs on {len(x)} windows of {W} in "
          f"{time.perf_counter() - t0:.1f} s")

    # ---- stream a new stretch of the signal, one frame per call
    live = signal(args.frames + 1, np.random.default_rng(args.seed + 1))
    s = model.stream()                  # weights and scalers prepared once
    s.step(live[:1])                    # warm the call path (kernels load on first use)
    s.reset()
    preds = np.empty(args.frames, np.float32)
    lat = np.empty(args.frames)
    clock = time.perf_counter_ns
    for t in range(args.frames):
        frame = live[t:t + 1]           # what the sensor delivers: one value
        t0 = clock()
        p = s.step(frame)               # (horizon, output_size) = (1, 1), reused buffer
        lat[t] = clock() - t0
        preds[t] = p[0, 0]
    p50, p90, p99, pmax = np.percentile(lat / 1e3, [50, 90, 99, 100])
    print(f"stream.step latency over {args.frames} frames (H={args.hidden}, one thread): "
          f"p50 {p50:.2f} us, p90 {p90:.2f} us, p99 {p99:.2f} us, max {pmax:.0f} us")

    # ---- how good, and the same as predict()
    truth = live[1:args.frames + 1]
    skip = W                             # let the state settle, as in training
    mae = np.abs(preds[skip:] - truth[skip:]).mean()
    persist = np.abs(live[skip:args.frames] - truth[skip:]).mean()
    print(f"next-sample MAE {mae:.4f} vs persistence {persist:.4f} "
          f"({100 * (1 - mae / persist):.0f}% lower)")
    ref = model.predict(live[:W])[0, 0]       # the same W samples from a zero state
    s.reset()
    for t in range(W):
        last = s.step(live[t:t + 1])[0, 0]
    print(f"stream vs predict() after {W} samples: {last:.6f} vs {ref:.6f}")
    assert abs(last - ref) <= 1e-4 * max(1.0, abs(ref))


if __name__ == "__main__":
    main()
