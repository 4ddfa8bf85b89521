"""The packed GRU and tanh/ReLU RNN kernels (fastrnn.kernels.packed_cells), float32
and float64, against the float64 NumPy reference, on every path: both vector widths, one and
two threads, B=1, B and H off the micro-kernel's multiples, several panels,
lengths (all different, unsorted), reverse, initial state (tests/_packed_check.py)."""
import numpy as np
import pytest

from fastrnn.cells import CELLS

from _packed_check import (SHAPES, check_all_options, check_case, cpu, dtype,  # noqa: F401
                           threads, vector_width)

packed_cells = pytest.importorskip("fastrnn.kernels.packed_cells")

CELL_NAMES = ["gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture(autouse=True)
def packed_path(cpu_settings):
    """Every (family, mode) on the packed kernels, whatever cpu.settings.packed_cells
    selects."""
    cpu_settings(use_packed=True,
                 packed_cells={(f, t) for f in ("gru", "rnn") for t in (True, False)})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("name", CELL_NAMES)
def test_against_reference(name, shape, vector_width, threads, dtype):
    check_all_options(name, shape, packed_cells.PackedCellCache, dtype=dtype)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_longer_sequence(name, threads, dtype):
    """Enough steps and rows for the two threads to hand panels back and forth."""
    check_case(name, T=40, B=9, I=12, H=48, lengths_kind="different", reverse=True, state=True,
               saved_type=packed_cells.PackedCellCache, dtype=dtype)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_old_kernels_still_selectable(cpu_settings, name):
    cpu_settings(use_packed=False)
    check_case(name, T=5, B=3, I=4, H=6, lengths_kind="different", reverse=True, state=True)
    assert not isinstance(_training_cache(name).saved, packed_cells.PackedCellCache)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_selection_table(cpu_settings, name):
    """A (family, mode) left out of cpu.settings.packed_cells runs the old loops."""
    cpu_settings(packed_cells=set())
    assert cpu.route(CELLS[name], np.dtype(np.float32), True) == "loops"
    assert not isinstance(_training_cache(name).saved, packed_cells.PackedCellCache)
    cpu_settings(packed_cells={(cpu.PACKED[name], True)})
    assert cpu.route(CELLS[name], np.dtype(np.float32), True) == "packed_cells"
    assert isinstance(_training_cache(name).saved, packed_cells.PackedCellCache)


def _training_cache(name, T=2, B=1, I=1, H=3):
    from fastrnn.cells import CELLS
    from fastrnn.dispatch import Weights
    cell = CELLS[name]
    G = cell.gates
    z = lambda *s: np.full(s, 0.1, np.float32)  # noqa: E731
    w = Weights(z(G * H, I), z(G * H, H), z(G * H), z(G * H), None)
    return cpu.forward(cell, z(T, B, I), z(B, H), None, w, None, False, True)[3]
