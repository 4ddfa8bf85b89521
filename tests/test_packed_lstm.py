"""The packed float32 LSTM kernels (fastrnn.kernels.packed) against the float64
NumPy reference, on every path: both vector widths, one and two threads, B=1,
B and H off the micro-kernel's multiples, several panels, lengths (all
different, unsorted), reverse, initial state (tests/_packed_check.py)."""
import pytest

from _packed_check import (SHAPES, check_all_options, check_case, cpu, packed,  # noqa: F401
                           threads, vector_width)


@pytest.fixture(autouse=True)
def packed_path(monkeypatch):
    monkeypatch.setattr(cpu, "use_packed", True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_against_reference(shape, vector_width, threads):
    check_all_options("lstm", shape, packed.PackedCache)


def test_longer_sequence(threads):
    """Enough steps and rows for the two threads to hand panels back and forth."""
    check_case("lstm", T=40, B=9, I=12, H=48, lengths_kind="different", reverse=True,
               state=True, saved_type=packed.PackedCache)


def test_old_kernels_still_selectable(monkeypatch):
    monkeypatch.setattr(cpu, "use_packed", False)
    check_case("lstm", T=5, B=3, I=4, H=6, lengths_kind="different", reverse=True, state=True)
