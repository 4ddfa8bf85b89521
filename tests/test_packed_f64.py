"""float64 on the packed CPU kernels: the vector activations' accuracy and the
routing (the kernels themselves are checked against the reference in
tests/test_packed_lstm.py, tests/test_packed_cells.py and tests/test_packed_threads.py,
which run every case in float32 and float64)."""
import numpy as np
import pytest
from numba import njit

from fastrnn.cells import CELLS
from fastrnn.dispatch import Weights

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0] or cpu.packed is None:  # pragma: no cover
    pytest.skip("the packed CPU kernels are not available", allow_module_level=True)
from fastrnn.kernels import packed, packed_cells, simd, vector  # noqa: E402

#: the float64 vector tanh and sigmoid are within 2 ulp of the exact values
#: (measured against 40-digit mpmath on a dense grid); numpy's libm is within 1
ULP_VS_NUMPY = 3


def _apply(tag, kind, x, out):
    """out = tanh(x) (kind 0) or sigmoid(x) (1), one vector of len(tag) at a time."""
    if x.shape[0] % len(tag) or out.shape != x.shape:
        raise ValueError("x and out: the same 1-d shape, a multiple of the vector width")
    _apply_vectors(tag, kind, x, out)


@njit
def _apply_vectors(tag, kind, x, out):
    VW = len(tag)
    for k in range(0, x.shape[0], VW):
        src = x.ctypes.data + 8 * k
        dst = out.ctypes.data + 8 * k
        if kind == 0:
            simd.vtanh(tag, src, dst)
        else:
            simd.vsigmoid(tag, src, dst)


def _grid():
    rng = np.random.default_rng(0)
    tiny = np.geomspace(1e-300, 1.0, 4000)
    x = np.concatenate([np.linspace(-30, 30, 60001), tiny, -tiny, rng.uniform(-40, 40, 20000),
                        np.linspace(-750, 750, 3001), [0.0, -0.0, 0.625, -0.625]])
    return x[:len(x) // 8 * 8]


def _ulps(a, ref):
    """|a - ref| in units in the last place of ref (ref == 0 must be met exactly)."""
    zero = ref == 0
    assert (a[zero] == 0).all()
    return np.abs(a[~zero] - ref[~zero]) / np.spacing(np.abs(ref[~zero]))


@pytest.mark.parametrize("lanes", [8, 4])
def test_float64_vector_tanh_and_sigmoid_are_accurate(lanes):
    x = _grid()
    tag = vector.make_tag(lanes, np.float64)
    t = np.empty_like(x)
    s = np.empty_like(x)
    _apply(tag, 0, x, t)
    _apply(tag, 1, x, s)
    assert _ulps(t, np.tanh(x)).max() <= ULP_VS_NUMPY
    with np.errstate(over="ignore"):
        sref = 1.0 / (1.0 + np.exp(-x))
    keep = x > -708          # below, the kernels' exp argument is clamped (|error| < 1e-307)
    assert _ulps(s[keep], sref[keep]).max() <= ULP_VS_NUMPY
    assert (np.abs(s[~keep] - sref[~keep]) < 1e-307).all()
    # saturation: exactly +-1 (and 1 for the sigmoid) where float64 rounds there
    big = np.abs(x) >= 20
    np.testing.assert_array_equal(t[big], np.sign(x[big]))
    np.testing.assert_array_equal(s[x >= 40], 1.0)
    assert (s >= 0).all() and (s <= 1).all() and (np.abs(t) <= 1).all()
    np.testing.assert_array_equal(np.signbit(t), np.signbit(x))     # odd, signed zeros too


def _cache(name, dtype):
    cell = CELLS[name]
    G = cell.gates
    z = lambda *s: np.full(s, 0.1, dtype)  # noqa: E731
    w = Weights(z(G * 3, 2), z(G * 3, 3), z(G * 3), z(G * 3), z(3, 3) if cell.peephole else None)
    return cpu.forward(cell, z(2, 1, 2), z(1, 3), z(1, 3) if cell.has_cell else None, w, None,
                       False, True)[3]


@pytest.mark.parametrize("name", ["lstm", "peephole_diagonal", "gru", "rnn_tanh", "rnn_relu"])
def test_float64_runs_the_packed_kernels_by_default(cpu_settings, name):
    saved = packed.PackedCache if CELLS[name].family == "lstm" else packed_cells.PackedCellCache
    assert np.dtype(np.float64) in cpu.settings.packed_dtypes
    c = _cache(name, np.float64)
    assert isinstance(c.saved, saved)
    assert c.saved.pk.up.dtype == np.float64
    # left out of packed_dtypes, float64 runs the BLAS-per-step loops (float32 stays packed)
    cpu_settings(packed_dtypes={np.float32})
    assert not isinstance(_cache(name, np.float64).saved, saved)
    assert isinstance(_cache(name, np.float32).saved, saved)
