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
"""
import os

import numpy as np

__all__ = ["unit_roundoff", "error_bound", "rnn_terms", "cell_terms", "assert_close",
           "ACTIVATION_TERMS", "BF16_UNIT_ROUNDOFF", "bf16_terms"]

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
