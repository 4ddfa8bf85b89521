"""Fused Numba ``@njit`` CPU kernels: the ``"cpu"`` backend.

Implements the backend contract of :mod:`fastrnn.contract` (one layer, one
direction, a whole sequence) for every cell of :mod:`fastrnn.cells`, in
float32 and float64::

    forward(cell, x, h0, c0, weights, lengths, reverse, training, compute_dtype=None)
        -> (y, h_n, c_n, cache)
    backward(cell, cache, dy, dh_n, dc_n) -> (dx, dh0, dc0, dweights)

Notation: ``T`` steps, ``B`` batch, ``I`` inputs, ``H`` hidden, ``G`` gates.

This module is the contract and the one routing table: :func:`route` (and
:func:`route_bf16`) names the kernels a call runs, :data:`ROUTES` maps that
name to their forward and backward, and a training cache carries its route's
backward, so a call is checked once (the contract's ``check_forward``) and
routed once. The work is done by:

- the packed-weight kernels (no BLAS call inside the time loop, padded steps
  skipped, the caller plus a pool of workers, :mod:`~fastrnn.kernels.plan`): the LSTM and diagonal
  peephole LSTM (:mod:`~fastrnn.kernels.packed`), the GRU with reset_after and
  the tanh/ReLU RNN (:mod:`~fastrnn.kernels.packed_cells`);
- the BLAS-per-step loops for every cell (:mod:`~fastrnn.kernels.loops_driver`,
  :mod:`~fastrnn.kernels.loops`, :mod:`~fastrnn.kernels.rows`): the only path
  of the cells with a second dependent product per step (GRU reset-before,
  the full peephole), of a dtype left out of ``settings.packed_dtypes``, and
  of a CPU without AVX2/AVX-512.

The bfloat16 compute mode (``compute_dtype="bfloat16"``, float32 layers; see
:mod:`fastrnn.bf16` and :func:`route_bf16`): the LSTM and diagonal peephole
LSTM run the packed bf16 kernels (:mod:`~fastrnn.kernels.packed_bf16`), with
``vdpbf16ps`` products where the CPU has AVX512-BF16 (the time loops' products
on AMX tiles where it also has AMX-BF16) and emulated products
(the same numbers up to the order of the float32 sums) elsewhere or with
``settings.bf16_native`` off; the GRU (both forms) and the tanh/ReLU RNN run
the packed bf16 kernels of :mod:`~fastrnn.kernels.packed_bf16_cells` and
:mod:`~fastrnn.kernels.packed_bf16_gru_rb` (native or emulated products, the
same choice; the GRU and RNN with AMX tiles too,
:mod:`~fastrnn.kernels.amx_bf16_cells`); the full peephole runs the NumPy
reference's bf16 code. Either fallback warns once per process that bf16
brings no speed there.

What runs where is steered by one settings object (:data:`settings`,
:class:`configure`, from :mod:`~fastrnn.kernels.cpu_settings`); the BLAS
binding and the thread cap are in :mod:`~fastrnn.kernels.blas`.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np

from fastrnn.bf16 import check_compute_dtype, has_avx512_bf16
from fastrnn.cells import CELLS
from fastrnn.contract import Weights, check_forward
from fastrnn.kernels import blas
from fastrnn.kernels import heap as _heap
from fastrnn.kernels.blas import BLAS_PATH, NUMBA_ERROR, Threads, available, get_num_threads
from fastrnn.kernels.blas import set_num_threads
from fastrnn.kernels.cpu_settings import configure, settings

# a training step's temporaries reuse the pages of the step before (see heap.py)
_heap.tune()

__all__ = ["forward", "backward", "available", "describe", "describe_bf16", "set_num_threads",
           "get_num_threads", "matmul", "route", "route_bf16", "ROUTES", "Route", "settings",
           "configure", "copies_input"]

if NUMBA_ERROR is None and BLAS_PATH is not None:
    from fastrnn.kernels import loops_driver
    from fastrnn.kernels.loops import LOOPS
    try:
        from fastrnn.kernels import packed
        from fastrnn.kernels import packed_cells
        from fastrnn.kernels import task_gemm
    except Exception:  # pragma: no cover - e.g. a Numba without @intrinsic support
        packed = packed_cells = task_gemm = None
    try:
        from fastrnn.kernels import packed_bf16
    except Exception:  # pragma: no cover - e.g. an llvmlite that cannot build its IR
        packed_bf16 = None
    try:
        from fastrnn.kernels import packed_bf16_cells, packed_bf16_gru_rb
    except Exception:  # pragma: no cover - e.g. an llvmlite that cannot build its IR
        packed_bf16_cells = packed_bf16_gru_rb = None
else:  # pragma: no cover - depends on the install
    loops_driver = packed = packed_cells = task_gemm = packed_bf16 = None
    packed_bf16_cells = packed_bf16_gru_rb = None
    LOOPS = {}

# off on a CPU without AVX2/AVX-512 (packed.host_simd), where the packed
# kernels' wide vectors would be split into slow narrow code
settings.use_packed = packed is not None and packed.host_simd() is not None

#: registry cell -> the packed kernels' family that can run it: ``"lstm"`` (the
#: LSTM and the diagonal peephole LSTM), ``"gru"`` (reset_after), ``"rnn"``; None
#: for the cells with a second dependent product per step (the loops only)
PACKED = {name: (c.family if c.products == 1 else None) for name, c in CELLS.items()}


def route(cell, dtype, training):
    """Which kernels run ``cell`` for ``dtype`` here: ``"packed"`` (the packed
    LSTM), ``"packed_cells"`` (the packed GRU/RNN) or ``"loops"``; ``cell`` must
    be one of the backend's (see :func:`forward`).

    The packed kernels run where ``settings.use_packed`` is on and ``dtype`` is
    in ``settings.packed_dtypes``: every LSTM-family call, and the GRU/RNN
    ``(family, training)`` pairs of ``settings.packed_cells``."""
    fam = PACKED[cell.name]
    if fam is None or not settings.use_packed or dtype not in settings.packed_dtypes:
        return "loops"
    if fam == "lstm":
        return "packed" if packed is not None else "loops"
    if (fam, training) in settings.packed_cells and packed_cells is not None:
        return "packed_cells"
    return "loops"


def describe():
    """One line on which CPU kernels run here (for ``fastrnn info``)."""
    if packed is None:
        return "BLAS-per-step loops only (the packed kernels did not import)"
    simd = packed.host_simd()
    if simd is None:
        return ("BLAS-per-step loops (this CPU has no AVX2/AVX-512: "
                "the packed kernels are off)")
    if not settings.use_packed:
        return "BLAS-per-step loops (packed kernels turned off)"
    vw = packed.vector_width()
    variant = "AVX-512" if vw == 16 else "AVX2"
    dts = " and ".join(sorted(np.dtype(d).name for d in settings.packed_dtypes)) or "no dtype"
    loops = "GRU reset-before and the full peephole" + (
        "" if np.dtype(np.float64) in settings.packed_dtypes else "; float64")
    return (f"packed kernels for {dts} LSTM (and diagonal peephole), GRU and RNN "
            f"({vw}-wide {variant} variant for float32; this CPU: {simd.upper()}); "
            f"BLAS-per-step loops for {loops}")


def route_bf16(cell):
    """Which code runs ``cell`` in the bfloat16 compute mode here: ``"amx"`` (the
    packed bf16 kernels with the products of the time loops and of the weight
    gradient on AMX tiles: AMX-BF16 and ``settings.bf16_amx``), ``"native"``
    (the packed bf16 kernels with ``vdpbf16ps``), ``"emulated"`` (the same
    kernels with the products emulated in float32: no AVX512-BF16, or
    ``settings.bf16_native`` off), for the GRU (both forms) and the RNN
    ``"cells_amx"`` (not the reset-before GRU) / ``"cells_native"`` /
    ``"cells_emulated"`` (their packed bf16 kernels, the same choice), or
    ``"reference"`` (the NumPy reference's bf16 code: the cell without a bf16
    kernel, the full peephole, or no packed kernels here). All compute the
    same numbers up to the order of the float32 sums (and the bf16 roundings
    that order can flip)."""
    fam = PACKED[cell.name]
    if (cell.family in ("gru", "rnn") and packed_bf16_cells is not None
            and settings.use_packed):
        if not (settings.bf16_native and has_avx512_bf16()):
            return "cells_emulated"
        amx = settings.bf16_amx and cell.name != "gru_reset_before" and _amx_ok()
        return "cells_amx" if amx else "cells_native"
    if (fam != "lstm" or packed_bf16 is None or packed is None
            or not settings.use_packed):
        return "reference"
    if not (settings.bf16_native and has_avx512_bf16()):
        return "emulated"
    return "amx" if settings.bf16_amx and _amx_ok() else "native"


def _amx_ok():
    """Whether the AMX forward kernels can run here (imported, tiles granted)."""
    try:
        from fastrnn.kernels import amx_bf16
    except Exception:  # pragma: no cover - an LLVM without the AMX intrinsics
        return False
    return amx_bf16.available()


def describe_bf16():
    """One line on what the bfloat16 compute mode runs here (for ``fastrnn info``)."""
    lstm = route_bf16(CELLS["lstm"])
    if lstm == "amx":
        how = ("packed bf16 kernels, the time loops' and weight gradient's products on "
               "AMX-BF16 tiles")
    elif lstm == "native":
        how = "packed bf16 kernels with vdpbf16ps products (AVX512-BF16)"
    elif lstm == "emulated":
        why = ("settings.bf16_native is off" if has_avx512_bf16()
               else "this CPU has no AVX512-BF16")
        how = f"packed bf16 kernels with emulated float32 products ({why}: no speed gain)"
    else:
        how = "the NumPy reference's bf16 code (packed kernels unavailable: slow)"
    cells = route_bf16(CELLS["gru"])
    if cells == "reference":
        return (f"bfloat16 mode: LSTM and diagonal peephole LSTM on {how}; GRU, RNN and the "
                f"full peephole on the NumPy reference's bf16 code (correct, slower than "
                f"float32)")
    cells = {"cells_amx": "the time loops' products on AMX-BF16 tiles, the reset-before "
                          "GRU's with vdpbf16ps",
             "cells_native": "vdpbf16ps products"}.get(cells, "emulated products")
    return (f"bfloat16 mode: LSTM and diagonal peephole LSTM on {how}; GRU (both forms) and "
            f"RNN on packed bf16 kernels, {cells}; the full peephole on the NumPy "
            f"reference's bf16 code (correct, slower than float32)")


_warned = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def matmul(a, b, out=None):
    """``a @ b`` (2-D, float32 or float64) that stays fast on a busy machine.

    NumPy's BLAS hands each large product to worker threads, which stall when
    another process holds a core (measured: 3-41x slower than one thread with
    one competing busy process). Here BLAS runs on one thread per task and a
    large product is split in tasks that the caller and
    fastrnn's own workers claim one at a time, so a late worker never
    holds up work it has not started (:func:`fastrnn.kernels.task_gemm.gemm`).
    Used by the training blocks' GEMMs."""
    a = np.asarray(a)
    b = np.asarray(b)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    if task_gemm is None:
        return np.matmul(a, b, out=out)
    threads = Threads()
    try:
        threads.use(0)
        return task_gemm.gemm(a, b, out, get_num_threads())
    finally:
        threads.restore()


def _check_cell(cell):
    """A ValueError for a cell the backend has no loops for."""
    if getattr(cell, "name", None) not in LOOPS:
        raise ValueError(f"the cpu backend has no kernel for cell {cell.name!r}")


class Route(NamedTuple):
    """One row of the routing table (:data:`ROUTES`): the kernels a call runs.

    forward : ``(cell, x, h0, c0, weights, lens, reverse, training) -> (y, h_n,
        c_n, cache)`` with ``x`` C-contiguous (in any strides for the packed
        LSTM's training forward, which gathers it) and ``lens`` int64 ``[B]``,
        both checked; ``cache`` None unless training.
    backward : ``(cell, cache, dy, dh_n, dc_n) -> (dx, dh0, dc0, Weights)``, set
        on the cache the forward returns (``cache.backward``), so that the
        backward of a call runs the kernels its forward ran.
    """

    forward: Callable
    backward: Callable


def forward(cell, x, h0, c0, weights, lengths=None, reverse=False, training=True,
            compute_dtype=None):
    """Run one layer in one direction over the whole sequence (see module doc);
    ``compute_dtype="bfloat16"`` runs a float32 layer in the bfloat16 compute mode.

    The arguments are checked once, by the contract's :func:`check_forward`;
    the kernels are chosen once, by :func:`route` (:func:`route_bf16` in the
    bfloat16 mode), from :data:`ROUTES`."""
    _check_cell(cell)
    bf16 = compute_dtype is not None and check_compute_dtype(compute_dtype) is not None
    if bf16:        # the mode's own refusal comes first, naming compute_dtype
        x = np.ascontiguousarray(x)
        if x.dtype != np.float32:
            raise ValueError(f"compute_dtype='bfloat16' is for float32 layers (float32 "
                             f"parameters, bfloat16 products); x is {x.dtype}")
    lens = check_forward(cell, x, h0, c0, weights, lengths)
    kind = route_bf16(cell) if bf16 else route(cell, x.dtype, bool(training))
    if not (kind == "packed" and training):     # that one gathers x, in any strides
        x = np.ascontiguousarray(x)
    if lens is None:            # (np.full's Python costs microseconds on a cold call)
        lens = np.empty(x.shape[1], np.int64)
        lens.fill(x.shape[0])
    r = ROUTES[kind]
    y, h, c, cache = r.forward(cell, x, h0, c0, weights, lens, bool(reverse), bool(training))
    if cache is not None:
        cache.backward = r.backward
    return y, h, c, cache


def copies_input(cell, dtype, training):
    """Whether a forward of ``cell`` in ``dtype`` keeps its own copy of ``x`` for the
    backward and reads ``x`` in any strides (the packed LSTM in training: its saved
    ``[x, h]`` rows), so that a caller who needs the cache to be independent of
    ``x`` (:mod:`fastrnn.functional`) need not copy ``x`` first."""
    return bool(training) and route(cell, np.dtype(dtype), True) == "packed"


def backward(cell, cache, dy, dh_n, dc_n=None):
    """Gradients of one layer and direction from a training ``cache`` (run by
    the backward of the route its forward took: ``cache.backward``)."""
    if cache is None:
        raise ValueError("backward needs the cache of a forward run with training=True")
    _check_cell(cell)
    return cache.backward(cell, cache, dy, dh_n, dc_n)


def _on_threads(run):
    """The backward of a kernel route: the gradients' shapes checked against
    the cache, then ``run(cell, cache, dy, dh_n, dc_n, threads)`` with NumPy's
    BLAS thread count restored after it."""
    def backward(cell, cache, dy, dh_n, dc_n):
        T, B, _ = cache.x.shape
        H = cache.w.w_hh.shape[1]
        for name, a, exp in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                             ("dc_n", dc_n, (B, H) if cell.has_cell else None)):
            if exp is not None and np.shape(a) != exp:
                raise ValueError(f"{name} has shape {np.shape(a)}, expected {exp}")
        threads = Threads()
        try:
            return run(cell, cache, dy, dh_n, dc_n, threads)
        finally:
            threads.restore()
    backward.__qualname__ = backward.__name__ = run.__name__
    return backward


def _packable(a, dtype):
    """A weight matrix for :func:`fastrnn.kernels.vector.pack`, which reads either
    memory order: a transposed view (the in_out layout's ``w.T``) is packed as it
    is rather than copied into PyTorch's layout first."""
    a = np.asarray(a, dtype=dtype)
    return a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)


# --------------------------------------------------------------------------- the routes
def _forward_loops(cell, x, h0, c0, weights, lens, reverse, training):
    threads = Threads()
    try:
        return loops_driver.forward(cell, x, h0, c0, weights, lens, reverse, training, threads)
    finally:
        threads.restore()


def _backward_loops(cell, cache, dy, dh_n, dc_n, threads):
    return loops_driver.backward(cell, cache, dy, dh_n, dc_n, threads)


def _forward_packed(cell, x, h0, c0, weights, lens, reverse, training):
    # the packed kernels call no BLAS in the forward pass: no thread setting to manage
    f = lambda a: np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    peep = None if cell.peephole is None else f(weights.peep)
    w = Weights(_packable(weights.w_ih, x.dtype), _packable(weights.w_hh, x.dtype),
                f(weights.b_ih), f(weights.b_hh), peep)
    y, h, c, pc = packed.lstm_forward(x, f(h0), f(c0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                      reverse, training, get_num_threads(), peep)
    if not training:
        return y, h, c, None
    return y, h, c, loops_driver.Cache(cell, x, w, lens, reverse, pc, pc.flops)


def _backward_packed(cell, cache, dy, dh_n, dc_n, threads):
    dt = cache.x.dtype
    dx, dh0, dc0, dw_ih, dw_hh, db, dpeep = packed.lstm_backward(
        cache.saved, dy, np.asarray(dh_n, dt), np.asarray(dc_n, dt), get_num_threads(),
        threads.use)
    return dx, dh0, dc0, Weights(dw_ih, dw_hh, db, db.copy(), dpeep)


def _forward_packed_cell(cell, x, h0, c0, weights, lens, reverse, training):
    f = lambda a: np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), None)
    if cell.family == "gru":
        y, h, pc = packed_cells.gru_forward(x, f(h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                            reverse, training, get_num_threads())
    else:
        y, h, pc = packed_cells.rnn_forward(x, f(h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens,
                                            reverse, cell.name == "rnn_relu", training,
                                            get_num_threads())
    if not training:
        return y, h, None, None
    return y, h, None, loops_driver.Cache(cell, x, w, lens, reverse, pc, pc.flops)


def _backward_packed_cell(cell, cache, dy, dh_n, dc_n, threads):
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = packed_cells.backward(
        cache.saved, dy, dh_n, get_num_threads(), threads.use)
    return dx, dh0, None, Weights(dw_ih, dw_hh, db_ih, db_hh, None)


def _forward_bf16(kind):
    """The packed bf16 LSTM forward of route ``kind`` (amx, native or emulated)."""
    def forward(cell, x, h0, c0, weights, lens, reverse, training):
        if kind == "emulated" and settings.bf16_native:
            _warn_once("cpu", "compute_dtype='bfloat16': this CPU has no AVX512-BF16; the "
                              "bf16 mode runs with emulated products (same results, no "
                              "speed gain)")
        f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        peep = None if cell.peephole is None else f(weights.peep)
        w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), peep)
        if kind == "amx":       # the small shapes in one compiled call (amx_fwd_one)
            from fastrnn.kernels import amx_fwd_one
            y, h, c, pc = amx_fwd_one.lstm_forward(x, f(h0), f(c0), w.w_ih, w.w_hh, w.b_ih,
                                                   w.b_hh, lens, reverse, training,
                                                   get_num_threads(), peep)
        else:
            y, h, c, pc = packed_bf16.lstm_forward(x, f(h0), f(c0), w.w_ih, w.w_hh, w.b_ih,
                                                   w.b_hh, lens, reverse, training,
                                                   get_num_threads(), peep,
                                                   native=kind != "emulated")
        if not training:
            return y, h, c, None
        return y, h, c, loops_driver.Cache(cell, x, w, lens, reverse, pc, pc.flops)
    forward.__qualname__ = forward.__name__ = f"_forward_bf16_{kind}"
    return forward


def _backward_bf16(cell, cache, dy, dh_n, dc_n, threads):
    f32 = np.float32
    dx, dh0, dc0, dw_ih, dw_hh, db, dpeep = packed_bf16.lstm_backward(
        cache.saved, dy, np.asarray(dh_n, f32), np.asarray(dc_n, f32), get_num_threads(),
        threads.use)
    return dx, dh0, dc0, Weights(dw_ih, dw_hh, db, db.copy(), dpeep)


def _forward_bf16_cells(native, amx=False):
    """The packed bf16 GRU/RNN forward (``native``: vdpbf16ps, else emulated; ``amx``:
    the time loops' products on AMX tiles)."""
    def forward(cell, x, h0, c0, weights, lens, reverse, training):
        if not native and settings.bf16_native:
            _warn_once("cpu", "compute_dtype='bfloat16': this CPU has no AVX512-BF16; the "
                              "bf16 mode runs with emulated products (same results, no "
                              "speed gain)")
        f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        w = Weights(f(weights.w_ih), f(weights.w_hh), f(weights.b_ih), f(weights.b_hh), None)
        args = (x, f(h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lens, reverse)
        if cell.name == "gru_reset_before":
            y, h, pc = packed_bf16_gru_rb.gru_rb_forward(*args, training, get_num_threads(),
                                                         native=native)
        elif cell.family == "gru":
            y, h, pc = packed_bf16_cells.gru_forward(*args, training, get_num_threads(),
                                                     native=native, amx=amx)
        else:
            y, h, pc = packed_bf16_cells.rnn_forward(*args, cell.name == "rnn_relu", training,
                                                     get_num_threads(), native=native, amx=amx)
        if not training:
            return y, h, None, None
        return y, h, None, loops_driver.Cache(cell, x, w, lens, reverse, pc, pc.flops)
    kind = "amx" if amx else "native" if native else "emulated"
    forward.__qualname__ = forward.__name__ = f"_forward_bf16_cells_{kind}"
    return forward


def _backward_bf16_cells(cell, cache, dy, dh_n, dc_n, threads):
    run = (packed_bf16_gru_rb.gru_rb_backward if cell.name == "gru_reset_before"
           else packed_bf16_cells.backward)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = run(cache.saved, dy, dh_n, get_num_threads(),
                                              threads.use)
    return dx, dh0, None, Weights(dw_ih, dw_hh, db_ih, db_hh, None)


class _ReferenceCache:
    """A bf16 training cache of the NumPy reference (cells without a bf16 kernel)."""

    __slots__ = ("ref", "backward")

    def __init__(self, ref):
        self.ref = ref


def _forward_reference_bf16(cell, x, h0, c0, weights, lens, reverse, training):
    _warn_once(("cell", cell.name), (
        f"compute_dtype='bfloat16': the cpu backend has no bf16 kernel for cell "
        f"{cell.name!r} here; it runs the NumPy reference's bf16 code (correct, "
        f"no speed gain)"))
    from fastrnn import reference
    y, h, c, cache = reference.forward(cell, x, h0, c0, weights, lens, reverse, training,
                                       compute_dtype="bfloat16")
    return y, h, c, (None if cache is None else _ReferenceCache(cache))


def _backward_reference_bf16(cell, cache, dy, dh_n, dc_n):
    from fastrnn import reference
    return reference.backward(cell, cache.ref, dy, dh_n, dc_n)


#: route name (:func:`route`, :func:`route_bf16`) -> its forward and backward
ROUTES = {
    "loops": Route(_forward_loops, _on_threads(_backward_loops)),
    "packed": Route(_forward_packed, _on_threads(_backward_packed)),
    "packed_cells": Route(_forward_packed_cell, _on_threads(_backward_packed_cell)),
    "amx": Route(_forward_bf16("amx"), _on_threads(_backward_bf16)),
    "native": Route(_forward_bf16("native"), _on_threads(_backward_bf16)),
    "emulated": Route(_forward_bf16("emulated"), _on_threads(_backward_bf16)),
    "cells_amx": Route(_forward_bf16_cells(True, True), _on_threads(_backward_bf16_cells)),
    "cells_native": Route(_forward_bf16_cells(True), _on_threads(_backward_bf16_cells)),
    "cells_emulated": Route(_forward_bf16_cells(False), _on_threads(_backward_bf16_cells)),
    "reference": Route(_forward_reference_bf16, _backward_reference_bf16),
}
