"""GPU check: run the CUDA test suite on the device, then benchmark against cuDNN.

On a machine with an NVIDIA GPU, with the package installed
(``pip install -e '.[test,cuda,torch]'``, a CUDA build of torch; CuPy optional)::

    python bench/gpu_check.py                 # tests, then the full benchmark grid
    python bench/gpu_check.py --skip-tests    # benchmark only
    python bench/gpu_check.py --cells lstm --batch 1,64 --hidden 256

It runs ``pytest tests/test_cuda.py`` without the simulator, then times a
training step (forward + backward) and inference (forward only) of
fastrnn's CUDA backend against ``torch.nn.LSTM/GRU/RNN`` on the same GPU
(cuDNN), float32, ``T=100``, ``B`` in {1, 8, 64, 256}, ``H = I`` in {256, 1024},
and writes a report (device, versions, test summary, medians, ratios) as
Markdown and JSON under ``bench/results/``.

Both libraries read the same torch-allocated inputs (shared through
``__cuda_array_interface__``, no copy) and the same weights. Every timing is a
median of repeated runs, each ended by a device synchronisation; the first
call (JIT compilation) is timed apart and reported as ``compile_s``.
``speedup = torch_ms / fastrnn_ms``: above 1 fastrnn is faster.

Without a GPU it exits with status 2 and says so. ``--smoke`` exercises the
whole benchmark loop on a tiny shape in Numba's CUDA simulator (torch on the
CPU), writing its report to a temporary folder unless ``--out`` is given:
the timings of a smoke run mean nothing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_GPU_EXIT = 2

# fastrnn cell -> (torch module name, extra constructor arguments)
TORCH_CELLS = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Run the CUDA tests on the GPU, then benchmark fastrnn's CUDA "
                    "backend against torch (cuDNN); writes a report under bench/results/.")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes in the Numba CUDA simulator, torch on the CPU "
                        "(checks the script, not the speed)")
    p.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    p.add_argument("--tests", action="store_true",
                   help="with --smoke: also run tests/test_cuda.py in the simulator (~2 min)")
    p.add_argument("--cells", default="lstm,gru,rnn_tanh",
                   help=f"comma-separated, from {sorted(TORCH_CELLS)} (default: %(default)s)")
    p.add_argument("--batch", type=_ints, default=None, help="batch sizes (default 1,8,64,256)")
    p.add_argument("--hidden", type=_ints, default=None, help="H = I values (default 256,1024)")
    p.add_argument("--steps", type=int, default=None, help="T (default 100)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 15)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="stop repeating a case after this long, keeping >= 3 runs")
    p.add_argument("--strategy", default="auto", choices=("auto", "per_step", "persistent"),
                   help="fastrnn CUDA strategy (default: chosen by shape)")
    p.add_argument("--strict-fp32", action="store_true",
                   help="turn off torch's TF32 (cuDNN and matmul) so both sides compute in "
                        "plain float32 (torch's defaults are recorded either way)")
    p.add_argument("--tile", type=int, default=None,
                   help="fastrnn GEMM tile (default: the module's setting; 4 with --smoke)")
    p.add_argument("--blocking", type=_ints, default=None,
                   help="fastrnn blocked GEMM bm,bn,bk,tm,tn (default: the module's setting)")
    p.add_argument("--blocked-min-rows", type=int, default=None,
                   help="fastrnn: rows from which the blocked GEMM is used")
    p.add_argument("--threads", type=int, default=None,
                   help="fastrnn pointwise threads per block (default: the module's setting)")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default bench/results/, or a temp folder with --smoke)")
    args = p.parse_args(argv)
    for c in args.cells.split(","):
        if c not in TORCH_CELLS:
            p.error(f"unknown cell {c!r}; expected one of {sorted(TORCH_CELLS)}")
    args.cells = args.cells.split(",")
    if args.smoke:
        args.batch = args.batch or [2]
        args.hidden = args.hidden or [8]
        args.steps = args.steps or 3
        args.repeat = args.repeat or 2
    else:
        args.batch = args.batch or [1, 8, 64, 256]
        args.hidden = args.hidden or [256, 1024]
        args.steps = args.steps or 100
        args.repeat = args.repeat or 15
    return args


def gpu_or_exit(smoke):
    """Import numba.cuda in the right mode; exit with a message when there is no GPU."""
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if smoke:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    elif sim:
        print("gpu_check: NUMBA_ENABLE_CUDASIM is set; unset it to check a real GPU "
              "(or pass --smoke for a simulator run).", file=sys.stderr)
        sys.exit(NO_GPU_EXIT)
    try:
        from numba import cuda
    except Exception as exc:
        print(f"gpu_check: numba.cuda cannot be imported ({exc}); install numba-cuda. "
              "Nothing was run.", file=sys.stderr)
        sys.exit(NO_GPU_EXIT)
    if smoke:
        return cuda
    try:
        ok = cuda.is_available()
    except Exception as exc:  # driver present but broken
        ok, why = False, str(exc)
    else:
        why = "no CUDA driver or device found"
    if not ok:
        print(f"gpu_check: no CUDA GPU available ({why}). Nothing was run. "
              "Run this on a machine with an NVIDIA GPU, or pass --smoke to exercise "
              "the script in the Numba CUDA simulator.", file=sys.stderr)
        sys.exit(NO_GPU_EXIT)
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; the cuDNN comparison needs a CUDA build "
              "of torch.", file=sys.stderr)
        sys.exit(NO_GPU_EXIT)
    if not torch.cuda.is_available():
        print("gpu_check: numba sees a GPU but torch does not (a CPU-only torch build?); "
              "install a CUDA build of torch.", file=sys.stderr)
        sys.exit(NO_GPU_EXIT)
    return cuda


def versions(cuda, smoke):
    import numba
    import numpy
    import torch
    info = {"python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "torch": torch.__version__,
            "platform": platform.platform()}
    try:
        from importlib.metadata import version
        info["numba-cuda"] = version("numba-cuda")
    except Exception:
        info["numba-cuda"] = "?"
    try:
        import cupy
        info["cupy"] = cupy.__version__
    except Exception:
        info["cupy"] = None
    if smoke:
        info["device"] = "Numba CUDA simulator (smoke run: timings mean nothing)"
        return info
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    info["device"] = name
    info["compute_capability"] = ".".join(map(str, dev.compute_capability))
    info["multiprocessors"] = dev.MULTIPROCESSOR_COUNT
    try:
        info["cuda_driver"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
    except Exception:
        pass
    info["torch_cuda"] = torch.version.cuda
    info["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    info["cudnn"] = torch.backends.cudnn.version()
    info["torch_device"] = torch.cuda.get_device_name(0)
    return info


def run_tests(smoke):
    env = dict(os.environ)
    if not smoke:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    summary = out[-1] if out else ""
    print(f"tests: {summary} ({time.perf_counter() - t0:.0f} s)")
    if proc.returncode != 0:
        print("\n".join(out[-40:]))
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": summary,
            "tail": "\n".join(out[-60:])}


def _median_ms(fn, sync, repeat, max_seconds):
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return 1e3 * statistics.median(times), len(times)


def bench(args, cuda):
    import numpy as np
    import torch

    try:
        from fastrnn.cells import get_cell
        from fastrnn.dispatch import Weights
        from fastrnn.kernels import cuda as kc
    except ImportError as exc:
        sys.exit(f"gpu_check: cannot import fastrnn's CUDA backend ({exc}); install the "
                 "package first: pip install -e '.[test,cuda,torch]'")

    dev = torch.device("cpu" if args.smoke else "cuda")
    if args.strict_fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def sync():
        cuda.synchronize()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def share(t):
        """A torch tensor as a fastrnn input (zero-copy on the GPU)."""
        t = t.detach().contiguous()
        return t.numpy() if args.smoke else cuda.as_cuda_array(t)

    rows = []
    kc.settings.strategy = args.strategy
    if args.smoke:   # the simulator pays per thread: small blocks
        kc.configure(tile=4, threads=16, persistent_threads=16, gemm_blocking=(8, 8, 4, 2, 2),
                     blocked_min_rows=4)
    if args.tile:
        kc.configure(tile=args.tile)
    if args.threads:
        kc.configure(threads=args.threads)
    if args.blocking:
        kc.configure(gemm_blocking=tuple(args.blocking))
    if args.blocked_min_rows:
        kc.configure(blocked_min_rows=args.blocked_min_rows)
    info_settings = dict(vars(kc.settings))
    torch.manual_seed(0)
    for name in args.cells:
        cell = get_cell(name)
        tname, extra = TORCH_CELLS[name]
        for H in args.hidden:
            for B in args.batch:
                T, I = args.steps, H
                mod = getattr(torch.nn, tname)(I, H, **extra).to(dev, torch.float32)
                sd = {k: share(v) for k, v in mod.state_dict().items()}
                w = kc.to_device(Weights(sd["weight_ih_l0"], sd["weight_hh_l0"],
                                         sd["bias_ih_l0"], sd["bias_hh_l0"], None))
                x = torch.randn(T, B, I, device=dev)
                h0 = torch.zeros(1, B, H, device=dev)
                dy = torch.randn(T, B, H, device=dev)
                xs, h0s, dys = share(x), share(h0[0]), share(dy)
                dhn = share(torch.zeros(B, H, device=dev))
                c0s = h0s if cell.has_cell else None
                dcn = dhn if cell.has_cell else None
                state = (h0, h0.clone()) if cell.has_cell else h0

                def f_inf():
                    return kc.forward(cell, xs, h0s, c0s, w, None, False, False)

                def f_train():
                    y, _, _, cache = kc.forward(cell, xs, h0s, c0s, w, None, False, True)
                    return kc.backward(cell, cache, dys, dhn, dcn)

                def t_inf():
                    with torch.no_grad():
                        return mod(x, state)

                xr = x.clone().requires_grad_(True)

                def t_train():
                    mod.zero_grad(set_to_none=True)
                    xr.grad = None
                    out, _ = mod(xr, state)
                    out.backward(dy)

                t0 = time.perf_counter()
                y_ref = t_inf()[0]
                y_fr, _, _, cache = kc.forward(cell, xs, h0s, c0s, w, None, False, True)
                f_train()
                sync()
                compile_s = time.perf_counter() - t0
                t_train()
                sync()
                y_host = y_fr.copy_to_host() if hasattr(y_fr, "copy_to_host") else y_fr
                err = float(np.max(np.abs(y_host - y_ref.detach().cpu().numpy())))
                strategy = cache.strategy
                res = {"cell": name, "T": T, "B": B, "I": I, "H": H, "strategy": strategy,
                       "compile_s": round(compile_s, 3), "max_abs_diff_y": err}
                for mode, ff, tf in (("train", f_train, t_train), ("infer", f_inf, t_inf)):
                    fm, fn = _median_ms(ff, sync, args.repeat, args.max_seconds)
                    tm, tn = _median_ms(tf, sync, args.repeat, args.max_seconds)
                    res[f"{mode}_fastrnn_ms"] = round(fm, 4)
                    res[f"{mode}_torch_ms"] = round(tm, 4)
                    res[f"{mode}_speedup"] = round(tm / fm, 3)
                    res[f"{mode}_runs"] = min(fn, tn)
                rows.append(res)
                print(f"{name:9s} T={T} B={B:<4d} H={H:<5d} {strategy:10s} "
                      f"train {res['train_fastrnn_ms']:9.3f} ms vs torch {res['train_torch_ms']:9.3f}"
                      f" (x{res['train_speedup']:.2f})  infer {res['infer_fastrnn_ms']:9.3f} ms "
                      f"vs {res['infer_torch_ms']:9.3f} (x{res['infer_speedup']:.2f})  "
                      f"|dy|max {err:.1e}", flush=True)
    return rows, info_settings


def write_report(args, info, tests, rows):
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_smoke_")) if args.smoke
                       else ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dev = "".join(ch if ch.isalnum() else "-" for ch in info["device"])[:40].strip("-")
    base = out / f"gpu_check_{'smoke' if args.smoke else dev}_{stamp}"
    payload = {"when_utc": stamp, "argv": sys.argv[1:], "versions": info, "tests": tests,
               "results": rows,
               "notes": "medians in ms; speedup = torch_ms / fastrnn_ms (>1: fastrnn faster); "
                        "torch uses cuDNN; float32; compile time excluded from medians"}
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    lines = [f"# fastrnn CUDA check — {info['device']}", "",
             f"Run {stamp} with `python bench/gpu_check.py {' '.join(sys.argv[1:])}`.", "",
             "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Tests", ""]
    if tests is None:
        lines.append("not run")
    else:
        lines += [f"`{tests['command']}` (exit {tests['returncode']}): {tests['summary']}"]
    lines += ["", "## Benchmark (float32; medians in ms; speed-up = torch / fastrnn)", "",
              "| cell | T | B | H=I | strategy | train fastrnn | train torch | speed-up "
              "| infer fastrnn | infer torch | speed-up | compile s | max abs diff y |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['B']} | {r['H']} | {r['strategy']} "
            f"| {r['train_fastrnn_ms']:.3f} | {r['train_torch_ms']:.3f} | {r['train_speedup']:.2f} "
            f"| {r['infer_fastrnn_ms']:.3f} | {r['infer_torch_ms']:.3f} | {r['infer_speedup']:.2f} "
            f"| {r['compile_s']:.1f} | {r['max_abs_diff_y']:.1e} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"report: {base.with_suffix('.md')} and .json")
    return base


def main(argv=None):
    args = parse_args(argv)
    cuda = gpu_or_exit(args.smoke)
    tests = None
    if not args.skip_tests and (not args.smoke or args.tests):
        tests = run_tests(args.smoke)
    info = versions(cuda, args.smoke)
    info["strict_fp32"] = args.strict_fp32
    print(f"device: {info['device']}")
    rows, info["fastrnn_cuda_settings"] = bench(args, cuda)
    write_report(args, info, tests, rows)
    if tests is not None and tests["returncode"] != 0:
        print("gpu_check: the CUDA tests FAILED (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
