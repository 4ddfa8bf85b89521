"""The backend contract's one input check (fastrnn.contract.check_forward):
each bad argument is refused with its name and the shape or dtype expected,
the same way by every backend."""
import numpy as np
import pytest

from fastrnn import bench, dispatch, reference
from fastrnn.cells import CELLS
from fastrnn.contract import BackendUnavailable, Weights, check_forward, is_device_array

T, B, I, H = 4, 3, 2, 5


def problem(name):
    """``(cell, x, h0, c0, weights)`` of a good float64 call."""
    cell = CELLS[name]
    return (cell,) + bench.make_inputs(cell, T, B, I, H, dtype=np.float64)[:4]


def test_dispatch_reexports_what_moved():
    assert dispatch.Weights is Weights
    assert dispatch.BackendUnavailable is BackendUnavailable
    assert dispatch.is_device_array is is_device_array


@pytest.mark.parametrize("name", list(CELLS))
def test_good_arguments_pass(name):
    cell, x, h0, c0, w = problem(name)
    assert check_forward(cell, x, h0, c0, w, None) is None
    lens = check_forward(cell, x, h0, c0, w, [4, 1, 2])
    assert lens.dtype == np.int64 and lens.flags.c_contiguous and list(lens) == [4, 1, 2]
    assert check_forward(cell, x, h0, c0, w, None, strict=True) is None


def _bad_cases():
    cell, x, h0, c0, w = problem("peephole_full")
    return {
        "x ndim": (dict(x=x[0]), ValueError, r"x must be \[T, B, I\], got shape \(3, 2\)"),
        "x dtype": (dict(x=x.astype(np.int32)), TypeError, "x must be float32 or float64"),
        "h0": (dict(h0=h0[:, :4]), ValueError, r"h0 must have shape \(3, 5\), got \(3, 4\)"),
        "c0 missing": (dict(c0=None), ValueError, "c0 is required for cell 'peephole_full'"),
        "c0": (dict(c0=c0[:2]), ValueError, r"c0 must have shape \(3, 5\)"),
        "w_ih": (dict(w=w._replace(w_ih=w.w_ih[:, :1])), ValueError,
                 r"weights.w_ih must have shape \(20, 2\), got \(20, 1\)"),
        "w_hh": (dict(w=w._replace(w_hh=w.w_hh[:-1])), ValueError, "weights.w_hh"),
        "w_hh 1-D": (dict(w=w._replace(w_hh=w.b_hh)), ValueError, r"weights.w_hh must be \[G\*H"),
        "b_hh": (dict(w=w._replace(b_hh=w.b_hh[:-1])), ValueError, "weights.b_hh"),
        "peep": (dict(w=w._replace(peep=w.peep[:, 0])), ValueError,
                 r"weights.peep must have shape \(3, 5, 5\)"),
        "no peep": (dict(w=w._replace(peep=None)), ValueError, "weights.peep is required"),
        "weights": (dict(w=None), TypeError, "weights must be a fastrnn.contract.Weights"),
        "h0 list": (dict(h0=h0.tolist()), TypeError, "h0 must be an array .*, got list"),
        "x None": (dict(x=None), TypeError,        # cpu.forward's own check comes first
                   "x must be (an array .*, got NoneType|float32 or float64, got object)"),
        "lengths 0": (dict(lengths=[1, 0, 2]), ValueError, r"lengths must lie in \[1, T=4\]"),
        "lengths > T": (dict(lengths=[1, 5, 2]), ValueError, r"lengths must lie in \[1, T=4\]"),
        "lengths shape": (dict(lengths=[1, 2]), ValueError, r"lengths must have shape \(3,\)"),
        "lengths > T, big B": (None, ValueError, r"lengths must lie in \[1, T=4\]"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
@pytest.mark.parametrize("backend", ["contract", "numpy", "cpu"])
def test_bad_arguments_are_named(case, backend):
    kw, err, match = _bad_cases()[case]
    cell, x, h0, c0, w = problem("peephole_full")
    args = dict(x=x, h0=h0, c0=c0, w=w, lengths=None)
    if kw is None:      # a batch past the short-list path of the lengths range check
        n = 40
        args.update(x=np.zeros((T, n, I)), h0=np.zeros((n, H)), c0=np.zeros((n, H)),
                    lengths=np.r_[np.ones(n - 1, int), T + 1])
    else:
        args.update(kw)
    a = (cell, args["x"], args["h0"], args["c0"], args["w"], args["lengths"])
    with pytest.raises(err, match=match):
        if backend == "contract":
            check_forward(*a)
        elif backend == "numpy":
            reference.forward(*a, False, True)
        else:
            pytest.importorskip("fastrnn.kernels.cpu").forward(*a, False, True)


def test_peephole_weights_for_a_cell_without_them():
    cell, x, h0, c0, w = problem("lstm")
    with pytest.raises(ValueError, match="cell 'lstm' takes no peephole weights"):
        check_forward(cell, x, h0, c0, w._replace(peep=np.zeros((3, H))), None)


def test_c0_is_ignored_without_a_cell_state():
    cell, x, h0, _, w = problem("gru")
    assert check_forward(cell, x, h0, "anything", w, None) is None


def test_strict_wants_one_dtype_and_c_order():
    cell, x, h0, c0, w = problem("lstm")
    check_forward(cell, x, h0.astype(np.float32), c0, w, None)       # a host backend converts
    with pytest.raises(TypeError, match="h0 must be float64 like x, got float32"):
        check_forward(cell, x, h0.astype(np.float32), c0, w, None, strict=True)
    wt = w._replace(w_hh=np.asfortranarray(w.w_hh))
    check_forward(cell, x, h0, c0, wt, None)
    with pytest.raises(ValueError, match="weights.w_hh must be C-contiguous"):
        check_forward(cell, x, h0, c0, wt, None, strict=True)


def test_empty_batch():
    cell, x, h0, c0, w = problem("lstm")
    assert check_forward(cell, x[:, :0], h0[:0], c0[:0], w, np.zeros(0, int)).shape == (0,)
