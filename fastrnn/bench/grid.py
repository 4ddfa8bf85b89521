"""The cell grid of ``fastrnn bench``: one row per cell, shape and mode.

Owns the grid run (:func:`main`, :func:`run`): fastrnn's cpu backend against
the NumPy reference, torch at 1 and 2 threads and onnxruntime, timed
interleaved, with the GEMM peaks, the summary and the JSON records; the
``--compute-dtype bfloat16`` rows under each row; and the cold / cached JIT
compile times measured in new processes (:func:`compile_times`). What it
times comes from :mod:`fastrnn.bench.runners` and
:mod:`fastrnn.bench.onnx_peer`; the ``--busy`` table is
:mod:`fastrnn.bench.busy`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np

from ..cells import get_cell
from .busy import busy_table, sigterm_to_exit
from .onnx_peer import ONNX_CELLS, ort_available, ort_runners
from ..testing import make_problem
from .runners import GRID, MODES, backend_runner, has_compute_dtype, layer_flops, \
    torch_runner
from .timing import (PEER_THREADS, TorchThreads, bf16_gemm_peak, cpu_threads_setter,
                     gemm_peaks, geomean, grid_timing, interleaved_medians)

_COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fastrnn.kernels import cpu
from fastrnn.bench.runners import backend_runner
from fastrnn.testing import make_problem
from fastrnn.cells import get_cell
t_import = time.perf_counter() - t0
out = {"import_s": t_import, "cells": {}}
for name in sys.argv[1].split(","):
    cell = get_cell(name)
    inputs = make_problem(cell, 3, 2, 3, 4)
    t1 = time.perf_counter()
    backend_runner(cpu, cell, inputs, "train")()
    out["cells"][name] = time.perf_counter() - t1
out["total_s"] = time.perf_counter() - t0
print("JSON" + json.dumps(out))
"""


def compile_times(registry_cells):
    """Cold and cached first-call time (fwd + bwd, float32) in fresh processes."""
    res = {}
    with tempfile.TemporaryDirectory(prefix="fastrnn-numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for label in ("cold", "cached"):
            p = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET, ",".join(registry_cells)],
                               env=env, capture_output=True, text=True, timeout=900)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON")]
            if p.returncode != 0 or not line:
                res[label] = {"error": (p.stderr or p.stdout)[-2000:]}
            else:
                res[label] = json.loads(line[-1][4:])
    return res


def main(args, cells, impls, shapes):
    """``fastrnn bench`` without --train, --threads A,B,... or --latency (the
    arguments from :func:`fastrnn.bench.parse_args`); returns 0 on success."""
    from ..kernels import cpu

    ok, why = cpu.available()
    if not ok:
        print(f"the cpu backend is not available: {why}", file=sys.stderr)
        return 1
    cpu_default = cpu.get_num_threads()      # the kernels' own default, before we set any
    blas_default = cpu.blas.blas_get_threads() if cpu.blas.blas_get_threads is not None else None
    torch = None
    if "torch" in impls:
        try:
            import torch
        except ImportError:
            print("torch is not installed: skipping the PyTorch columns")
            impls = [i for i in impls if i != "torch"]
    ort = None
    if "ort" in impls:
        mods = ort_available()
        if mods is None:
            print("onnxruntime / onnx are not installed (pip install 'fastrnn[ort]'): "
                  "skipping the onnxruntime column")
            impls = [i for i in impls if i != "ort"]
        else:
            ort = mods[0]
    old_term = sigterm_to_exit()
    try:
        with TorchThreads(torch) as tt:
            return run(args, cells, impls, shapes, cpu, torch, tt, ort, cpu_default)
    finally:
        cpu.set_num_threads(cpu_default)
        if blas_default is not None:
            cpu.blas.blas_set_threads(blas_default)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def run(args, cells, impls, shapes, cpu, torch, tt, ort, cpu_default):
    """The grid's table, summary and JSON file (``cpu``: the cpu backend,
    ``tt``: the :class:`TorchThreads` restoring torch's thread count)."""
    from .. import reference
    torch_default = tt.saved
    cpu.set_num_threads(args.threads)
    if cpu.blas.blas_set_threads is not None:
        cpu.blas.blas_set_threads(args.threads)    # the reference's NumPy BLAS threads
    min_time, min_rounds, max_rounds, burst = grid_timing(args.quick)
    cpu_prep = cpu_threads_setter(cpu, args.threads)

    peers = ", ".join(p for p, on in (("torch", torch is not None), ("onnxruntime", ort))
                      if on)
    print(f"fastrnn bench: float32, 1 layer, 1 direction; fastrnn and NumPy at "
          f"{args.threads} thread(s)" + (f", {peers} at 1 and 2 (faster used)" if peers else "")
          + f"; medians of >= {min_rounds} interleaved rounds; times in ms")
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_start is not None and load_start > 0.5:
        print(f"WARNING: load average {load_start:.2f} at start: other work shares the CPU, "
              "absolute times and GEMM peak are noisy; the interleaved ratios less so")
    compile_info = None
    if args.compile and "cpu" in impls:
        compile_info = compile_times([get_cell(c).name for c in cells])
        for label, r in compile_info.items():
            if "error" in r:
                print(f"compile ({label}): failed: {r['error'][-300:]}")
            else:
                per = ", ".join(f"{k} {v:.2f}s" for k, v in r["cells"].items())
                print(f"compile ({label}, new process, fwd+bwd first call): import "
                      f"{r['import_s']:.2f}s; {per}; total {r['total_s']:.2f}s")
    peaks = gemm_peaks(args.threads, torch, n=args.gemm_size, quick=args.quick)
    peak = max(peaks.values())
    print(f"float32 GEMM peak ({args.gemm_size}^3, {args.threads} thread(s)): "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + f" GFLOP/s; %peak uses {peak:.0f}")
    bf16 = _bf16_setup(args, impls, cpu, reference, torch)

    records = []
    cols = []
    for i in ("numpy", "cpu"):
        if i in impls:
            cols.append(i)
    if torch is not None:
        cols += [f"torch@{n}" for n in PEER_THREADS]
    if ort is not None:
        cols.append("ort")
    hdr = (f"{'cell':<17}{'T,B,I,H':<16}{'mode':<6}" + "".join(f"{c:>10}" for c in cols)
           + f"{'cpu/np':>8}{'cpu/torch':>10}" + (f"{'cpu/ort':>8}" if ort is not None else "")
           + f"{'GF/s':>7}{'%peak':>7}")
    print(hdr)
    print("-" * len(hdr))
    ratios = {}
    for cname in cells:
        cell = get_cell(cname)
        reg = cell.name
        for shape in shapes:
            T, B, I, H = shape
            inputs = make_problem(cell, T, B, I, H)
            ort_fns = None
            if ort is not None and reg in ONNX_CELLS and "infer" in MODES:
                ort_fns = ort_runners(ort, cell, inputs, PEER_THREADS, check_with=cpu)
            for mode in MODES:
                fns, prep, who = {}, {}, {}
                for impl in impls:
                    if impl == "torch":
                        if cell.torch is not None:
                            for n in PEER_THREADS:
                                key = f"torch@{n}"
                                fns[key] = torch_runner(torch, cell, inputs, mode)
                                prep[key] = tt.setter(n)
                                who[key] = ("torch", n)
                    elif impl == "ort":
                        if ort_fns is not None and mode == "infer":
                            for n, fn in ort_fns.items():
                                key = f"ort@{n}"
                                fns[key] = fn
                                who[key] = ("ort", n)
                    else:
                        be = reference if impl == "numpy" else cpu
                        fns[impl] = backend_runner(be, cell, inputs, mode)
                        prep[impl] = cpu_prep
                        who[impl] = (impl, args.threads)
                if bf16 is not None:
                    _bf16_entries(bf16, cell, inputs, mode, fns, prep, who, cpu_prep, tt,
                                  args.threads)
                res = interleaved_medians(fns, min_time, min_rounds, max_rounds,
                                          prepare=prep, **burst)
                med = {k: m for k, (m, _) in res.items()}
                best = {}
                for key, (impl, n) in who.items():
                    if impl not in best or med[key] < med[best[impl]]:
                        best[impl] = key
                flops = layer_flops(cell, T, B, I, H, mode)
                for key, (m, calls) in res.items():
                    impl, n = who[key]
                    rec = dict(cell=cname, registry_cell=reg, shape=list(shape),
                               T=T, B=B, I=I, H=H, mode=mode, impl=impl,
                               threads=n, best=best[impl] == key,
                               median_s=m, calls=calls, gflops=flops / m / 1e9,
                               peak_fraction=flops / m / 1e9 / peak)
                    if bf16 is not None:        # impl "cpu_bf16" is impl "cpu" in bf16
                        rec.update(impl=impl.replace(_BF16_SUFFIX, ""), compute_dtype=(
                            "bfloat16" if impl.endswith(_BF16_SUFFIX) else "float32"))
                        if impl.endswith(_BF16_SUFFIX) and bf16["peak"]:
                            rec["bf16_peak_fraction"] = flops / m / 1e9 / bf16["peak"]
                    records.append(rec)
                bm = {impl: med[key] for impl, key in best.items()}
                row = f"{cname:<17}{','.join(map(str, shape)):<16}{mode:<6}"
                for c in cols:
                    v = bm.get("ort") if c == "ort" else med.get(c)
                    row += f"{v * 1e3:>10.3f}" if v is not None else f"{'-':>10}"
                rs = {}
                for key in ("numpy", "torch", "ort"):
                    if key in bm and "cpu" in bm:
                        rs[key] = bm[key] / bm["cpu"]
                row += f"{rs['numpy']:>8.2f}" if "numpy" in rs else f"{'-':>8}"
                row += f"{rs['torch']:>10.2f}" if "torch" in rs else f"{'-':>10}"
                if ort is not None:
                    row += f"{rs['ort']:>8.2f}" if "ort" in rs else f"{'-':>8}"
                if "cpu" in bm:
                    gf = flops / bm["cpu"] / 1e9
                    row += f"{gf:>7.1f}{100 * gf / peak:>6.0f}%"
                print(row, flush=True)
                for key, r in rs.items():
                    ratios.setdefault((cname, mode, key), []).append((shape, r))
                if bf16 is not None:
                    _bf16_row(bf16, cname, shape, mode, bm, flops, ratios)

    busy = None
    if args.busy:
        busy = busy_table(args, cells, shapes, impls, cpu, torch, tt, ort,
                          cpu_default, torch_default)

    peaks_end = gemm_peaks(args.threads, torch, n=args.gemm_size, quick=args.quick)
    print("\nfloat32 GEMM peak again at the end: "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks_end.items())
          + f" GFLOP/s (%peak above uses the start value, {peak:.0f})")
    print("\nsummary (cpu speed-up against the peer's best thread count; geometric mean "
          "over the shapes, min, at which shape)")
    summary = []
    for (cname, mode, key), v in ratios.items():
        rs = [r for _, r in v]
        worst = min(v, key=lambda sr: sr[1])
        summary.append(dict(cell=cname, mode=mode, versus=key, geomean=geomean(rs),
                            min=worst[1], min_shape=list(worst[0])))
        print(f"  {cname:<17}{mode:<6}vs {key:<6} geomean {geomean(rs):6.2f}x   "
              f"min {worst[1]:6.2f}x at {worst[0]}")
    big = [r for r in records if r["cell"] == "lstm" and r["mode"] == "train"
           and r["impl"] == "cpu" and tuple(r["shape"]) == GRID[-1]
           and r.get("compute_dtype", "float32") == "float32"]
    if big:
        r = big[0]
        print(f"  lstm train at {GRID[-1]}: {r['gflops']:.0f} GFLOP/s = "
              f"{100 * r['peak_fraction']:.0f}% of the measured GEMM peak")
    if args.json:
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        meta = dict(threads=args.threads, peer_threads=list(PEER_THREADS), quick=args.quick,
                    gemm_size=args.gemm_size,
                    gemm_peak_gflops=peak, gemm_peaks_gflops=peaks,
                    gemm_peak_gflops_end=max(peaks_end.values()),
                    gemm_peaks_gflops_end=peaks_end,
                    loadavg_start=load_start, loadavg_end=load_end,
                    compile=compile_info, summary=summary, dtype="float32",
                    **({} if bf16 is None else dict(
                        compute_dtype="bfloat16", bf16_impl=bf16["impl"],
                        bf16_gemm_peak_gflops=bf16["peak"])),
                    torch=None if torch is None else torch.__version__,
                    onnxruntime=None if ort is None else ort.__version__,
                    numpy=np.__version__)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, records=records, busy=busy), f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0


# --------------------------------------------------------------------------- --compute-dtype
_BF16_SUFFIX = "_bf16"




def _bf16_setup(args, impls, cpu, reference, torch):
    """What the bf16 rows time, or None without ``--compute-dtype``: fastrnn's
    backend in the mode (cpu where its forward takes ``compute_dtype``, else
    the reference), torch's bf16 twin, and torch's bf16 matmul peak."""
    if args.compute_dtype is None:
        return None
    impl = None
    if "cpu" in impls and has_compute_dtype(cpu):
        impl = "cpu"
    elif "numpy" in impls:
        impl = "numpy"
        if "cpu" in impls:
            print("the cpu backend has no compute_dtype here: the bf16 rows time the "
                  "reference's bfloat16 mode (backend 'numpy')")
    else:
        print("no fastrnn backend in --impls runs compute_dtype='bfloat16': the bf16 rows "
              "show torch only")
    peak = None
    if torch is not None:
        peak = bf16_gemm_peak(args.threads, torch, n=args.gemm_size, quick=args.quick)
        print(f"bfloat16 GEMM peak (torch.mm, {args.gemm_size}^3, {args.threads} thread(s)): "
              f"{peak:.0f} GFLOP/s; the bf16 rows' %peak uses it")
    print(f"bf16 rows: fastrnn {impl or '-'} with compute_dtype='bfloat16' (ms), torch "
          "bfloat16 at its faster of 1/2 threads (ms), and fastrnn bf16's speed-up against "
          "torch bf16, torch float32 and fastrnn's own float32 above")
    return dict(impl=impl, peak=peak, torch=torch,
                be=None if impl is None else (cpu if impl == "cpu" else reference))


def _bf16_entries(bf16, cell, inputs, mode, fns, prep, who, cpu_prep, tt, threads):
    """Add the bf16 timings of one cell, shape and mode to the interleaved round."""
    if bf16["be"] is not None:
        key = bf16["impl"] + _BF16_SUFFIX
        fns[key] = backend_runner(bf16["be"], cell, inputs, mode, compute_dtype="bfloat16")
        prep[key] = cpu_prep
        who[key] = (key, threads)
    torch = bf16["torch"]
    if torch is not None and cell.torch is not None:
        for n in PEER_THREADS:
            key = f"torch{_BF16_SUFFIX}@{n}"
            fns[key] = torch_runner(torch, cell, inputs, mode, dtype=torch.bfloat16)
            prep[key] = tt.setter(n)
            who[key] = ("torch" + _BF16_SUFFIX, n)


def _bf16_row(bf16, cname, shape, mode, bm, flops, ratios):
    """Print the bf16 row under a grid row (``bm``: best median per impl) and
    keep its ratios for the summary."""
    mine = None if bf16["impl"] is None else bm.get(bf16["impl"] + _BF16_SUFFIX)
    tb = bm.get("torch" + _BF16_SUFFIX)
    row = f"{'':<17}{'':<16}{'bf16':<6}"
    row += f"{bf16['impl'] or '-':>6}" + (f"{mine * 1e3:>10.3f}" if mine else f"{'-':>10}")
    row += f"{'torch':>7}" + (f"{tb * 1e3:>10.3f}" if tb else f"{'-':>10}")
    rs = {}
    if mine:
        for label, other in (("torch bf16", tb), ("torch f32", bm.get("torch")),
                             (f"{bf16['impl']} f32", bm.get(bf16["impl"]))):
            if other:
                rs[label] = other / mine
    for label in ("torch bf16", "torch f32"):
        row += f"  vs {label} " + (f"{rs[label]:5.2f}x" if label in rs else f"{'-':>6}")
    own = f"{bf16['impl']} f32"
    row += "  vs f32 " + (f"{rs[own]:5.2f}x" if own in rs else f"{'-':>6}")
    if mine:
        gf = flops / mine / 1e9
        row += f"{gf:>8.1f} GF/s"
        if bf16["peak"]:
            row += f"{100 * gf / bf16['peak']:>5.0f}% bf16 peak"
    print(row, flush=True)
    for label, r in rs.items():
        ratios.setdefault((cname, mode, f"{label} (fastrnn bf16)"), []).append((shape, r))
