"""Thread scaling: ``fastrnn bench --threads 1,2,4,8,16`` (and ``--plot FILE.png``).

For each cell, shape and mode (training step, inference) fastrnn and
``torch.nn`` run at every thread count of the list, all entries of one
(cell, shape, mode) timed interleaved
(:func:`fastrnn.bench.timing.interleaved_medians`), so they share the same
slowly varying load. Reported per count:

* ``speed-up`` ``S(n) = t(1) / t(n)`` and ``efficiency`` ``S(n) / n`` of each
  library against its own one-thread time;
* ``vs torch``: torch's time at its *best* count of the list over fastrnn's
  at ``n`` (above 1 fastrnn is faster), the baseline the project compares to.

Counts above the cores this process may run on (``os.sched_getaffinity``) are
timed anyway but marked: their efficiency says nothing about the library.
The JSON record (``--json``) keeps every median with the CPU's name, so
``bench/results/cpu_scaling_<cpu>.json`` files from different machines sit
side by side; ``--plot`` draws speed-up against threads per cell and shape
(matplotlib, optional).
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys

from ..cells import get_cell
from ..testing import make_problem
from .runners import MODES, backend_runner, layer_flops, torch_runner
from .timing import TorchThreads, cpu_threads_setter, interleaved_medians

#: the shapes the issue asks about (large ones, where both libraries run near
#: the GEMM rate per core): the default of a scaling run
SCALING_SHAPES = [(100, 64, 128, 256), (50, 64, 256, 512)]


def parse_counts(text):
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique, each >= 1); ValueError otherwise."""
    try:
        counts = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--threads wants a thread count or a comma list of them, "
                         f"got {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--threads wants counts >= 1, got {text!r}")
    return counts


def usable_cores():
    """Cores this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_slug(name=None):
    """A file-name part for the CPU: ``"AMD EPYC 9R14 96-Core Processor"`` ->
    ``"amd_epyc_9r14_96_core"``."""
    s = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*|@.*", "", (name or cpu_name()).lower())
    s = re.sub(r"[^a-z0-9]+", "_", s).strip("_")
    return s or "unknown"


def run(cells, shapes, counts, torch=None, quick=False, emit=print):
    """Time fastrnn (and torch, when given) at each thread count; print the
    table through ``emit`` and return the records (one per library, count,
    cell, shape and mode)."""
    from ..kernels import cpu
    cores = usable_cores()
    if quick:
        timing = dict(min_time=0.0, min_rounds=2, max_rounds=2, burst_s=0.03, settle_s=0.1)
    else:
        timing = dict(min_time=1.0, min_rounds=3, max_rounds=10, burst_s=0.2, settle_s=0.2)
    emit(f"thread scaling on {cpu_name()} ({cores} usable core(s)); fastrnn"
         + (" and torch" if torch is not None else "") + f" at {counts} thread(s); "
         "float32, one layer; medians of interleaved rounds; times in ms")
    over = [n for n in counts if n > cores]
    if over:
        emit(f"note: {over} exceed the {cores} usable core(s): those rows oversubscribe "
             "the CPU (marked *)")
    records = []
    hdr = (f"{'cell':<8}{'T,B,I,H':<16}{'mode':<6}{'threads':>8}{'fastrnn':>10}{'speedup':>8}"
           f"{'eff':>6}" + (f"{'torch':>10}{'speedup':>8}{'eff':>6}{'vs best torch':>14}"
                             if torch is not None else ""))
    emit(hdr)
    emit("-" * len(hdr))
    with TorchThreads(torch) as tt:
        old = cpu.get_num_threads()
        old_over = cpu.settings.oversubscribe
        try:
            for cname in cells:
                cell = get_cell(cname)
                for shape in shapes:
                    inputs = make_problem(cell, *shape)
                    for mode in MODES:
                        fns, prep = {}, {}
                        for n in counts:
                            fns[("fastrnn", n)] = backend_runner(cpu, cell, inputs, mode)
                            prep[("fastrnn", n)] = _pool_setter(cpu, n, cores)
                            if torch is not None and cell.torch is not None:
                                fns[("torch", n)] = torch_runner(torch, cell, inputs, mode)
                                prep[("torch", n)] = tt.setter(n)
                        res = interleaved_medians(fns, prepare=prep, **timing)
                        med = {k: m for k, (m, _) in res.items()}
                        flops = layer_flops(cell, *shape, mode)
                        tbest = min((m for (lib, _), m in med.items() if lib == "torch"),
                                    default=None)
                        for (lib, n), m in med.items():
                            one = med.get((lib, counts[0]))
                            s = one / m * counts[0] if one else None
                            records.append(dict(
                                cell=cell.name, shape=list(shape), mode=mode, library=lib,
                                threads=n, oversubscribed=n > cores, median_s=m,
                                calls=res[(lib, n)][1], gflops=flops / m / 1e9,
                                speedup=s, efficiency=None if s is None else s / n,
                                vs_best_torch=None if (tbest is None or lib != "fastrnn")
                                else tbest / m))
                        for n in counts:
                            f = next(r for r in records[-len(med):]
                                     if r["library"] == "fastrnn" and r["threads"] == n)
                            row = (f"{cell.name:<8}{','.join(map(str, shape)):<16}{mode:<6}"
                                   f"{str(n) + ('*' if n > cores else ''):>8}"
                                   f"{f['median_s'] * 1e3:>10.2f}{f['speedup']:>8.2f}"
                                   f"{f['efficiency']:>6.0%}")
                            t = next((r for r in records[-len(med):]
                                      if r["library"] == "torch" and r["threads"] == n), None)
                            if t is not None:
                                row += (f"{t['median_s'] * 1e3:>10.2f}{t['speedup']:>8.2f}"
                                        f"{t['efficiency']:>6.0%}{f['vs_best_torch']:>13.2f}x")
                            emit(row)
        finally:
            cpu.set_num_threads(old)
            cpu.settings.oversubscribe = old_over
    return records


def _pool_setter(cpu, n, cores):
    """fastrnn at ``n`` threads, all of them even past the usable cores (the
    pool's own cap would otherwise make every count above ``cores`` time the
    same plan): such rows are marked ``*`` (oversubscribed)."""
    base = cpu_threads_setter(cpu, n)

    def set_():
        base()
        cpu.settings.oversubscribe = n > cores
    return set_


def save_json(path, records, counts, torch=None):
    meta = dict(cpu=cpu_name(), usable_cores=usable_cores(), threads=counts,
                machine=platform.machine(), python=platform.python_version(),
                torch=None if torch is None else torch.__version__)
    with open(path, "w") as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)


def plot(path, records, title=None):
    """Speed-up against threads, one panel per (cell, shape), a line per library
    and mode, with the ideal line. Needs matplotlib (``pip install matplotlib``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install 'fastrnn[plot]')") from None
    panels = sorted({(r["cell"], tuple(r["shape"])) for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (cell, shape) in zip(axes[0], panels):
        rows = [r for r in records if r["cell"] == cell and tuple(r["shape"]) == shape]
        counts = sorted({r["threads"] for r in rows})
        ax.plot(counts, counts, ":", color="grey", label="ideal")
        for lib, color in (("fastrnn", "C0"), ("torch", "C1")):
            for mode, style in (("train", "-o"), ("infer", "--s")):
                pts = sorted((r["threads"], r["speedup"]) for r in rows
                             if r["library"] == lib and r["mode"] == mode)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{lib} {mode}")
        ax.set_title(f"{cell} T,B,I,H={','.join(map(str, shape))}", fontsize=9)
        ax.set_xlabel("threads")
        ax.set_ylabel("speed-up over 1 thread")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or f"thread scaling on {cpu_name()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args, cells, shapes):
    """``fastrnn bench --threads A,B,...`` (called by :func:`fastrnn.bench.main`)."""
    torch = None
    if "torch" in args.impls:
        try:
            import torch
        except ImportError:
            print("torch is not installed: timing fastrnn alone")
    records = run(cells, shapes, args.thread_counts, torch, quick=args.quick)
    if args.json:
        save_json(args.json, records, args.thread_counts, torch)
        print(f"wrote {len(records)} records to {args.json}")
    if args.plot:
        try:
            print(f"wrote {plot(args.plot, records)}")
        except RuntimeError as exc:
            print(f"fastrnn bench: {exc}", file=sys.stderr)
            return 1
    return 0
