"""fastrnn.testing's problem makers and its assert-matches-reference helper:
the problems are what they say (shapes, dtypes, the same arrays for the same
seed), and the helper passes a correct backend and fails a wrong one."""
import re
from types import SimpleNamespace

import numpy as np
import pytest

from fastrnn import reference
from fastrnn.cells import CELLS
from fastrnn.testing import Problem, assert_matches_reference, make_lengths, make_problem

T, B, I, H = 4, 3, 2, 5


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_make_problem_shapes_dtypes_and_seed(name, dtype):
    cell = CELLS[name]
    p = make_problem(name, T, B, I, H, seed=3, dtype=dtype)
    assert isinstance(p, Problem)
    x, h0, c0, w, dy = p
    assert x.shape == (T, B, I) and dy.shape == (T, B, H) and h0.shape == (B, H)
    assert (c0 is None) == (not cell.has_cell)
    G = cell.gates
    assert (w.w_ih.shape, w.w_hh.shape, w.b_ih.shape, w.b_hh.shape) == (
        (G * H, I), (G * H, H), (G * H,), (G * H,))
    assert (w.peep is None) == (cell.peephole is None)
    arrays = [a for a in (x, h0, c0, *w, dy) if a is not None]
    assert all(a.dtype == dtype for a in arrays)
    s = 1 / np.sqrt(H)
    assert all(np.abs(a).max() <= s for a in w if a is not None)
    assert not h0.any() and (c0 is None or not c0.any())           # state=0: zeros
    again = make_problem(name, T, B, I, H, seed=3, dtype=dtype)
    for a, b in zip(arrays, [a for a in (again.x, again.h0, again.c0, *again.weights, again.dy)
                             if a is not None]):
        np.testing.assert_array_equal(a, b)
    other = make_problem(name, T, B, I, H, seed=4, dtype=dtype)
    assert not np.array_equal(other.x, x)
    # a random initial state is drawn after the rest: the other arrays stay the same
    st = make_problem(name, T, B, I, H, seed=3, dtype=dtype, state=0.5)
    np.testing.assert_array_equal(st.x, x)
    np.testing.assert_array_equal(st.dy, dy)
    assert st.h0.any() and (c0 is None or st.c0.any())


def test_make_lengths():
    rng = np.random.default_rng(0)
    assert make_lengths("none", 5, 3, rng) is None
    np.testing.assert_array_equal(make_lengths("equal", 5, 3, rng), [4, 4, 4])
    L = make_lengths("different", 5, 4, rng)
    assert L.dtype == np.int64 and len(set(L.tolist())) == 4 and L.min() >= 1 and L.max() <= 5
    assert (L != np.sort(L)[::-1]).any()                               # not sorted
    L = make_lengths("different", 3, 6, rng)                           # B > T: repeats allowed
    assert L.shape == (6,) and L.min() >= 1 and L.max() <= 3
    with pytest.raises(ValueError, match="kind"):
        make_lengths("sorted", 5, 3, rng)


def _off_by(field, delta):
    """The reference backend with one result off by ``delta`` in one entry."""
    def forward(*args):
        out = list(reference.forward(*args))
        if field == "y":
            out[0] = out[0].copy()
            out[0][-1, 0, 0] += delta
        return tuple(out)

    def backward(*args):
        dx, dh0, dc0, dw = reference.backward(*args)
        if field == "dx":
            dx = dx.copy()
            dx[0, -1, -1] += delta
        if field == "dw_hh":
            dw = dw._replace(w_hh=dw.w_hh + delta)
        return dx, dh0, dc0, dw
    return SimpleNamespace(forward=forward, backward=backward)


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole_full"])
def test_assert_matches_reference_passes_the_reference_and_fails_a_wrong_backend(name):
    p = make_problem(name, T, B, I, H, seed=1, dtype=np.float32, state=0.5)
    lengths = make_lengths("different", T, B, np.random.default_rng(0))
    out, grads = assert_matches_reference(reference, name, p, lengths=lengths, approx=False)
    assert out[0].shape == (T, B, H) and grads[0].shape == (T, B, I)
    for field in ("y", "dx", "dw_hh"):
        with pytest.raises(AssertionError, match=re.escape(f": {field} (bound")):
            # 1e-4: far above the float32 bound of these sums, far below the values
            assert_matches_reference(_off_by(field, 1e-4), name, p, lengths=lengths)
