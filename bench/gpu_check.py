"""GPU check: the CUDA tests on the device, fastrnn's layers against cuDNN, end-to-end training.

On a machine with an NVIDIA GPU, numba-cuda and a CUDA build of torch (CuPy
optional), with the package installed from this checkout; offline, with what
is there::

    python3 -m pip install -q --no-deps --no-build-isolation -e .
    python3 bench/gpu_check.py                   # everything, in about 10 minutes
    python3 bench/gpu_check.py --budget 300      # the same, cut to fit 5 minutes
    python3 bench/gpu_check.py --skip-tests --cells lstm --batch 1,64 --hidden 256

1. **Tests**: ``pytest tests -m cuda_sim`` without the simulator, in a
   subprocess started with ``python -P`` (the checkout's root is not put on
   ``sys.path``: its ``fastrnn/`` lacks ``fastrnn.kernels``, which
   pyproject.toml maps from ``kernels/``, and would hide the installed
   package). The package is imported the same way first and its path printed;
   the check fails when it does not import, when the tests fail or time out,
   and when no test passed (every one skipped is a failure, not a pass).
2. **Layers against cuDNN**: a training step (forward + backward) and
   inference (forward only) of fastrnn's CUDA backend against
   ``torch.nn.LSTM/GRU/RNN`` on the same GPU, float32, ``T=100``, ``B`` in
   {1, 8, 64, 256}, ``H = I`` in {256, 1024}: medians and
   ``speedup = torch_ms / fastrnn_ms`` (above 1 fastrnn is faster), and the
   largest differences of ``y`` and ``dx`` from torch's. torch runs in strict
   FP32 (``torch.backends.cuda.matmul.allow_tf32 = False``,
   ``torch.backends.cudnn.allow_tf32 = False``: on an A100/H100 cuDNN's RNNs
   would otherwise multiply in TF32 while fastrnn computes in FP32);
   ``--tf32`` also times torch with TF32 allowed, in columns labelled so.
3. **CPU thread scaling** (``fastrnn bench --threads 1,2,4,...`` up to the
   cores the process may use, LSTM at (100,64,128,256) and (50,64,256,512),
   in a subprocess with a time limit, ``--scaling-seconds``, default
   min(150, 0.2 budget)): fastrnn and torch on the CPU at each count; written
   to ``bench/results/cpu_scaling_<cpu>.json`` and ``.png`` beside the report.
4. **End-to-end training** (``bench/gpu_e2e.py``'s ``run()``, in a
   subprocess with a time limit): fastrnn's whole language-model training
   step on the GPU against PyTorch's; "skipped: not available" when that
   module or its ``run`` is missing.

Time: ``--budget`` seconds in all (default 600). The tests get at most
``--test-share`` of it (a subprocess time limit), the end-to-end run what is
reserved for it, the layer grid the rest: each case gets an equal share of
what is left (repeats are cut to fit, >= 3 runs each), and cases that no
longer fit are recorded as skipped. A watchdog ends the process if the budget
is overrun by more than a minute (a hung kernel). The report, JSON and
Markdown under ``bench/results/``, is rewritten after the tests and after
every case, so a killed run still leaves what it measured.

Both libraries read the same torch-allocated inputs (shared through
``__cuda_array_interface__``, no copy) and the same weights. Every timing is a
median of repeated runs, each ended by a device synchronisation; the first
call of each case (JIT compilation) is timed apart as ``compile_s``.

Without a GPU it exits with status 2 and says so. ``--dry-run`` (or
``--smoke``) runs the whole script on tiny shapes in Numba's CUDA simulator
(torch on the CPU), writing its report to a temporary folder unless ``--out``
is given: it checks the script, its timings mean nothing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import faulthandler
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_GPU_EXIT = 2


def torch_cells():
    """The registry cells that have a PyTorch twin (``CellSpec.torch``), the
    cells ``--cells`` takes. fastrnn is imported here, not at the top, so that
    the script still starts, and says why, where the package does not import."""
    from fastrnn.cells import CELLS
    return sorted(name for name, spec in CELLS.items() if spec.torch is not None)

# what the subprocesses run: import the *installed* fastrnn (started with -P,
# from a folder that holds no package) and say where it came from
_PROBE = """
import json, sys
out = {"python": sys.executable}
try:
    import fastrnn
    out["fastrnn"] = fastrnn.__file__
    import fastrnn.kernels
    out["kernels"] = fastrnn.kernels.__file__
    from fastrnn.kernels import cuda as kc
    out["available"] = list(kc.available())
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

_E2E = """
import json, sys
import fastrnn.kernels.cuda          # the installed package first (gpu_e2e adds the checkout)
sys.path.insert(0, {bench!r})
out = open({rows!r}, "a")
try:
    import gpu_e2e
except Exception as exc:
    print(json.dumps({{"unavailable": f"gpu_e2e does not import: {{exc}}"}}), file=out, flush=True)
    sys.exit(0)
if not callable(getattr(gpu_e2e, "run", None)):
    print(json.dumps({{"unavailable": "gpu_e2e has no run()"}}), file=out, flush=True)
    sys.exit(0)

def report(row):
    print(json.dumps(row, default=float), file=out, flush=True)

gpu_e2e.run(steps={steps}, report=report, tiny={tiny})
"""


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Run the CUDA tests on the GPU, benchmark fastrnn's CUDA backend against "
                    "torch (cuDNN) and the end-to-end training; writes a report under "
                    "bench/results/.")
    p.add_argument("--dry-run", "--smoke", dest="smoke", action="store_true",
                   help="tiny shapes in the Numba CUDA simulator, torch on the CPU "
                        "(checks the script and its report, not the speed)")
    p.add_argument("--budget", type=float, default=600.0,
                   help="seconds for the whole check, tests included (default %(default)s)")
    p.add_argument("--test-share", type=float, default=0.45,
                   help="most of the budget the tests may take (default %(default)s)")
    p.add_argument("--e2e-seconds", type=float, default=None,
                   help="seconds reserved for the end-to-end run (default: 15%% of the "
                        "budget, at most 120)")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="training steps per cell of the end-to-end run (default 100; 2 "
                        "with --dry-run)")
    p.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests (pytest -m cuda_sim)")
    p.add_argument("--skip-bench", action="store_true", help="do not run the layer benchmark")
    p.add_argument("--skip-e2e", action="store_true", help="do not run the end-to-end training")
    p.add_argument("--skip-scaling", action="store_true",
                   help="do not run the CPU thread-scaling benchmark")
    p.add_argument("--scaling-seconds", type=float, default=None,
                   help="time limit of the CPU thread-scaling run (default min(150, 0.2 budget))")
    p.add_argument("--tests", action="store_true",
                   help="with --dry-run: also run the CUDA tests (-m cuda_sim) in the simulator "
                        "(several minutes)")
    p.add_argument("--cells", default="lstm,gru,rnn_tanh",
                   help="comma-separated registry cells that have a PyTorch twin "
                        "(CellSpec.torch; default: %(default)s)")
    p.add_argument("--batch", type=_ints, default=None, help="batch sizes (default 1,8,64,256)")
    p.add_argument("--hidden", type=_ints, default=None, help="H = I values (default 256,1024)")
    p.add_argument("--steps", type=int, default=None, help="T (default 100)")
    p.add_argument("--repeat", type=int, default=None, help="most timed runs per loop (default 15)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="most seconds per timed loop, keeping >= 3 runs (the budget may cut it)")
    p.add_argument("--strategy", default="auto", choices=("auto", "per_step", "persistent"),
                   help="fastrnn CUDA strategy (default: chosen by shape)")
    p.add_argument("--tf32", action="store_true",
                   help="also time torch with TF32 allowed (reported in separate, labelled "
                        "columns; the main comparison stays strict FP32)")
    p.add_argument("--no-cupy", action="store_true",
                   help="fastrnn's own GEMM kernels even where CuPy (cuBLAS) works")
    p.add_argument("--tile", type=int, default=None,
                   help="fastrnn GEMM tile (default: the module's setting)")
    p.add_argument("--blocking", type=_ints, default=None,
                   help="fastrnn blocked GEMM bm,bn,bk,tm,tn (default: the module's setting)")
    p.add_argument("--blocked-min-rows", type=int, default=None,
                   help="fastrnn: rows from which the blocked GEMM is used")
    p.add_argument("--threads", type=int, default=None,
                   help="fastrnn pointwise threads per block (default: the module's setting)")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default bench/results/, or a temp folder with --dry-run)")
    args = p.parse_args(argv)
    try:
        twins = torch_cells()
    except ImportError:     # the report says so where the layer benchmark imports fastrnn
        twins = None
    for c in args.cells.split(","):
        if twins is not None and c not in twins:
            p.error(f"unknown cell {c!r}; expected one of {twins}")
    if args.budget <= 0:
        p.error("--budget must be positive")
    if not 0 < args.test_share < 1:
        p.error("--test-share must lie in (0, 1)")
    args.cells = args.cells.split(",")
    if args.smoke:
        args.batch = args.batch or [2]
        args.hidden = args.hidden or [8]
        args.steps = args.steps or 3
        args.repeat = args.repeat or 2
        args.e2e_steps = args.e2e_steps or 2
    else:
        args.batch = args.batch or [1, 8, 64, 256]
        args.hidden = args.hidden or [256, 1024]
        args.steps = args.steps or 100
        args.repeat = args.repeat or 15
        args.e2e_steps = args.e2e_steps or 100
    if args.e2e_seconds is None:
        args.e2e_seconds = 0.0 if args.skip_e2e else min(120.0, 0.15 * args.budget)
    if args.scaling_seconds is None:
        args.scaling_seconds = 0.0 if args.skip_scaling else min(150.0, 0.2 * args.budget)
    return args


class Clock:
    """The budget: seconds left, and a watchdog for a process that overruns it."""

    def __init__(self, budget):
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return self.budget - self.elapsed()

    def arm_watchdog(self, grace=60.0):
        # a hung kernel cannot be interrupted from Python: dump the stacks and
        # exit; the report written so far stays
        faulthandler.dump_traceback_later(max(1.0, self.left() + grace), exit=True)


def gpu_or_exit(smoke):
    """Import numba.cuda in the right mode; exit with a message when there is no GPU."""
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if smoke:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    elif sim:
        print("gpu_check: NUMBA_ENABLE_CUDASIM is set; unset it to check a real GPU "
              "(or pass --dry-run for a simulator run).", file=sys.stderr)
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
              "Run this on a machine with an NVIDIA GPU, or pass --dry-run to exercise "
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


def _installed_cupy():
    """The CuPy distributions installed (cupy-cuda12x, cupy-cuda13x...) and whether
    ``import cupy`` works: two of them side by side break each other."""
    try:
        from importlib.metadata import distributions
        names = sorted({(d.metadata["Name"] or "").lower() for d in distributions()
                        if (d.metadata["Name"] or "").lower().startswith("cupy")})
    except Exception:
        names = []
    try:
        import cupy
        status = f"cupy {cupy.__version__} imports"
    except Exception as exc:
        status = f"import cupy fails: {type(exc).__name__}: {exc}" if names else "not installed"
    return {"distributions": names, "status": status}


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
    info["cupy"] = _installed_cupy()
    # torch's own defaults, before this script sets strict FP32
    info["torch_defaults"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                              "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if smoke:
        info["device"] = "Numba CUDA simulator (dry run: timings mean nothing)"
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
    info["cudnn"] = torch.backends.cudnn.version()
    info["torch_device"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------- tests
def _python_cmd():
    """The interpreter, told not to put the script's folder or the cwd on sys.path."""
    return [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]


def _child_env(smoke):
    env = dict(os.environ)
    if smoke:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    # the installed package: never this checkout's root through PYTHONPATH either
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != ROOT]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    else:
        env.pop("PYTHONPATH", None)
    return env


def probe_install(smoke):
    """Where the installed fastrnn and fastrnn.kernels come from, as the tests will see them."""
    with tempfile.TemporaryDirectory() as tmp:     # a cwd that holds no package
        proc = subprocess.run(_python_cmd() + ["-c", _PROBE], cwd=tmp, env=_child_env(smoke),
                              capture_output=True, text=True, timeout=300)
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {"error": (proc.stdout + proc.stderr).strip()[-2000:] or f"exit {proc.returncode}"}
    if "error" not in found:
        found["from_this_checkout"] = Path(found["kernels"]).resolve().is_relative_to(ROOT)
    return found


def summarize_junit(path):
    """Counts from pytest's JUnit XML (None when it was not written)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                             "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


def judge_tests(returncode, counts, timed_out):
    """(ok, status): a run passes only when tests ran, passed, and none failed."""
    if timed_out:
        return False, "TIMED OUT"
    if counts is None:
        return False, f"FAILED (pytest exit {returncode}, no results)"
    if counts["failures"] or counts["errors"]:
        return False, "FAILED"
    if counts["passed"] == 0:
        return False, ("NOTHING RAN (every test skipped)" if counts["tests"]
                       else "NOTHING RAN (no test collected)")
    if returncode != 0:
        return False, f"FAILED (pytest exit {returncode})"
    return True, "passed"


def run_tests(smoke, timeout, out_dir):
    """``pytest tests -m cuda_sim`` (the CUDA backend's tests) on the installed package, with a time limit."""
    found = probe_install(smoke)
    if "error" in found:
        print(f"tests: fastrnn's CUDA backend does not import from the installed package: "
              f"{found['error']}\n  install this checkout first: python3 -m pip install "
              "--no-deps --no-build-isolation -e .", file=sys.stderr)
        return {"ok": False, "status": "NOT RUN: fastrnn.kernels does not import",
                "install": found, "counts": None}
    print(f"tests: fastrnn from {found['fastrnn']}, fastrnn.kernels from {found['kernels']}"
          + ("" if found["from_this_checkout"] else "  (NOT this checkout)"))
    if not found["available"][0]:
        return {"ok": False, "status": f"NOT RUN: CUDA backend unavailable "
                f"({found['available'][1]})", "install": found, "counts": None}
    junit = out_dir / "gpu_check_junit.xml"
    log = out_dir / "gpu_check_pytest.log"
    if junit.exists():
        junit.unlink()
    cmd = _python_cmd() + ["-m", "pytest", "tests", "-m", "cuda_sim", "-q", "-rs", "-p", "no:cacheprovider",
                           f"--junitxml={junit}"]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(smoke), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 9)
            proc.wait()
    seconds = time.perf_counter() - t0
    lines = log.read_text(errors="replace").strip().splitlines()
    counts = summarize_junit(junit)
    ok, status = judge_tests(proc.returncode, counts, timed_out)
    summary = lines[-1] if lines else ""
    skipped = [ln for ln in lines if ln.startswith("SKIPPED")]
    print(f"tests: {status}: {summary} ({seconds:.0f} s"
          + (f", limit {timeout:.0f} s)" if timed_out else ")"))
    if not ok:
        print("\n".join(lines[-40:]))
    return {"ok": ok, "status": status, "command": " ".join(cmd[1:]), "selection": "tests -m cuda_sim",
            "returncode": proc.returncode, "seconds": round(seconds, 1), "counts": counts,
            "summary": summary, "skip_reasons": skipped[:20], "install": found,
            "tail": "\n".join(lines[-60:])}


# --------------------------------------------------------------------------- layers
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


def cases(args):
    """(cell, H, B) in the order they are run: every cell at a shape before the next
    shape, so that a budget cut loses the largest shapes, not a whole cell."""
    return [(c, H, B) for H in args.hidden for B in args.batch for c in args.cells]


def bench(args, cuda, clock, deadline, emit):
    """Time every case until ``deadline`` (clock seconds); ``emit(row)`` after each."""
    import numpy as np
    import torch
    from fastrnn.cells import get_cell
    from fastrnn.dispatch import Weights
    from fastrnn.kernels import cuda as kc

    dev = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cudnn.allow_tf32 = False      # strict FP32: what fastrnn computes
    torch.backends.cuda.matmul.allow_tf32 = False

    def sync():
        cuda.synchronize()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def share(t):
        """A torch tensor as a fastrnn input (zero-copy on the GPU)."""
        t = t.detach().contiguous()
        return t.numpy() if args.smoke else cuda.as_cuda_array(t)

    def host(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    todo = cases(args)
    torch.manual_seed(0)
    for n, (name, H, B) in enumerate(todo):
        share_s = (deadline - clock.elapsed()) / (len(todo) - n)
        if share_s < (0.05 if args.smoke else 2.0):
            emit({"cell": name, "T": args.steps, "B": B, "I": H, "H": H,
                  "skipped": "budget spent"})
            continue
        case_start = time.perf_counter()
        cell = get_cell(name)
        T, I = args.steps, H
        mod = getattr(torch.nn, cell.torch[0])(I, H, **cell.torch_kwargs).to(dev, torch.float32)
        sd = {k: share(v) for k, v in mod.state_dict().items()}
        w = kc.to_device(Weights(sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"],
                                 sd["bias_hh_l0"], None))
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
        y_fr, _, _, cache = kc.forward(cell, xs, h0s, c0s, w, None, False, True)
        dx_fr = kc.backward(cell, cache, dys, dhn, dcn)[0]
        f_inf()
        sync()
        compile_s = time.perf_counter() - t0
        y_ref = t_inf()[0]
        t_train()
        sync()
        err_y = float(np.max(np.abs(host(y_fr) - y_ref.detach().cpu().numpy()), initial=0))
        err_dx = float(np.max(np.abs(host(dx_fr) - xr.grad.detach().cpu().numpy()), initial=0))
        res = {"cell": name, "T": T, "B": B, "I": I, "H": H, "strategy": cache.strategy,
               "compile_s": round(compile_s, 3), "max_abs_diff_y": err_y,
               "max_abs_diff_dx": err_dx}
        loops = [("train", f_train, t_train), ("infer", f_inf, t_inf)]
        n_loops = 4 + (2 if args.tf32 else 0)
        per_loop = max(0.05, min(args.max_seconds, (share_s - (time.perf_counter() - case_start))
                                 / n_loops))
        for mode, ff, tf in loops:
            fm, fn = _median_ms(ff, sync, args.repeat, per_loop)
            tm, tn = _median_ms(tf, sync, args.repeat, per_loop)
            res[f"{mode}_fastrnn_ms"] = round(fm, 4)
            res[f"{mode}_torch_ms"] = round(tm, 4)
            res[f"{mode}_speedup"] = round(tm / fm, 3)
            res[f"{mode}_runs"] = min(fn, tn)
        if args.tf32:   # torch with its TF32 defaults, labelled apart
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                for mode, _, tf in loops:
                    tm, _ = _median_ms(tf, sync, args.repeat, per_loop)
                    res[f"{mode}_torch_tf32_ms"] = round(tm, 4)
                    res[f"{mode}_speedup_vs_tf32"] = round(tm / res[f"{mode}_fastrnn_ms"], 3)
            finally:
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        res["case_s"] = round(time.perf_counter() - case_start, 2)
        print(f"{name:9s} T={T} B={B:<4d} H={H:<5d} {res['strategy']:10s} "
              f"train {res['train_fastrnn_ms']:9.3f} ms vs cuDNN {res['train_torch_ms']:9.3f} "
              f"(x{res['train_speedup']:.2f})  infer {res['infer_fastrnn_ms']:9.3f} ms vs "
              f"{res['infer_torch_ms']:9.3f} (x{res['infer_speedup']:.2f})  "
              f"|dy|max {err_y:.1e} |dx|max {err_dx:.1e}", flush=True)
        emit(res)


def configure_fastrnn(args):
    """Apply the command line's fastrnn settings; return them."""
    from fastrnn.kernels import cuda as kc
    kc.settings.strategy = args.strategy
    if args.smoke:   # the simulator pays per thread: small blocks
        kc.configure(tile=4, threads=16, persistent_threads=16, persistent_lanes=4,
                     gemm_blocking=(8, 8, 4, 2, 2), blocked_min_rows=4, colsum_block=(8, 2))
    if args.no_cupy:
        kc.configure(use_cupy=False)
    if args.tile:
        kc.configure(tile=args.tile)
    if args.threads:
        kc.configure(threads=args.threads)
    if args.blocking:
        kc.configure(gemm_blocking=tuple(args.blocking))
    if args.blocked_min_rows:
        kc.configure(blocked_min_rows=args.blocked_min_rows)
    info = dict(vars(kc.settings))
    info["cupy_used"] = bool(kc.cupy_module())
    return info


# --------------------------------------------------------------------------- end to end
def scaling_counts(cores):
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= cores]
    return counts + ([cores] if cores not in counts else [])


def run_scaling(args, timeout, out_dir):
    """``fastrnn bench --threads 1,2,4,...`` on the CPU in a subprocess with a
    time limit; the JSON and plot go to ``out_dir/cpu_scaling_<cpu>.*``."""
    if timeout < 20:
        return {"status": "skipped: budget spent"}
    try:
        from fastrnn.bench.scaling import cpu_slug, usable_cores
    except ImportError as exc:
        return {"status": f"skipped: not available ({exc})"}
    cores = usable_cores()
    counts = scaling_counts(cores)
    base = out_dir / f"cpu_scaling_{cpu_slug()}"
    cmd = _python_cmd() + ["-m", "fastrnn", "bench", "--threads", ",".join(map(str, counts)),
                           "--cells", "lstm", "--impls", "cpu,torch",
                           "--json", str(base.with_suffix(".json")),
                           "--plot", str(base.with_suffix(".png"))]
    if args.smoke:
        cmd += ["--quick", "--shapes", "4,2,3,5"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        env = _child_env(args.smoke)
        env.pop("NUMBA_ENABLE_CUDASIM", None)           # the CPU kernels
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = None, str(exc.stdout or "")
    seconds = time.perf_counter() - t0
    status = ("done" if rc == 0 else f"TIMED OUT after {timeout:.0f} s" if rc is None
              else f"FAILED (exit {rc})")
    print(f"cpu scaling ({cores} cores, threads {counts}): {status} ({seconds:.0f} s)")
    print(text.strip()[-4000:])
    return {"status": status, "cores": cores, "threads": counts, "seconds": round(seconds, 1),
            "json": str(base.with_suffix(".json")), "table": text.strip()[-6000:]}


def run_e2e(args, timeout, out_dir):
    """``gpu_e2e.run()`` in a subprocess with a time limit; rows as they come."""
    if not (ROOT / "bench" / "gpu_e2e.py").exists():
        return {"status": "skipped: not available (no bench/gpu_e2e.py)", "rows": []}
    if timeout < 10:
        return {"status": "skipped: budget spent", "rows": []}
    rows_file = out_dir / "gpu_check_e2e_rows.jsonl"
    rows_file.write_text("")
    code = _E2E.format(bench=str(ROOT / "bench"), rows=str(rows_file), steps=args.e2e_steps,
                       tiny=bool(args.smoke))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(_python_cmd() + ["-c", code], cwd=tmp,
                                  env=_child_env(args.smoke), capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip()[-3000:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = None, f"timed out after {timeout:.0f} s\n" + str(exc.stdout or "")[-2000:]
    seconds = time.perf_counter() - t0
    rows, result = [], None
    for line in rows_file.read_text().splitlines():
        item = json.loads(line)
        if "unavailable" in item:
            return {"status": f"skipped: not available ({item['unavailable']})", "rows": []}
        if "rows" in item:
            result = item
        else:
            rows.append(item)
    if result is not None:
        status = "done"
    elif rc is None:
        status = f"TIMED OUT after {timeout:.0f} s ({len(rows)} rows measured)"
    else:
        status = f"FAILED (exit {rc})"
    out = {"status": status, "steps": args.e2e_steps, "seconds": round(seconds, 1),
           "rows": rows}
    if result is not None:
        out.update(summary=result.get("summary"), config=result.get("config"),
                   device=result.get("device"))
    else:
        out["tail"] = tail
    print(f"end-to-end: {status} ({seconds:.0f} s)")
    for cell, s in (out.get("summary") or {}).items():
        if "speedup" in s:
            print(f"  {cell}: fastrnn / torch throughput x{s['speedup']:.2f}, loss "
                  f"{s['fastrnn_loss']:.4f} vs {s['torch_loss']:.4f}")
    return out


# --------------------------------------------------------------------------- report
class Report:
    """The report, rewritten in full (JSON and Markdown) on every update."""

    def __init__(self, args, info):
        out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.smoke
                           else ROOT / "bench" / "results")
        out.mkdir(parents=True, exist_ok=True)
        self.dir = out
        self.stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dev = "".join(ch if ch.isalnum() else "-" for ch in info["device"])[:40].strip("-")
        self.base = out / f"gpu_check_{'dry-run' if args.smoke else dev}_{self.stamp}"
        self.data = {"when_utc": self.stamp, "argv": sys.argv[1:], "budget_s": args.budget,
                     "versions": info, "tests": None, "results": [], "e2e": None,
                     "complete": False,
                     "notes": "medians in ms; speedup = torch_ms / fastrnn_ms (>1: fastrnn "
                              "faster); torch uses cuDNN in strict FP32 (TF32 off) unless a "
                              "column says tf32; compile time excluded from medians"}

    def update(self, **kw):
        self.data.update(kw)
        self.write()

    def add_row(self, row):
        self.data["results"].append(row)
        self.write()

    def write(self):
        tmp = self.base.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.base.with_suffix(".json"))
        self.base.with_suffix(".md").write_text(self.markdown())

    def markdown(self):
        d = self.data
        info = d["versions"]
        lines = [f"# fastrnn CUDA check — {info['device']}", "",
                 f"Run {d['when_utc']} with `python bench/gpu_check.py {' '.join(d['argv'])}` "
                 f"(budget {d['budget_s']:.0f} s)"
                 + ("." if d["complete"] else "; INCOMPLETE (still running, or stopped)."), "",
                 "## Versions", ""]
        lines += [f"- {k}: {v}" for k, v in info.items()]
        lines += ["", "## Tests", ""]
        t = d["tests"]
        if t is None:
            lines.append("not run")
        else:
            lines.append(f"**{t['status']}**" + (f": {t['summary']}" if t.get("summary") else ""))
            inst = t.get("install") or {}
            if "kernels" in inst:
                lines.append(f"\nfastrnn.kernels imported from `{inst['kernels']}`")
            lines += [f"- {s}" for s in t.get("skip_reasons") or []]
        lines += ["", "## Layers against cuDNN (float32, strict FP32 for both; medians in ms; "
                  "speed-up = torch / fastrnn)", "",
                  "| cell | T | B | H=I | strategy | train fastrnn | train torch | speed-up "
                  "| infer fastrnn | infer torch | speed-up | compile s | max abs diff y "
                  "| max abs diff dx |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        tf32 = []
        for r in d["results"]:
            if "skipped" in r:
                lines.append(f"| {r['cell']} | {r['T']} | {r['B']} | {r['H']} | skipped: "
                             f"{r['skipped']} |||||||||")
                continue
            lines.append(
                f"| {r['cell']} | {r['T']} | {r['B']} | {r['H']} | {r['strategy']} "
                f"| {r['train_fastrnn_ms']:.3f} | {r['train_torch_ms']:.3f} "
                f"| {r['train_speedup']:.2f} | {r['infer_fastrnn_ms']:.3f} "
                f"| {r['infer_torch_ms']:.3f} | {r['infer_speedup']:.2f} | {r['compile_s']:.1f} "
                f"| {r['max_abs_diff_y']:.1e} | {r['max_abs_diff_dx']:.1e} |")
            if "train_torch_tf32_ms" in r:
                tf32.append(f"| {r['cell']} | {r['B']} | {r['H']} | {r['train_torch_tf32_ms']:.3f}"
                            f" | {r['train_speedup_vs_tf32']:.2f} | {r['infer_torch_tf32_ms']:.3f}"
                            f" | {r['infer_speedup_vs_tf32']:.2f} |")
        if tf32:
            lines += ["", "### torch with TF32 allowed (its default on Ampere and later; "
                      "fastrnn stays FP32)", "",
                      "| cell | B | H=I | train torch TF32 | speed-up | infer torch TF32 "
                      "| speed-up |", "|---|---|---|---|---|---|---|"] + tf32
        lines += ["", "## CPU thread scaling (fastrnn bench --threads ...)", ""]
        sc = d.get("cpu_scaling")
        if sc is None:
            lines.append("not run")
        else:
            lines.append(f"{sc['status']}" + (f"; `{sc['json']}`" if sc.get("json") else ""))
            if sc.get("table"):
                lines += ["", "```", sc["table"], "```"]
        lines += ["", "## End-to-end training (bench/gpu_e2e.py)", ""]
        e = d["e2e"]
        if e is None:
            lines.append("not run")
        else:
            lines.append(f"{e['status']}")
            for r in e.get("rows", []):
                lines.append(f"- {r.get('cell')} {r.get('library')}: "
                             f"{r.get('chars_per_s', float('nan')):,.0f} chars/s, loss "
                             f"{r.get('first_loss', float('nan')):.4f} -> "
                             f"{r.get('final_loss', float('nan')):.4f}")
            for cell, s in (e.get("summary") or {}).items():
                if "speedup" in s:
                    lines.append(f"- {cell}: fastrnn / torch throughput {s['speedup']:.2f}x, "
                                 f"loss difference {s['loss_diff']:+.4f}")
                else:
                    why = (e.get("config") or {}).get("torch", "?")
                    lines.append(f"- {cell}: torch side skipped ({why})")
        return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    clock = Clock(args.budget)
    cuda = gpu_or_exit(args.smoke)
    info = versions(cuda, args.smoke)
    print(f"device: {info['device']}; budget {args.budget:.0f} s")
    report = Report(args, info)
    report.write()
    clock.arm_watchdog()
    failed = []

    if not args.skip_tests and (not args.smoke or args.tests):
        tests = run_tests(args.smoke, args.test_share * args.budget, report.dir)
        report.update(tests=tests)
        if not tests["ok"]:
            failed.append(f"tests {tests['status']}")

    if not args.skip_bench:
        try:
            info["fastrnn_cuda_settings"] = configure_fastrnn(args)
        except ImportError as exc:
            failed.append("layer benchmark: fastrnn's CUDA backend does not import")
            report.update(bench_error=f"fastrnn.kernels.cuda does not import: {exc}")
        else:
            report.update(versions=info)
            deadline = args.budget - args.e2e_seconds - args.scaling_seconds
            bench(args, cuda, clock, deadline, report.add_row)

    if not args.skip_scaling:
        scaling = run_scaling(args, min(args.scaling_seconds,
                                        clock.left() - args.e2e_seconds - 5), report.dir)
        report.update(cpu_scaling=scaling)
        if scaling["status"].startswith(("FAILED", "TIMED OUT")):
            failed.append(f"cpu scaling {scaling['status']}")

    if not args.skip_e2e:
        e2e = run_e2e(args, clock.left() - 5, report.dir)     # 5 s to write the report
        report.update(e2e=e2e)
        if e2e["status"].startswith(("FAILED", "TIMED OUT")):
            failed.append(f"end-to-end {e2e['status']}")

    faulthandler.cancel_dump_traceback_later()
    report.update(complete=True, elapsed_s=round(clock.elapsed(), 1), failed=failed)
    print(f"report: {report.base.with_suffix('.md')} and .json ({clock.elapsed():.0f} s)")
    if failed:
        print("gpu_check: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
