"""The shared pointwise functions keep the input's precision when compiled."""
import numpy as np
import pytest
from numba import njit

from fastrnn.kernels import pointwise
from fastrnn.kernels.activations import sigmoid, tanh

PW = pointwise.build(njit, tanh, sigmoid)
NAMES = sorted(vars(PW))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_pointwise_keeps_float32(name, dtype):
    # a bare literal (1 - x) would type float32 arithmetic as float64
    fn = getattr(PW, name)
    out = fn(*[dtype(0.3)] * fn.py_func.__code__.co_argcount)
    ret = fn.nopython_signatures[-1].return_type
    types = getattr(ret, "types", None) or (ret,)
    assert all(str(t) == np.dtype(dtype).name for t in types), (name, ret)
    assert np.all(np.isfinite(out))


def test_python_build_matches_formulas():
    ns = pointwise.build_python()
    i, f, g, o, c, tc, h = ns.lstm_step(0.1, 0.2, 0.3, 0.4, 0.5)
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose([i, f, g, o], [s(0.1), s(0.2), np.tanh(0.3), s(0.4)], rtol=1e-15)
    np.testing.assert_allclose([c, tc, h], [f * 0.5 + i * g, np.tanh(c), o * np.tanh(c)], rtol=1e-15)
    assert ns.rnn_relu_step(-1.0) == 0 and ns.rnn_relu_grad(0.0, 2.0) == 0
