"""Property tests of the reference over random small shapes (T, B, H down to 1)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from _variants import VARIANTS, make, random_state

shapes = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))


@given(variant=st.sampled_from(sorted(VARIANTS)), shape=shapes, seed=st.integers(0, 2**16),
       data=st.data())
def test_batch_entries_are_independent_and_lengths_truncate(variant, shape, seed, data):
    """Each batch entry, run alone on its first lengths[b] steps, gives the same
    outputs and final state as inside the padded batch (both directions)."""
    T, B, I, H = shape
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(seed)
    layer = make(variant, I, H, bidirectional=True, backend="numpy", dtype=np.float64, seed=seed)
    x = rng.normal(size=(T, B, I))
    state = random_state(layer, B, rng)
    y, sn = layer(x, state, lengths)
    sns = sn if isinstance(sn, tuple) else (sn,)
    for b in range(B):
        n = lengths[b]
        assert np.all(y[n:, b] == 0)
        sb = tuple(s[:, b:b + 1] for s in state) if isinstance(state, tuple) else state[:, b:b + 1]
        yb, snb = layer(x[:n, b:b + 1], sb)
        np.testing.assert_allclose(y[:n, b:b + 1], yb, rtol=1e-12, atol=1e-14)
        for s_all, s_one in zip(sns, snb if isinstance(snb, tuple) else (snb,)):
            np.testing.assert_allclose(s_all[:, b:b + 1], s_one, rtol=1e-12, atol=1e-14)


@given(variant=st.sampled_from(sorted(VARIANTS)), shape=shapes, seed=st.integers(0, 2**16))
def test_directional_derivative_matches_finite_difference(variant, shape, seed):
    """<grad L, v> equals (L(θ + εv) - L(θ - εv)) / 2ε for a random direction v
    over x, the initial state and all parameters at once."""
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    layer = make(variant, I, H, backend="numpy", dtype=np.float64, seed=seed)
    x = rng.normal(size=(T, B, I))
    state = random_state(layer, B, rng)
    states = list(state) if isinstance(state, tuple) else [state]
    y, sn = layer(x, state)
    sns = sn if isinstance(sn, tuple) else (sn,)
    Ry = rng.normal(size=y.shape)
    Rs = [rng.normal(size=s.shape) for s in sns]
    dx, ds0 = layer.backward(Ry, tuple(Rs) if len(Rs) > 1 else Rs[0])
    ds0 = ds0 if isinstance(ds0, tuple) else (ds0,)
    arrays = [x, *states, *layer.params.values()]
    grads = [dx, *ds0, *layer.grads.values()]
    dirs = [rng.normal(size=a.shape) for a in arrays]
    base = [a.copy() for a in arrays]

    def loss(eps):
        for a, b0, v in zip(arrays, base, dirs):
            a[...] = b0 + eps * v
        yy, ss = layer(x, tuple(states) if len(states) > 1 else states[0])
        ss = ss if isinstance(ss, tuple) else (ss,)
        return np.sum(yy * Ry) + sum(np.sum(s * r) for s, r in zip(ss, Rs))

    eps = 1e-6
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    loss(0.0)
    an = sum(np.sum(g * v) for g, v in zip(grads, dirs))
    np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-7)
