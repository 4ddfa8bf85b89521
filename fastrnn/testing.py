"""Comparing floating-point results: tolerances derived from the arithmetic.

Two correct implementations of the same function (a compiled kernel and the
NumPy reference, fastrnn and PyTorch, one CPU and another) do not give the
same bits: they sum in different orders (another BLAS kernel, another vector
width, another thread split, another CPU's MKL/oneDNN/OpenBLAS code path), and
the CPU kernels' float32 ``tanh``/``sigmoid`` are rational approximations.
A tolerance fixed in absolute terms passes on the machine where it was tuned
and fails on the next one. The tolerances here are *bounds*, computed from
the sizes of the sums and the magnitudes of the arrays:

* A sum of ``n`` products computed in floating point differs from the exact
  sum by at most ``gamma_n * sum_k |a_k b_k|``, with
  ``gamma_n = n u / (1 - n u)`` and ``u`` the unit roundoff (``2**-24`` in
  float32, ``2**-53`` in float64), in any order of summation (Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1).
  Two implementations, each within that bound of the exact value, differ by
  at most ``2 gamma_n sum_k |a_k b_k|``.
* ``sum_k |a_k b_k|`` is not known where results are compared; it is taken as
  the largest magnitude of the expected array (``scale``). For sums of
  random-signed terms ``sum_k |a_k b_k|`` exceeds the result by about
  ``sqrt(n)``, while the rounding errors themselves add up like a random walk
  (about ``sqrt(n) u`` rather than ``n u``): the two approximations are of the
  same size and opposite direction, which is why ``n u * scale`` holds in
  practice with a margin (measured: see tests/README.md). Where a result is
  the end of a chain of sums (a recurrence: step ``t`` sums over the inputs
  and over the state that earlier steps summed), ``n`` counts every term
  along the longest chain, so the error of each stage is charged again to
  every later one (:func:`rnn_terms`); this assumes the recurrence does not
  amplify errors (its Jacobian is a contraction, as with the tests' weights
  drawn from U(-1/sqrt(H), 1/sqrt(H))).
* An approximated function (``kernels.activations``: ``|tanh32 - tanh| <=
  6e-7``) adds its error bound once per evaluation along the chain, counted
  in the same unit: ``6e-7 / (2 u)`` = 5 terms per evaluation in float32.

The resulting check is ``|actual - expected| <= 2 gamma_n * scale``
elementwise (``rtol = 0``: every entry may carry the array-wide absolute
error, since an entry can be small by cancellation of large terms).

It is a worst-case bound, not a fit to one machine's rounding: no summation
order, vector width, thread count or CPU can exceed it, and a kernel bug of
any size that matters (a wrong index, a dropped term, a stale state: errors of
the order of the values themselves) still fails it by orders of magnitude.
The tests use :func:`assert_close` for every comparison between two
computations of the same float32 or float64 function; the bound each test
uses (its ``terms``) is written at the call.

Problems to compare on: :func:`make_problem` draws one backend call's
arguments (weights from U(-1/sqrt(H), 1/sqrt(H)), the inputs and output
gradient from N(0, 1)), :func:`make_lengths` per-sequence lengths, and
:func:`assert_matches_reference` runs a backend's forward and backward on a
problem and compares everything with :mod:`fastrnn.reference` within the
bounds above.
"""
import math
import os
from typing import NamedTuple, Optional

import numpy as np

from fastrnn.contract import Weights

__all__ = ["unit_roundoff", "error_bound", "rnn_terms", "cell_terms", "assert_close",
           "ACTIVATION_TERMS", "BF16_UNIT_ROUNDOFF", "bf16_terms",
           "Problem", "make_weights", "make_problem", "make_lengths", "assert_matches_reference"]

#: terms charged per activation evaluation when one side is a compiled CPU
#: path: float32, the kernels' rational tanh/sigmoid (bound 6e-7 absolute,
#: ``fastrnn.kernels.activations.TANH32_MAX_ABS_ERR``, over 2u = 2**-23);
#: float64, libm's against NumPy's own SIMD tanh/exp (each within a few ulps:
#: 4 ulps of 1 = 8u, 4 terms)
ACTIVATION_TERMS = {np.dtype(np.float32): 5, np.dtype(np.float64): 4}


#: bfloat16's unit roundoff (8 significant bits): the relative error of one
#: operand rounded by ``fastrnn.bf16.round_bf16`` (``dtype="bfloat16"`` below)
BF16_UNIT_ROUNDOFF = 2.0 ** -9


def _dtype(dtype):
    """``np.dtype(dtype)``, or the string ``"bfloat16"`` (NumPy has no such dtype)."""
    return "bfloat16" if isinstance(dtype, str) and dtype == "bfloat16" else np.dtype(dtype)


def _name(dtype):
    return dtype if isinstance(dtype, str) else dtype.name


def unit_roundoff(dtype):
    """``u``: half the machine epsilon of ``dtype`` (2**-24 float32, 2**-53 float64,
    2**-9 ``"bfloat16"``)."""
    dtype = _dtype(dtype)
    if isinstance(dtype, str):
        return BF16_UNIT_ROUNDOFF
    return float(np.finfo(dtype).eps) / 2


def error_bound(dtype, terms, scale=1.0):
    """``2 gamma_n * scale``: how far two evaluations of one sum of ``terms``
    products, of magnitude ``scale``, can be apart in ``dtype``."""
    n = max(int(terms), 1)
    u = unit_roundoff(dtype)
    if n * u >= 0.5:
        raise ValueError(f"terms={n} is too many for a bound in {_name(_dtype(dtype))}")
    return 2.0 * n * u / (1.0 - n * u) * float(scale)


def rnn_terms(T, B, I, H, gates=1, layers=1, directions=1, approx_activations=0,
              dtype=np.float32, backward=True, products=1):
    """The longest chain of summed terms in a recurrent layer's forward and
    backward pass, in the units of :func:`error_bound`.

    Forward, per step and layer: the input product (``I``, or ``D*H`` above the
    first layer) and the recurrent products (``products*H``: a second,
    dependent one for the GRU's reset-before form and the full peephole).
    Backward, per step: the state gradient through the recurrent weights and
    the input gradient (``gates*H`` each, plus ``H`` per further product); the
    weight gradients sum over every step and batch row (``T*B``).
    ``approx_activations`` is the number of approximated activation
    evaluations one after another per step (:func:`cell_terms` knows them per
    cell), charged ``ACTIVATION_TERMS[dtype]`` each. ``backward=False`` counts
    the forward chain only (outputs and final states).
    """
    per_step_act = approx_activations * ACTIVATION_TERMS[np.dtype(dtype)]
    back = (2 * gates + products - 1) * H if backward else 0
    n = 0
    for layer in range(layers):
        inp = I if layer == 0 else directions * H
        n += T * (inp + products * H + back + per_step_act)
    return n + (T * B if backward else 0)


#: approximated activations one after another in a step, per cell family:
#: LSTM gate -> tanh(c'); the peephole o gate sees c' (a third); GRU r -> n
_CHAIN = {("lstm", None): 2, ("lstm", "diagonal"): 3, ("lstm", "full"): 3,
          ("gru", None): 2, ("rnn", None): 1}


def cell_terms(cell, T, B, I, H, layers=1, directions=1, dtype=np.float32,
               approx=False, backward=True):
    """:func:`rnn_terms` for a registry cell (``fastrnn.cells.CellSpec`` or
    name). ``approx=True`` when one side ran a compiled CPU path (its own
    activation functions); between the reference and torch, False."""
    from fastrnn.cells import get_cell
    cell = get_cell(cell)
    acts = _CHAIN[(cell.family, cell.peephole)] if approx else 0
    return rnn_terms(T, B, I, H, cell.gates, layers, directions, acts, dtype,
                     backward, cell.products)


def bf16_terms(cell, T, B, I, H, layers=1, directions=1, backward=True, approx=False):
    """The ``terms`` of :func:`error_bound` with ``dtype="bfloat16"`` between a
    float32 layer run in the bfloat16 compute mode and the same layer run in
    float32 (same parameters and inputs).

    A product of two operands each rounded to bfloat16 is ``a b (1 + d1)(1 + d2)``,
    ``|d| <= u = 2**-9``: a sum of such products is off by at most
    ``2 u sum_k |a_k b_k|`` (the float32 sums add their own, far smaller, error).
    That is :func:`error_bound`'s ``2 n u scale`` with ``n = 1`` per *product
    stage*, ``sum |a_k b_k|`` taken as the magnitude of the result, as the
    module's docstring argues. The chain counts every product stage behind an
    entry, each stage's error charged again to every later one (the recurrence
    is assumed not to amplify errors): forward, per layer and step, the input
    product and the recurrent products (``1 + products``); backward, per layer
    and step, the recurrent products and the input gradient (``products + 1``)
    and, once, the weight-gradient sums. The float32 sums' own error
    (:func:`cell_terms`) is added in bfloat16's unit (``2**-24 / 2**-9``).
    """
    from fastrnn.cells import get_cell
    cell = get_cell(cell)
    per_step = 1 + cell.products
    n = layers * T * per_step
    if backward:
        n += layers * T * per_step + 1
    f32 = cell_terms(cell, T, B, I, H, layers, directions, np.float32, approx, backward)
    return n + int(np.ceil(f32 * unit_roundoff(np.float32) / BF16_UNIT_ROUNDOFF))


def assert_close(actual, expected, terms, *, scale=0.0, dtype=None, err_msg=""):
    """Assert ``|actual - expected| <= error_bound(dtype, terms, s)`` elementwise,
    ``s = max(max|expected|, scale)`` (shapes must match; NaNs must match).

    ``terms`` is the length of the longest chain of sums behind an entry
    (:func:`rnn_terms` for recurrent layers). ``scale`` is a lower bound on
    the magnitude of the summed terms, for results that can be far smaller
    than the terms that made them: a gradient through a saturated unit is a
    large upstream gradient times a small derivative, and the derivative's
    error is absolute (``1 - t**2`` carries ``t``'s error), so pass the
    largest upstream gradient there. ``dtype`` defaults to the expected
    array's (the precision both sides were computed in); ``"bfloat16"``
    takes bfloat16's unit roundoff (with :func:`bf16_terms`).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = _dtype(dtype) if dtype is not None else (
        expected.dtype if expected.dtype.kind == "f" else np.dtype(np.float64))
    if actual.shape != expected.shape:
        raise AssertionError(f"{err_msg}: shape {actual.shape} != expected {expected.shape}")
    finite = expected[np.isfinite(expected)]
    scale = max(float(np.max(np.abs(finite))) if finite.size else 0.0, float(scale))
    atol = error_bound(dtype, terms, scale)
    log = os.environ.get("FASTRNN_TESTING_LOG")
    if log and atol > 0 and np.isfinite(actual).all() and np.isfinite(expected).all():
        # how much of the bound a comparison uses: the margin, for tests/README.md
        worst = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
        with open(log, "a") as f:
            f.write(f"{_name(dtype)}\t{worst / atol:.3e}\t{terms}\t{err_msg}\n")
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=0, atol=atol,
        err_msg=(f"{err_msg} (bound 2*gamma_n*scale: n={terms} terms, {_name(dtype)}, "
                 f"scale={scale:.3g}, atol={atol:.3g})"))


# --------------------------------------------------------------------------- problems
class Problem(NamedTuple):
    """One backend call's arguments (``T`` steps, batch ``B``, ``I`` inputs,
    ``H`` units); unpacks as ``x, h0, c0, weights, dy``."""
    x: np.ndarray                 # (T, B, I)
    h0: np.ndarray                # (B, H)
    c0: Optional[np.ndarray]      # (B, H), None for a cell without a cell state
    weights: Weights              # w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,), peep
    dy: np.ndarray                # (T, B, H): the upstream gradient of the outputs


def make_weights(cell, I, H, rng, dtype=np.float32):
    """:class:`~fastrnn.contract.Weights` of one layer and direction of ``cell``
    (a registry cell or name), drawn from U(-1/sqrt(H), 1/sqrt(H)) by ``rng``
    (a ``numpy.random.Generator``) in the order peep (the peephole weights,
    ``3 x cell.peephole_shape(H)``, only where the cell has them), w_ih, w_hh,
    b_ih, b_hh, each cast to ``dtype``."""
    from fastrnn.cells import get_cell
    cell = get_cell(cell)
    G = cell.gates
    s = 1.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(dtype)

    peep = None if cell.peephole is None else u(3, *cell.peephole_shape(H))
    return Weights(u(G * H, I), u(G * H, H), u(G * H), u(G * H), peep)


def make_problem(cell, T, B, I, H, seed=0, dtype=np.float32, state=0.0):
    """A :class:`Problem` for ``cell``: :func:`make_weights`, then ``x`` and ``dy``
    from N(0, 1), all drawn from ``numpy.random.default_rng(seed)`` and cast to
    ``dtype``. The initial state is zero (``state=0``, what the benchmark times)
    or drawn from N(0, state**2) after ``dy`` (``h0``, then ``c0``), so the
    arrays of ``state=0`` are a prefix of the same random stream."""
    from fastrnn.cells import get_cell
    cell = get_cell(cell)
    rng = np.random.default_rng(seed)
    w = make_weights(cell, I, H, rng, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    if state:
        h0 = (state * rng.standard_normal((B, H))).astype(dtype)
        c0 = (state * rng.standard_normal((B, H))).astype(dtype) if cell.has_cell else None
    else:
        h0 = np.zeros((B, H), dtype)
        c0 = np.zeros((B, H), dtype) if cell.has_cell else None
    return Problem(x, h0, c0, w, dy)


def make_lengths(kind, T, B, rng):
    """Per-sequence lengths (int64, ``(B,)``) for ``T`` steps, or None:
    ``"none"`` (every sequence full: None), ``"equal"`` (all ``max(1, T - 1)``:
    padded), ``"different"`` (all different as far as ``B <= T`` allows,
    unsorted, drawn by ``rng``; the longest may be shorter than ``T``)."""
    if kind == "none":
        return None
    if kind == "equal":
        return np.full(B, max(1, T - 1), np.int64)
    if kind != "different":
        raise ValueError(f"kind must be 'none', 'equal' or 'different', not {kind!r}")
    L = rng.permutation(np.arange(T, 0, -1))[:B] if B <= T else rng.integers(1, T + 1, B)
    if B > 1 and (L == np.sort(L)[::-1]).all():
        L = L[::-1]
    return np.asarray(L, np.int64)


def _host(a):
    """A backend's output as a NumPy array (device arrays copied back), or None."""
    if a is None:
        return None
    return np.asarray(a.copy_to_host() if hasattr(a, "copy_to_host") else a)


def assert_matches_reference(backend, cell, problem, *, lengths=None, reverse=False,
                             dh=None, dc=None, approx=True, err_msg=""):
    """Run ``backend.forward`` (training and inference) and ``backend.backward``
    on ``problem`` (a :class:`Problem`, or any ``(x, h0, c0, weights, dy)``)
    and compare the outputs, final states and every gradient with
    :mod:`fastrnn.reference` run in float64 on the same values, within
    :func:`error_bound` in the problem's dtype: outputs by
    ``cell_terms(..., backward=False)`` at scale ``max(1, |h0|, |c0|)``,
    gradients by ``cell_terms(...)`` at the largest upstream gradient.

    ``backend`` is a backend module (``fastrnn.kernels.cpu``,
    ``fastrnn.kernels.cuda``, ``fastrnn.reference``...); its device outputs are
    copied back. ``dh``/``dc`` are the final states' upstream gradients
    (default: ``dy[-1]`` and ``dy[0]``, so both paths carry a gradient).
    ``approx``: whether the backend evaluates its own activation functions
    (:func:`cell_terms`); False only for the reference itself. Returns the
    backend's ``(forward, backward)`` results."""
    from fastrnn import reference
    from fastrnn.cells import get_cell
    cell = get_cell(cell)
    x, h0, c0, w, dy = problem
    dtype = np.dtype(x.dtype)
    T, B, I = x.shape
    H = h0.shape[-1]
    if dh is None:
        dh = dy[-1].copy()
    if dc is None and cell.has_cell:
        dc = dy[0].copy()
    what = (f"{err_msg}: " if err_msg else "") + (
        f"{cell.name} {dtype.name} T{T} B{B} I{I} H{H} lengths={lengths} reverse={reverse}")

    def f64(a):
        return None if a is None else np.asarray(a, np.float64)

    out = backend.forward(cell, x, h0, c0, w, lengths, reverse, True)
    y_inf = backend.forward(cell, x, h0, c0, w, lengths, reverse, False)[0]
    grads = backend.backward(cell, out[3], dy, dh, dc)
    w64 = Weights(*(f64(a) for a in w))
    ref = reference.forward(cell, f64(x), f64(h0), f64(c0), w64, lengths, reverse, True)
    ref_grads = reference.backward(cell, ref[3], f64(dy), f64(dh), f64(dc))

    fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=approx, backward=False)
    full = cell_terms(cell, T, B, I, H, dtype=dtype, approx=approx)
    fs = max([1.0] + [float(np.abs(a).max()) for a in (h0, c0) if a is not None and a.size])
    up = max([fs] + [float(np.abs(a).max()) for a in (dy, dh, dc) if a is not None and a.size])

    def close(a, b, label, terms, scale):
        a = _host(a)
        if b is None:
            assert a is None, f"{what}: {label} should be None"
            return
        assert a is not None, f"{what}: {label} is missing"
        assert a.dtype == dtype, f"{what}: {label} is {a.dtype}, not {dtype}"
        assert_close(a, b, terms, scale=scale, dtype=dtype, err_msg=f"{what}: {label}")

    for a, b, label in zip(out[:3], ref[:3], ("y", "h_n", "c_n")):
        close(a, b, label, fwd, fs)
    close(y_inf, ref[0], "y (inference)", fwd, fs)
    for a, b, label in zip(grads[:3], ref_grads[:3], ("dx", "dh0", "dc0")):
        close(a, b, label, full, up)
    for field in Weights._fields:
        close(getattr(grads[3], field), getattr(ref_grads[3], field), f"d{field}", full, up)
    return out, grads
