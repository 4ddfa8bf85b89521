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
:func:`fastrnn.bench.timing.interleaved_medians`), so that the ratios compare
like with like on a shared machine. It prints medians, speed-up ratios, GFLOP/s and the fraction
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
benchmark of whole models instead (:mod:`fastrnn.bench.train`).

Usage::

    fastrnn bench [--cells lstm,gru] [--quick] [--threads 2] [--json out.json]
    fastrnn bench --quick --busy 1
    fastrnn bench --cells lstm --compute-dtype bfloat16
    fastrnn bench --train [--quick]
    python -m fastrnn.bench --quick

This module owns the command line (:func:`parse_args`) and :func:`main`,
which hands each kind of run to its module; none of them imports this one:

- :mod:`fastrnn.bench.timing`: interleaved medians, thread setters, GEMM peaks;
- :mod:`fastrnn.bench.runners`: the grid's cells, shapes and modes, the
  inputs of one call and the fastrnn / torch runners;
- :mod:`fastrnn.bench.onnx_peer`: the onnxruntime peer (ONNX models, sessions);
- :mod:`fastrnn.bench.grid`: the cell grid (and its bfloat16 rows, compile times);
- :mod:`fastrnn.bench.busy`: the ``--busy`` load test;
- :mod:`fastrnn.bench.train`: ``--train``, whole models;
- :mod:`fastrnn.bench.scaling`: ``--threads A,B,...``, thread scaling;
- :mod:`fastrnn.bench.latency`: ``--latency``, one step per call;
- :mod:`fastrnn.bench.tables`: the README's Markdown tables from a ``--json`` file.
"""
from __future__ import annotations

import argparse
import os

from ..bf16 import check_compute_dtype
from ..cells import CELL_NAMES
from .busy import BusyLoad
from .onnx_peer import (ONNX_CELLS, ORT_ATOL, onnx_rnn_model, onnx_weights, ort_available,
                        ort_runners, ort_session)
from .runners import (BENCH_CELLS, EXTRA_CELLS, GRID, IMPLS, MODES, QUICK_CELLS, QUICK_SHAPES,
                      backend_runner, has_compute_dtype, layer_flops, torch_runner)
from .scaling import SCALING_SHAPES, parse_counts
from .timing import PEER_THREADS, TorchThreads, interleaved_medians

__all__ = ["main", "parse_args", "BusyLoad", "ONNX_CELLS", "ORT_ATOL", "onnx_rnn_model",
           "onnx_weights", "ort_available", "ort_runners", "ort_session", "BENCH_CELLS",
           "EXTRA_CELLS", "GRID", "IMPLS", "MODES", "QUICK_CELLS", "QUICK_SHAPES",
           "SCALING_SHAPES", "backend_runner", "has_compute_dtype", "layer_flops",
           "torch_runner", "PEER_THREADS", "TorchThreads",
           "interleaved_medians"]


def parse_args(argv):
    """``(args, cells, impls, shapes)`` of ``fastrnn bench``'s arguments (argparse
    exits with status 2 on a bad one)."""
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
    try:
        args.compute_dtype = check_compute_dtype(args.compute_dtype, "--compute-dtype")
    except ValueError as exc:
        ap.error(str(exc))
    if args.compute_dtype is not None and (args.latency or args.busy):
        ap.error("--compute-dtype applies to the cell grid and to --train, not to "
                 "--latency or --busy")
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


def main(argv=None):
    """Entry point of ``fastrnn bench``; returns 0 on success."""
    args, cells, impls, shapes = parse_args(argv)
    if args.train:
        from . import train
        return train.main(args)
    if args.scaling:
        from . import scaling
        return scaling.main(args, cells, shapes)
    if args.latency:
        from . import latency
        return latency.main(args)
    from . import grid
    return grid.main(args, cells, impls, shapes)
