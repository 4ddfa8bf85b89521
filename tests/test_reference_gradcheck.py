"""Finite-difference checks of the NumPy reference's gradients (float64).

The loss is L = Σ y ⊙ R_y + Σ h_n ⊙ R_h (+ Σ c_n ⊙ R_c), so backward is called
with dy = R_y and dstate = R_h (, R_c); every entry of x, of the initial state
and of every parameter is perturbed by ±eps and compared.
"""
import numpy as np
import pytest

from _numeric import numgrad
from _variants import VARIANTS, make, random_state, seq

RTOL, ATOL = 1e-6, 1e-8


def _loss(layer, x, state, lengths, R):
    y, st = layer(x, state, lengths)
    parts = [np.sum(y * R[0])]
    sts = st if isinstance(st, tuple) else (st,)
    parts += [np.sum(s * r) for s, r in zip(sts, R[1:])]
    return sum(parts)


def gradcheck(variant, T=3, B=2, I=3, H=2, with_state=True, lengths=None, seed=0, **kw):
    rng = np.random.default_rng(seed)
    layer = make(variant, I, H, backend="numpy", dtype=np.float64, seed=seed, **kw)
    x = seq(layer, T, B, rng)
    state = random_state(layer, B, rng) if with_state else None
    y, st = layer(x, state, lengths)
    sts = st if isinstance(st, tuple) else (st,)
    R = [rng.normal(size=y.shape)] + [rng.normal(size=s.shape) for s in sts]
    layer.zero_grad()
    y, st = layer(x, state, lengths)
    dstate = tuple(R[1:]) if layer.cell.has_cell else R[1]
    dx, dstate0 = layer.backward(R[0], dstate)

    f = lambda: _loss(layer, x, state, lengths, R)  # noqa: E731
    np.testing.assert_allclose(dx, numgrad(f, x), rtol=RTOL, atol=ATOL, err_msg="dx")
    if with_state:
        d0 = dstate0 if isinstance(dstate0, tuple) else (dstate0,)
        s0 = state if isinstance(state, tuple) else (state,)
        for k, (a, s) in enumerate(zip(d0, s0)):
            np.testing.assert_allclose(a, numgrad(f, s), rtol=RTOL, atol=ATOL, err_msg=f"dstate[{k}]")
    for name, p in layer.params.items():
        np.testing.assert_allclose(layer.grads[name], numgrad(f, p), rtol=RTOL, atol=ATOL,
                                   err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_single_layer(variant):
    gradcheck(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_zero_initial_state(variant):
    gradcheck(variant, with_state=False, seed=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_lengths_bidirectional_two_layers(variant):
    gradcheck(variant, T=4, B=3, lengths=np.array([4, 1, 2]), num_layers=2,
              bidirectional=True, seed=2)


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_gradcheck_batch_first_no_bias(variant):
    gradcheck(variant, batch_first=True, bias=False, seed=3)


def test_gradcheck_dropout_between_layers():
    # dropout masks are drawn in forward; reseed the layer's generator so each
    # finite-difference forward draws the same masks as the analytic one
    from fastrnn import LSTM
    rng = np.random.default_rng(4)
    layer = LSTM(3, 2, num_layers=2, dropout=0.5, backend="numpy", dtype=np.float64, seed=4)
    x = rng.normal(size=(3, 2, 3))
    R = rng.normal(size=(3, 2, 2))

    def f():
        layer._rng = np.random.default_rng(123)
        return np.sum(layer(x)[0] * R)

    f()
    layer.zero_grad()
    dx, _ = layer.backward(R)
    np.testing.assert_allclose(dx, numgrad(f, x), rtol=RTOL, atol=ATOL)
    for name, p in layer.params.items():
        np.testing.assert_allclose(layer.grads[name], numgrad(f, p), rtol=RTOL, atol=ATOL, err_msg=name)
