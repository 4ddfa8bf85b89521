"""The packed LSTM kernels (fastrnn.kernels.packed, packed_lstm), float32 and float64, against
the float64 NumPy reference, on every path: both vector widths, one and two threads, B=1,
B and H off the micro-kernel's multiples, several panels, lengths (all
different, unsorted), reverse, initial state (tests/_packed_check.py)."""
import pytest

from _packed_check import (SHAPES, check_all_options, check_case, cpu, dtype,  # noqa: F401
                           packed, threads, vector_width)


@pytest.fixture(autouse=True)
def packed_path(cpu_settings):
    cpu_settings(use_packed=True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_against_reference(shape, vector_width, threads, dtype):
    check_all_options("lstm", shape, packed.PackedCache, dtype=dtype)


def test_longer_sequence(threads, dtype):
    """Enough steps and rows for the two threads to hand panels back and forth."""
    check_case("lstm", T=40, B=9, I=12, H=48, lengths_kind="different", reverse=True,
               state=True, saved_type=packed.PackedCache, dtype=dtype)


def test_old_kernels_still_selectable(cpu_settings):
    cpu_settings(use_packed=False)
    check_case("lstm", T=5, B=3, I=4, H=6, lengths_kind="different", reverse=True, state=True)


@pytest.mark.parametrize("shape", [(5, 1, 3, 40), (4, 2, 5, 40), (3, 1, 2, 70)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_panel_pairs(shape, vector_width, dtype):
    """One or two rows per call: the forward runs neighbouring panels in pairs
    (an odd panel count leaves one alone)."""
    check_all_options("lstm", shape, packed.PackedCache, dtype=dtype)


@pytest.mark.parametrize("B", [1, 2, 3])
def test_peephole_panel_pairs_against_reference(B, vector_width, dtype):
    import numpy as np
    from fastrnn import reference
    from fastrnn.cells import CELLS
    from fastrnn.contract import Weights
    cell = CELLS["peephole_diagonal"]
    T, I, H = 6, 3, 40
    rng = np.random.default_rng(B)
    f = lambda *s: rng.uniform(-0.3, 0.3, s).astype(dtype)  # noqa: E731
    w = Weights(f(4 * H, I), f(4 * H, H), f(4 * H), f(4 * H), f(3, H))
    x, h0, c0 = f(T, B, I), f(B, H), f(B, H)
    d = lambda a: a.astype(np.float64)  # noqa: E731
    w64 = Weights(*[d(a) for a in w])
    for training in (True, False):
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, None, False, training)
        if training:
            assert isinstance(cache.saved, packed.PackedCache)
        yr, hr, cr, _ = reference.forward(cell, d(x), d(h0), d(c0), w64, None, False, False)
        from fastrnn.testing import assert_close, cell_terms
        fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True, backward=False)
        for a, b in ((y, yr), (h, hr), (c, cr)):
            assert a.dtype == dtype
            assert_close(a, b, fwd, scale=1.0, dtype=dtype)
