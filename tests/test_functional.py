"""fastrnn.functional: every cell against the reference and the layers, every
convention round trip, gradients in the caller's layout by finite differences,
independent contexts, and argument errors.

The conventions are converted here independently of the module (np.split and
np.concatenate on gate blocks), so a wrong permutation in either shows.
"""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn import reference
from fastrnn.cells import CELLS
from fastrnn.contract import Weights
from fastrnn.testing import assert_close, cell_terms

# cell name -> (functional forward, backward, extra keywords, layer class, layer keywords)
CASES = {
    "rnn_tanh": (F.rnn, F.rnn_backward, {}, fastrnn.RNN, {}),
    "rnn_relu": (F.rnn, F.rnn_backward, {"nonlinearity": "relu"}, fastrnn.RNN,
                 {"nonlinearity": "relu"}),
    "lstm": (F.lstm, F.lstm_backward, {}, fastrnn.LSTM, {}),
    "gru": (F.gru, F.gru_backward, {}, fastrnn.GRU, {}),
    "gru_reset_before": (F.gru, F.gru_backward, {"reset_after": False}, fastrnn.GRU,
                         {"reset_after": False}),
    "peephole_diagonal": (F.peephole_lstm, F.peephole_lstm_backward, {}, fastrnn.PeepholeLSTM,
                          {"peephole": "diagonal"}),
    "peephole_full": (F.peephole_lstm, F.peephole_lstm_backward, {}, fastrnn.PeepholeLSTM,
                      {"peephole": "full"}),
}
CANON = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}


def _params(cell, I, H, rng, dtype):
    GH = cell.gates * H
    peep = None
    if cell.peephole is not None:
        peep = rng.uniform(-0.5, 0.5, (3,) + cell.peephole_shape(H)).astype(dtype)
    return Weights(*(rng.uniform(-0.5, 0.5, s).astype(dtype)
                     for s in ((GH, I), (GH, H), (GH,), (GH,))), peep)


def _kw(cell, w):
    kw = dict(CASES[cell.name][2])
    if cell.peephole is not None:
        kw["peephole"] = tuple(w.peep)
    return kw


def _run_f(cell, x, w, state, dy, dstate, **kw):
    fwd, bwd = CASES[cell.name][:2]
    y, state_n, ctx = fwd(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, state, **_kw(cell, w), **kw)
    return y, state_n, bwd(ctx, dy, dstate)


def _data(cell, T, B, I, H, rng, dtype):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) * 0.5
    c0 = rng.standard_normal((B, H)).astype(dtype) * 0.5 if cell.has_cell else None
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype) if cell.has_cell else None
    return x, h0, c0, dy, dh, dc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_cell_matches_reference_and_layer(name, dtype):
    cell = CELLS[name]
    rng = np.random.default_rng(1)
    T, B, I, H = 6, 3, 5, 8
    w = _params(cell, I, H, rng, dtype)
    x, h0, c0, dy, dh, dc = _data(cell, T, B, I, H, rng, dtype)
    lengths = np.array([6, 2, 4])
    state = (h0, c0) if cell.has_cell else h0
    dstate = (dh, dc) if cell.has_cell else dh
    for reverse in (False, True):
        y, state_n, (dx, dstate0, grads) = _run_f(cell, x, w, state, dy, dstate, lengths=lengths,
                                                  reverse=reverse, backend="cpu")
        ry, rh, rc, cache = reference.forward(cell, x, h0, c0, w, lengths, reverse, True)
        rdx, rdh, rdc, rg = reference.backward(cell, cache, dy, dh, dc)
        fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True, backward=False)
        full = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True)
        fs = max(1.0, *(np.abs(a).max() for a in (h0, c0) if a is not None))
        up = max(fs, *(np.abs(a).max() for a in (dy, dh, dc) if a is not None))
        assert_close(y, ry, fwd, scale=fs, err_msg="y")
        got_state = state_n if cell.has_cell else (state_n,)
        for a, b in zip(got_state, (rh, rc)):
            assert_close(a, b, fwd, scale=fs, err_msg="state_n")
        assert_close(dx, rdx, full, scale=up, err_msg="dx")
        for a, b in zip(dstate0 if cell.has_cell else (dstate0,), (rdh, rdc)):
            assert_close(a, b, full, scale=up, err_msg="dstate0")
        for a, b in zip(grads[:4], rg[:4]):
            assert_close(a, b, full, scale=up, err_msg="weight gradient")
        if cell.peephole is not None:
            assert isinstance(grads[4], tuple)
            assert_close(np.stack(grads[4]), rg.peep, full, scale=up, err_msg="peephole")
        assert y.dtype == dx.dtype == dtype and all(g.dtype == dtype for g in grads[:4])

    # the layer runs the same core: the same numbers, bitwise
    cls, lkw = CASES[name][3:]
    layer = cls(I, H, dtype=dtype, backend="cpu", seed=0, **lkw)
    sd = {"weight_ih_l0": w.w_ih, "weight_hh_l0": w.w_hh, "bias_ih_l0": w.b_ih,
          "bias_hh_l0": w.b_hh}
    if cell.peephole is not None:
        sd.update({f"peephole_{g}_l0": w.peep[k] for k, g in enumerate("ifo")})
    layer.load_state_dict(sd)
    ly, _ = layer(x, (h0[None], c0[None]) if cell.has_cell else h0[None], lengths)
    ldx, _ = layer.backward(dy, (dh[None], dc[None]) if cell.has_cell else dh[None])
    y, _, (dx, _, grads) = _run_f(cell, x, w, state, dy, dstate, lengths=lengths, backend="cpu")
    np.testing.assert_array_equal(ly, y)
    np.testing.assert_array_equal(ldx, dx)
    np.testing.assert_array_equal(layer.grads["weight_hh_l0"], grads[1])
    np.testing.assert_array_equal(layer.grads["bias_ih_l0"], grads[2])


# ----------------------------------------------------------------- conventions
def _to_caller(a, order, canon, in_out):
    """Canonical (G*H, n) or (G*H,) -> the caller's gate order and layout."""
    blocks = np.split(a, len(canon), axis=0)
    letters = _canonical_letters(order, canon)
    out = np.concatenate([blocks[canon.index(ch)] for ch in letters], axis=0)
    return out.T if (in_out and out.ndim == 2) else out


def _canonical_letters(order, canon):
    alias = {"c": "g"} if canon == "ifgo" else {"h": "n"}
    return "".join(alias.get(ch, ch) for ch in order)


def _orders(canon, alias):
    out = ["".join(p) for p in itertools.permutations(canon)]
    return out + [o.replace(alias[1], alias[0]) for o in out[:3]]     # "c" for "g", "h" for "n"


@pytest.mark.parametrize("H", [16, 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cs231n_convention_runs_the_pytorch_conventions_numbers_on_the_cpu(dtype, H):
    """The compiled path in CS231n's convention (batch_first, in_out, "ifog", one
    bias, h0 without c0) against the same call in PyTorch's: the packed kernels
    pack either layout into the same panels, so the forward and the weight
    gradients (one GEMM on the same saved rows) are bitwise the same; dx and dh0
    are GEMMs with the weights in the caller's memory order, which BLAS may sum
    in another order: equal within the error bound. H = 20 pads the panels
    (float32 and float64). The backward follows a change of x after the forward."""
    from fastrnn.kernels import cpu
    cell = CELLS["lstm"]
    rng = np.random.default_rng(11)
    T, B, I = 6, 5, 7
    w = _params(cell, I, H, rng, dtype)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    perm = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]          # i, f, g, o <-> i, f, o, g
    Wx, Wh, b = w.w_ih[perm].T.copy(), w.w_hh[perm].T.copy(), w.b_ih[perm].copy()
    xt, dyt = (np.ascontiguousarray(a.transpose(1, 0, 2)) for a in (x, dy))
    h, (hn, cn), ctx = F.lstm(x, Wx, Wh, b, state=h0, batch_first=True, gate_order="ifog",
                              weight_layout="in_out", backend="cpu")
    x[...] = 0                      # the ctx does not depend on the caller's x
    dx, (dh0, dc0), (dWx, dWh, db, none) = F.lstm_backward(ctx, dy)
    y, (hn2, cn2), ctx2 = F.lstm(xt, w.w_ih, w.w_hh, w.b_ih, None, h0, backend="cpu")
    dx2, (dh02, dc02), (dwi, dwh, dbi, _) = F.lstm_backward(ctx2, dyt)
    assert none is None
    pairs = {"y": (h.transpose(1, 0, 2), y), "h_n": (hn, hn2), "c_n": (cn, cn2),
             "dc0": (dc0, dc02), "dw_ih": (dWx, dwi[perm].T), "dw_hh": (dWh, dwh[perm].T),
             "db": (db, dbi[perm])}
    close = {"dx": (dx.transpose(1, 0, 2), dx2), "dh0": (dh0, dh02)}
    if cpu.route(cell, np.dtype(dtype), True) != "packed":     # the BLAS loops: all close
        close.update(pairs)
        pairs = {}
    for k, (a, e) in pairs.items():
        np.testing.assert_array_equal(a, e, err_msg=k)
    up = max(1.0, float(np.abs(dy).max()))
    for k, (a, e) in close.items():
        assert_close(a, e, cell_terms(cell, T, B, I, H, dtype=dtype), scale=up, err_msg=k)
    assert all(a.dtype == dtype for a in (h, dx, dh0, dWx, dWh, db))


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_every_convention_round_trips(family):
    """Every gate order (and the aliases), both layouts and 0/1/2 biases give the
    canonical call's outputs and its gradients in the caller's convention."""
    cell = CELLS[family]
    canon = CANON[family]
    fwd, bwd = CASES[family][:2]
    rng = np.random.default_rng(2)
    T, B, I, H = 3, 2, 3, 4
    dtype = np.float64
    w = _params(cell, I, H, rng, dtype)
    x, h0, c0, dy, dh, dc = _data(cell, T, B, I, H, rng, dtype)
    state = (h0, c0) if cell.has_cell else h0
    results = {}
    for nb in (2, 1, 0):
        b_ih = w.b_ih if nb >= 1 else np.zeros_like(w.b_ih)
        b_hh = w.b_hh if nb == 2 else np.zeros_like(w.b_hh)
        y, sn, ctx = fwd(x, w.w_ih, w.w_hh, b_ih, b_hh, state, backend="numpy")
        results[nb] = (y, sn, bwd(ctx, dy))
    alias = ("c", "g") if family == "lstm" else ("h", "n")
    for order, in_out, nb in itertools.product(_orders(canon, alias), (False, True), (2, 1, 0)):
        conv = lambda a: _to_caller(a, order, canon, in_out)  # noqa: E731
        b_ih = conv(w.b_ih) if nb >= 1 else None
        b_hh = conv(w.b_hh) if nb == 2 else None
        layout = "in_out" if in_out else "out_in"
        y, sn, ctx = fwd(x, conv(w.w_ih), conv(w.w_hh), b_ih, b_hh, state, gate_order=order,
                         weight_layout=layout, backend="numpy")
        dx, ds, grads = bwd(ctx, dy)
        ey, esn, (edx, eds, eg) = results[nb]
        what = f"{order} {layout} {nb} biases"
        np.testing.assert_allclose(y, ey, rtol=1e-13, atol=1e-14, err_msg=what)
        np.testing.assert_allclose(dx, edx, rtol=1e-13, atol=1e-14, err_msg=what)
        assert grads[0].shape == conv(w.w_ih).shape and grads[1].shape == conv(w.w_hh).shape
        for k in range(2):
            np.testing.assert_allclose(grads[k], conv(eg[k]), rtol=1e-13, atol=1e-14,
                                       err_msg=what)
        for k, given in ((2, b_ih), (3, b_hh)):
            if given is None:
                assert grads[k] is None, what
            else:
                np.testing.assert_allclose(grads[k], conv(eg[k]), rtol=1e-13, atol=1e-14,
                                           err_msg=what)


def test_rnn_in_out_layout():
    cell = CELLS["rnn_tanh"]
    rng = np.random.default_rng(3)
    w = _params(cell, 3, 4, rng, np.float64)
    x, h0, _, dy, _, _ = _data(cell, 3, 2, 3, 4, rng, np.float64)
    y, h, ctx = F.rnn(x, w.w_ih, w.w_hh, w.b_ih, None, h0, backend="numpy")
    dx, dh0, g = F.rnn_backward(ctx, dy)
    y2, h2, ctx2 = F.rnn(x, w.w_ih.T, w.w_hh.T, w.b_ih, None, h0, weight_layout="in_out",
                         backend="numpy")
    dx2, dh02, g2 = F.rnn_backward(ctx2, dy)
    np.testing.assert_allclose(y2, y, rtol=1e-13)
    np.testing.assert_allclose(g2[0], g[0].T, rtol=1e-13)
    np.testing.assert_allclose(g2[1], g[1].T, rtol=1e-13)
    assert g[3] is None and g2[3] is None


# ----------------------------------------------------------------- finite differences
def _fd_check(loss, params, grads, eps=1e-6):
    """Central differences of ``loss()`` in every entry of every param (in place)."""
    for p, g in zip(params, grads):
        num = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            lp = loss()
            p[i] = old - eps
            lm = loss()
            p[i] = old
            num[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", ["cs231n_lstm", "keras_gru", "peephole_full_in_out"])
def test_gradients_in_caller_layout_by_finite_differences(case):
    rng = np.random.default_rng(4)
    N, T, D, H = 2, 3, 2, 3
    x = rng.standard_normal((N, T, D))
    R = rng.standard_normal((N, T, H))
    if case == "cs231n_lstm":       # (D, 4H), gates i, f, o, g, one bias, h0 without c0
        fwd, bwd, G = F.lstm, F.lstm_backward, 4
        kw = dict(batch_first=True, gate_order="ifog", weight_layout="in_out")
        extra = {}
    elif case == "keras_gru":       # (D, 3H), gates z, r, h, two biases
        fwd, bwd, G = F.gru, F.gru_backward, 3
        kw = dict(batch_first=True, gate_order="zrh", weight_layout="in_out")
        extra = {}
    else:
        fwd, bwd, G = F.peephole_lstm, F.peephole_lstm_backward, 4
        kw = dict(batch_first=True, gate_order="iofc", weight_layout="in_out")
        extra = {"peephole": rng.uniform(-0.5, 0.5, (3, H, H))}
    Wx = rng.uniform(-0.5, 0.5, (D, G * H))
    Wh = rng.uniform(-0.5, 0.5, (H, G * H))
    b = rng.uniform(-0.5, 0.5, G * H)
    b2 = rng.uniform(-0.5, 0.5, G * H) if case == "keras_gru" else None
    h0 = rng.standard_normal((N, H))
    lengths = np.array([3, 2])

    def loss():
        y, _, _ = fwd(x, Wx, Wh, b, b2, h0, lengths=lengths, training=False, backend="cpu",
                      **extra, **kw)
        return float(np.sum(y * R))

    y, _, ctx = fwd(x, Wx, Wh, b, b2, h0, lengths=lengths, backend="cpu", **extra, **kw)
    dx, dstate0, grads = bwd(ctx, R)
    params = [Wx, Wh, b] + ([b2] if b2 is not None else []) + [x, h0]
    got = [grads[0], grads[1], grads[2]] + ([grads[3]] if b2 is not None else [])
    got += [dx, dstate0[0] if isinstance(dstate0, tuple) else dstate0]
    if b2 is None:
        assert grads[3] is None
    if "peephole" in extra:
        params.append(extra["peephole"])
        got.append(grads[4])
    _fd_check(loss, params, got)


# ----------------------------------------------------------------- contexts
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outstanding_forwards_give_each_calls_gradients(dtype):
    rng = np.random.default_rng(5)
    T, B, I, H = 7, 4, 5, 16
    w = _params(CELLS["lstm"], I, H, rng, dtype)
    xa, xb = (rng.standard_normal((B, T, I)).astype(dtype) for _ in range(2))
    dya, dyb = (rng.standard_normal((B, T, H)).astype(dtype) for _ in range(2))
    kw = dict(batch_first=True, gate_order="ifog", weight_layout="in_out", backend="cpu")
    Wx, Wh = w.w_ih.T.copy(), w.w_hh.T.copy()

    def alone(x, dy):
        y, _, ctx = F.lstm(x, Wx, Wh, w.b_ih, None, **kw)
        return y, F.lstm_backward(ctx, dy)

    expected = {"a": alone(xa, dya), "b": alone(xb, dyb)}
    for order in ("ab", "ba"):
        ya, _, ca = F.lstm(xa, Wx, Wh, w.b_ih, None, **kw)
        yb, _, cb = F.lstm(xb, Wx, Wh, w.b_ih, None, **kw)
        got = {}
        for k in order:
            got[k] = F.lstm_backward(ca, dya) if k == "a" else F.lstm_backward(cb, dyb)
        for k, y in (("a", ya), ("b", yb)):
            ey, (edx, (edh, edc), eg) = expected[k]
            dx, (dh, dc), g = got[k]
            np.testing.assert_array_equal(y, ey)
            np.testing.assert_array_equal(dx, edx)
            np.testing.assert_array_equal(dh, edh)
            np.testing.assert_array_equal(dc, edc)
            for a, e in zip(g, eg):
                assert (a is None) == (e is None)
                if a is not None:
                    np.testing.assert_array_equal(a, e)


def test_ctx_is_used_once_unless_retained():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 3))
    w = _params(CELLS["gru"], 3, 5, rng, np.float64)
    y, h, ctx = F.gru(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, backend="numpy")
    dy = np.ones_like(y)
    first = F.gru_backward(ctx, dy, retain=True)
    second = F.gru_backward(ctx, dy)              # retained: allowed once more
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[2][1], second[2][1])
    with pytest.raises(fastrnn.BackwardError, match="already used"):
        F.gru_backward(ctx, dy)
    _, _, none = F.gru(x, w.w_ih, w.w_hh, training=False, backend="numpy")
    assert none is None
    with pytest.raises(fastrnn.BackwardError, match="training=False"):
        F.gru_backward(none, dy)
    assert fastrnn.BackwardError is F.BackwardError


def test_inputs_are_not_modified_and_state_may_be_partial():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 2, 3))
    w = _params(CELLS["lstm"], 3, 4, rng, np.float64)
    h0 = rng.standard_normal((2, 4))
    conv = lambda a: _to_caller(a, "cfio", "ifgo", True)  # noqa: E731
    args = [x, conv(w.w_ih), conv(w.w_hh), conv(w.b_ih), None]
    saved = [a.copy() for a in args if a is not None] + [h0.copy()]
    y, (h, c), ctx = F.lstm(*args, h0, weight_layout="in_out", gate_order="cfio",
                            backend="cpu")
    x[...] = 0                     # the ctx keeps its own copy of x
    dx, (dh0, dc0), g = F.lstm_backward(ctx, np.ones_like(y), (None, np.ones((2, 4))))
    x[...] = saved[0]
    for a, s in zip([a for a in args if a is not None] + [h0], saved):
        np.testing.assert_array_equal(a, s)
    # same as c0 = 0, dh_n = 0 given explicitly (canonical order)
    y2, _, ctx2 = F.lstm(x, w.w_ih, w.w_hh, w.b_ih, None, (h0, np.zeros((2, 4))),
                         backend="cpu")
    dx2, _, _ = F.lstm_backward(ctx2, np.ones_like(y2), (np.zeros((2, 4)), np.ones((2, 4))))
    np.testing.assert_allclose(y, y2, rtol=1e-13)
    np.testing.assert_allclose(dx, dx2, rtol=1e-13)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_editing_the_output_in_place_leaves_the_gradients_alone(name):
    """NumPy code may scale or mask y in place before its backward (the packed
    kernels keep h in a buffer of their own: y must not be a view of it)."""
    rng = np.random.default_rng(11)
    cell = CELLS[name]
    T, B, I, H = 6, 3, 4, 16
    w = _params(cell, I, H, rng, np.float64)
    x, h0, _, dy, _, _ = _data(cell, T, B, I, H, rng, np.float64)
    fwd, bwd = CASES[name][:2]
    kw = dict(CASES[name][2], batch_first=True, backend="cpu")
    xb, dyb = x.transpose(1, 0, 2).copy(), dy.transpose(1, 0, 2).copy()
    y, _, ctx = fwd(xb, w.w_ih, w.w_hh, w.b_ih, w.b_hh, h0, **kw)
    want = bwd(ctx, dyb)
    y, _, ctx = fwd(xb, w.w_ih, w.w_hh, w.b_ih, w.b_hh, h0, **kw)
    y *= 2.0
    got = bwd(ctx, dyb)
    np.testing.assert_array_equal(got[0], want[0])
    for a, e in zip(got[2], want[2]):
        np.testing.assert_array_equal(a, e)


def test_mixed_dtypes_come_back_in_the_callers_dtypes():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    w = _params(CELLS["lstm"], 3, 4, rng, np.float64)             # float64 weights
    y, (h, c), ctx = F.lstm(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, backend="cpu")
    assert y.dtype == h.dtype == np.float32
    dx, (dh0, dc0), g = F.lstm_backward(ctx, np.ones_like(y))
    assert dx.dtype == dh0.dtype == np.float32
    assert all(a.dtype == np.float64 for a in g)


# ----------------------------------------------------------------- errors
def _lstm_args():
    rng = np.random.default_rng(9)
    return dict(x=rng.standard_normal((4, 2, 3)), w_ih=rng.standard_normal((16, 3)),
                w_hh=rng.standard_normal((16, 4)), b_ih=np.zeros(16), b_hh=None)


@pytest.mark.parametrize("change, exc, match", [
    (dict(x=np.ones((4, 2, 3), np.int64)), TypeError, "x must be a float32 or float64"),
    (dict(x=np.ones((4, 3))), ValueError, "x must be 3-D"),
    (dict(x=np.ones((0, 2, 3))), ValueError, "x must be"),
    (dict(x="abc"), TypeError, "x must be"),
    (dict(w_ih=np.ones((16, 5))), ValueError, r"w_ih must have shape \(16, 3\)"),
    (dict(w_ih=np.ones((3, 16))), ValueError, "this shape is weight_layout='in_out'"),
    (dict(w_hh=np.ones(16)), ValueError, "w_hh must be 2-D"),
    (dict(b_ih=np.ones(15)), ValueError, r"b_ih must have shape \(16,\)"),
    (dict(b_hh=np.ones((16, 1))), ValueError, "b_hh must be 1-D"),
    (dict(gate_order="ifgx"), ValueError, "gate_order must name each of the gates"),
    (dict(gate_order="ifg"), ValueError, "gate_order"),
    (dict(gate_order=("i", "f", "g", "o")), TypeError, "gate_order must be a string"),
    (dict(weight_layout="row"), ValueError, "weight_layout must be"),
    (dict(state=np.ones((2, 5))), ValueError, r"state \(h\) must have shape \(2, 4\)"),
    (dict(state=(np.ones((2, 4)), np.ones((3, 4)))), ValueError, r"state\[1\] \(c\)"),
    (dict(state=(np.ones((2, 4)),) * 3), ValueError, "pair"),
    (dict(lengths=[1, 5]), ValueError, "lengths must lie in"),
    (dict(lengths=[1.0, 2.0]), TypeError, "lengths must hold integers"),
    (dict(x=np.full((4, 2, 3), np.nan)), ValueError, "x contains NaN"),
    (dict(state=(np.ones((2, 4)), np.full((2, 4), np.inf))), ValueError, "c0 contains NaN"),
    (dict(batch_first="yes"), TypeError, "batch_first must be True or False"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_forward_arguments_are_named(change, exc, match):
    kw = _lstm_args()
    kw["backend"] = "numpy"
    kw.update(change)
    with pytest.raises(exc, match=match):
        F.lstm(**kw)


def test_bad_backward_arguments_are_named():
    kw = _lstm_args()
    y, _, ctx = F.lstm(**kw, backend="numpy")
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2, 4\)"):
        F.lstm_backward(ctx, np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="dy must be a float32"):
        F.lstm_backward(ctx, np.ones((4, 2, 4), np.int32))
    with pytest.raises(ValueError, match=r"dstate_n\[0\] \(h\) must have shape"):
        F.lstm_backward(ctx, np.ones_like(y), (np.ones((3, 4)), None))
    with pytest.raises(ValueError, match="dy contains NaN"):
        F.lstm_backward(ctx, np.full_like(y, np.nan))
    with pytest.raises(ValueError, match="gru_backward cannot run the backward of a 'lstm'"):
        F.gru_backward(ctx, np.ones_like(y))
    with pytest.raises(TypeError, match="ctx must be the Context"):
        F.lstm_backward({"cache": 1}, np.ones_like(y))
    F.lstm_backward(ctx, np.ones_like(y))      # the failed calls above did not use it up
    with pytest.raises(ValueError, match="nonlinearity must be"):
        F.rnn(kw["x"], np.ones((4, 3)), np.ones((4, 4)), nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="reset_after must be True or False"):
        F.gru(kw["x"], np.ones((12, 3)), np.ones((12, 4)), reset_after="yes")
    with pytest.raises(ValueError, match="peephole must have shape"):
        F.peephole_lstm(kw["x"], kw["w_ih"], kw["w_hh"], peephole=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"peephole\[2\] \(p_o\) must have shape"):
        F.peephole_lstm(kw["x"], kw["w_ih"], kw["w_hh"],
                        peephole=(np.ones(4), np.ones(4), np.ones(5)))
    with pytest.raises(TypeError, match="one array"):
        F.gru(kw["x"], np.ones((12, 3)), np.ones((12, 4)), state=(np.ones((2, 4)),) * 2)


def test_numpy_dropin_example_agrees():
    """examples/numpy_dropin.py: the CS231n-style NumPy LSTM and its two calls
    swapped for fastrnn.functional give equal outputs and gradients (the example
    returns 1 when any differs beyond 1e-12 in float64 / 1e-5 in float32)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "numpy_dropin.py"
    spec = importlib.util.spec_from_file_location("numpy_dropin", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--N", "3", "--T", "4", "--D", "5", "--H", "6", "--repeats", "1"]) == 0


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_peephole_gradient_comes_back_in_the_form_passed(kind):
    cell = CELLS["peephole_" + kind]
    rng = np.random.default_rng(10)
    w = _params(cell, 3, 4, rng, np.float64)
    x, h0, c0, dy, _, _ = _data(cell, 3, 2, 3, 4, rng, np.float64)
    out = {}
    for form, peep in (("tuple", tuple(w.peep)), ("list", list(w.peep)), ("stack", w.peep)):
        y, _, ctx = F.peephole_lstm(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, (h0, c0), peephole=peep,
                                    backend="numpy")
        out[form] = (y, F.peephole_lstm_backward(ctx, dy)[2][4])
    assert isinstance(out["tuple"][1], tuple) and isinstance(out["list"][1], list)
    assert isinstance(out["stack"][1], np.ndarray) and out["stack"][1].shape == w.peep.shape
    for form in ("list", "stack"):
        np.testing.assert_array_equal(out[form][0], out["tuple"][0])
        np.testing.assert_array_equal(np.stack(out[form][1]), np.stack(out["tuple"][1]))
