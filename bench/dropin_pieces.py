"""Where the time of the drop-in call goes: ``F.lstm`` + ``F.lstm_backward`` in
CS231n's convention (``x`` ``(N, T, D)`` with ``batch_first``, ``Wx`` ``(D, 4H)``
with ``weight_layout="in_out"``, gates ``"ifog"``, one bias, ``h0`` without
``c0``), piece by piece, in float64 and float32.

    python bench/dropin_pieces.py [--shape 32 50 64 128] [--repeats 40] [--threads 1]
    python bench/dropin_pieces.py --against REV [--repeats 40] [--threads 1]

``--shape`` is ``N T D H``. Each piece is timed by wrapping the function that
does it (the wrappers are installed on the modules' attributes for the run:
whatever the call path calls is what is timed; a piece whose function the code
no longer has is left out); ``rest`` is the call's time minus its timed pieces
(Python bookkeeping, allocations and copies written inline). Below the table,
the inline copies of the path are timed alone on the same arrays, to size
``rest``. The PyTorch-convention call (``x`` ``(T, B, I)``, weights ``(4H, I)``
in order i, f, g, o) runs interleaved with the CS231n one, round by round, so
the difference of their medians is what the conventions cost.

Prints per piece the median over the rounds (ms) and its share of the call.

``--against REV``: the whole call instead, this tree against the package at git
revision ``REV`` (loaded beside it as ``fastrnn_old``, as ``bench/ab_package.py``
does), alternating old and new round by round on the same arrays; prints the
medians and minima, the new/old ratios and the largest relative difference of
their outputs and gradients.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import time
from collections import defaultdict

import numpy as np

import fastrnn
import fastrnn.functional as F
from fastrnn import contract, functional
from fastrnn.kernels import cpu, packed, plan, schedule, vector

_acc = defaultdict(float)      # label -> seconds in the current call
_depth = [0]                   # nested wrapped pieces count once (the outer one)


def _timed(label, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        if _depth[0]:
            return fn(*args, **kw)
        _depth[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            _acc[label] += time.perf_counter() - t0
            _depth[0] -= 1
    return wrapper


def _launch_label(kernel):
    name = getattr(kernel, "__name__", "") or getattr(getattr(kernel, "py_func", None),
                                                       "__name__", "")
    return {"lstm_fwd_kernel": "forward kernel (time loop)",
            "lstm_bwd_kernel": "backward kernel (time loop)"}.get(name, f"kernel {name}")


# (module, attribute, label): the functions each piece is made of (missing ones skipped)
PIECES = [
    (functional, "_host_array", "argument checks"),
    (functional, "_split_state", "argument checks"),
    (functional, "_finite", "argument checks"),
    (functional, "_shape", "argument checks"),
    (cpu, "check_forward", "argument checks"),
    (functional, "_to_canon", "weights to PyTorch's order/layout"),
    (functional, "_bias_to_canon", "weights to PyTorch's order/layout"),
    (functional, "_convert_weights", "weights to PyTorch's order/layout"),
    (packed, "pack", "packing the weight panels"),
    (packed, "pack_caller", "packing the weight panels"),
    (vector, "pack_backward", "packing the weight panels"),
    (schedule.Schedule, "__init__", "schedule, gathers, scatters"),
    (schedule.Schedule, "gather_into", "schedule, gathers, scatters"),
    (schedule.Schedule, "gather", "schedule, gathers, scatters"),
    (schedule.Schedule, "scatter", "schedule, gathers, scatters"),
    (schedule.Schedule, "sort_rows", "schedule, gathers, scatters"),
    (schedule.Schedule, "unsort_rows", "schedule, gathers, scatters"),
    (plan.Tasks, "run", "dW, dx, dh0, db GEMMs after the loop"),
    (functional, "_from_canon", "gradients to the caller's order/layout"),
    (functional, "_bias_from_canon", "gradients to the caller's order/layout"),
    (functional, "_grads_to_caller", "gradients to the caller's order/layout"),
]


def install():
    """Wrap the pieces' functions; returns a function that undoes it."""
    saved = []
    for mod, attr, label in PIECES:
        fn = mod.__dict__.get(attr) if isinstance(mod, type) else getattr(mod, attr, None)
        if fn is None:
            continue
        saved.append((mod, attr, fn))
        setattr(mod, attr, _timed(label, fn))
    launch = plan.Plan.launch
    saved.append((plan.Plan, "launch", launch))

    def timed_launch(self, kernel, args_of):
        return _timed(_launch_label(kernel), launch)(self, kernel, args_of)
    plan.Plan.launch = timed_launch

    def undo():
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)
    return undo


def cs231n_arrays(N, T, D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((N, H))).astype(dtype)
    Wx = rng.uniform(-s, s, (D, 4 * H)).astype(dtype)
    Wh = rng.uniform(-s, s, (H, 4 * H)).astype(dtype)
    b = rng.uniform(-s, s, 4 * H).astype(dtype)
    dh = rng.standard_normal((N, T, H)).astype(dtype)
    return x, h0, Wx, Wh, b, dh


def torch_convention(x, Wx, Wh, b, dh, H):
    perm = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]        # i, f, o, g -> i, f, g, o
    return (np.ascontiguousarray(x.transpose(1, 0, 2)), np.ascontiguousarray(Wx[:, perm].T),
            np.ascontiguousarray(Wh[:, perm].T), b[perm].copy(),
            np.ascontiguousarray(dh.transpose(1, 0, 2)))


def inline_copies(x, y_shape, dh, H, repeats):
    """The copies the path makes inline (not in a function of its own), alone."""
    dt = x.dtype
    N, T, D = x.shape
    out = {}
    ops = {
        "x (N,T,D) -> private (T,N,D) copy": lambda: np.array(x.transpose(1, 0, 2), dt,
                                                             order="C", copy=True),
        "y copy (T,N,H)": (lambda y=np.ones(y_shape, dt): y.copy()),
        "dy (N,T,H) -> (T,N,H) copy": lambda: np.ascontiguousarray(dh.transpose(1, 0, 2)),
        "xh buffer (T+1,N,D+H) zeros": lambda: np.zeros((T + 1, N, D + H), dt),
        "act (T,N,4H) + cs (T+1,N,H) empty": lambda: (np.empty((T, N, 4 * H), dt),
                                                      np.empty((T + 1, N, H), dt)),
    }
    for name, fn in ops.items():
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(ts)
    return out


def profile(N, T, D, H, dtype, repeats):
    x, h0, Wx, Wh, b, dh = cs231n_arrays(N, T, D, H, dtype)
    xt, w_ih, w_hh, bt, dht = torch_convention(x, Wx, Wh, b, dh, H)

    def cs231n():
        h, _, ctx = F.lstm(x, Wx, Wh, b, state=h0, batch_first=True, gate_order="ifog",
                           weight_layout="in_out")
        t1 = time.perf_counter()
        F.lstm_backward(ctx, dh)
        return t1

    def torch_conv():
        _, _, ctx = F.lstm(xt, w_ih, w_hh, bt, None, h0)
        t1 = time.perf_counter()
        F.lstm_backward(ctx, dht)
        return t1

    cs231n(), torch_conv()                    # compile / load
    rows = defaultdict(list)
    undo = install()
    try:
        for r in range(repeats):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                _acc.clear()
                t0 = time.perf_counter()
                t1 = (cs231n, torch_conv)[which]()
                t2 = time.perf_counter()
                if which == 1:
                    rows["torch convention: forward + backward"].append(t2 - t0)
                    continue
                rows["F.lstm"].append(t1 - t0)
                rows["F.lstm_backward"].append(t2 - t1)
                rows["forward + backward"].append(t2 - t0)
                for k, v in _acc.items():
                    rows[k].append(v)
                rows["rest (bookkeeping, inline copies, allocations)"].append(
                    (t2 - t0) - sum(_acc.values()))
    finally:
        undo()
    med = {k: 1e3 * statistics.median(v + [0.0] * (len(rows["F.lstm"]) - len(v)))
           for k, v in rows.items()}
    return med, inline_copies(x, (T, N, H), dh, H, repeats)


def against(rev, N, T, D, H, repeats, threads):
    """New against old (revision ``rev``), the whole call, interleaved."""
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ab_package import load_old
    old = load_old(rev)
    if threads:
        old.set_num_threads(threads)
    Fo = importlib.import_module(old.__name__ + ".functional")
    for dtype in (np.float64, np.float32):
        x, h0, Wx, Wh, b, dh = cs231n_arrays(N, T, D, H, dtype)

        def step(mod):
            h, st, ctx = mod.lstm(x, Wx, Wh, b, state=h0, batch_first=True,
                                  gate_order="ifog", weight_layout="in_out")
            dx, (dh0, _), (dWx, dWh, db, _) = mod.lstm_backward(ctx, dh)
            return h, st[0], st[1], dx, dh0, dWx, dWh, db

        outs = [step(m) for m in (Fo, F)]            # compile / load, and compare
        worst = max(float(np.max(np.abs(a - b_)) / max(np.max(np.abs(b_)), 1e-300))
                    for a, b_ in zip(outs[1], outs[0]))
        same = all(np.array_equal(a, b_) for a, b_ in zip(outs[1], outs[0]))
        ts = {0: [], 1: []}
        for r in range(repeats):
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                step((Fo, F)[k])
                ts[k].append(1e3 * (time.perf_counter() - t0))
        mo, mn = statistics.median(ts[0]), statistics.median(ts[1])
        print(f"{np.dtype(dtype).name}: old {mo:.3f} ms (min {min(ts[0]):.3f}), new {mn:.3f} "
              f"ms (min {min(ts[1]):.3f}); new/old medians {mn / mo:.3f}, minima "
              f"{min(ts[1]) / min(ts[0]):.3f}; outputs "
              + ("bitwise equal" if same else f"differ by {worst:.1e} relative at most"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[32, 50, 64, 128],
                   metavar=("N", "T", "D", "H"))
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=None, help="fastrnn's threads")
    p.add_argument("--against", metavar="REV", default=None,
                   help="time the whole call against git revision REV instead")
    a = p.parse_args(argv)
    if a.threads:
        fastrnn.set_num_threads(a.threads)
    N, T, D, H = a.shape
    if a.against:
        print(f"N={N} T={T} D={D} H={H}; threads {fastrnn.get_num_threads()}; medians of "
              f"{a.repeats} rounds, old and new alternating")
        against(a.against, N, T, D, H, a.repeats, a.threads)
        return 0
    print(f"N={N} T={T} D={D} H={H}; fastrnn threads {fastrnn.get_num_threads()}; "
          f"medians of {a.repeats} rounds (ms)")
    for dtype in (np.float64, np.float32):
        med, inline = profile(N, T, D, H, dtype, a.repeats)
        total = med["forward + backward"]
        print(f"\n{np.dtype(dtype).name}")
        for k in ("F.lstm", "F.lstm_backward", "forward + backward",
                  "torch convention: forward + backward"):
            print(f"  {k:<48} {med[k]:8.3f}")
        print("  pieces of forward + backward:")
        for k, v in sorted(((k, v) for k, v in med.items() if k not in (
                "F.lstm", "F.lstm_backward", "forward + backward",
                "torch convention: forward + backward")), key=lambda kv: -kv[1]):
            print(f"    {k:<46} {v:8.3f}  {100 * v / total:5.1f}%")
        print("  inline copies, timed alone:")
        for k, v in inline.items():
            print(f"    {k:<46} {v:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
