"""``fastrnn bench``: time the CPU kernels against the NumPy reference, PyTorch
and onnxruntime.

For each cell and grid shape ``(T, B, I, H)`` (float32, one layer, one
direction) it times a training step (forward with ``training=True`` plus
backward) and inference (forward with ``training=False``) for

- ``numpy``: the reference backend (:mod:`fastrnn.reference`),
- ``cpu``:   the fused Numba kernels (:mod:`fastrnn.kernels.cpu`),
- ``torch``: ``torch.nn.RNN/LSTM/GRU`` when PyTorch is installed (the peephole
  LSTM has no PyTorch twin), timed at 1 *and* at 2 threads: its best thread
  count depends on the shape, and fastrnn is compared with the faster;
- ``ort``:   onnxruntime, inference only, when ``onnxruntime`` and ``onnx``
  import: a single ONNX ``LSTM``/``GRU``/``RNN`` node built from the same
  weights (:func:`onnx_rnn_model`), checked once per shape against fastrnn's
  output, timed with ``intra_op_num_threads`` 1 and 2 (the faster is shown),

all in one process and one run, timed interleaved in bursts with pauses (see
:func:`_interleaved_medians`), so that the ratios compare like with like on a
shared machine. It prints medians, speed-up ratios, GFLOP/s and the fraction
of the float32 GEMM peak (the higher of NumPy's and torch's 2048^3 matmul,
measured in the same run), and, with ``--compile``, the JIT compile time
(cold: a new process with an empty Numba cache; cached: a second new process).

``--compute-dtype bfloat16`` adds, under each row, a row of fastrnn in the
bfloat16 compute mode (``compute_dtype="bfloat16"``, the cpu backend where it
has the mode, else the reference) against torch in bfloat16 (module and
input ``.to(torch.bfloat16)``, at 1 and 2 threads, the faster used), against
torch in float32 and against fastrnn's own float32, timed in the same
interleaved rounds; the bf16 rows' %peak is of torch's bfloat16 ``n^3``
matmul (``torch.mm``), measured in the same run.

``--busy N`` adds a load test: N busy processes spin while fastrnn and torch
run at their default thread counts; the table gives the slowdown against each
one's own quiet one-thread time. ``--train`` runs the training-throughput
benchmark of whole models instead (:mod:`fastrnn.bench_train`).

Usage::

    fastrnn bench [--cells lstm,gru] [--quick] [--threads 2] [--json out.json]
    fastrnn bench --quick --busy 1
    fastrnn bench --cells lstm --compute-dtype bfloat16
    fastrnn bench --train [--quick]
    python -m fastrnn.bench --quick
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .cells import CELL_NAMES, CELLS, get_cell
from .contract import Weights

#: the default grid's cells, by the names the tables show (registry keys or
#: aliases: "peephole_lstm" is the registry's "peephole_diagonal"); a cell's
#: PyTorch twin is its ``CellSpec.torch``
BENCH_CELLS = ("rnn_tanh", "lstm", "gru", "peephole_lstm")
#: the other registry cells (not run by default); ``--cells`` takes any of
#: these, of BENCH_CELLS, or any other name :func:`fastrnn.cells.get_cell` knows
EXTRA_CELLS = tuple(n for n in CELLS if n not in BENCH_CELLS)

#: (T, B, I, H)
GRID = [(200, 1, 32, 32), (100, 8, 64, 64), (100, 32, 64, 128),
        (100, 64, 128, 256), (50, 64, 256, 512)]
#: ``--quick``: the two small shapes, one cell (unless --cells / --shapes say otherwise)
QUICK_SHAPES = GRID[:2]
QUICK_CELLS = ("lstm",)

IMPLS = ("numpy", "cpu", "torch", "ort")
MODES = ("train", "infer")
#: the thread counts torch and onnxruntime are timed at (the faster is their number)
PEER_THREADS = (1, 2)


# --------------------------------------------------------------------------- timing
def _median_time(fn, min_time, min_reps, max_reps):
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


def _interleaved_medians(fns, min_time, min_rounds, max_rounds, burst_s=0.2, settle_s=0.2,
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


def _cpu_threads_setter(cpu, n):
    def set_():
        cpu.set_num_threads(n)
        if cpu.blas.blas_set_threads is not None:
            cpu.blas.blas_set_threads(n)
    return set_


# --------------------------------------------------------------------------- GEMM peak
def gemm_peak_gflops(threads, n=2048, reps=5):
    """Measured float32 GEMM rate (n x n x n through NumPy's BLAS) in GFLOP/s."""
    from .kernels import cpu
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    if cpu.blas.blas_set_threads is not None:
        cpu.blas.blas_set_threads(threads)
    med, _ = _median_time(lambda: np.matmul(a, b, out=c), 0.5, reps, 4 * reps)
    return 2.0 * n ** 3 / med / 1e9


def bf16_gemm_peak(threads, torch, n=2048, quick=False):
    """bfloat16 ``n^3`` GEMM rate of ``torch.mm`` (oneDNN/MKL, float32
    accumulation) at ``threads`` threads, in GFLOP/s: the bf16 rows' peak."""
    a = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    a = a.to(torch.bfloat16)
    b = a.t().contiguous()
    with TorchThreads(torch) as tt:
        tt.setter(threads)()
        med, _ = _median_time(lambda: torch.mm(a, b), 0.0 if quick else 1.0,
                              2 if quick else 3, 4 if quick else 12)
    return 2.0 * n ** 3 / med / 1e9


def gemm_peaks(threads, torch=None, n=2048, quick=False):
    """float32 ``n^3`` GEMM rate in GFLOP/s through NumPy's BLAS (``np.matmul``)
    and, when given, ``torch.mm`` (MKL), both at ``threads`` threads, timed
    interleaved. Returns ``{"numpy": gf, "torch": gf}``."""
    from .kernels import cpu
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    fns = {"numpy": lambda: np.matmul(a, b, out=c)}
    prep = {"numpy": _cpu_threads_setter(cpu, threads)}
    tt = TorchThreads(torch)
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c.copy())
        fns["torch"] = lambda: torch.mm(ta, tb, out=tc)
        prep["torch"] = tt.setter(threads)
    with tt:
        res = _interleaved_medians(fns, 0.0 if quick else 1.0, 2 if quick else 3,
                                   2 if quick else 6, burst_s=0.3 if quick else 0.5,
                                   settle_s=0.1 if quick else 0.2, prepare=prep)
    return {k: 2.0 * n ** 3 / m / 1e9 for k, (m, _) in res.items()}


def layer_flops(cell, T, B, I, H, mode):
    """GEMM FLOPs of one layer: forward 2 T B G H (I + H); training is 3x that."""
    fwd = 2.0 * T * B * cell.gates * H * (I + H)
    return fwd if mode == "infer" else 3.0 * fwd


# --------------------------------------------------------------------------- runners
def _make_inputs(cell, T, B, I, H, seed=0, dtype=np.float32):
    """Random weights, input and output gradient, zero initial state, of one
    backend call: ``(x, h0, c0, weights, dy)`` (the tests use it too)."""
    rng = np.random.default_rng(seed)
    G = cell.gates
    s = 1.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(dtype)

    peep = None if cell.peephole is None else u(3, *cell.peephole_shape(H))
    w = Weights(u(G * H, I), u(G * H, H), u(G * H), u(G * H), peep)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    c0 = np.zeros((B, H), dtype) if cell.has_cell else None
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    return x, h0, c0, w, dy


def _backend_runner(backend, cell, inputs, mode, compute_dtype=None):
    x, h0, c0, w, dy = inputs
    dh = np.zeros_like(h0)
    dc = np.zeros_like(h0) if cell.has_cell else None
    kw = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    if mode == "infer":
        return lambda: backend.forward(cell, x, h0, c0, w, None, False, False, **kw)

    def step():
        y, h, c, cache = backend.forward(cell, x, h0, c0, w, None, False, True, **kw)
        backend.backward(cell, cache, dy, dh, dc)
    return step


def has_compute_dtype(backend):
    """Whether a backend's ``forward`` takes ``compute_dtype`` (the bf16 mode)."""
    import inspect
    return "compute_dtype" in inspect.signature(backend.forward).parameters


def _torch_runner(torch, cell, inputs, mode, dtype=None):
    """The cell's PyTorch twin (``cell.torch``, which must be set) on the same
    weights; ``dtype`` (``torch.bfloat16``): module, input, state and output
    gradient converted with ``.to(dtype)``."""
    x, h0, c0, w, dy = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    m = getattr(torch.nn, cell.torch[0])(I, H, **cell.torch_kwargs)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(w.w_ih))
        m.weight_hh_l0.copy_(torch.from_numpy(w.w_hh))
        m.bias_ih_l0.copy_(torch.from_numpy(w.b_ih))
        m.bias_hh_l0.copy_(torch.from_numpy(w.b_hh))
    tx = torch.from_numpy(x)
    state = torch.from_numpy(h0)[None]
    if cell.has_cell:
        state = (state, torch.from_numpy(c0)[None])
    tdy = torch.from_numpy(dy)
    if dtype is not None:
        m, tx, tdy = m.to(dtype), tx.to(dtype), tdy.to(dtype)
        state = tuple(s.to(dtype) for s in state) if cell.has_cell else state.to(dtype)
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                m(tx, state)
        return infer
    txg = tx.clone().requires_grad_(True)

    def step():
        m.zero_grad(set_to_none=True)
        txg.grad = None
        out, _ = m(txg, state)
        out.backward(tdy)
    return step


# --------------------------------------------------------------------------- onnxruntime
#: registry cell -> (ONNX operator, permutation of PyTorch's gate blocks into
#: ONNX's order, extra node attributes). ONNX orders: LSTM i,o,f,c; GRU z,r,h;
#: peepholes P = [p_i, p_o, p_f]. PyTorch's GRU (reset_after) is ONNX's
#: ``linear_before_reset=1``; the original GRU is ``linear_before_reset=0``.
ONNX_CELLS = {
    "lstm": ("LSTM", (0, 3, 1, 2), {}),
    "peephole_diagonal": ("LSTM", (0, 3, 1, 2), {}),
    "gru": ("GRU", (1, 0, 2), {"linear_before_reset": 1}),
    "gru_reset_before": ("GRU", (1, 0, 2), {"linear_before_reset": 0}),
    "rnn_tanh": ("RNN", (0,), {"activations": ["Tanh"]}),
    "rnn_relu": ("RNN", (0,), {"activations": ["Relu"]}),
}
#: largest |y_ort - y_fastrnn| accepted when checking an ONNX model
ORT_ATOL = 2e-5


def ort_available():
    """``(onnxruntime, onnx)`` modules, or ``None`` when either is missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime, onnx


def onnx_weights(cell, w, H):
    """``(op, attrs, initializers)`` of one ONNX recurrent node for ``cell`` with
    weights ``w`` (PyTorch layout): ``W``, ``R``, ``B`` in ONNX's gate order, and
    ``P`` (``[p_i, p_o, p_f]``) for a diagonal peephole."""
    from onnx import numpy_helper
    if cell.name not in ONNX_CELLS:
        raise ValueError(f"no ONNX operator for cell {cell.name!r}")
    op, perm, attrs = ONNX_CELLS[cell.name]
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in perm])
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)   # noqa: E731
    inits = [numpy_helper.from_array(f32(w.w_ih[order][None]), "W"),
             numpy_helper.from_array(f32(w.w_hh[order][None]), "R"),
             numpy_helper.from_array(f32(np.concatenate([w.b_ih[order],
                                                         w.b_hh[order]])[None]), "B")]
    if cell.peephole is not None:
        p = w.peep                                   # [3, H]: p_i, p_f, p_o
        inits.append(numpy_helper.from_array(f32(np.concatenate([p[0], p[2], p[1]])[None]),
                                             "P"))
    return op, attrs, inits


def onnx_rnn_model(cell, w, T, B, I, H, opset=14):
    """A single-node ONNX model (bytes) computing ``cell`` with weights ``w``
    (PyTorch layout, :class:`fastrnn.contract.Weights`) over ``X [T, B, I]``
    from ``h0 [1, B, H]`` (and ``c0``), with output ``Y [T, 1, B, H]``."""
    from onnx import TensorProto, helper
    op, attrs, inits = onnx_weights(cell, w, H)
    names = ["X", "W", "R", "B", "", "h0"]
    feeds = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
             helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, B, H])]
    if cell.has_cell:
        names.append("c0")
        feeds.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, B, H]))
    if cell.peephole is not None:
        names.append("P")
    node = helper.make_node(op, names, ["Y"], hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], f"fastrnn_{cell.name}", feeds,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def ort_session(ort, model_bytes, threads):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: its default)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _ort_feeds(cell, inputs):
    x, h0, c0, w, dy = inputs
    feeds = {"X": x, "h0": h0[None]}
    if cell.has_cell:
        feeds["c0"] = c0[None]
    return feeds


def ort_runners(ort, cell, inputs, threads=PEER_THREADS, check_with=None, atol=ORT_ATOL):
    """``{threads: fn}``: onnxruntime inference of ``cell`` on ``inputs``, one
    session per thread count. With ``check_with`` (the ``cpu`` backend), the
    ONNX output is first compared with fastrnn's; a mismatch above ``atol``
    raises ``RuntimeError`` (a wrong ONNX model must never be timed)."""
    x, h0, c0, w, dy = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    model = onnx_rnn_model(cell, w, T, B, I, H)
    feeds = _ort_feeds(cell, inputs)
    fns = {}
    for n in threads:
        sess = ort_session(ort, model, n)
        fns[n] = (lambda s: lambda: s.run(["Y"], feeds))(sess)
    if check_with is not None:
        y_ort = fns[threads[0]]()[0][:, 0]
        y_ref = check_with.forward(cell, x, h0, c0, w, None, False, False)[0]
        err = float(np.abs(y_ort - y_ref).max())
        if not np.isfinite(err) or err > atol:
            raise RuntimeError(
                f"onnxruntime {ONNX_CELLS[cell.name][0]} disagrees with fastrnn's cpu backend "
                f"for {cell.name} at (T,B,I,H)={(T, B, I, H)}: max |dy| = {err:.3g} > {atol:g}; "
                "the ONNX model built by fastrnn.bench.onnx_rnn_model is wrong")
    return fns


# --------------------------------------------------------------------------- busy load
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


def _sigterm_to_exit():
    """Turn SIGTERM into SystemExit while benchmarking so ``finally`` blocks
    (which stop the busy processes) run; returns the previous handler."""
    try:
        return signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    except ValueError:      # not the main thread
        return None


# --------------------------------------------------------------------------- compile time
_COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fastrnn.kernels import cpu
from fastrnn.bench import _make_inputs, _backend_runner
from fastrnn.cells import get_cell
t_import = time.perf_counter() - t0
out = {"import_s": t_import, "cells": {}}
for name in sys.argv[1].split(","):
    cell = get_cell(name)
    inputs = _make_inputs(cell, 3, 2, 3, 4)
    t1 = time.perf_counter()
    _backend_runner(cpu, cell, inputs, "train")()
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


# --------------------------------------------------------------------------- main
def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="fastrnn bench",
        description="Time the fused CPU kernels against the NumPy reference, PyTorch "
                    "(at 1 and 2 threads) and onnxruntime (inference).")
    ap.add_argument("--cells", default=None,
                    help=f"comma list of {','.join(BENCH_CELLS)} (default: these; "
                         f"--quick: {','.join(QUICK_CELLS)}) or {','.join(EXTRA_CELLS)}")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: two small shapes, one cell, few rounds, no compile "
                         "subprocesses (well under a minute; medians are noisier)")
    ap.add_argument("--threads", default=str(min(2, os.cpu_count() or 1)),
                    help="fastrnn / NumPy BLAS threads (default: min(2, cores)); torch and "
                         "onnxruntime are timed at 1 and 2 threads and the faster is used. "
                         "A comma list (1,2,4,8,16) measures thread scaling instead: "
                         "fastrnn and torch at each count, speed-up, parallel efficiency "
                         "and fastrnn against torch's best count (default cells: lstm; "
                         "shapes: (100,64,128,256) and (50,64,256,512))")
    ap.add_argument("--plot", metavar="FILE.png",
                    help="with --threads A,B,...: draw the speed-up per cell and shape "
                         "(needs matplotlib)")
    ap.add_argument("--json", metavar="PATH", help="write one record per measurement to PATH")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma list of numpy,cpu,torch,ort (default: all available)")
    ap.add_argument("--shapes", default=None,
                    help="semicolon list of T,B,I,H to replace the grid, e.g. '50,8,32,64'")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="measure cold/cached JIT compile time in new processes "
                         "(default: on, off with --quick)")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the compile-time measurement")
    ap.add_argument("--gemm-size", type=int, default=2048, metavar="N",
                    help="size of the N^3 float32 matmul that measures the GEMM peak "
                         "(default 2048)")
    ap.add_argument("--compute-dtype", default=None, metavar="DTYPE",
                    help="bfloat16: add rows of fastrnn's bfloat16 compute mode against "
                         "torch in bfloat16 (module and input .to(torch.bfloat16), 1 and 2 "
                         "threads) and torch float32; with --train, the models in the mode "
                         "against torch float32 and torch under bfloat16 autocast "
                         "(default: float32 only)")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="load test: N competing busy processes spin while fastrnn and "
                         "torch run at their default thread counts; reports the slowdown "
                         "against their own quiet 1-thread time")
    ap.add_argument("--train", action="store_true",
                    help="training throughput of whole models (char LSTM language model, "
                         "variable-length classifier) against PyTorch, instead of the grid")
    ap.add_argument("--latency", action="store_true",
                    help="one recurrent step per call (streams) against torch cells, torch "
                         "T=1 and onnxruntime T=1, plus batch-1 sequence inference, one "
                         "thread each, instead of the grid")
    args = ap.parse_args(argv)
    from .bf16 import check_compute_dtype
    try:
        args.compute_dtype = check_compute_dtype(args.compute_dtype, "--compute-dtype")
    except ValueError as exc:
        ap.error(str(exc))
    if args.compute_dtype is not None and (args.latency or args.busy):
        ap.error("--compute-dtype applies to the cell grid and to --train, not to "
                 "--latency or --busy")
    from .bench_scaling import SCALING_SHAPES, parse_counts
    try:
        args.thread_counts = parse_counts(args.threads)
    except ValueError as exc:
        ap.error(str(exc))
    args.scaling = len(args.thread_counts) > 1
    args.threads = args.thread_counts[0]
    if args.plot and not args.scaling:
        ap.error("--plot draws a thread-scaling run: give --threads a list, e.g. 1,2,4")
    if args.scaling and args.compute_dtype is not None:
        ap.error("--compute-dtype adds rows to the cell grid, not to a thread-scaling run")
    if args.scaling and (args.train or args.busy):
        ap.error("--threads with a list (thread scaling) runs alone, without --train or --busy")
    if args.compile is None:
        args.compile = not args.quick
    if args.busy < 0:
        ap.error("--busy must be >= 0")
    if args.gemm_size < 16:
        ap.error("--gemm-size must be >= 16")
    if args.train and args.busy:
        ap.error("--busy applies to the cell grid, not to --train")
    default_cells = QUICK_CELLS if (args.quick or args.scaling) else BENCH_CELLS
    cells = list(default_cells) if args.cells is None else \
        [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELL_NAMES]
    if bad:
        ap.error(f"unknown cell(s) {bad}; expected some of {sorted(CELL_NAMES)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown implementation(s) {bad}; expected some of {list(IMPLS)}")
    shapes = QUICK_SHAPES if args.quick else (SCALING_SHAPES if args.scaling else GRID)
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
            assert all(len(s) == 4 and min(s) >= 1 for s in shapes)
        except (ValueError, AssertionError):
            ap.error("--shapes wants 'T,B,I,H;T,B,I,H...' with positive ints")
    return args, cells, impls, shapes


def _geomean(v):
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def _timing(quick):
    """(min_time, min_rounds, max_rounds, burst kwargs) of the interleaved timing."""
    if quick:
        return 0.0, 2, 2, dict(burst_s=0.03, settle_s=0.1)
    return 1.0, 5, 30, {}


def main(argv=None):
    """Entry point of ``fastrnn bench``; returns 0 on success."""
    args, cells, impls, shapes = _parse(argv)
    if args.train:
        from . import bench_train
        return bench_train.main(args)
    if args.scaling:
        from . import bench_scaling
        return bench_scaling.main(args, cells, shapes)
    if args.latency:
        from . import bench_latency
        return bench_latency.main(args)
    from .kernels import cpu

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
    old_term = _sigterm_to_exit()
    try:
        with TorchThreads(torch) as tt:
            return _run(args, cells, impls, shapes, cpu, torch, tt, ort, cpu_default)
    finally:
        cpu.set_num_threads(cpu_default)
        if blas_default is not None:
            cpu.blas.blas_set_threads(blas_default)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run(args, cells, impls, shapes, cpu, torch, tt, ort, cpu_default):
    from . import reference
    torch_default = tt.saved
    cpu.set_num_threads(args.threads)
    if cpu.blas.blas_set_threads is not None:
        cpu.blas.blas_set_threads(args.threads)    # the reference's NumPy BLAS threads
    min_time, min_rounds, max_rounds, burst = _timing(args.quick)
    cpu_prep = _cpu_threads_setter(cpu, args.threads)

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
            inputs = _make_inputs(cell, T, B, I, H)
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
                                fns[key] = _torch_runner(torch, cell, inputs, mode)
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
                        fns[impl] = _backend_runner(be, cell, inputs, mode)
                        prep[impl] = cpu_prep
                        who[impl] = (impl, args.threads)
                if bf16 is not None:
                    _bf16_entries(bf16, cell, inputs, mode, fns, prep, who, cpu_prep, tt,
                                  args.threads)
                res = _interleaved_medians(fns, min_time, min_rounds, max_rounds,
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
        summary.append(dict(cell=cname, mode=mode, versus=key, geomean=_geomean(rs),
                            min=worst[1], min_shape=list(worst[0])))
        print(f"  {cname:<17}{mode:<6}vs {key:<6} geomean {_geomean(rs):6.2f}x   "
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
        fns[key] = _backend_runner(bf16["be"], cell, inputs, mode, compute_dtype="bfloat16")
        prep[key] = cpu_prep
        who[key] = (key, threads)
    torch = bf16["torch"]
    if torch is not None and cell.torch is not None:
        for n in PEER_THREADS:
            key = f"torch{_BF16_SUFFIX}@{n}"
            fns[key] = _torch_runner(torch, cell, inputs, mode, dtype=torch.bfloat16)
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


# --------------------------------------------------------------------------- --busy
def busy_table(args, cells, shapes, impls, cpu, torch, tt, ort, cpu_default, torch_default):
    """The load test of ``--busy N``: per cell, shape and mode, first the quiet
    one-thread times of fastrnn (and torch, onnxruntime for inference), then,
    with N busy processes spinning, the same at each library's default thread
    count. Returns a list of records (and prints the table)."""
    n = args.busy
    min_time, min_rounds, max_rounds, burst = _timing(args.quick)
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
            inputs = _make_inputs(cell, *shape)
            ort_default = None
            if ort is not None and reg in ONNX_CELLS:
                ort_default = ort_runners(ort, cell, inputs, (1, 0))   # 0: ORT's default
            for mode in MODES:
                def make(threads_cpu, threads_torch, ort_key):
                    fns, prep = {}, {}
                    fns["cpu"] = _backend_runner(cpu, cell, inputs, mode)
                    prep["cpu"] = _cpu_threads_setter(cpu, threads_cpu)
                    if ("torch", "torch") in libs and cell.torch is not None:
                        fns["torch"] = _torch_runner(torch, cell, inputs, mode)
                        prep["torch"] = tt.setter(threads_torch)
                    if ort_default is not None and mode == "infer":
                        fns["ort"] = ort_default[ort_key]
                    return fns, prep
                fns, prep = make(1, 1, 1)
                quiet = _interleaved_medians(fns, min_time, min_rounds, max_rounds,
                                             prepare=prep, **burst)
                fns, prep = make(cpu_default, torch_default, 0)
                with BusyLoad(n) as load:
                    loaded = _interleaved_medians(fns, min_time, min_rounds, max_rounds,
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:     # the busy processes were stopped on the way out
        print("fastrnn bench: interrupted", file=sys.stderr)
        sys.exit(130)
