"""Layers on the compiled CPU kernels (backend="cpu") against the same layers on
the NumPy reference: stacked, bidirectional, batch_first, lengths, initial
state, dropout, non-contiguous input — outputs, final states and every gradient."""
import numpy as np
import pytest

from _variants import VARIANTS, make, random_state
from fastrnn.testing import assert_close, cell_terms

pytest.importorskip("numba")


def _pair(variant, dtype, **kw):
    return (make(variant, 3, 5, backend="numpy", dtype=dtype, seed=0, **kw),
            make(variant, 3, 5, backend="cpu", dtype=dtype, seed=0, **kw))


def _flat(st):
    return st if isinstance(st, tuple) else (st,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_stacked_bidirectional_layer_matches_reference(variant, dtype):
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    ref, cpu = _pair(variant, dtype, **kw)
    rng = np.random.default_rng(1)
    B, T = 4, 6
    big = rng.normal(size=(B, T, 6)).astype(dtype)
    x = big[:, :, ::2]                                  # non-contiguous input
    assert not x.flags.c_contiguous
    state = random_state(ref, B, rng)
    lengths = np.array([6, 1, 4, 6])
    dy = rng.normal(size=(B, T, 10)).astype(dtype)
    ds = tuple(rng.normal(size=s.shape).astype(dtype) for s in _flat(state))
    outs = []
    for layer in (ref, cpu):
        y, st = layer(x, state, lengths)
        dx, d0 = layer.backward(dy, ds if layer.cell.has_cell else ds[0])
        outs.append((y, _flat(st), dx, _flat(d0), layer.grads))
    assert cpu._cache["backend"].__name__ == "fastrnn.kernels.cpu"
    (y1, s1, dx1, d01, g1), (y2, s2, dx2, d02, g2) = outs
    fwd = cell_terms(ref.cell, T, B, 3, 5, 2, 2, dtype, approx=True, backward=False)
    full = cell_terms(ref.cell, T, B, 3, 5, 2, 2, dtype, approx=True)
    # terms: activations (|.| <= 1), the carried state, the upstream gradients
    fs = max(1.0, *(np.abs(a).max() for a in _flat(state)))
    up = max(fs, np.abs(dy).max(), *(np.abs(a).max() for a in ds))
    assert_close(y2, y1, fwd, scale=fs, err_msg="y")
    for a, b in zip(s2, s1):
        assert_close(a, b, fwd, scale=fs, err_msg="state")
    for a, b in zip(d02, d01):
        assert_close(a, b, full, scale=up, err_msg="dstate")
    assert_close(dx2, dx1, full, scale=up, err_msg="dx")
    for k in g1:
        assert_close(g2[k], g1[k], full, scale=up, err_msg=k)


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh"])
def test_eval_mode_matches_reference(variant):
    ref, cpu = _pair(variant, np.float32, num_layers=2, bidirectional=True)
    ref.eval()
    cpu.eval()
    x = np.random.default_rng(2).normal(size=(7, 3, 3)).astype(np.float32)
    (y1, s1), (y2, s2) = ref(x, lengths=[7, 2, 5]), cpu(x, lengths=[7, 2, 5])
    fwd = cell_terms(ref.cell, 7, 3, 3, 5, 2, 2, approx=True, backward=False)
    assert_close(y2, y1, fwd, scale=1.0, err_msg="y")
    for a, b in zip(_flat(s2), _flat(s1)):
        assert_close(a, b, fwd, scale=1.0, err_msg="state")
