"""The CUDA backend: ``numba.cuda`` kernels for every cell of :mod:`fastrnn.cells`.

It implements the backend contract of :mod:`fastrnn.contract` (one layer, one
direction, a whole sequence) on device arrays: numba device arrays or anything
with ``__cuda_array_interface__`` (taken without a copy); NumPy arrays are
copied to the device for convenience. Every array returned lives on the device.

Notation: ``T`` steps, ``B`` batch, ``I`` inputs, ``H`` hidden units, ``G``
gates (``GH = G*H``), ``K`` saved activations per unit (``cuda_points.SAVED``).

Strategies (chosen per call by :func:`choose_strategy`, or forced through
``settings.strategy``):

``"per_step"``
    One tiled GEMM ``xw = x W_ihᵀ + b_ih`` over all ``T*B`` rows, then per step
    the recurrent product ``hw = h W_hhᵀ + b_hh`` (the same tiled GEMM kernel)
    and one fused pointwise kernel that applies the cell, writes ``y`` and, in
    training, saves the gate activations. ``gru_reset_before`` and
    ``peephole_full`` have a second product inside the step (``U_n (r ⊙ h)``,
    ``P_o c'``), so their step is two pointwise kernels around it.
``"persistent"``
    The whole time loop in one cooperative kernel. Block ``k`` owns the hidden
    units ``[k*HB, (k+1)*HB)`` and keeps the rows of ``W_hh`` for those units
    (all gates) in shared memory: ``HB`` is shrunk until that slice fits
    ``settings.shared_bytes`` (48 KiB by default, the most a block gets without
    an opt-in), with more blocks to cover ``H``; only when that grid cannot be
    co-resident are the weights read from global memory (L2) instead. Each
    recurrent product ``h · W_hh[row]`` is split across a group of
    ``settings.persistent_lanes`` threads (a warp: each lane takes every 32nd
    ``k``, then a ``shfl_down_sync`` tree adds the partial sums), so even at
    ``B = 1`` every thread of the block works. Per step each block computes
    its units' products, ``syncthreads``, applies the cell to its units and
    then waits at ``cuda.cg.this_grid().sync()`` so the next step reads a
    complete ``h`` (double-buffered, so no block overwrites what another still
    reads). Backward keeps the *columns* of ``W_hh`` for its units (a slice of
    ``W_hhᵀ``) and has the same one grid barrier per step (between writing the
    gate gradients of its units and reading everyone's for ``dh += da W_hh``).
    ``gru_reset_before`` and ``peephole_full`` need every unit's ``r ⊙ h``
    (resp. ``c'``) inside the step, so theirs has two grid barriers per step
    and reads the weights from global memory (no shared cache), with the same
    warp-split products. ``cuda.cg.this_grid().sync()`` makes numba launch
    the kernel cooperatively; the grid is sized from
    ``max_cooperative_grid_blocks`` so all blocks are co-resident, and
    ``"auto"`` falls back to per-step kernels (with a warning, once) if the
    cooperative kernel cannot be built or launched here.

:func:`choose_strategy` takes the persistent kernel for batches up to
``settings.persistent_max_batch`` and ``H`` up to
``settings.persistent_max_hidden`` (beyond, one layer's ``W_hh`` no longer
fits the shared memory of a whole GPU and a per-step cuBLAS product reads it
as fast).

Weight gradients and ``dx`` are time-parallel GEMMs after the backward loop.
When CuPy is importable (and ``settings.use_cupy``), those large GEMMs, and
the per-step products of at least ``settings.cupy_min_rows`` rows, go to
cuBLAS through it; without CuPy the tiled kernel does them all.

Under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) everything runs
except a persistent grid of more than one block (the simulator's grid barrier
only synchronises within a block), which is refused with a ValueError;
``"auto"`` never picks the persistent kernel there. The simulator has no warp
shuffles: :mod:`~fastrnn.kernels.cuda_base` gives it a stand-in
(``_sim_shfl_down_sync``).

Host overhead per call: workspaces up to ``settings.workspace_bytes`` are kept
per thread and shape and reused (:func:`clear_workspaces` frees them); the
device array of full lengths used when ``lengths`` is None is made once per
``(T, B)``. The CuPy path wraps numba arrays as CuPy arrays by pointer (no
``__cuda_array_interface__`` stream synchronisation) and calls
``cupy.cublas.gemm`` with ``beta = 1`` into an output pre-filled with the bias,
so it allocates nothing for contiguous operands.

Empty problems (``T``, ``B`` or ``H`` zero) launch no kernel: forward returns
empty outputs of the right shapes and the state unchanged; backward returns
zero weight gradients and ``dh0 = dh_n``.

Saved for backward (training): ``hs [T,B,H]`` the state *before* each step,
``cs [T,B,H]`` the cell before each step (LSTM family), ``acts [T,B,K*H]`` the
activations, all indexed by *step* ``s``; the gradients of the
pre-activations are kept twice: ``dah [T,B,GH]`` by step (for the recurrent
product and ``dW_hh``) and ``dax [T,B,GH]`` by time (for ``dx`` and
``dW_ih``). Entries of padded steps are written as zeros, so every buffer is
fully defined without a memset.

Layout: :mod:`~fastrnn.kernels.cuda_base` (settings, device arrays,
workspaces), :mod:`~fastrnn.kernels.cuda_gemm` (GEMMs, transposes, column
sums), :mod:`~fastrnn.kernels.cuda_points` (each cell's device functions and
the per-step kernels that launch them), :mod:`~fastrnn.kernels.cuda_persistent`
(the persistent kernels and their drivers); this module holds the backend
contract (:func:`forward`, :func:`backward`), the per-step drivers and the
weight gradients. Per-cell tables come from :mod:`fastrnn.cells`.
"""
from __future__ import annotations

import numpy as np

from fastrnn.bf16 import check_compute_dtype
from fastrnn.cells import CELLS
from fastrnn.contract import Weights, check_forward

from .cuda_base import (SIMULATOR, STRATEGIES, Settings, _CONST, _IMPORT_ERROR, _copy, _dev,
                        _device_key, _dummy, _empty, _row_major, _work, _zeros, clear_workspaces,
                        configure, cuda, settings)
from .cuda_gemm import column_sums, device_gemm
from .cuda_persistent import _DoesNotFit, _persistent_backward, _persistent_forward
from .cuda_points import BACKWARD_STEPS, FORWARD_STEPS, SAVED, _second_product_operands, _step_kernel
# internals the tests and bench/gpu_check.py reach through this module
from .cuda_base import WORKSPACES  # noqa: F401
from .cuda_gemm import as_cupy, cupy_module  # noqa: F401
from .cuda_persistent import persistent_plan  # noqa: F401

__all__ = ["available", "forward", "backward", "to_device", "to_host", "settings", "Settings",
           "configure", "choose_strategy", "clear_workspaces", "SIMULATOR", "STRATEGIES",
           "PERSISTENT_CELLS", "TWO_PHASE_CELLS"]

#: cells the persistent kernel runs: all of them, each in the skeleton of its
#: ``CellSpec.products`` (see :mod:`fastrnn.kernels.cuda_persistent`)
PERSISTENT_CELLS = tuple(CELLS)
#: the cells whose step holds a second, dependent product (two points per step)
TWO_PHASE_CELLS = tuple(name for name, spec in CELLS.items() if spec.products == 2)


def available():
    """``(True, "")`` when kernels can run (a GPU, or the simulator), else ``(False, why)``."""
    if cuda is None:
        return False, f"numba.cuda cannot be imported ({_IMPORT_ERROR})"
    if SIMULATOR:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if cuda.is_available():
            return True, ""
    except Exception as exc:  # pragma: no cover - driver problems
        return False, f"CUDA driver error: {exc}"
    return False, ("no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to run the kernels "
                   "in Numba's CUDA simulator)")


def to_device(weights):
    """A :class:`Weights` of device arrays (device inputs are taken as they are)."""
    return Weights(*(_dev(w) for w in weights))


def to_host(obj):
    """Copy a device array, or a tuple / :class:`Weights` of them, to NumPy."""
    if obj is None:
        return None
    if isinstance(obj, Weights):
        return Weights(*(to_host(w) for w in obj))
    if isinstance(obj, tuple):
        return tuple(to_host(o) for o in obj)
    if isinstance(obj, np.ndarray):
        return obj
    return obj.copy_to_host()


class _Cache:
    """What backward needs: inputs, weights and the saved activations."""

    __slots__ = ("cell", "x", "weights", "lengths", "reverse", "hs", "cs", "acts",
                 "strategy", "shape")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


persistent_disabled = None     # why "auto" stopped choosing the persistent kernel
#: errors that mean a bug here or bad input, never "this device cannot run the
#: cooperative kernel": they propagate instead of turning the persistent path off
_NOT_A_DEVICE_LIMIT = (ArithmeticError, AssertionError, AttributeError, IndexError, KeyError,
                       NameError, TypeError, ValueError)


def _disable_persistent(exc):
    global persistent_disabled
    import warnings
    persistent_disabled = f"{type(exc).__name__}: {exc}"
    warnings.warn("fastrnn: the persistent CUDA kernel failed to build or launch "
                  f"({persistent_disabled}); using the per-step kernels from now on",
                  RuntimeWarning, stacklevel=3)


def choose_strategy(cell, B, H):
    """``"persistent"`` or ``"per_step"`` for this call (see the module docstring)."""
    s = settings.strategy
    if s not in STRATEGIES:
        raise ValueError(f"settings.strategy must be one of {STRATEGIES}, got {s!r}")
    if cell.name not in PERSISTENT_CELLS:
        return "per_step"
    if s != "auto":
        return s
    if SIMULATOR:
        # grid sync only synchronises one block there: never pick it implicitly
        return "per_step"
    if (B > settings.persistent_max_batch or H > settings.persistent_max_hidden
            or persistent_disabled):
        return "per_step"
    return "persistent"


def device_lengths(lengths, T, B):
    if lengths is None:     # one host-to-device copy per (T, B), not per call
        key = (_device_key(), "lengths", T, B)
        full = _CONST.get(key)
        if full is None:
            if len(_CONST) > 256:
                _CONST.clear()
            full = _CONST[key] = cuda.to_device(np.full(B, T, dtype=np.int64))
        return full
    if isinstance(lengths, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(lengths, dtype=np.int64))
    return _dev(lengths)


def forward(cell, x, h0, c0, weights, lengths=None, reverse=False, training=True,
            compute_dtype=None):
    """Run one layer in one direction over the whole sequence (the backend contract).

    x [T,B,I]; h0, c0 [B,H]; weights :class:`Weights`; lengths None or [B].
    Returns ``(y [T,B,H], h_n [B,H], c_n [B,H] or None, cache)`` on the device.
    With ``T``, ``B`` or ``H`` zero no kernel runs: ``y`` is empty and the
    state is returned unchanged (copied). ``compute_dtype="bfloat16"`` is a
    ValueError: the bfloat16 compute mode runs on the CPU backends only.
    """
    if check_compute_dtype(compute_dtype) is not None:
        raise ValueError("compute_dtype='bfloat16' runs on the CPU backends only "
                         "(backend 'cpu' or 'numpy'), not on 'cuda'")
    x = _dev(x)
    h0 = _dev(h0)
    c0 = _dev(c0)
    w = to_device(weights)
    # shapes, dtypes, C-contiguity (a kernel must never index out of bounds)
    lengths = check_forward(cell, x, h0, c0, w, lengths, strict=True)
    T, B, I = x.shape
    H = h0.shape[1]
    G = cell.gates
    dtype = np.dtype(x.dtype)
    has_c = cell.has_cell
    rev = int(bool(reverse))
    S = T if training else 1
    acts = _empty((S, B, SAVED[cell.name] * H), dtype)
    hs = _empty((S, B, H), dtype)
    cs = _empty((S, B, H), dtype) if has_c else _dummy((1, 1, 1), dtype)
    y = _empty((T, B, H), dtype)
    out = (y, acts, hs, cs)
    h = _copy(h0)
    if has_c:
        c = _copy(c0)
    else:
        c = _dummy((1, 1), dtype)
    strategy = "per_step"
    lens = None
    if T * B * H:       # else nothing to compute (and a zero-block launch is an error)
        lens = device_lengths(lengths, T, B)
        xw = _work("xw", (T, B, G * H), dtype)                  # x W_ihᵀ + b_ih
        device_gemm(_row_major(x, T * B), w.w_ih, _row_major(xw, T * B), bias=w.b_ih,
              trans_b=True, big=True)
        peep = w.peep if w.peep is not None else _dummy((1, 1), dtype)
        strategy = choose_strategy(cell, B, H)
        if strategy == "persistent":
            try:
                _persistent_forward(cell, T, rev, lens, xw, w, h, c, out, peep, bool(training))
            except _DoesNotFit:
                strategy = "per_step"
            except _NOT_A_DEVICE_LIMIT:
                raise
            except Exception as exc:    # e.g. no libcudadevrt to link the grid barrier
                if settings.strategy != "auto":
                    raise
                _disable_persistent(exc)
                strategy = "per_step"
        if strategy == "per_step":
            _per_step_forward(cell, T, rev, lens, xw, w, h, c, out, peep, bool(training))

    cache = None
    if training:
        cache = _Cache(cell=cell, x=x, weights=w, lengths=lens, reverse=rev, hs=hs,
                       cs=cs if has_c else None, acts=acts, strategy=strategy,
                       shape=(T, B, I, H))
    return y, h, (c if has_c else None), cache


def _step_products_fwd(cell, w, h, c, hw, aux, p_if, p_o):
    """Per forward point, the recurrent products ``(src, mat, dst, bias)`` that
    precede it: ``dst = src matᵀ (+ bias)`` (see :mod:`fastrnn.kernels.cuda_points`
    for ``aux``)."""
    if cell.products == 1:
        return (((h, w.w_hh, hw, w.b_hh),),)
    H = h.shape[1]
    if cell.peephole == "full":
        # h W_hhᵀ + b_hh and (P_i c, P_f c); then P_o c'
        return (((h, w.w_hh, hw, w.b_hh), (c, p_if, aux, None)), ((c, p_o, aux[:, :H], None),))
    # GRU reset-before: h U_rzᵀ + b_rz; then (r ⊙ h) U_nᵀ + b_n
    return (((h, w.w_hh[:2 * H], hw[:, :2 * H], w.b_hh[:2 * H]),),
            ((aux, w.w_hh[2 * H:], hw[:, 2 * H:], w.b_hh[2 * H:]),))


def _per_step_forward(cell, T, rev, lens, xw, w, h, c, out, peep, training):
    """The forward time loop as per-step launches: for each step and each of
    the cell's points, its products (GEMMs), then the point; h, c [B,H]
    updated in place; ``out = (y, acts, hs, cs)``."""
    B, H = h.shape
    dtype = np.dtype(h.dtype)
    tpb = settings.threads
    grid = (B * H + tpb - 1) // tpb
    hw = _work("hw", (B, cell.gates * H), dtype)               # h W_hhᵀ + b_hh
    if cell.products == 1:
        aux = p_if = p_o = hw
    else:
        aux, p_if, p_o = _second_product_operands(cell, peep, B, H, dtype)
    pre = (xw, hw, aux)
    state = (h, h, c, c)
    # launch configurations and weight slices made once, not per step (each
    # costs microseconds of Python)
    phases = tuple(zip(_step_products_fwd(cell, w, h, c, hw, aux, p_if, p_o),
                       (_step_kernel(point)[grid, tpb] for point in FORWARD_STEPS[cell.name])))
    for s in range(T):
        slot = s if training else 0
        for products, point in phases:
            for src, mat, dst, bias in products:
                device_gemm(src, mat, dst, bias=bias, trans_b=True)
            point(s, rev, lens, H, slot, pre, state, out, peep)


def backward(cell, cache, dy, dh_n, dc_n=None):
    """Back through :func:`forward` (the backend contract).

    Returns ``(dx [T,B,I], dh0 [B,H], dc0 [B,H] or None, dweights)`` on the device.
    With ``T``, ``B`` or ``H`` zero no kernel runs but fills: the weight
    gradients are zeros, ``dh0 = dh_n`` (``dc0 = dc_n``) and ``dx`` is zeros.
    """
    if cache is None:
        raise ValueError("backward needs the cache of a forward call with training=True")
    T, B, I, H = cache.shape
    G = cell.gates
    GH = G * H
    w = cache.weights
    x = cache.x
    dtype = np.dtype(x.dtype)
    has_c = cell.has_cell
    dy, dh_n, dc_n = _dev(dy), _dev(dh_n), _dev(dc_n)
    for name, a, shape in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                           ("dc_n", dc_n if has_c else None, (B, H))):
        if a is not None and (tuple(a.shape) != shape or np.dtype(a.dtype) != dtype):
            raise ValueError(f"{name} must be {dtype} of shape {shape}, got "
                             f"{np.dtype(a.dtype)} {tuple(a.shape)}")
    dh = _copy(dh_n) if dh_n is not None else _zeros((B, H), dtype)
    if has_c:
        dc = _copy(dc_n) if dc_n is not None else _zeros((B, H), dtype)
    else:
        dc = _dummy((1, 1), dtype)
    peep_shape = cell.peephole_shape(H)
    if T * B * H == 0:
        # nothing flows: zero weight gradients, the carried state gradient unchanged
        dpeep = _zeros((3,) + peep_shape, dtype) if peep_shape is not None else None
        grads = Weights(_zeros((GH, I), dtype), _zeros((GH, H), dtype), _zeros((GH,), dtype),
                        _zeros((GH,), dtype), dpeep)
        return _zeros((T, B, I), dtype), dh, (dc if has_c else None), grads
    dy = dy if dy is not None else _zeros((T, B, H), dtype)
    dax = _work("dax", (T, B, GH), dtype)           # by time
    # by step; the same buffer when step == time and both hold the same values
    # (all cells but the reset-after GRU, whose candidate's recurrent part
    # r ⊙ (U_n h) has a gradient of its own)
    reset_after = cell.family == "gru" and cell.products == 1
    dah = _work("dah", (T, B, GH), dtype) if (cache.reverse or reset_after) else dax
    peep = w.peep if w.peep is not None else _dummy((1, 1), dtype)

    done = False
    if cache.strategy == "persistent":
        try:
            _persistent_backward(cell, cache, dy, dh, dc, dax, dah, peep)
            done = True
        except _DoesNotFit:
            pass
        except _NOT_A_DEVICE_LIMIT:
            raise
        except Exception as exc:    # raised before the kernel ran: dh, dc untouched
            if settings.strategy != "auto":
                raise
            _disable_persistent(exc)
    if not done:
        _per_step_backward(cell, cache, dy, dh, dc, dax, dah, peep)

    TB = T * B
    dax2 = _row_major(dax, TB)
    dah2 = _row_major(dah, TB)
    dx = _empty((T, B, I), dtype)
    device_gemm(dax2, w.w_ih, _row_major(dx, TB), big=True)
    dw_ih = _empty((GH, I), dtype)
    device_gemm(dax2, _row_major(x, TB), dw_ih, trans_a=True, big=True)
    dw_hh = _empty((GH, H), dtype)
    hs2 = _row_major(cache.hs, TB)
    acts2 = _row_major(cache.acts, TB)
    if cell.family == "gru" and cell.products == 2:
        # reset-before: U_n multiplies r ⊙ h, saved in acts[:, :, 3H:4H]
        device_gemm(dah2[:, :2 * H], hs2, dw_hh[:2 * H], trans_a=True, big=True)
        device_gemm(dah2[:, 2 * H:], acts2[:, 3 * H:], dw_hh[2 * H:], trans_a=True, big=True)
    else:
        device_gemm(dah2, hs2, dw_hh, trans_a=True, big=True)
    db_ih = column_sums(dax2, _empty((GH,), dtype))
    db_hh = column_sums(dah2, _empty((GH,), dtype))
    dpeep = None
    if cell.peephole == "diagonal":
        # dp_i = Σ da_i ⊙ c, dp_f = Σ da_f ⊙ c, dp_o = Σ da_o ⊙ c' over all (s, b)
        dpeep = _empty((3, H), dtype)
        cs2 = _row_major(cache.cs, TB)
        column_sums(dah2[:, :H], dpeep[0], b=cs2)
        column_sums(dah2[:, H:2 * H], dpeep[1], b=cs2)
        column_sums(dah2[:, 3 * H:], dpeep[2], b=acts2[:, 5 * H:])
    elif cell.peephole == "full":
        dpeep = _empty((3, H, H), dtype)
        cs2 = _row_major(cache.cs, TB)
        device_gemm(dah2[:, :H], cs2, dpeep[0], trans_a=True, big=True)
        device_gemm(dah2[:, H:2 * H], cs2, dpeep[1], trans_a=True, big=True)
        device_gemm(dah2[:, 3 * H:], acts2[:, 5 * H:], dpeep[2], trans_a=True, big=True)
    return dx, dh, (dc if has_c else None), Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep)


def _step_products_bwd(cell, w, dh, dc, aux, peep):
    """Per backward point, the products ``(k0, k1, mat, dst, accumulate)`` that
    follow it: ``dst (+)= dah[s][:, k0:k1] mat``."""
    H = dh.shape[1]
    if cell.products == 1:
        return (((0, cell.gates * H, w.w_hh, dh, True),),)
    if cell.peephole == "full":
        # dL/dc' += P_oᵀ dao; then dc += [P_i; P_f]ᵀ (dai, daf), dh += W_hhᵀ da
        return (((3 * H, 4 * H, peep[2], aux, True),),
                ((0, 2 * H, peep[:2].reshape(2 * H, H), dc, True),
                 (0, 4 * H, w.w_hh, dh, True)))
    # GRU reset-before: dL/d(r ⊙ h) = dan U_n; then dh += da_rz U_rz
    return (((2 * H, 3 * H, w.w_hh[2 * H:], aux, False),),
            ((0, 2 * H, w.w_hh[:2 * H], dh, True),))


def _per_step_backward(cell, cache, dy, dh, dc, dax, dah, peep):
    """The backward time loop as per-step launches: for each step, backwards,
    and each of the cell's points, the point, then its products (GEMMs)."""
    T, B, I, H = cache.shape
    GH = cell.gates * H
    dtype = np.dtype(dh.dtype)
    tpb = settings.threads
    grid = (B * H + tpb - 1) // tpb
    cs = cache.cs if cache.cs is not None else _dummy((1, 1, 1), dtype)
    aux = _work("aux", (B, H), dtype)
    args = (dy, (dh, dc, aux), (cache.acts, cache.hs, cs), (dax, dah), peep)
    phases = tuple(zip((_step_kernel(point)[grid, tpb] for point in BACKWARD_STEPS[cell.name]),
                       _step_products_bwd(cell, cache.weights, dh, dc, aux, peep)))
    lens, rev = cache.lengths, cache.reverse
    for s in range(T - 1, -1, -1):
        da = dah[s]
        for point, products in phases:
            point(s, rev, lens, H, *args)
            for k0, k1, mat, dst, accumulate in products:
                device_gemm(da if k1 - k0 == GH else da[:, k0:k1], mat, dst, accumulate=accumulate)
