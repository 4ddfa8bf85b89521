"""fastrnn as a drop-in for NumPy RNN code.

A NumPy LSTM written the classic way (the CS231n assignment's
``lstm_forward(x, h0, Wx, Wh, b) -> (h, cache)`` and
``lstm_backward(dh, cache) -> (dx, dh0, dWx, dWh, db)``: x ``(N, T, D)``,
Wx ``(D, 4H)``, Wh ``(H, 4H)``, one bias ``(4H,)``, gates i, f, o, g, its own
loop and its own cache), a small model around it (a temporal affine layer and
a squared-error loss), and the same model with the two LSTM calls replaced by
``fastrnn.functional``. The keywords of those calls name CS231n's conventions;
no weight is transposed, reordered or zero-padded by hand.

It prints the losses and the largest relative differences of the outputs and
every gradient, then the median time of the LSTM's forward + backward in both
(repeated calls, interleaved in one process), in float64 and float32.

    python examples/numpy_dropin.py              # N=32, T=50, D=64, H=128
    python examples/numpy_dropin.py --repeats 40 --threads 1
"""
import argparse
import statistics
import sys
import time

import numpy as np

import fastrnn
import fastrnn.functional as F


# ----------------------------------------------------------------------------- the NumPy code
def sigmoid(x):
    """A numerically stable sigmoid (keeps the dtype)."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    z = np.exp(x[~pos])
    out[~pos] = z / (1 + z)
    return out


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b                   # (N, 4H), gates i, f, o, g
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H:2 * H])
    o = sigmoid(a[:, 2 * H:3 * H])
    g = np.tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    tc = np.tanh(next_c)
    next_h = o * tc
    return next_h, next_c, (x, prev_h, prev_c, i, f, o, g, tc)


def lstm_step_backward(dnext_h, dnext_c, cache, Wx, Wh):
    x, prev_h, prev_c, i, f, o, g, tc = cache
    do = dnext_h * tc
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    di, df, dg = dc * g, dc * prev_c, dc * i
    dprev_c = dc * f
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o),
                         dg * (1 - g ** 2)], axis=1)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b):
    N, T, _ = x.shape
    H = h0.shape[1]
    h = np.empty((N, T, H), x.dtype)
    prev_h, prev_c = h0, np.zeros_like(h0)
    caches = []
    for t in range(T):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, (caches, Wx, Wh)


def lstm_backward(dh, cache):
    caches, Wx, Wh = cache
    N, T, H = dh.shape
    D = Wx.shape[0]
    dx = np.empty((N, T, D), dh.dtype)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros(4 * H, dh.dtype)
    dprev_h, dprev_c = np.zeros((N, H), dh.dtype), np.zeros((N, H), dh.dtype)
    for t in reversed(range(T)):
        dx[:, t], dprev_h, dprev_c, dwx, dwh, dbt = lstm_step_backward(
            dh[:, t] + dprev_h, dprev_c, caches[t], Wx, Wh)
        dWx += dwx
        dWh += dwh
        db += dbt
    return dx, dprev_h, dWx, dWh, db


# ----------------------------------------------------------------------------- the drop-in
# The same two functions on fastrnn: one call each, whose keywords say what the
# NumPy code's conventions are (x (N, T, D), gates i, f, o, g, Wx (D, 4H), one
# bias, h0 without c0). The gradients come back in those conventions.
def fast_lstm_forward(x, h0, Wx, Wh, b):
    h, _, cache = F.lstm(x, Wx, Wh, b, state=h0, batch_first=True, gate_order="ifog",
                         weight_layout="in_out")
    return h, cache


def fast_lstm_backward(dh, cache):
    dx, (dh0, _), (dWx, dWh, db, _) = F.lstm_backward(cache, dh)
    return dx, dh0, dWx, dWh, db


# ----------------------------------------------------------------------------- the model
def loss_and_grads(forward, backward, x, h0, Wx, Wh, b, Wy, target):
    """Temporal affine layer on the LSTM's outputs and a squared-error loss."""
    h, cache = forward(x, h0, Wx, Wh, b)
    pred = h @ Wy                                   # (N, T, K)
    diff = pred - target
    loss = 0.5 * np.sum(diff * diff) / x.shape[0]
    dpred = diff / x.shape[0]
    dWy = np.einsum("ntk,nth->hk", dpred, h)
    dh = dpred @ Wy.T
    dx, dh0, dWx, dWh, db = backward(dh, cache)
    return loss, h, {"x": dx, "h0": dh0, "Wx": dWx, "Wh": dWh, "b": db, "Wy": dWy}


def rel_diff(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def timed_rounds(fns, repeats):
    """Median and minimum time (ms) of each function, calls interleaved round by
    round; each round starts with the next function, so none always runs after
    the same one (whose cache footprint it would inherit)."""
    times = [[] for _ in fns]
    n = len(fns)
    for r in range(repeats):
        for k in [(r + j) % n for j in range(n)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return [(statistics.median(t), min(t)) for t in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=32)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--H", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="fastrnn's threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        fastrnn.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    N, T, D, H, K = a.N, a.T, a.D, a.H, 8
    s = 1 / np.sqrt(H)
    data64 = dict(x=rng.standard_normal((N, T, D)), h0=rng.standard_normal((N, H)) * 0.5,
                  Wx=rng.uniform(-s, s, (D, 4 * H)), Wh=rng.uniform(-s, s, (H, 4 * H)),
                  b=rng.uniform(-s, s, 4 * H), Wy=rng.uniform(-s, s, (H, K)),
                  target=rng.standard_normal((N, T, K)))
    bound = {np.float64: 1e-12, np.float32: 1e-5}
    ok = True
    print(f"N={N} T={T} D={D} H={H}; fastrnn threads: {fastrnn.get_num_threads()}")
    for dtype in (np.float64, np.float32):
        d = {k: v.astype(dtype) for k, v in data64.items()}
        args = [d[k] for k in ("x", "h0", "Wx", "Wh", "b", "Wy", "target")]
        loss_np, h_np, g_np = loss_and_grads(lstm_forward, lstm_backward, *args)
        loss_fr, h_fr, g_fr = loss_and_grads(fast_lstm_forward, fast_lstm_backward, *args)
        diffs = {"h": rel_diff(h_fr, h_np)}
        diffs.update({k: rel_diff(g_fr[k], g_np[k]) for k in g_np})
        worst = max(diffs.values())
        same = worst <= bound[dtype] and all(g_fr[k].dtype == dtype for k in g_fr)
        ok &= same
        name = np.dtype(dtype).name
        print(f"\n{name}: loss NumPy {loss_np:.12g}   fastrnn {loss_fr:.12g}")
        print("  max |fastrnn - NumPy| / max |NumPy|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
              + f"  ({'<=' if same else 'NOT <='} {bound[dtype]:g})")

        x, h0, Wx, Wh, b = args[:5]
        dh = rng.standard_normal((N, T, H)).astype(dtype)

        def numpy_step():
            _, c = lstm_forward(x, h0, Wx, Wh, b)
            lstm_backward(dh, c)

        def fastrnn_step():
            _, c = fast_lstm_forward(x, h0, Wx, Wh, b)
            fast_lstm_backward(dh, c)

        # the same arrays in PyTorch's convention: what the conventions above cost
        perm = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]        # i, f, o, g -> i, f, g, o
        xt, w_ih, w_hh = (np.ascontiguousarray(x.transpose(1, 0, 2)),
                          np.ascontiguousarray(Wx[:, perm].T), np.ascontiguousarray(Wh[:, perm].T))
        bt, dht = b[perm].copy(), np.ascontiguousarray(dh.transpose(1, 0, 2))

        def torch_convention_step():
            _, _, c = F.lstm(xt, w_ih, w_hh, bt, None, h0)
            F.lstm_backward(c, dht)

        fastrnn_step()                                      # compile / load the kernels
        torch_convention_step()
        (t_np, m_np), (t_fr, m_fr), (t_pt, m_pt) = timed_rounds(
            [numpy_step, fastrnn_step, torch_convention_step], a.repeats)
        print(f"  LSTM forward + backward, median (min) of {a.repeats}: NumPy {t_np:.2f} ms "
              f"({m_np:.2f}), fastrnn {t_fr:.2f} ms ({m_fr:.2f}): {t_np / t_fr:.1f}x "
              f"(min {m_np / m_fr:.1f}x)")
        print(f"  fastrnn in PyTorch's convention (no conversion): {t_pt:.2f} ms ({m_pt:.2f}); "
              f"the CS231n conventions cost {t_fr - t_pt:+.2f} ms of the median")
        if dtype == np.float64:
            numpy64 = t_np
        else:   # the NumPy default dtype against fastrnn in float32 (rounds not interleaved)
            print(f"  fastrnn float32 against the NumPy code in float64: "
                  f"{numpy64 / t_fr:.1f}x (medians)")
    if not ok:
        print("\nfastrnn and the NumPy code disagree beyond the bounds above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
