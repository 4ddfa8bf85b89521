"""The load test of ``fastrnn bench --busy N``.

Owns the competing busy processes (:class:`BusyLoad`: pure-Python spin loops
that are stopped on exit, on exceptions and Ctrl-C, at interpreter exit, and
that leave by themselves when their parent is gone), the SIGTERM handler
that lets the benchmark stop them (:func:`sigterm_to_exit`), and the table of
each library's slowdown under that load against its own quiet one-thread
time (:func:`busy_table`).
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time

from ..cells import get_cell
from .onnx_peer import ONNX_CELLS, ort_runners
from ..testing import make_problem
from .runners import MODES, backend_runner, torch_runner
from .timing import cpu_threads_setter, grid_timing, interleaved_medians

#: one busy process: a pure-Python spin loop that leaves once its parent is gone
_BUSY_SNIPPET = r"""
import os, sys
parent = int(sys.argv[1])
n = 0
try:
    while True:                       # a pure-Python spin: one core's worth of work
        n += 1
        if n % 2000000 == 0 and os.getppid() != parent:
            break                     # the benchmark died without cleaning up: leave too
except KeyboardInterrupt:
    pass
"""


class BusyLoad:
    """Context manager running ``n`` competing busy processes (pure-Python spin
    loops, pinned to nothing). They are killed on exit, on exceptions and
    Ctrl-C, at interpreter exit, and they leave by themselves when their
    parent is gone."""

    _live = set()

    def __init__(self, n):
        self.n = int(n)
        self.procs = []

    def start(self):
        for _ in range(self.n):
            p = subprocess.Popen([sys.executable, "-c", _BUSY_SNIPPET, str(os.getpid())],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            self.procs.append(p)
            BusyLoad._live.add(p)
        time.sleep(0.1 if self.n else 0.0)    # let them reach the spin loop
        return self

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=2)
            BusyLoad._live.discard(p)
        self.procs = []

    def alive(self):
        return sum(p.poll() is None for p in self.procs)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


@atexit.register
def _kill_busy():   # pragma: no cover - last resort
    for p in list(BusyLoad._live):
        if p.poll() is None:
            p.kill()


def sigterm_to_exit():
    """Turn SIGTERM into SystemExit while benchmarking so ``finally`` blocks
    (which stop the busy processes) run; returns the previous handler."""
    try:
        return signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    except ValueError:      # not the main thread
        return None


def busy_table(args, cells, shapes, impls, cpu, torch, tt, ort, cpu_default, torch_default):
    """The load test of ``--busy N``: per cell, shape and mode, first the quiet
    one-thread times of fastrnn (and torch, onnxruntime for inference), then,
    with N busy processes spinning, the same at each library's default thread
    count. Returns a list of records (and prints the table)."""
    n = args.busy
    min_time, min_rounds, max_rounds, burst = grid_timing(args.quick)
    print(f"\nload test: {n} busy process(es) (pure-Python spin loops); each library at its "
          f"default thread count (fastrnn {cpu_default}"
          + (f", torch {torch_default}" if torch is not None else "")
          + (", onnxruntime its default" if ort is not None else "")
          + ") against its own quiet 1-thread time (measured first, without the load)")
    libs = [("cpu", "fastrnn")]
    if torch is not None and "torch" in impls:
        libs.append(("torch", "torch"))
    if ort is not None and "ort" in impls:
        libs.append(("ort", "ort"))
    hdr = f"{'cell':<17}{'T,B,I,H':<16}{'mode':<6}"
    for _, label in libs:
        hdr += f"{label + ' 1T':>12}{'busy':>10}{'slower':>9}"
    print(hdr)
    print("-" * len(hdr))
    out = []
    for cname in cells:
        cell = get_cell(cname)
        reg = cell.name
        for shape in shapes:
            inputs = make_problem(cell, *shape)
            ort_default = None
            if ort is not None and reg in ONNX_CELLS:
                ort_default = ort_runners(ort, cell, inputs, (1, 0))   # 0: ORT's default
            for mode in MODES:
                def make(threads_cpu, threads_torch, ort_key):
                    fns, prep = {}, {}
                    fns["cpu"] = backend_runner(cpu, cell, inputs, mode)
                    prep["cpu"] = cpu_threads_setter(cpu, threads_cpu)
                    if ("torch", "torch") in libs and cell.torch is not None:
                        fns["torch"] = torch_runner(torch, cell, inputs, mode)
                        prep["torch"] = tt.setter(threads_torch)
                    if ort_default is not None and mode == "infer":
                        fns["ort"] = ort_default[ort_key]
                    return fns, prep
                fns, prep = make(1, 1, 1)
                quiet = interleaved_medians(fns, min_time, min_rounds, max_rounds,
                                            prepare=prep, **burst)
                fns, prep = make(cpu_default, torch_default, 0)
                with BusyLoad(n) as load:
                    loaded = interleaved_medians(fns, min_time, min_rounds, max_rounds,
                                                 prepare=prep, **burst)
                    alive = load.alive()
                if alive != n:
                    print(f"WARNING: only {alive} of {n} busy processes were running at the end")
                row = f"{cname:<17}{','.join(map(str, shape)):<16}{mode:<6}"
                for key, label in libs:
                    if key in quiet:
                        q, b = quiet[key][0], loaded[key][0]
                        row += f"{q * 1e3:>12.3f}{b * 1e3:>10.3f}{b / q:>8.2f}x"
                        thr = {"cpu": cpu_default, "torch": torch_default, "ort": 0}[key]
                        out.append(dict(cell=cname, registry_cell=reg, shape=list(shape),
                                        mode=mode, impl=key, busy_processes=n,
                                        quiet_1thread_s=q, busy_default_s=b,
                                        default_threads=thr, slowdown=b / q))
                    else:
                        row += f"{'-':>12}{'-':>10}{'-':>9}"
                print(row, flush=True)
    return out
