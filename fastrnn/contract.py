"""The backend contract: what every backend takes and returns, and its one input check.

This is the floor of the package: the kernels (:mod:`fastrnn.kernels`) and the
reference (:mod:`fastrnn.reference`) import this module, :mod:`fastrnn.cells`
and :mod:`fastrnn.kernels.pointwise`, and nothing above them;
:mod:`fastrnn.dispatch` chooses among them and the layers stand on dispatch.

The backend contract
--------------------
A backend is an object with two functions that run ONE layer in ONE direction
over a whole sequence. The layers (stacking, directions, dropout, batch_first,
argument checking) are written once on top of it, in :mod:`fastrnn.layers`.

``forward(cell, x, h0, c0, weights, lengths, reverse, training, compute_dtype=None)``
    cell     : :class:`fastrnn.cells.CellSpec`
    x        : [T, B, I]  float32 or float64
    h0       : [B, H]
    c0       : [B, H]     LSTM family only, else None (ignored)
    weights  : :class:`Weights` ``(w_ih [G*H, I], w_hh [G*H, H], b_ih [G*H],
               b_hh [G*H], peep)``; ``peep`` is None, ``[3, H]`` (diagonal) or
               ``[3, H, H]`` (full), rows in the order ``p_i, p_f, p_o``.
               A layer built with ``bias=False`` passes zero biases.
    lengths  : None or ints [B] with ``1 <= lengths[b] <= T``
    reverse  : process each sequence from ``lengths[b]-1`` down to 0
    training : keep what backward needs; when False keep nothing (O(B*H) memory)
    compute_dtype : None (compute in ``x``'s dtype) or ``"bfloat16"`` (float32
               arrays only, else a ValueError): the bfloat16 compute mode of
               :mod:`fastrnn.bf16` (product operands rounded to bfloat16, float32
               sums, everything else float32); the cache remembers the mode, so
               ``backward`` takes no such argument. A backend that cannot run
               the mode (CUDA) raises a ValueError naming ``compute_dtype``.
    returns ``(y [T, B, H], h_n [B, H], c_n [B, H] or None, cache)``;
    ``y[t, b] = 0`` for ``t >= lengths[b]``; ``cache`` is None unless training.

    Every backend calls :func:`check_forward` first, so shapes, dtypes and
    lengths are refused the same way everywhere. A host backend converts the
    other arrays to ``x``'s dtype itself; a device backend (CUDA) cannot, and
    asks for same-dtype, C-contiguous arrays (``strict=True``).

``backward(cell, cache, dy, dh_n, dc_n)``
    dy [T, B, H]; dh_n [B, H]; dc_n [B, H] (LSTM family) or None.
    Entries of ``dy`` at padded steps are ignored.
    returns ``(dx [T, B, I], dh0 [B, H], dc0 [B, H] or None, dweights)`` where
    ``dweights`` is a :class:`Weights` of fresh gradient arrays (``peep`` None
    for cells without peepholes).

``available() -> (ok, why)``
    whether the backend can run here, and if not, why (dispatch raises
    :class:`BackendUnavailable` with that reason).

Inputs are never modified. Every array a backend returns is newly allocated.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = ["Weights", "BackendUnavailable", "check_forward", "is_device_array"]


class Weights(NamedTuple):
    """The parameters of one layer and direction, as the backends take them."""

    w_ih: np.ndarray            # [G*H, I]
    w_hh: np.ndarray            # [G*H, H]
    b_ih: np.ndarray            # [G*H]
    b_hh: np.ndarray            # [G*H]
    peep: Optional[np.ndarray] = None   # None | [3, H] | [3, H, H]


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here (no Numba, no GPU...)."""


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)


def check_forward(cell, x, h0, c0, weights, lengths, strict=False):
    """Check a backend ``forward``'s arguments against the contract.

    Shapes (and, with ``strict``, dtypes and C-contiguity) are what a compiled
    loop indexes with: a mismatch must stop here, named, before any kernel
    runs. Values other than ``lengths`` are the layers' business (NaN, say).

    Parameters
    ----------
    cell : CellSpec
    x, h0, c0, weights, lengths : as in :func:`forward` of the contract (host
        or device arrays: anything with ``shape`` and ``dtype``).
    strict : also require every array to have ``x``'s dtype and be C-contiguous
        (a device backend, which cannot convert them on the fly).

    Returns
    -------
    lengths : None when None was given; host lengths as a C-contiguous int64
        ndarray, checked to lie in ``[1, T]``; device lengths unchanged (their
        shape checked, their values not).

    Raises
    ------
    TypeError : ``x`` is not float32/float64 (or, strict, an array has another dtype).
    ValueError : an argument has the wrong shape, a required one is missing, or
        ``lengths`` leave ``[1, T]``; the message names the argument and the
        expected shape.
    """
    # The hot path (a B=1 inference call costs ~60 us in all) is a few tuple
    # comparisons; anything unusual goes to _explain for a named error.
    try:
        T, B, I = x.shape
        w_ih, w_hh, b_ih, b_hh, peep = weights
        H = w_hh.shape[1]
        GH = cell.gates * H
        ok = (x.dtype in _FLOATS
              and (h0.shape, w_ih.shape, w_hh.shape, b_ih.shape, b_hh.shape)
              == ((B, H), (GH, I), (GH, H), (GH,), (GH,))
              and (not cell.has_cell or c0.shape == (B, H))
              and (peep is None if cell.peephole is None
                   else peep.shape == (3,) + cell.peephole_shape(H)))
    except (AttributeError, TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        _explain(cell, x, h0, c0, weights)
    if strict:
        _check_strict(cell, x, h0, c0, weights)
    if lengths is None:
        return None
    if is_device_array(lengths):        # reading its values back would cost a device sync
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        return lengths
    lens = np.ascontiguousarray(lengths, dtype=_INT64)
    if lens.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lens.shape}")
    if B <= 16:     # min and max of a short list: ~1 us cheaper than two NumPy reductions
        v = lens.tolist() or [1]
        lo, hi = min(v), max(v)
    else:
        lo, hi = lens.min(), lens.max()
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must lie in [1, T={T}], got values from {lo} to {hi}")
    return lens


def is_device_array(a) -> bool:
    """True for arrays that live on a CUDA device: anything with
    ``__cuda_array_interface__`` (numba, CuPy, torch) or a numba device array
    (including the CUDA simulator's, which has no such attribute)."""
    if isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("numba.cuda")


def _explain(cell, x, h0, c0, weights):
    """Raise the error that names what :func:`check_forward`'s fast path refused."""
    _array("x", x)
    if len(x.shape) != 3:
        raise ValueError(f"x must be [T, B, I], got shape {tuple(x.shape)}")
    T, B, I = x.shape
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if not isinstance(weights, tuple) or len(weights) != len(Weights._fields):
        raise TypeError(f"weights must be a fastrnn.contract.Weights "
                        f"{Weights._fields}, got {type(weights).__name__}")
    w = Weights(*weights)
    _array("weights.w_hh", w.w_hh)
    if len(w.w_hh.shape) != 2:
        raise ValueError(f"weights.w_hh must be [G*H, H] = [{cell.gates}*H, H], "
                         f"got shape {tuple(w.w_hh.shape)}")
    H = w.w_hh.shape[1]
    GH = cell.gates * H
    expected = [("h0", h0, (B, H)), ("weights.w_ih", w.w_ih, (GH, I)),
                ("weights.w_hh", w.w_hh, (GH, H)), ("weights.b_ih", w.b_ih, (GH,)),
                ("weights.b_hh", w.b_hh, (GH,))]
    if cell.has_cell:
        expected.append(("c0", c0, (B, H)))
    if cell.peephole is not None:
        expected.append(("weights.peep", w.peep, (3,) + cell.peephole_shape(H)))
    elif w.peep is not None:
        raise ValueError(f"cell {cell.name!r} takes no peephole weights (weights.peep must be None)")
    for name, a, shape in expected:
        if a is None:
            raise ValueError(f"{name} is required for cell {cell.name!r}: shape {shape}")
        _array(name, a)
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(a.shape)}")
    raise AssertionError("check_forward refused arguments _explain accepts")  # pragma: no cover


def _array(name, a):
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name} must be an array (NumPy or device), got {type(a).__name__}")


def _c_contiguous(a):
    is_c = getattr(a, "is_c_contiguous", None)      # numba device arrays
    return is_c() if is_c is not None else a.flags.c_contiguous


def _check_strict(cell, x, h0, c0, weights):
    dtype = x.dtype
    arrays = [("x", x), ("h0", h0), ("weights.w_ih", weights.w_ih),
              ("weights.w_hh", weights.w_hh), ("weights.b_ih", weights.b_ih),
              ("weights.b_hh", weights.b_hh)]
    if cell.has_cell:
        arrays.append(("c0", c0))
    if cell.peephole is not None:
        arrays.append(("weights.peep", weights.peep))
    for name, a in arrays:
        if not _c_contiguous(a):
            raise ValueError(f"{name} must be C-contiguous")
        if a.dtype != dtype:
            raise TypeError(f"{name} must be {dtype} like x, got {np.dtype(a.dtype)}")
