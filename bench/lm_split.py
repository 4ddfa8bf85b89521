"""How much of the character-LM training step (``fastrnn bench --train``'s model)
is its LSTM layer, in fastrnn and in PyTorch: the whole step and the layer's
forward + backward alone (T=64, B=32, I=64, H=256), interleaved in one process,
medians of ``--rounds`` rounds, torch at 1 and 2 threads (the faster kept per
item), fastrnn at 2 threads (``--threads``).

    python bench/lm_split.py
    python bench/lm_split.py --compute-dtype bfloat16 [--pieces]

``--compute-dtype bfloat16``: fastrnn's model and LSTM in the bf16 mode,
torch under ``torch.autocast("cpu", torch.bfloat16)`` beside its float32
step, and one more fastrnn row: the same bf16 model with its head computing
in float32 (the head's share of the mode). ``--pieces`` times the parts of
fastrnn's step (embedding, LSTM forward/backward, head forward/backward, the
loss, clipping, Adam) one call each inside the same rounds.
"""
import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import fastrnn
from fastrnn.bench import train as bt
from fastrnn.bench.timing import cpu_threads_setter
from fastrnn.kernels import cpu


class _Pieces:
    """Wall time of each part of one fastrnn training step (``record``)."""

    def __init__(self, pair):
        self.t = {}
        self.on = False
        m = pair.model
        for name, obj, meth in (("embed fwd", m.embed, "forward"),
                                ("embed bwd", m.embed, "backward"),
                                ("lstm fwd", m.rnn, "forward"), ("lstm bwd", m.rnn, "backward"),
                                ("head fwd", m.head, "forward"), ("head bwd", m.head, "backward"),
                                ("adam", pair.opt, "step"), ("zero_grad", m, "zero_grad")):
            self._wrap(obj, meth, name)
        # the model calls its blocks as ``self.embed(tokens)``: route __call__ too
        for blk in (m.embed, m.head):
            type(blk).__call__ = lambda self, *a, **k: self.forward(*a, **k)
        import fastrnn.models.language as lang
        lang.softmax_cross_entropy = self._timed(lang.softmax_cross_entropy, "loss")
        bt.clip_grad_norm = self._timed(bt.clip_grad_norm, "clip")

    def _timed(self, f, name):
        def g(*a, **k):
            if not self.on:
                return f(*a, **k)
            t0 = time.perf_counter()
            r = f(*a, **k)
            self.t.setdefault(name, []).append(time.perf_counter() - t0)
            return r
        return g

    def _wrap(self, obj, meth, name):
        setattr(obj, meth, self._timed(getattr(obj, meth), name))

    @contextlib.contextmanager
    def record(self):
        self.on = True
        try:
            yield
        finally:
            self.on = False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compute-dtype", default=None, choices=[None, "bfloat16"])
    ap.add_argument("--pieces", action="store_true", help="time the parts of fastrnn's step")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2,
                    help="fastrnn's threads (1 on a loaded machine: two back off)")
    args = ap.parse_args(argv)
    bf16 = args.compute_dtype is not None
    cpu_threads_setter(cpu, args.threads)()
    V, tr, ev, _ = bt.lm_data(32, 64)
    pair = bt.LMPair(torch, V, tr, ev, compute_dtype=args.compute_dtype)
    T, B, E, H = 64, 32, 64, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, E)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = fastrnn.LSTM(E, H, seed=0, compute_dtype=args.compute_dtype)

    def f_lstm():
        layer.forward(x)
        layer.backward(dy)

    tl = torch.nn.LSTM(E, H)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def t_lstm():
        tl.zero_grad(set_to_none=True)
        tx.grad = None
        with bt._autocast(torch, bf16):
            y, _ = tl(tx)
        y.float().backward(tdy)

    fns = {"fastrnn step": pair.fastrnn_train_step, "fastrnn LSTM fwd+bwd": f_lstm}
    if bf16:
        p32 = bt.LMPair(None, V, tr, ev, compute_dtype=args.compute_dtype)
        p32.model.head.compute_dtype = None
        pb = bt.LMPair(torch, V, tr, ev, autocast=True)
        fns["fastrnn step, head float32"] = p32.fastrnn_train_step
    fns["torch step"] = pair.torch_train_step
    fns["torch LSTM fwd+bwd"] = t_lstm
    if bf16:
        fns["torch bf16 step"] = pb.torch_train_step
    pieces = _Pieces(pair) if args.pieces else None
    best, low = {}, {}             # medians and minima, the better of torch's threads
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for f in fns.values():
            for _ in range(3):
                f()
        ts = {k: [] for k in fns}
        for r in range(args.rounds):
            # the order reversed every other round: no item always follows another
            for k, f in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                ctx = pieces.record() if pieces and k == "fastrnn step" else contextlib.nullcontext()
                with ctx:
                    t0 = time.perf_counter()
                    f()
                    ts[k].append(time.perf_counter() - t0)
        for k in fns:
            best[k] = min(best.get(k, 1e9), statistics.median(ts[k]))
            low[k] = min(low.get(k, 1e9), min(ts[k]))
    for who in ("fastrnn", "torch"):
        step, lstm = best[f"{who} step"], best[f"{who} LSTM fwd+bwd"]
        print(f"{who:8s} step {step * 1e3:6.2f} ms  LSTM fwd+bwd {lstm * 1e3:6.2f} ms "
              f"({100 * lstm / step:.0f}% of the step)  rest {1e3 * (step - lstm):5.2f} ms")
    f, fl = best["fastrnn step"], low["fastrnn step"]
    print(f"fastrnn step vs torch float32 step: {best['torch step'] / f:.2f}x "
          f"(minima {low['torch step'] / fl:.2f}x)")
    if bf16:
        k32 = "fastrnn step, head float32"
        f32h = best[k32]
        print(f"fastrnn step, head float32: {f32h * 1e3:6.2f} ms ({f32h / f:.2f}x the bf16 "
              f"head's step; minima {low[k32] * 1e3:.2f} / {fl * 1e3:.2f} ms)")
        tb, tbl = best["torch bf16 step"], low["torch bf16 step"]
        print(f"torch bf16 step {tb * 1e3:6.2f} ms; fastrnn step vs torch bf16: {tb / f:.2f}x "
              f"(minima {tbl / fl:.2f}x; head float32: {tb / f32h:.2f}x, minima "
              f"{tbl / low[k32]:.2f}x)")
    if pieces:
        n = 2 * args.rounds              # the recorded steps (both torch thread counts)
        tot = 0.0
        print("fastrnn step's parts (median per call x calls per step):")
        for k, v in pieces.t.items():
            per_step = statistics.median(v) * len(v) / n
            tot += per_step
            print(f"  {k:10s} {per_step * 1e3:6.3f} ms")
        print(f"  {'sum':10s} {tot * 1e3:6.3f} ms (the step: {f * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
