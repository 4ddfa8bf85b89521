"""The NumPy reference's bfloat16 compute mode (``compute_dtype="bfloat16"``).

The mode rounds the operands of the matrix products to bfloat16
(``fastrnn.bf16.round_bf16``) and sums their products in float32; these tests
check that it does exactly that and nothing more: hand-computed steps, equality
with float32 where every operand is already a bfloat16 value, a difference
where none is, agreement with the float32 layer within the bound of
``fastrnn.testing.bf16_terms``, and the float32 path untouched.
"""
import numpy as np
import pytest

from fastrnn import reference as ref
from fastrnn.bf16 import round_bf16
from fastrnn.cells import CELLS, get_cell
from fastrnn.contract import Weights
from fastrnn.testing import assert_close, bf16_terms, cell_terms

BF16 = "bfloat16"


def _args(cell, T, B, I, H, rng, dtype=np.float32, bf16_values=False):
    """Random arguments of one layer and direction (weights U(-1/sqrt(H), 1/sqrt(H)));
    ``bf16_values``: every array rounded to bfloat16 values first."""
    cell = get_cell(cell)
    G, k = cell.gates, 1 / np.sqrt(H)
    fix = round_bf16 if bf16_values else (lambda a: a)

    def arr(shape, lo=-1.0, hi=1.0):
        return fix(rng.uniform(lo, hi, shape).astype(np.float32)).astype(dtype)

    peep = None
    if cell.peephole is not None:
        peep = arr((3,) + cell.peephole_shape(H), -k, k)
    w = Weights(arr((G * H, I), -k, k), arr((G * H, H), -k, k), arr((G * H,), -k, k),
                arr((G * H,), -k, k), peep)
    c0 = arr((B, H)) if cell.has_cell else None
    return arr((T, B, I)), arr((B, H)), c0, w


def _grads(cell, args, dy, dh, dc, compute_dtype, lengths=None, reverse=False):
    cell = get_cell(cell)
    y, h, c, cache = ref.forward(cell, *args, lengths=lengths, reverse=reverse,
                                 compute_dtype=compute_dtype)
    dx, dh0, dc0, dw = ref.backward(cell, cache, dy, dh, dc if cell.has_cell else None)
    out = {"y": y, "h_n": h, "dx": dx, "dh0": dh0, "dw_ih": dw.w_ih, "dw_hh": dw.w_hh,
           "db_ih": dw.b_ih, "db_hh": dw.b_hh}
    if cell.has_cell:
        out.update(c_n=c, dc0=dc0)
    if dw.peep is not None:
        out["dpeep"] = dw.peep
    return out


def _upstream(T, B, H, rng):
    return (rng.uniform(-1, 1, (T, B, H)).astype(np.float32),
            rng.uniform(-1, 1, (B, H)).astype(np.float32),
            rng.uniform(-1, 1, (B, H)).astype(np.float32))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_bf16_within_the_bf16_bound_of_float32(cell):
    """Outputs and every gradient of the mode lie within 2 u n scale of the
    float32 layer's, u = 2**-9, n = fastrnn.testing.bf16_terms (the product
    stages along the longest chain)."""
    rng = np.random.default_rng(23)
    T, B, I, H = 5, 3, 4, 6
    args = _args(cell, T, B, I, H, rng)
    up = _upstream(T, B, H, rng)
    lengths = np.array([5, 2, 4])
    for reverse in (False, True):
        a = _grads(cell, args, *up, BF16, lengths, reverse)
        e = _grads(cell, args, *up, None, lengths, reverse)
        fwd = bf16_terms(cell, T, B, I, H, backward=False)
        back = bf16_terms(cell, T, B, I, H)
        for k in e:
            assert a[k].dtype == np.float32, k
            forward_value = k in ("y", "h_n", "c_n")
            assert_close(a[k], e[k], fwd if forward_value else back, dtype=BF16,
                         scale=1.0, err_msg=f"{cell} {k} reverse={reverse}")


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_rounding_happens(cell):
    """Operands that are not bfloat16 values give results other than float32's:
    the outputs, the input and weight gradients and the state gradients all differ."""
    rng = np.random.default_rng(1)
    T, B, I, H = 3, 2, 3, 4
    args = _args(cell, T, B, I, H, rng)
    up = _upstream(T, B, H, rng)
    a = _grads(cell, args, *up, BF16)
    e = _grads(cell, args, *up, None)
    for k in ("y", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih"):
        assert not np.array_equal(a[k], e[k]), f"{cell} {k}: no rounding happened"


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_bf16_values_one_step_equal_float32(cell):
    """One step from a given state where x, h0, c0 and every parameter are
    bfloat16 values: nothing is left to round (the reset-before GRU's r*h
    aside), so the forward results are float32's, bit for bit."""
    rng = np.random.default_rng(2)
    B, I, H = 3, 5, 4
    x, h0, c0, w = _args(cell, 1, B, I, H, rng, bf16_values=True)
    cell_ = get_cell(cell)
    a = ref.forward(cell_, x, h0, c0, w, compute_dtype=BF16)
    e = ref.forward(cell_, x, h0, c0, w)
    if cell == "gru_reset_before":      # r*h enters U_n rounded: not a bf16 value
        assert not np.array_equal(a[0], e[0])
        return
    for got, want in zip(a[:3], e[:3]):
        if want is not None:
            np.testing.assert_array_equal(got, want)


def test_relu_rnn_one_step_backward_with_bf16_values_equals_float32():
    """ReLU RNN, one step, everything (dy and dh_n included) bfloat16 values:
    the gate gradient ``dy * (h > 0)`` is one too, so backward rounds nothing
    and the gradients are float32's, bit for bit."""
    rng = np.random.default_rng(3)
    B, I, H = 3, 4, 5
    args = _args("rnn_relu", 1, B, I, H, rng, bf16_values=True)
    dy = round_bf16(rng.uniform(-1, 1, (1, B, H)).astype(np.float32))
    dh = np.zeros((B, H), np.float32)
    a = _grads("rnn_relu", args, dy, dh, None, BF16)
    e = _grads("rnn_relu", args, dy, dh, None, None)
    assert (a["y"] > 0).any()
    for k in e:
        np.testing.assert_array_equal(a[k], e[k], err_msg=k)


def test_hand_computed_rnn_step():
    """tanh RNN, B = I = H = 1, values chosen to round predictably (bfloat16
    keeps 8 significant bits: the spacing is 2**-7 in [1, 2), 2**-8 in [0.5, 1)):

    x    = 1 + 3*2**-9  -> 1 + 2**-7       (0.75 of a spacing: up)
    W_ih = 0.5 + 2**-10 -> 0.5             (0.25 of a spacing: down)
    h0   = 1 + 2**-8    -> 1               (a tie: to the even neighbour)
    W_hh = 1 + 3*2**-8  -> 1 + 2**-6       (a tie: to the even neighbour)
    biases 0.1 and -0.05, not rounded.
    """
    cell = get_cell("rnn_tanh")
    f = np.float32
    x = np.array([[[1 + 3 * 2 ** -9]]], f)
    w = Weights(np.array([[0.5 + 2 ** -10]], f), np.array([[1 + 3 * 2 ** -8]], f),
                np.array([0.1], f), np.array([-0.05], f))
    h0 = np.array([[-(1 + 2 ** -8)]], f)
    y, h, _, cache = ref.forward(cell, x, h0, None, w, compute_dtype=BF16)
    a = (1 + 2 ** -7) * 0.5 + np.float64(f(0.1)) - (1 + 2 ** -6) + np.float64(f(-0.05))
    assert_close(y[0, 0, 0], np.float32(np.tanh(a)), 4, scale=1.0)
    assert h[0, 0] == y[0, 0, 0]
    # backward: da = dy (1 - y^2) rounded for the products, unrounded for the biases
    dy = np.array([[[0.75]]], f)
    dx, dh0, _, dw = ref.backward(cell, cache, dy, np.zeros((1, 1), f))
    da = f(0.75) * (f(1) - y[0, 0, 0] * y[0, 0, 0])
    rda = float(round_bf16(np.array([da], f))[0])
    assert rda != da        # the case exercises the rounding
    for got, want in [(dx[0, 0, 0], rda * (0.5)), (dh0[0, 0], rda * (1 + 2 ** -6)),
                      (dw.w_ih[0, 0], rda * (1 + 2 ** -7)), (dw.w_hh[0, 0], rda * -1.0),
                      (dw.b_ih[0], da), (dw.b_hh[0], da)]:
        assert_close(got, np.float32(want), 4, scale=1.0)


def test_hand_computed_lstm_step_keeps_cell_and_biases_float32():
    """LSTM, B = I = H = 1: only x, h0 and the weight matrices are rounded; c0
    and the biases enter unrounded (c0 = 0.3 + 2**-12 is not a bfloat16 value)."""
    cell = get_cell("lstm")
    f = np.float32
    x = np.array([[[0.7]]], f)
    h0 = np.array([[-0.3]], f)
    c0 = np.array([[0.3 + 2 ** -12]], f)
    wi = np.array([[0.11], [-0.23], [0.37], [0.41]], f)
    wh = np.array([[0.13], [0.29], [-0.31], [0.17]], f)
    bi = np.array([0.011, -0.021, 0.031, 0.041], f)
    bh = np.array([0.003, 0.005, -0.007, 0.009], f)
    y, h, c, _ = ref.forward(cell, x, h0, c0, Weights(wi, wh, bi, bh), compute_dtype=BF16)
    r = lambda a: round_bf16(np.asarray(a, f)).astype(np.float64)  # noqa: E731
    a = (r(x[0, 0, 0]) * r(wi[:, 0]) + bi.astype(np.float64) + r(h0[0, 0]) * r(wh[:, 0])
         + bh.astype(np.float64))
    sg = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, fg, g, o = sg(a[0]), sg(a[1]), np.tanh(a[2]), sg(a[3])
    c_want = fg * np.float64(c0[0, 0]) + i * g
    assert_close(c[0, 0], np.float32(c_want), 8, scale=1.0)
    assert_close(y[0, 0, 0], np.float32(o * np.tanh(c_want)), 8, scale=1.0)
    # with c0 rounded the result moves: the cell state is not an operand
    _, _, c_r, _ = ref.forward(cell, x, h0, round_bf16(c0), Weights(wi, wh, bi, bh),
                               compute_dtype=BF16)
    assert c_r[0, 0] != c[0, 0]


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "peephole_diagonal", "peephole_full"])
def test_forward_is_float32_steps_on_rounded_operands(cell):
    """For cells where h enters only U h, the mode's forward is a chain of
    float32 one-step calls on rounded x and weights, each starting from the
    rounded previous h (the cell state passed on unrounded): an independent
    restatement of the forward semantics, equal up to float32 sum order."""
    rng = np.random.default_rng(4)
    cell_ = get_cell(cell)
    T, B, I, H = 4, 3, 5, 6
    x, h0, c0, w = _args(cell, T, B, I, H, rng)
    y, h, c, _ = ref.forward(cell_, x, h0, c0, w, compute_dtype=BF16, training=False)
    wr = w._replace(w_ih=round_bf16(w.w_ih), w_hh=round_bf16(w.w_hh))
    hs, cs = h0, c0
    terms = cell_terms(cell_, 1, B, I, H, backward=False)
    for t in range(T):
        yt, hs, cs, _ = ref.forward(cell_, round_bf16(x[t:t + 1]), round_bf16(hs), cs, wr,
                                    training=False)
        assert_close(y[t], yt[0], terms * (t + 1), scale=1.0, err_msg=f"{cell} t={t}")
    assert_close(h, hs, terms * T, scale=1.0)
    if c is not None:
        assert_close(c, cs, terms * T, scale=1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole_full"])
def test_inputs_not_modified_and_fresh_outputs(cell):
    rng = np.random.default_rng(5)
    T, B, I, H = 3, 2, 3, 4
    args = _args(cell, T, B, I, H, rng)
    up = _upstream(T, B, H, rng)
    before = [None if a is None else np.copy(a) for a in args[:3]] + [np.copy(a) for a in args[3]
                                                                      if a is not None]
    up_before = [np.copy(a) for a in up]
    _grads(cell, args, *up, BF16, np.array([3, 1]))
    after = list(args[:3]) + [a for a in args[3] if a is not None]
    for b, a in zip(before, after):
        if b is not None:
            np.testing.assert_array_equal(a, b)
    for b, a in zip(up_before, up):
        np.testing.assert_array_equal(a, b)


def test_cache_remembers_the_mode():
    rng = np.random.default_rng(6)
    args = _args("gru", 2, 2, 3, 4, rng)
    _, _, _, cache = ref.forward(get_cell("gru"), *args, compute_dtype="bf16")
    assert cache.compute_dtype == BF16
    _, _, _, cache = ref.forward(get_cell("gru"), *args, compute_dtype="float32")
    assert cache.compute_dtype is None


def test_float64_and_unknown_modes_are_refused():
    rng = np.random.default_rng(7)
    args = _args("lstm", 2, 2, 3, 4, rng, dtype=np.float64)
    with pytest.raises(ValueError, match="compute_dtype"):
        ref.forward(get_cell("lstm"), *args, compute_dtype=BF16)
    args = _args("lstm", 2, 2, 3, 4, rng)
    with pytest.raises(ValueError, match="compute_dtype"):
        ref.forward(get_cell("lstm"), *args, compute_dtype="float16")


def test_nan_propagates_and_saturation_is_exact():
    cell = get_cell("lstm")
    rng = np.random.default_rng(8)
    x, h0, c0, w = _args(cell, 3, 2, 3, 4, rng)
    x = x.copy()
    x[1, 0, 0] = np.nan
    y, h, c, _ = ref.forward(cell, x, h0, c0, w, compute_dtype=BF16, training=False)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all() and np.isfinite(y[0]).all()
    rnn = get_cell("rnn_tanh")
    x, h0, _, w = _args(rnn, 2, 2, 3, 4, rng)
    sign = np.where(rng.uniform(size=(1, 2, 1)) < 0.5, -1, 1).astype(np.float32)
    y, _, _, _ = ref.forward(rnn, sign * (np.abs(x) * 1e4 + 1e3), h0, None,
                             w._replace(w_ih=np.abs(w.w_ih) + 1), compute_dtype=BF16,
                             training=False)
    np.testing.assert_array_equal(y, np.broadcast_to(sign, y.shape))
