"""Timing helpers shared by every ``fastrnn bench`` table.

Owns the interleaved median timing (:func:`interleaved_medians`: every
implementation timed in bursts, in turn, with pauses, so that all see the same
slowly varying load of a shared machine), the thread-count setters run before
each burst (:class:`TorchThreads` for torch, :func:`cpu_threads_setter` for
fastrnn's pool and NumPy's BLAS), the thread counts the peers are timed at
(:data:`PEER_THREADS`), the grid's timing settings (:func:`grid_timing`) and
the float32 / bfloat16 GEMM peaks the tables' %peak columns divide by.
"""
from __future__ import annotations

import math
import statistics
import time

import numpy as np

#: the thread counts torch and onnxruntime are timed at (the faster is their number)
PEER_THREADS = (1, 2)


# --------------------------------------------------------------------------- timing
def median_time(fn, min_time, min_reps, max_reps):
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time
                                    and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def interleaved_medians(fns, min_time, min_rounds, max_rounds, burst_s=0.2, settle_s=0.2,
                        prepare=None):
    """Median seconds per call of each ``fns[name]()``, timed in alternating bursts.

    Each round runs every implementation for a burst (~``burst_s``), so all of
    them see the same slowly varying load of a shared machine. Before each
    burst the process sleeps ``settle_s`` and makes one untimed call: OpenBLAS
    worker threads keep spinning for ~0.1 s after their last call (their
    default thread timeout) and torch's OpenMP workers for a while too, and a
    burst that starts while the *other* library's workers still spin runs on
    one core instead of two. Back-to-back short bursts measured torch's LSTM
    2-3x slower than it runs alone; with the pause each library is timed as it
    runs by itself. A burst ends early once it has run 3x ``burst_s`` (calls
    far slower than calibrated, as threads collapse under load, must not stall
    the run).

    ``prepare[name]()``, where given, runs before each of that name's bursts
    (and its warm-up), outside the timed region: it sets the thread count the
    entry is timed at (torch at 1 and at 2 threads are two entries).
    Returns ``{name: (median_s, calls)}``."""
    prepare = prepare or {}
    noop = lambda: None   # noqa: E731
    reps = {}
    for name, fn in fns.items():      # warm-up (compiles) and burst calibration
        prepare.get(name, noop)()
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(burst_s / max(time.perf_counter() - t0, 1e-9)))
    times = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < min_time
                                  and rounds < max_rounds):
        for name, fn in fns.items():
            if len(fns) > 1:
                prepare.get(name, noop)()
                time.sleep(settle_s)
                fn()
            t_burst = time.perf_counter()
            for _ in range(reps[name]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if time.perf_counter() - t_burst > 3 * burst_s:
                    break     # calls got much slower than calibrated (e.g. under load)
        rounds += 1
    return {name: (statistics.median(v), len(v)) for name, v in times.items()}


class TorchThreads:
    """``torch.set_num_threads`` for one entry, and the restore of the thread
    count the process had (``with TorchThreads(torch) as tt: ...``)."""

    def __init__(self, torch):
        self.torch = torch
        self.saved = torch.get_num_threads() if torch is not None else None

    def setter(self, n):
        torch = self.torch
        return lambda: torch.set_num_threads(n) if torch.get_num_threads() != n else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.torch is not None:
            self.torch.set_num_threads(self.saved)
        return False


def cpu_threads_setter(cpu, n):
    def set_():
        cpu.set_num_threads(n)
        if cpu.blas.blas_set_threads is not None:
            cpu.blas.blas_set_threads(n)
    return set_


# --------------------------------------------------------------------------- GEMM peak
def gemm_peak_gflops(threads, n=2048, reps=5):
    """Measured float32 GEMM rate (n x n x n through NumPy's BLAS) in GFLOP/s."""
    from ..kernels import cpu
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    if cpu.blas.blas_set_threads is not None:
        cpu.blas.blas_set_threads(threads)
    med, _ = median_time(lambda: np.matmul(a, b, out=c), 0.5, reps, 4 * reps)
    return 2.0 * n ** 3 / med / 1e9


def bf16_gemm_peak(threads, torch, n=2048, quick=False):
    """bfloat16 ``n^3`` GEMM rate of ``torch.mm`` (oneDNN/MKL, float32
    accumulation) at ``threads`` threads, in GFLOP/s: the bf16 rows' peak."""
    a = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    a = a.to(torch.bfloat16)
    b = a.t().contiguous()
    with TorchThreads(torch) as tt:
        tt.setter(threads)()
        med, _ = median_time(lambda: torch.mm(a, b), 0.0 if quick else 1.0,
                             2 if quick else 3, 4 if quick else 12)
    return 2.0 * n ** 3 / med / 1e9


def gemm_peaks(threads, torch=None, n=2048, quick=False):
    """float32 ``n^3`` GEMM rate in GFLOP/s through NumPy's BLAS (``np.matmul``)
    and, when given, ``torch.mm`` (MKL), both at ``threads`` threads, timed
    interleaved. Returns ``{"numpy": gf, "torch": gf}``."""
    from ..kernels import cpu
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    fns = {"numpy": lambda: np.matmul(a, b, out=c)}
    prep = {"numpy": cpu_threads_setter(cpu, threads)}
    tt = TorchThreads(torch)
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c.copy())
        fns["torch"] = lambda: torch.mm(ta, tb, out=tc)
        prep["torch"] = tt.setter(threads)
    with tt:
        res = interleaved_medians(fns, 0.0 if quick else 1.0, 2 if quick else 3,
                                  2 if quick else 6, burst_s=0.3 if quick else 0.5,
                                  settle_s=0.1 if quick else 0.2, prepare=prep)
    return {k: 2.0 * n ** 3 / m / 1e9 for k, (m, _) in res.items()}


def geomean(v):
    """Geometric mean of positive numbers (NaN for none)."""
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def grid_timing(quick):
    """(min_time, min_rounds, max_rounds, burst kwargs) of the interleaved timing
    of the cell grid and its load test."""
    if quick:
        return 0.0, 2, 2, dict(burst_s=0.03, settle_s=0.1)
    return 1.0, 5, 30, {}
