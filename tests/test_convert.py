"""fastrnn.convert: Keras, ONNX, raw and PyTorch weights to and from fastrnn layers.

Each framework's equations are written here once more in NumPy, in that
framework's own layout and gate order (Keras from its documented cells, ONNX
from the operator specification, CS231n's classic LSTM), independent of
fastrnn: a converted layer (run on the NumPy reference backend, float64) must
compute the same function, and a conversion there and back must give the
original arrays bit for bit.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import convert

TOL64 = dict(rtol=1e-11, atol=1e-12)


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------- Keras, in NumPy
def keras_lstm(x, w, peephole=False):
    """Keras LSTM / TF PeepholeLSTMCell: x (B, T, I); w = [kernel (I, 4H),
    recurrent_kernel (H, 4H), bias (4H,), (p_i, p_f, p_o)]; gates i, f, c, o."""
    kernel, rec, bias = w[:3]
    H = rec.shape[0]
    B = x.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ rec + bias
        z0, z1, z2, z3 = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        if peephole:
            p_i, p_f, p_o = w[3:]
            i, f = sig(z0 + p_i * c), sig(z1 + p_f * c)
        else:
            i, f = sig(z0), sig(z1)
        c = f * c + i * np.tanh(z2)
        o = sig(z3 + p_o * c) if peephole else sig(z3)
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, 1), h


def keras_gru(x, w, reset_after):
    """Keras GRU: kernel (I, 3H) in order z, r, h; reset_after=True: bias (2, 3H)
    [input_bias, recurrent_bias]; False: bias (3H,); h' = z h + (1 - z) hh."""
    kernel, rec, bias = w
    H = rec.shape[0]
    h = np.zeros((x.shape[0], H))
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, None)
    ys = []
    for t in range(x.shape[1]):
        xx = x[:, t] @ kernel + b_in
        x_z, x_r, x_h = xx[:, :H], xx[:, H:2 * H], xx[:, 2 * H:]
        if reset_after:
            m = h @ rec + b_rec
            r_z, r_r, r_h = m[:, :H], m[:, H:2 * H], m[:, 2 * H:]
        else:
            r_z, r_r = h @ rec[:, :H], h @ rec[:, H:2 * H]
        z, r = sig(x_z + r_z), sig(x_r + r_r)
        r_h = r * r_h if reset_after else (r * h) @ rec[:, 2 * H:]
        hh = np.tanh(x_h + r_h)
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys, 1), h


def keras_simple_rnn(x, w, act=np.tanh):
    kernel, rec, bias = w
    h = np.zeros((x.shape[0], rec.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        h = act(x[:, t] @ kernel + bias + h @ rec)
        ys.append(h)
    return np.stack(ys, 1), h


def keras_weights(rng, cell, I, H, reset_after=True):
    G = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1}[cell]
    w = [rng.normal(0, 0.4, (I, G * H)), rng.normal(0, 0.4, (H, G * H))]
    w.append(rng.normal(0, 0.3, (2, G * H) if cell == "gru" and reset_after else (G * H,)))
    if cell == "peephole":
        w += [rng.normal(0, 0.4, H) for _ in range(3)]
    return w


def keras_run(cell, x, w, reset_after=True):
    if cell == "lstm":
        return keras_lstm(x, w)
    if cell == "peephole":
        return keras_lstm(x, w, peephole=True)
    if cell == "gru":
        return keras_gru(x, w, reset_after)
    return keras_simple_rnn(x, w)


def keras_bidirectional(cell, x, w, per, reset_after=True):
    """Bidirectional(merge_mode='concat'): the backward layer reads the reversed
    sequence and its outputs are reversed back."""
    yf, _ = keras_run(cell, x, w[:per], reset_after)
    yb, _ = keras_run(cell, x[:, ::-1], w[per:], reset_after)
    return np.concatenate([yf, yb[:, ::-1]], axis=2)


KERAS_CASES = [("lstm", True), ("gru", True), ("gru", False), ("rnn", True), ("peephole", True)]


def _fast(layer, x):
    """fastrnn on batch-major x: outputs (B, T, D*H) from the NumPy reference."""
    layer.backend = "numpy"
    y, _ = layer.eval()(np.ascontiguousarray(x.transpose(1, 0, 2)))
    return y.transpose(1, 0, 2)


@pytest.mark.parametrize("cell,reset_after", KERAS_CASES)
def test_keras_matches_keras_equations_and_round_trips(cell, reset_after):
    rng = _rng(1)
    I, H, B, T = 3, 4, 2, 5
    x = rng.normal(size=(B, T, I))
    w = keras_weights(rng, cell, I, H, reset_after)
    layer = convert.from_keras(w, cell=cell)
    want = {"lstm": "lstm", "peephole": "peephole_diagonal", "rnn": "rnn_tanh",
            "gru": "gru" if reset_after else "gru_reset_before"}[cell]
    assert layer.cell.name == want and layer.dtype == np.float64
    np.testing.assert_allclose(_fast(layer, x), keras_run(cell, x, w, reset_after)[0], **TOL64)
    back = convert.to_keras(layer)
    assert len(back) == 1 and len(back[0]) == len(w)
    for a, b in zip(back[0], w):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False)])
def test_keras_bidirectional_stack(cell, reset_after):
    rng = _rng(2)
    I, H, B, T = 3, 4, 2, 6
    x = rng.normal(size=(B, T, I))
    l0 = keras_weights(rng, cell, I, H, reset_after) + keras_weights(rng, cell, I, H, reset_after)
    l1 = (keras_weights(rng, cell, 2 * H, H, reset_after)
          + keras_weights(rng, cell, 2 * H, H, reset_after))
    layer = convert.from_keras([l0, l1], cell=cell)
    assert layer.num_layers == 2 and layer.bidirectional
    y0 = keras_bidirectional(cell, x, l0, 3, reset_after)
    want = keras_bidirectional(cell, y0, l1, 3, reset_after)
    np.testing.assert_allclose(_fast(layer, x), want, **TOL64)
    back = convert.to_keras(layer)
    for got, w in zip(back, (l0, l1)):
        assert all(np.array_equal(a, b) for a, b in zip(got, w))


class LSTM:                         # stands for keras.layers.LSTM (duck-typed)
    def __init__(self, w, **kw):
        self._w = w
        self.__dict__.update(kw)

    def get_weights(self):
        return list(self._w)


class GRU(LSTM):
    pass


class Bidirectional:
    def __init__(self, fw, bw):
        self.forward_layer, self.backward_layer = fw, bw


def test_keras_layer_objects_give_cell_and_options():
    rng = _rng(3)
    w = keras_weights(rng, "gru", 3, 4, reset_after=False)
    layer = convert.from_keras(GRU(w, reset_after=False, activation="tanh",
                                   recurrent_activation="sigmoid", use_bias=True))
    assert layer.cell.name == "gru_reset_before"
    wf, wb = keras_weights(rng, "lstm", 3, 4), keras_weights(rng, "lstm", 3, 4)
    bi = convert.from_keras(Bidirectional(LSTM(wf), LSTM(wb)))
    assert bi.bidirectional and bi.cell.name == "lstm"
    x = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(_fast(bi, x), keras_bidirectional("lstm", x, wf + wb, 3), **TOL64)
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        convert.from_keras(LSTM(wf, recurrent_activation="hard_sigmoid"))
    with pytest.raises(ValueError, match="go_backwards=True"):
        convert.from_keras(LSTM(wf, go_backwards=True))


def test_keras_without_bias():
    rng = _rng(11)
    w = keras_weights(rng, "gru", 3, 4)[:2]
    layer = convert.from_keras(w, cell="gru", bias=False)
    assert not layer.bias and layer.cell.name == "gru"
    x = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(_fast(layer, x), keras_gru(x, w + [np.zeros((2, 12))], True)[0],
                               **TOL64)
    assert all(np.array_equal(a, b) for a, b in zip(convert.to_keras(layer)[0], w))


def test_keras_errors_name_the_problem():
    rng = _rng(4)
    w = keras_weights(rng, "lstm", 3, 4)
    with pytest.raises(ValueError, match="cell= is required"):
        convert.from_keras(w)
    with pytest.raises(ValueError, match="expected 3 arrays"):
        convert.from_keras(w[:2] + w, cell="lstm")
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        convert.from_keras([w[0], w[1], w[2][:5]], cell="lstm")
    with pytest.raises(ValueError, match="reset_after=True but the GRU bias"):
        convert.from_keras(keras_weights(rng, "gru", 3, 4, False), cell="gru", reset_after=True)
    with pytest.raises(ValueError, match="full-matrix peephole"):
        convert.to_keras(fastrnn.PeepholeLSTM(3, 4, peephole="full", backend="numpy"))


def test_to_keras_folds_biases_exactly_where_the_model_allows():
    """fastrnn -> Keras with two nonzero biases: the same function (one bias is
    the sum, except the GRU reset_after's b_hn kept in the second row)."""
    rng = _rng(5)
    x = rng.normal(size=(2, 4, 3))
    for cell, kind, ra in (("lstm", "lstm", True), ("gru", "gru", True),
                           ("gru_reset_before", "gru", False), ("rnn_tanh", "rnn", True)):
        layer = fastrnn.models.make_recurrent(cell, 3, 5, dtype=np.float64, seed=1)
        w = convert.to_keras(layer)[0]
        np.testing.assert_allclose(keras_run(kind, x, w, ra)[0], _fast(layer, x), **TOL64)


# ----------------------------------------------------------------- raw (CS231n)
def cs231n_lstm(x, h0, Wx, Wh, b):
    """The CS231n assignment's LSTM: x (N, T, D), Wx (D, 4H), gates i, f, o, g."""
    H = h0.shape[1]
    h, c = h0, np.zeros_like(h0)
    hs = []
    for t in range(x.shape[1]):
        a = x[:, t] @ Wx + h @ Wh + b
        i, f, o = sig(a[:, :H]), sig(a[:, H:2 * H]), sig(a[:, 2 * H:3 * H])
        g = np.tanh(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs, 1)


def test_raw_cs231n_order_matches_and_round_trips():
    rng = _rng(6)
    N, T, D, H = 3, 5, 4, 6
    x, h0 = rng.normal(size=(N, T, D)), rng.normal(size=(N, H))
    Wx, Wh, b = rng.normal(0, .3, (D, 4 * H)), rng.normal(0, .3, (H, 4 * H)), rng.normal(size=4 * H)
    sd = convert.from_raw(Wx, Wh, b, cell="lstm", gate_order="ifog", weight_layout="in_out")
    layer = fastrnn.LSTM(D, H, dtype=np.float64, backend="numpy", seed=0).eval()
    layer.load_state_dict(sd)
    y, _ = layer(np.ascontiguousarray(x.transpose(1, 0, 2)),
                 (h0[None], np.zeros((1, N, H))))
    np.testing.assert_allclose(y.transpose(1, 0, 2), cs231n_lstm(x, h0, Wx, Wh, b), **TOL64)
    raw = convert.to_raw(layer, gate_order="ifog", weight_layout="in_out", biases=1)
    for k, a in (("w_ih", Wx), ("w_hh", Wh), ("b", b)):
        assert np.array_equal(raw[k], a)
    raw2 = convert.to_raw(sd, cell="lstm", gate_order="ifog", weight_layout="in_out")
    assert np.array_equal(raw2["b_ih"], b) and not raw2["b_hh"].any()
    # the inputs were not modified, the outputs are new arrays
    assert not np.shares_memory(sd["weight_ih_l0"], Wx)


@pytest.mark.parametrize("cell,order", [("gru", "zrh"), ("gru_reset_before", "nzr"),
                                        ("peephole_diagonal", "cfio"), ("rnn_relu", "h")])
def test_raw_any_order_round_trips_bitwise(cell, order):
    layer = fastrnn.models.make_recurrent(cell, 3, 4, num_layers=2, bidirectional=True,
                                          dtype=np.float32, seed=3)
    sd = layer.state_dict()
    for sfx in ("_l0", "_l1_reverse"):
        raw = convert.to_raw(layer, gate_order=order, weight_layout="in_out", suffix=sfx)
        peep = [raw[f"p_{g}"] for g in "ifo"] if "p_i" in raw else None
        back = convert.from_raw(raw["w_ih"], raw["w_hh"], raw["b_ih"], raw["b_hh"], cell=cell,
                                gate_order=order, weight_layout="in_out", peephole=peep,
                                suffix=sfx)
        for k, v in back.items():
            assert v.dtype == np.float32 and np.array_equal(v, sd[k]), k


def test_raw_errors():
    rng = _rng(8)
    w, u = rng.normal(size=(16, 3)), rng.normal(size=(16, 4))
    with pytest.raises(ValueError, match="gate_order must name each of the 4 LSTM gates"):
        convert.from_raw(w, u, cell="lstm", gate_order="ifgg")
    with pytest.raises(ValueError, match="weight_layout"):
        convert.from_raw(w, u, cell="lstm", weight_layout="io")
    with pytest.raises(ValueError, match=r"w_hh must have shape \(12, 4\)"):
        convert.from_raw(w[:12], np.zeros((12, 3)), cell="gru")
    with pytest.raises(ValueError, match="cannot be folded"):
        layer = fastrnn.GRU(3, 4, backend="numpy", seed=0)
        convert.to_raw(layer, biases=1)
    with pytest.raises(ValueError, match="needs peephole"):
        convert.from_raw(w, u, cell="peephole_diagonal")


# ----------------------------------------------------------------- ONNX weights, in NumPy
def onnx_numpy(op, x, W, R, B, P=None, linear_before_reset=0, act=np.tanh):
    """ONNX LSTM/GRU/RNN (one forward direction), from the operator spec:
    LSTM gates i, o, f, c with P = [p_i, p_o, p_f]; GRU z, r, h."""
    H = R.shape[-1]
    W, R, Wb, Rb = W[0], R[0], B[0, :B.shape[1] // 2], B[0, B.shape[1] // 2:]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        if op == "LSTM":
            g = xt @ W.T + h @ R.T + Wb + Rb
            pi, po, pf = (P[0, :H], P[0, H:2 * H], P[0, 2 * H:]) if P is not None else (0, 0, 0)
            i = sig(g[:, :H] + pi * c)
            f = sig(g[:, 2 * H:3 * H] + pf * c)
            c = f * c + i * np.tanh(g[:, 3 * H:])
            o = sig(g[:, H:2 * H] + po * c)
            h = o * np.tanh(c)
        elif op == "GRU":
            gx = xt @ W.T + Wb
            z = sig(gx[:, :H] + h @ R[:H].T + Rb[:H])
            r = sig(gx[:, H:2 * H] + h @ R[H:2 * H].T + Rb[H:2 * H])
            if linear_before_reset:
                hh = np.tanh(gx[:, 2 * H:] + r * (h @ R[2 * H:].T + Rb[2 * H:]))
            else:
                hh = np.tanh(gx[:, 2 * H:] + (r * h) @ R[2 * H:].T + Rb[2 * H:])
            h = (1 - z) * hh + z * h
        else:
            h = act(xt @ W.T + h @ R.T + Wb + Rb)
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("cell,op,lbr", [("lstm", "LSTM", 0), ("peephole_diagonal", "LSTM", 0),
                                         ("gru", "GRU", 1), ("gru_reset_before", "GRU", 0),
                                         ("rnn_tanh", "RNN", 0)])
def test_onnx_weights_match_the_operator_and_round_trip(cell, op, lbr):
    rng = _rng(9)
    T, B, I, H = 5, 2, 3, 4
    G = fastrnn.get_cell(cell).gates
    W, R = rng.normal(0, .4, (1, G * H, I)), rng.normal(0, .4, (1, G * H, H))
    Bb = rng.normal(0, .3, (1, 2 * G * H))
    P = rng.normal(0, .4, (1, 3 * H)) if "peephole" in cell else None
    layer = convert.from_onnx_weights(W, R, Bb, P, cell=cell)
    assert layer.cell.name == cell
    assert convert.onnx_operator(cell) == (op, {"GRU": {"linear_before_reset": lbr}}.get(
        op, {"activations": ["Tanh"]} if op == "RNN" else {}))
    x = rng.normal(size=(T, B, I))
    layer.backend = "numpy"
    y, _ = layer.eval()(x)
    np.testing.assert_allclose(y, onnx_numpy(op, x, W, R, Bb, P, lbr), **TOL64)
    back = convert.to_onnx_weights(layer)[0]
    for k, a in (("W", W), ("R", R), ("B", Bb), ("P", P)):
        if a is not None:
            assert np.array_equal(back[k], a), k
    assert ("P" in back) == (P is not None)


def test_onnx_weights_stacked_bidirectional_round_trip():
    layer = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, backend="numpy", seed=2)
    ws = convert.to_onnx_weights(layer)
    assert ws[0]["W"].shape == (2, 16, 3) and ws[1]["W"].shape == (2, 16, 8)
    back = convert.from_onnx_weights([w["W"] for w in ws], [w["R"] for w in ws],
                                     [w["B"] for w in ws], cell="lstm")
    a, b = layer.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="does not stack"):
        convert.from_onnx_weights([ws[0]["W"], ws[0]["W"]], [w["R"] for w in ws], cell="lstm")
    with pytest.raises(ValueError, match="full-matrix"):
        convert.onnx_operator("peephole_full")


# ----------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("cls,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "relu"})])
def test_torch_module_round_trip(cls, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mod = getattr(torch.nn, cls)(3, 4, num_layers=2, bidirectional=True, **kw).double()
    layer = convert.from_torch(mod)
    x = _rng(10).normal(size=(5, 2, 3))
    layer.backend = "numpy"
    y, _ = layer.eval()(x)
    with torch.no_grad():
        want = mod(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(y, want, **TOL64)
    back = convert.to_torch(layer)
    assert type(back) is type(mod)
    for k, v in mod.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        convert.to_torch(fastrnn.GRU(3, 4, reset_after=False, backend="numpy"))
