"""A recurrent layer's backward pass (fastrnn.layers) refuses what it cannot
use and does not depend on what the caller does between forward and backward:

- NaN/Inf in ``dy``/``dstate`` is rejected before any kernel runs (every host
  backend, every cell);
- editing ``x`` (or the state) in place between forward and backward changes
  nothing;
- a second backward without a new forward is an error (unless the graph was
  retained).
"""
import numpy as np
import pytest

import fastrnn
from _variants import VARIANTS, make, random_state
from fastrnn import BackwardError

HOST = ["numpy", pytest.param("cpu", marks=pytest.mark.skipif(
    not fastrnn.dispatch.resolve_backend("auto") == "cpu", reason="no compiled CPU backend"))]


# ============================================================ non-finite gradients
@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_rejects_non_finite_dy_and_dstate(variant, backend):
    layer = make(variant, 3, 4, num_layers=2, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, st = layer(x)
    parts = st if isinstance(st, tuple) else (st,)
    for bad in (np.nan, np.inf, -np.inf):
        dy = np.ones_like(y)
        dy[4, 1, 3] = bad
        with pytest.raises(ValueError, match=r"^dy contains NaN or infinity"):
            layer.backward(dy)
        for j in range(len(parts)):
            ds = [np.zeros_like(p) for p in parts]
            ds[j][1, 0, 2] = bad
            name = (r"dstate\[0\] \(dh_n\)", r"dstate\[1\] \(dc_n\)")[j] if len(parts) == 2 \
                else r"dstate \(dh_n\)"
            with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinity"):
                layer.backward(np.ones_like(y), tuple(ds) if len(parts) == 2 else ds[0])
    # rejected before any kernel ran: nothing was accumulated, and the cache is intact
    assert all(not g.any() for g in layer.grads.values())
    dx, _ = layer.backward(np.ones_like(y))
    assert np.isfinite(dx).all()


# ============================================================ in-place edits
@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_in_place_edit_of_x_and_state_between_forward_and_backward(variant, backend):
    # time-major x is not copied by the layout change: forward keeps its own copy
    rng = np.random.default_rng(0)
    layer = make(variant, 3, 4, backend=backend, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    state = random_state(layer, 2, rng)
    x0 = x.copy()
    state0 = tuple(s.copy() for s in state) if isinstance(state, tuple) else state.copy()
    y, _ = layer(x0, state0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want_dx, _ = layer.backward(dy)
    want = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    layer(x, state)
    x[...] = 7.0                                   # the caller reuses its buffers
    for s in (state if isinstance(state, tuple) else (state,)):
        s[...] = -3.0
    dx, _ = layer.backward(dy)
    np.testing.assert_array_equal(dx, want_dx)
    for k, g in layer.grads.items():
        np.testing.assert_array_equal(g, want[k], err_msg=k)


# ============================================================ a second backward
def test_backward_twice_without_forward_raises():
    layer = fastrnn.LSTM(3, 4, backend="numpy", seed=0)
    x = np.zeros((4, 2, 3), np.float32)
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    g = {k: v.copy() for k, v in layer.grads.items()}
    with pytest.raises(BackwardError, match="already called"):
        layer.backward(np.ones_like(y))
    for k in g:                                   # nothing was added twice
        np.testing.assert_array_equal(layer.grads[k], g[k])
    y, _ = layer(x)                               # a new forward allows it again
    layer.backward(np.ones_like(y), retain_graph=True)
    layer.backward(np.ones_like(y))
