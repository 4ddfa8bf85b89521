"""A generated sweep of bad inputs over the layer API: both host
backends, every cell, stacked / bidirectional / batch_first layers. Every bad
call must raise ValueError or TypeError whose message starts with the name of
the argument at fault, before any kernel runs (the last forward's cache and
the gradients stay as they were). Nothing is accepted silently.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrnn
from _variants import VARIANTS, make

BACKENDS = ["numpy"]
if fastrnn.dispatch.resolve_backend("auto") == "cpu":
    BACKENDS.append("cpu")

I, H = 3, 4
_layers = {}


def _layer(backend, variant, num_layers, bidirectional, batch_first):
    key = (backend, variant, num_layers, bidirectional, batch_first)
    if key not in _layers:
        _layers[key] = make(variant, I, H, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=batch_first, backend=backend, seed=0)
    layer = _layers[key]
    layer.zero_grad()
    return layer


def _poison(a, rng, value):
    a = a.copy()
    a.flat[rng.integers(a.size)] = value
    return a


def _bad_array(draw, shape, rng, name, axes=None):
    """A wrong version of a float32 array of ``shape``: (array, name prefix).
    ``axes``: the axes whose length is fixed (all by default; for x only the
    feature axis: any T and B are valid)."""
    kind = draw(st.sampled_from(["ndim", "axis", "dtype", "nan", "empty"]))
    good = rng.standard_normal(shape).astype(np.float32)
    if kind == "ndim":
        return good.reshape(-1) if draw(st.booleans()) else good[..., None], name
    if kind == "axis":
        ax = draw(st.sampled_from(axes if axes is not None else list(range(len(shape)))))
        new = list(shape)
        new[ax] = draw(st.integers(1, 6).filter(lambda n: n != shape[ax]))
        return rng.standard_normal(new).astype(np.float32), name
    if kind == "dtype":
        dt = draw(st.sampled_from([np.float64, np.float16, np.int32, np.int64, np.bool_,
                                   np.complex64]))
        return good.astype(dt), name
    if kind == "nan":
        return _poison(good, rng, draw(st.sampled_from([np.nan, np.inf, -np.inf]))), name
    # an axis of length zero
    new = list(shape)
    new[draw(st.integers(0, len(shape) - 1))] = 0
    return np.zeros(new, np.float32), name


def _expect_rejected(call, prefix):
    try:
        call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert msg.startswith(prefix), f"message does not start with {prefix!r}: {msg!r}"
        return
    raise AssertionError(f"bad {prefix} was accepted silently")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_bad_inputs_are_rejected_naming_the_argument(data):
    draw = data.draw
    backend = draw(st.sampled_from(BACKENDS), label="backend")
    variant = draw(st.sampled_from(sorted(VARIANTS)), label="variant")
    L = draw(st.integers(1, 2), label="num_layers")
    bi = draw(st.booleans(), label="bidirectional")
    bf = draw(st.booleans(), label="batch_first")
    layer = _layer(backend, variant, L, bi, bf)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16), label="seed"))
    T, B = draw(st.integers(1, 4), label="T"), draw(st.integers(1, 3), label="B")
    D, has_c = (2 if bi else 1), layer.cell.has_cell
    xshape = (B, T, I) if bf else (T, B, I)
    sshape = (L * D, B, H)
    x = rng.standard_normal(xshape).astype(np.float32)
    target = draw(st.sampled_from(["x", "state", "lengths", "dy", "dstate"]), label="target")

    if target in ("dy", "dstate"):
        y, _ = layer(x)                         # a valid forward, then a bad backward
        cache = layer._cache
        yshape = (B, T, D * H) if bf else (T, B, D * H)
        if target == "dy":
            dy, name = _bad_array(draw, yshape, rng, "dy")
            _expect_rejected(lambda: layer.backward(dy), name)
        else:
            if has_c and draw(st.booleans(), label="structure"):
                ds, name = np.zeros(sshape, np.float32), "dstate"      # not a tuple
            else:
                bad, name = _bad_array(draw, sshape, rng, "dstate")
                if has_c:
                    j = draw(st.integers(0, 1), label="part")
                    ds = (bad, None) if j == 0 else (None, bad)
                    name = ("dstate[0] (dh_n)", "dstate[1] (dc_n)")[j]
                else:
                    ds, name = bad, "dstate (dh_n)"
            _expect_rejected(lambda: layer.backward(np.ones(yshape, np.float32), ds), name)
        assert layer._cache is cache
        assert all(not g.any() for g in layer.grads.values()), "a kernel ran on bad input"
        return

    layer(x)
    cache = layer._cache
    if target == "x":
        bad, name = _bad_array(draw, xshape, rng, "x", axes=[2])
        if draw(st.booleans(), label="as list") and bad.dtype == np.float32 and bad.size:
            bad = bad.tolist()                  # nested lists become float64: a dtype error
        _expect_rejected(lambda: layer(bad), name)
    elif target == "state":
        if draw(st.booleans(), label="structure") and has_c:
            _expect_rejected(lambda: layer(x, np.zeros(sshape, np.float32)), "state")
        else:
            bad, name = _bad_array(draw, sshape, rng, "state")
            if has_c:
                j = draw(st.integers(0, 1), label="part")
                good = np.zeros(sshape, np.float32)
                state = (bad, good) if j == 0 else (good, bad)
                name = ("state[0] (h_0)", "state[1] (c_0)")[j]
            else:
                state, name = bad, "state (h_0)"
            _expect_rejected(lambda: layer(x, state), name)
    else:
        kind = draw(st.sampled_from(["low", "high", "shape", "float", "bool", "2d"]),
                    label="lengths kind")
        lengths = rng.integers(1, T + 1, B)
        if kind == "low":
            lengths[rng.integers(B)] = draw(st.integers(-3, 0))
        elif kind == "high":
            lengths[rng.integers(B)] = T + draw(st.integers(1, 3))
        elif kind == "shape":
            lengths = rng.integers(1, T + 1, B + draw(st.sampled_from([-1, 1])))
            if lengths.size == 0:
                lengths = rng.integers(1, T + 1, B + 1)
        elif kind == "float":
            lengths = lengths.astype(np.float64) + draw(st.sampled_from([0.0, 0.5]))
            lengths = lengths if draw(st.booleans()) else lengths.tolist()
        elif kind == "bool":
            lengths = [True] * B if draw(st.booleans()) else np.ones(B, bool)
        else:
            lengths = lengths[None, :]
        _expect_rejected(lambda: layer(x, None, lengths), "lengths")
    assert layer._cache is cache                # rejected before the forward pass ran


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sweep_layers_accept_good_input(backend, variant):
    # the sweep's rejections mean something only if the same calls pass when valid
    layer = _layer(backend, variant, 2, True, True)
    x = np.random.default_rng(0).standard_normal((3, 4, I)).astype(np.float32)
    y, st_ = layer(x, None, [4, 1, 2])
    parts = st_ if isinstance(st_, tuple) else (st_,)
    dx, _ = layer.backward(np.ones_like(y), tuple(np.ones_like(p) for p in parts)
                           if len(parts) == 2 else np.ones_like(parts[0]))
    assert dx.shape == x.shape and np.isfinite(dx).all()
