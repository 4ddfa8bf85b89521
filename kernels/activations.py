"""Fast ``tanh`` and ``sigmoid`` for the CPU kernels, dispatched on dtype.

``tanh(x)`` and ``sigmoid(x)`` are plain Python functions (usable on scalars
and NumPy arrays); inside ``@njit`` code they resolve, through
:func:`numba.extending.overload`, to a variant chosen by the scalar type:

float32
    Eigen's rational approximation of tanh (a degree-13 odd numerator over a
    degree-6 even denominator), with float32 constants only. Eigen clamps the
    input to ±7.90531, where the rational gives 0.99999976, so ``1 - t²`` and
    ``s (1 - s)`` never reached 0 and saturated units leaked gradient; here
    the input is clamped to ±10, where the rational exceeds 1 by 4 ulps, and
    the result is cut to [-1, 1]: exactly ±1 for ``|x| >= 10`` (sigmoid
    exactly 0 / 1 for ``|x| >= 20``), as float32 libm gives, and still only
    min/max, no branch or select (a conditional expression there trips a
    Numba SSA warning once inlined into the kernels; the two extra min/max
    cost nothing measurable in a layer step). It is a few multiplies, adds
    and one division, so a loop over it vectorises (AVX-512: 16 lanes) when
    the caller is compiled with ``fastmath=True, error_model="numpy"``. ``np.tanh``/``np.exp`` inside
    ``@njit`` call libm per element and do not vectorise here (llvmlite is not
    SVML-patched: 0.07 G elements/s against 3.6 for this rational in float32).
    sigmoid(x) = 0.5 + 0.5 tanh(x / 2).

    Error bound, measured against float64 ``math.tanh`` on every float32 in
    [-10, 10] sampled densely (tests/test_activations.py pins it):
    ``|tanh32(x) - tanh(x)| <= 6e-7`` and ``|sigmoid32(x) - σ(x)| <= 4e-7``
    (absolute; a few float32 ulps of 1). The largest errors measured are
    3.2e-7 (tanh) and 1.9e-7 (sigmoid); the tests assert the stated bounds.
    It is odd-symmetric, bounded by 1, and monotone only up to that error.

float64
    ``math.tanh`` and ``1 / (1 + exp(-x))`` from libm: accurate to about one
    ulp (relative error ~1e-16), not vectorised. float64 is the accuracy
    dtype; the rational form above would only be ~3e-7 accurate.

Numba's on-disk cache of :mod:`fastrnn.kernels.cpu` keys each kernel on
that file only: after editing this file in a source checkout, delete
``kernels/__pycache__/*.nb[ic]`` (an install rewrites every file).

Why the float32 constants matter: a float64 literal in the expression
promotes the whole loop to float64 and halves the vector width.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = ["tanh", "sigmoid", "tanh_array", "sigmoid_array",
           "TANH32_MAX_ABS_ERR", "SIGMOID32_MAX_ABS_ERR"]

#: stated bounds for the float32 variants (asserted in tests/test_activations.py)
TANH32_MAX_ABS_ERR = 6e-7
SIGMOID32_MAX_ABS_ERR = 4e-7

_f = np.float32
# Eigen (Eigen/src/Core/arch/Default/GenericPacketMathFunctions.h, ptanh_float)
_CLAMP = _f(7.90531110763549805)   # Eigen's clamp (see the docstring)
# our clamp: between 7.9 and 10 the rational stays within 3e-7 of tanh (and
# reaches 1), at 10 it is 1 + 4 ulps, so cutting at ±1 saturates exactly
_SAT = _f(10.0)
_ONE32 = _f(1.0)
_A1 = _f(4.89352455891786e-03)
_A3 = _f(6.37261928875436e-04)
_A5 = _f(1.48572235717979e-05)
_A7 = _f(5.12229709037114e-08)
_A9 = _f(-8.60467152213735e-11)
_A11 = _f(2.00018790482477e-13)
_A13 = _f(-2.76076847742355e-16)
_B0 = _f(4.89352518554385e-03)
_B2 = _f(2.26843463243900e-03)
_B4 = _f(1.18534705686654e-04)
_B6 = _f(1.19825839466702e-06)
_HALF32 = _f(0.5)


def _tanh32(x):
    # clamp without branches (min/max vectorise)
    x = min(max(x, -_SAT), _SAT)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return min(max(p / q, -_ONE32), _ONE32)    # exactly ±1 from |x| = 10 on


def _sigmoid32(x):
    return _HALF32 + _HALF32 * tanh(_HALF32 * x)


def _tanh64(x):
    return math.tanh(x)


def _sigmoid64(x):
    return 1.0 / (1.0 + math.exp(-x))


def tanh(x):
    """tanh; in ``@njit`` code a fast float32 or an accurate float64 variant."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic sigmoid 1 / (1 + exp(-x)); see :func:`tanh` for the variants."""
    x = np.asarray(x)
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


@overload(tanh, inline="always")
def _ol_tanh(x):
    if isinstance(x, types.Float):
        return _tanh32 if x.bitwidth == 32 else _tanh64
    return None


@overload(sigmoid, inline="always")
def _ol_sigmoid(x):
    if isinstance(x, types.Float):
        return _sigmoid32 if x.bitwidth == 32 else _sigmoid64
    return None


_opts = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)


@njit(**_opts)
def tanh_array(x, out):
    """out[k] = tanh(x[k]) over 1-d arrays with the compiled variant (for tests)."""
    for k in range(x.shape[0]):
        out[k] = tanh(x[k])


@njit(**_opts)
def sigmoid_array(x, out):
    """out[k] = sigmoid(x[k]) over 1-d arrays with the compiled variant."""
    for k in range(x.shape[0]):
        out[k] = sigmoid(x[k])
