"""End-to-end GPU training: fastrnn's whole training step on the GPU against PyTorch.

The model of ``fastrnn demo``: a character language model (embedding 32 ->
one LSTM layer of 128 -> linear head to the vocabulary), and the same with a
GRU, trained on the demo's corpus (CPython's ``pydoc_data.topics``) for a fixed
number of steps of truncated BPTT (``B=32`` rows, ``T=64`` characters), Adam
(lr 2e-2, constant) and gradient-norm clipping at 1.0:

- fastrnn: ``LanguageModel(backend="cuda")``; embedding, recurrent layer,
  head, softmax cross-entropy, clipping and Adam all run on the device; a
  batch is copied over once per step and the loss comes back as one float;
- PyTorch: ``nn.Embedding``/``nn.LSTM``/``nn.GRU``/``nn.Linear`` on the same
  GPU (cuDNN), loaded with the *same initial weights*, strict FP32
  (``torch.backends.cuda.matmul.allow_tf32 = False``,
  ``torch.backends.cudnn.allow_tf32 = False``), ``loss.item()`` every step.

Both see the same batches in the same order, carrying the recurrent state
across chunks (detached). Each side first runs two warm-up steps on a
throwaway copy (JIT compilation, cuDNN plans; timed apart as ``warmup_s``),
then ``steps`` timed steps ended by a device synchronisation. Reported per
cell and library: characters per second (``steps * T * B / seconds``), the
first and final loss (mean of the last tenth of the steps, nats per
character) and, per cell, ``speedup = fastrnn chars/s / torch chars/s`` and
the difference of the losses reached.

Usage (a machine with an NVIDIA GPU, numba-cuda, a CUDA build of torch; CuPy
optional: fastrnn then sends the large GEMMs to cuBLAS)::

    python bench/gpu_e2e.py                     # 300 steps of each cell
    python bench/gpu_e2e.py --steps 100 --cells lstm --json e2e.json
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_e2e.py --steps 2 --tiny   # the simulator

``--tiny`` shrinks the model, batch and corpus (and, in the simulator, the
launch sizes) so that the script runs in seconds; its timings mean nothing.
The torch side is skipped when torch is missing or has no CUDA. Without a GPU
(and without the simulator) the script exits with status 2 and says why.

From Python: ``run(steps=..., report=...)`` returns the result dict;
``report`` is a callable (called with each row as it is measured, then with
the whole result) or a dict (updated with the result).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:                                # the installed package (pip install -e . maps kernels/)
    import fastrnn.kernels  # noqa: F401
except ImportError:                 # a checkout that is not installed: its root, last
    sys.path.append(ROOT)

import numpy as np  # noqa: E402

NO_GPU_EXIT = 2

DEFAULTS = dict(hidden=128, embed=32, batch=32, bptt=64, lr=2e-2, clip=1.0)
TINY = dict(hidden=8, embed=4, batch=2, bptt=4, lr=2e-2, clip=1.0)
# launch sizes of the simulator (a GPU keeps the library's defaults)
SIM_SETTINGS = dict(tile=8, threads=8, gemm_blocking=(8, 8, 8, 4, 4), blocked_min_rows=4,
                    use_cupy=False)


def _versions():
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for mod in ("numba", "numba_cuda", "cupy", "torch", "fastrnn"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:               # noqa: BLE001 - missing or broken: recorded as such
            out[mod] = None
    return out


def _torch_cuda():
    """torch when it is installed with a usable CUDA device, else None (and why)."""
    try:
        import torch
    except Exception as exc:            # noqa: BLE001
        return None, f"torch not importable ({exc})"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA device (a CPU build, or no GPU)"
    return torch, ""


def corpus(tiny=False):
    """The demo's corpus (``fastrnn.cli.default_corpus``), its vocabulary and ids."""
    from fastrnn.cli import default_corpus
    from fastrnn.data import CharVocab
    text = default_corpus()
    if tiny:
        text = text[:4000]
    vocab = CharVocab(text)
    return vocab, vocab.encode(text)


def batches(ids, batch, bptt, steps):
    """``steps`` chunks ``(x [T, B], y [T, B], reset)`` of the truncated-BPTT
    stream (full-length chunks only); ``reset`` marks the start of a pass, where
    both sides forget the carried state."""
    from fastrnn.data import LMBatches
    full = [(x, y) for x, y in LMBatches(ids, batch, bptt).batches() if len(x) == bptt]
    if not full:
        raise ValueError(f"the corpus is too short for batch {batch} x bptt {bptt}")
    return [(*full[k % len(full)], k % len(full) == 0) for k in range(steps)]


# ------------------------------------------------------------------ fastrnn
def _fastrnn_model(vocab_size, cfg, cell, seed):
    from fastrnn import LanguageModel
    from fastrnn.optim import Adam
    model = LanguageModel(vocab_size, embed_dim=cfg["embed"], hidden_size=cfg["hidden"],
                          cell=cell, backend="cuda", seed=seed)
    return model, Adam(model, lr=cfg["lr"])


def _fastrnn_steps(model, opt, data, clip):
    from fastrnn.optim import clip_grad_norm
    losses = []
    for x, y, reset in data:
        if reset:
            model.reset_state()
        model.zero_grad()
        loss, _ = model.batch_loss((x, y))            # forward, loss (one float), backward
        clip_grad_norm(model.grads, clip)
        opt.step()
        losses.append(loss)
    return losses


def run_fastrnn(vocab_size, cfg, cell, data, warm_data, seed=0):
    from numba import cuda
    t0 = time.perf_counter()
    model, opt = _fastrnn_model(vocab_size, cfg, cell, seed)          # warm-up copy
    _fastrnn_steps(model, opt, warm_data, cfg["clip"])
    cuda.synchronize()
    warm = time.perf_counter() - t0
    model, opt = _fastrnn_model(vocab_size, cfg, cell, seed)
    init = model.state_dict()
    cuda.synchronize()
    t0 = time.perf_counter()
    losses = _fastrnn_steps(model, opt, data, cfg["clip"])
    cuda.synchronize()
    return losses, time.perf_counter() - t0, warm, init


# ------------------------------------------------------------------ torch
def _torch_model(torch, vocab_size, cfg, cell, init):
    nn = torch.nn

    class CharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, cfg["embed"])
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = rnn(cfg["embed"], cfg["hidden"])
            self.head = nn.Linear(cfg["hidden"], vocab_size)

        def forward(self, x, state):
            y, state = self.rnn(self.embed(x), state)
            return self.head(y), state

    model = CharLM().cuda()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in init.items()})     # the same initial weights
    return model, torch.optim.Adam(model.parameters(), lr=cfg["lr"])


def _torch_steps(torch, model, opt, data, clip, vocab_size):
    f = torch.nn.functional
    losses, state = [], None
    for x, y, reset in data:
        if reset:
            state = None
        xt = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        yt = torch.from_numpy(np.ascontiguousarray(y)).cuda()
        opt.zero_grad(set_to_none=True)
        logits, state = model(xt, state)
        loss = f.cross_entropy(logits.reshape(-1, vocab_size), yt.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        losses.append(loss.item())                     # one host sync per step, as fastrnn
    return losses


def run_torch(torch, vocab_size, cfg, cell, data, warm_data, init):
    torch.backends.cuda.matmul.allow_tf32 = False      # strict FP32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    t0 = time.perf_counter()
    model, opt = _torch_model(torch, vocab_size, cfg, cell, init)
    _torch_steps(torch, model, opt, warm_data, cfg["clip"], vocab_size)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    model, opt = _torch_model(torch, vocab_size, cfg, cell, init)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = _torch_steps(torch, model, opt, data, cfg["clip"], vocab_size)
    torch.cuda.synchronize()
    return losses, time.perf_counter() - t0, warm


# ------------------------------------------------------------------ driver
def _row(cell, library, losses, seconds, warm, cfg):
    steps = len(losses)
    chars = steps * cfg["batch"] * cfg["bptt"]
    tail = losses[-max(1, steps // 10):]
    return {"cell": cell, "library": library, "steps": steps, "chars": chars,
            "seconds": round(seconds, 4), "chars_per_s": chars / max(seconds, 1e-12),
            "warmup_s": round(warm, 3), "first_loss": losses[0],
            "final_loss": float(np.mean(tail)),
            "finite": bool(np.all(np.isfinite(losses)))}


def gpu_available():
    """``(True, how)`` when fastrnn's CUDA backend can run here, else ``(False, why)``."""
    try:
        from fastrnn.kernels import cuda as kc
    except ImportError as exc:
        return False, f"fastrnn.kernels.cuda does not import: {exc}"
    ok, why = kc.available()
    return ok, (why or "GPU")


def run(steps=300, report=None, *, cells=("lstm", "gru"), tiny=False, seed=0, torch_side=True,
        **overrides):
    """Train each cell for ``steps`` steps with fastrnn on the GPU and with
    torch (cuDNN); return ``{"device", "config", "versions", "rows",
    "summary"}``. ``report``: a callable (given each row as it is measured,
    then the whole result) or a dict (updated with the result).
    ``overrides`` change ``hidden``, ``embed``, ``batch``, ``bptt``, ``lr``,
    ``clip``. Raises RuntimeError when there is no GPU (nor the simulator)."""
    from fastrnn.kernels import cuda as kc
    ok, how = gpu_available()
    if not ok:
        raise RuntimeError(f"no GPU for fastrnn's CUDA backend: {how}")
    cfg = dict(TINY if tiny else DEFAULTS)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; expected some of {sorted(cfg)}")
    cfg.update(overrides)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch, why_not = _torch_cuda() if torch_side else (None, "disabled")
    vocab, ids = corpus(tiny)
    data = batches(ids, cfg["batch"], cfg["bptt"], max(steps, 2))
    data, warm_data = data[:steps], data[:2]
    result = {"device": how if kc.SIMULATOR else _device_name(), "simulator": kc.SIMULATOR,
              "config": {**cfg, "steps": steps, "vocab": len(vocab), "seed": seed,
                         "strict_fp32": True, "torch": why_not or "cuda"},
              "versions": _versions(), "rows": [], "summary": {}}

    def emit(row):
        result["rows"].append(row)
        if callable(report):
            report(row)

    settings = SIM_SETTINGS if kc.SIMULATOR else {}
    with kc.configure(**settings):
        for cell in cells:
            losses, secs, warm, init = run_fastrnn(len(vocab), cfg, cell, data, warm_data, seed)
            fr = _row(cell, "fastrnn", losses, secs, warm, cfg)
            emit(fr)
            summ = {"fastrnn_chars_per_s": fr["chars_per_s"], "fastrnn_loss": fr["final_loss"]}
            if torch is not None:
                losses, secs, warm = run_torch(torch, len(vocab), cfg, cell, data, warm_data,
                                               init)
                tr = _row(cell, "torch", losses, secs, warm, cfg)
                emit(tr)
                summ.update(torch_chars_per_s=tr["chars_per_s"], torch_loss=tr["final_loss"],
                            speedup=fr["chars_per_s"] / tr["chars_per_s"],
                            loss_diff=fr["final_loss"] - tr["final_loss"],
                            first_loss_diff=fr["first_loss"] - tr["first_loss"])
            result["summary"][cell] = summ
    if callable(report):
        report(result)
    elif isinstance(report, dict):
        report.update(result)
    return result


def _device_name():
    try:
        from numba import cuda
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:                   # noqa: BLE001
        return "GPU"


def format_table(result):
    lines = [f"device: {result['device']}   config: " + ", ".join(
        f"{k}={v}" for k, v in result["config"].items())]
    lines.append(f"{'cell':<6} {'library':<8} {'chars/s':>12} {'seconds':>9} {'warm-up s':>9} "
                 f"{'first loss':>10} {'final loss':>10}")
    for r in result["rows"]:
        lines.append(f"{r['cell']:<6} {r['library']:<8} {r['chars_per_s']:>12,.0f} "
                     f"{r['seconds']:>9.3f} {r['warmup_s']:>9.2f} {r['first_loss']:>10.4f} "
                     f"{r['final_loss']:>10.4f}")
    for cell, s in result["summary"].items():
        if "speedup" in s:
            lines.append(f"{cell}: fastrnn / torch throughput {s['speedup']:.2f}x; loss reached "
                         f"{s['fastrnn_loss']:.4f} vs {s['torch_loss']:.4f} nats/char "
                         f"(difference {s['loss_diff']:+.4f}; at step 1 {s['first_loss_diff']:+.2e})")
        else:
            lines.append(f"{cell}: torch side skipped ({result['config']['torch']})")
    if result["simulator"]:
        lines.append("(Numba CUDA simulator: the timings mean nothing)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed training steps per cell")
    p.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm, gru")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny model, batch and corpus (the simulator; timings mean nothing)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch side")
    p.add_argument("--seed", type=int, default=0)
    for k in ("hidden", "embed", "batch", "bptt"):
        p.add_argument("--" + k, type=int, default=None)
    p.add_argument("--json", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    ok, how = gpu_available()
    if not ok:
        print(f"gpu_e2e: {how}", file=sys.stderr)
        return NO_GPU_EXIT
    cells = [c for c in args.cells.split(",") if c]
    bad = [c for c in cells if c not in ("lstm", "gru")]
    if bad:
        p.error(f"--cells: unknown {bad} (lstm, gru)")
    over = {k: getattr(args, k) for k in ("hidden", "embed", "batch", "bptt")
            if getattr(args, k) is not None}

    def progress(row):
        if "rows" not in row:
            print(f"  {row['cell']} {row['library']}: {row['chars_per_s']:,.0f} chars/s, "
                  f"loss {row['first_loss']:.3f} -> {row['final_loss']:.3f}", flush=True)

    result = run(args.steps, progress, cells=cells, tiny=args.tiny, seed=args.seed,
                 torch_side=not args.no_torch, **over)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
        print(f"result written to {args.json}")
    bad_loss = [r for r in result["rows"] if not r["finite"] or not math.isfinite(r["final_loss"])]
    return 1 if bad_loss else 0


if __name__ == "__main__":
    sys.exit(main())
