"""fastrnn.kernels.activations: the compiled tanh / sigmoid variants.

Pins the error bounds stated in the module docstring: float32 absolute error
against float64 libm, float64 relative error ~1e-16, and that the float32
variant stays float32 (a float64 constant would promote the kernels' loops).
"""
import math

import numpy as np
import pytest

act = pytest.importorskip("fastrnn.kernels.activations")
numba = pytest.importorskip("numba")


def _sigmoid64(x):
    """Reference sigmoid in float64, stable for both signs."""
    ex = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + ex), ex / (1.0 + ex))


def _grid32():
    # dense over the interesting range, plus the clamp region and extremes
    dense = np.linspace(-10.0, 10.0, 2_000_001, dtype=np.float32)
    tiny = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3e-4, -3e-4], np.float32)
    big = np.array([7.9, 7.905, 7.91, 20.0, 88.0, 1e10, 3.4e38], np.float32)
    return np.concatenate([dense, tiny, big, -big])


def test_tanh32_error_bound():
    x = _grid32()
    out = np.empty_like(x)
    act.tanh_array(x, out)
    exact = np.tanh(x.astype(np.float64))
    err = np.abs(out.astype(np.float64) - exact)
    assert err.max() <= act.TANH32_MAX_ABS_ERR, err.max()
    assert np.all(np.abs(out) <= 1.0)
    np.testing.assert_array_equal(out[x == 0], 0.0)


def test_sigmoid32_error_bound():
    x = _grid32()
    out = np.empty_like(x)
    act.sigmoid_array(x, out)
    exact = _sigmoid64(x.astype(np.float64))
    err = np.abs(out.astype(np.float64) - exact)
    assert err.max() <= act.SIGMOID32_MAX_ABS_ERR, err.max()
    assert np.all((out >= 0.0) & (out <= 1.0))


def test_tanh32_odd_and_monotone():
    x = np.linspace(0.0, 9.0, 200_001, dtype=np.float32)
    pos = np.empty_like(x)
    neg = np.empty_like(x)
    act.tanh_array(x, pos)
    act.tanh_array(-x, neg)
    np.testing.assert_array_equal(pos, -neg)
    # monotone up to the approximation error (it wiggles by up to ~4e-7 near 1)
    assert np.all(np.diff(pos) >= -act.TANH32_MAX_ABS_ERR)


def test_float64_accuracy():
    x = np.concatenate([np.linspace(-40, 40, 400_001), [0.0, 1e-300, -1e-300, 1e-9, 700.0, -700.0]])
    t = np.empty_like(x)
    s = np.empty_like(x)
    act.tanh_array(x, t)
    act.sigmoid_array(x, s)
    exact_t = np.array([math.tanh(v) for v in x[::97]])
    exact_s = _sigmoid64(x)
    np.testing.assert_allclose(t[::97], exact_t, rtol=1e-15, atol=0)
    np.testing.assert_allclose(s, exact_s, rtol=4e-15, atol=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    @numba.njit(fastmath=True, error_model="numpy")
    def both(x):
        return act.tanh(x), act.sigmoid(x)

    both(dtype(0.5))
    ret = both.nopython_signatures[0].return_type
    want = numba.from_dtype(np.dtype(dtype))
    assert ret == numba.types.UniTuple(want, 2)


def test_python_fallbacks():
    x = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(act.tanh(x), np.tanh(x))
    np.testing.assert_allclose(act.sigmoid(x), _sigmoid64(x))
    assert act.sigmoid(np.float32(1.0)).dtype == np.float32


def test_float32_saturates_exactly():
    # beyond their range tanh is exactly ±1 and sigmoid exactly
    # 0 / 1, so the derivatives from saved activations (1 - t², s (1 - s)) are 0
    big = np.array([10.0, 10.5, 12.0, 20.0, 88.0, 1e4, 1e10, 3.4e38, np.inf], np.float32)
    x = np.concatenate([big, -big])
    t = np.empty_like(x)
    act.tanh_array(x, t)
    np.testing.assert_array_equal(t, np.sign(x))
    one = np.float32(1)
    assert (one - t * t == 0).all()
    s = np.empty_like(x)
    with np.errstate(over="ignore"):
        x2 = 2 * x                       # sigmoid saturates from |x| = 20 (3.4e38 -> inf)
    act.sigmoid_array(x2, s)
    np.testing.assert_array_equal(s, (x > 0).astype(np.float32))
    assert (s * (one - s) == 0).all()
    # and they never overshoot on the way there
    ramp = np.linspace(0, 12, 100_001, dtype=np.float32)
    act.tanh_array(ramp, t := np.empty_like(ramp))
    assert t.max() == 1.0 and (t <= 1.0).all()
    assert t[-1] == 1.0 and (np.diff(t) >= -act.TANH32_MAX_ABS_ERR).all()
