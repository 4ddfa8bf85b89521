"""The layer API: shapes, state handling, parameters, modes and bad input."""
import numpy as np
import pytest

import fastrnn
from _variants import VARIANTS, make, random_state, seq


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes(variant, bidirectional, batch_first):
    T, B, I, H, L = 4, 3, 5, 6, 2
    layer = make(variant, I, H, num_layers=L, bidirectional=bidirectional,
                 batch_first=batch_first, backend="numpy", seed=0)
    x = seq(layer, T, B, np.random.default_rng(0))
    y, st = layer(x)
    D = 2 if bidirectional else 1
    assert y.shape == ((B, T, D * H) if batch_first else (T, B, D * H))
    assert y.dtype == np.float32
    sts = st if layer.cell.has_cell else (st,)
    assert all(s.shape == (L * D, B, H) for s in sts)
    dx, ds = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert all(s.shape == (L * D, B, H) for s in (ds if layer.cell.has_cell else (ds,)))
    assert set(layer.grads) == set(layer.params)
    for k, p in layer.params.items():
        assert layer.grads[k].shape == p.shape and p.dtype == np.float32


def test_parameter_names_follow_pytorch():
    assert list(fastrnn.GRU(2, 3, num_layers=2, bidirectional=True).params) == [
        f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    p = fastrnn.PeepholeLSTM(2, 3, peephole="full").params
    assert p["peephole_i_l0"].shape == (3, 3) and p["weight_ih_l0"].shape == (12, 2)
    assert fastrnn.PeepholeLSTM(2, 3).params["peephole_o_l0"].shape == (3,)
    assert "bias_ih_l0" not in fastrnn.RNN(2, 3, bias=False).params


def test_padded_steps_are_zero_and_state_is_last_valid():
    rng = np.random.default_rng(1)
    layer = fastrnn.LSTM(3, 4, bidirectional=True, backend="numpy", dtype=np.float64, seed=1)
    x = rng.normal(size=(5, 2, 3))
    y, (h, c) = layer(x, lengths=[5, 2])
    assert np.all(y[2:, 1] == 0)
    # entry 1 alone, truncated to its length, gives the same result
    y1, (h1, c1) = layer(x[:2, 1:2])
    np.testing.assert_allclose(y[:2, 1:2], y1, rtol=1e-12)
    np.testing.assert_allclose(h[:, 1:2], h1, rtol=1e-12)
    np.testing.assert_allclose(c[:, 1:2], c1, rtol=1e-12)


def test_backward_accumulates_and_zero_grad():
    layer = fastrnn.GRU(2, 3, backend="numpy", dtype=np.float64, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 2, 2))
    y, _ = layer(x)
    layer.backward(np.ones_like(y), retain_graph=True)   # a second backward needs it
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(np.ones_like(y))
    for k in g1:
        np.testing.assert_allclose(layer.grads[k], 2 * g1[k])
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())


def test_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    layer = fastrnn.LSTM(3, 4, num_layers=2, dropout=0.3, bidirectional=True, backend="numpy", seed=0)
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)
    state = random_state(layer, 2, rng)
    lengths = np.array([4, 2])
    copies = [x.copy(), state[0].copy(), state[1].copy(), lengths.copy()]
    y, _ = layer(x, state, lengths)
    dy = np.ones_like(y)
    dst = (np.ones_like(state[0]), np.ones_like(state[1]))
    dcopies = [dy.copy(), dst[0].copy(), dst[1].copy()]
    layer.backward(dy, dst)
    for a, b in zip([x, state[0], state[1], lengths, dy, dst[0], dst[1]], copies + dcopies):
        np.testing.assert_array_equal(a, b)


def test_eval_keeps_no_cache_and_disables_dropout():
    layer = fastrnn.LSTM(3, 4, num_layers=2, dropout=0.5, backend="numpy", seed=0)
    x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    layer.eval()
    y1, _ = layer(x)
    y2, _ = layer(x)
    np.testing.assert_array_equal(y1, y2)
    with pytest.raises(fastrnn.BackwardError, match="forward"):
        layer.backward(np.ones_like(y1))
    layer.train()
    y3, _ = layer(x)
    assert not np.allclose(y1, y3)     # dropout active in training


def test_seed_makes_init_repeatable_and_inits_differ():
    a = fastrnn.LSTM(3, 4, seed=7).params
    b = fastrnn.LSTM(3, 4, seed=7).params
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bound = 1 / np.sqrt(4)
    assert all(np.abs(v).max() <= bound for v in a.values())
    o = fastrnn.LSTM(3, 4, init="orthogonal", seed=0).params["weight_hh_l0"]
    for g in range(4):
        blk = o[4 * g:4 * g + 4].astype(np.float64)
        np.testing.assert_allclose(blk @ blk.T, np.eye(4), atol=1e-5)
    x = fastrnn.GRU(3, 4, init="xavier", seed=0).params
    assert np.all(x["bias_ih_l0"] == 0)
    h = fastrnn.RNN(30, 40, init="he", seed=0).params["weight_ih_l0"]
    assert 0.7 < h.std() / np.sqrt(2 / 30) < 1.3
    f = fastrnn.LSTM(3, 4, forget_bias=1.0, seed=0).params
    assert np.all(f["bias_ih_l0"][4:8] == 1) and np.all(f["bias_hh_l0"][4:8] == 0)


def test_state_dict_copies_and_load_checks():
    layer = fastrnn.LSTM(3, 4, seed=0)
    sd = layer.state_dict()
    sd["weight_ih_l0"][...] = 0
    assert not np.all(layer.params["weight_ih_l0"] == 0)
    other = fastrnn.LSTM(3, 4, seed=1)
    ref = other.params["weight_hh_l0"]
    other.load_state_dict(layer.state_dict())
    assert other.params["weight_hh_l0"] is ref          # loaded in place
    np.testing.assert_array_equal(ref, layer.params["weight_hh_l0"])
    other.load_state_dict({k: v.astype(np.float64).tolist() for k, v in sd.items()})
    with pytest.raises(ValueError, match="missing.*bias_hh_l0"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="unexpected.*weight_ih_l1"):
        other.load_state_dict({**sd, "weight_ih_l1": sd["weight_ih_l0"]})
    with pytest.raises(ValueError, match=r"weight_ih_l0.*shape \(16, 2\).*\(16, 3\)"):
        other.load_state_dict({**sd, "weight_ih_l0": np.zeros((16, 2))})
    with pytest.raises(TypeError, match="weight_ih_l0.*floating"):
        other.load_state_dict({**sd, "weight_ih_l0": np.zeros((16, 3), dtype=np.int64)})
    with pytest.raises(TypeError, match="mapping"):
        other.load_state_dict([1, 2])


# ---------------------------------------------------------------- bad input

@pytest.fixture
def lstm():
    return fastrnn.LSTM(3, 4, num_layers=2, backend="numpy", seed=0)


X = np.zeros((5, 2, 3), np.float32)


@pytest.mark.parametrize("x, exc, msg", [
    (np.zeros((5, 3), np.float32), ValueError, r"x must be 3-D \(T, B, I\)"),
    (np.zeros((5, 2, 4), np.float32), ValueError, r"x must have 3 features"),
    (np.zeros((0, 2, 3), np.float32), ValueError, r"x must have at least one time step"),
    (np.zeros((5, 2, 3), np.float64), TypeError, r"x must have dtype float32"),
    (np.zeros((5, 2, 3), np.int32), TypeError, r"x must have dtype float32"),
    (np.full((5, 2, 3), np.nan, np.float32), ValueError, r"x contains NaN"),
])
def test_bad_x(lstm, x, exc, msg):
    with pytest.raises(exc, match=msg):
        lstm(x)


def test_bad_state(lstm):
    h = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(TypeError, match=r"state must be a tuple \(h_0, c_0\)"):
        lstm(X, h)
    with pytest.raises(ValueError, match=r"state\[1\] \(c_0\) must have shape .*\(2, 2, 4\), got \(1, 2, 4\)"):
        lstm(X, (h, h[:1]))
    with pytest.raises(TypeError, match=r"state\[0\] \(h_0\) must have dtype float32"):
        lstm(X, (h.astype(np.float64), h))
    gru = fastrnn.GRU(3, 4, backend="numpy")
    with pytest.raises(ValueError, match=r"state \(h_0\) must have shape"):
        gru(X, np.zeros((2, 2, 4), np.float32))


@pytest.mark.parametrize("lengths, exc, msg", [
    ([5, 0], ValueError, r"lengths must lie in \[1, T\] = \[1, 5\]"),
    ([6, 1], ValueError, r"lengths must lie in \[1, T\]"),
    ([5], ValueError, r"lengths must have shape \(B,\) = \(2,\)"),
    ([5.0, 2.0], TypeError, r"lengths must hold integers"),
])
def test_bad_lengths(lstm, lengths, exc, msg):
    with pytest.raises(exc, match=msg):
        lstm(X, lengths=lengths)


def test_bad_backward(lstm):
    with pytest.raises(fastrnn.BackwardError, match="forward"):
        lstm.backward(np.zeros((5, 2, 4), np.float32))
    y, _ = lstm(X)
    with pytest.raises(ValueError, match=r"dy must have the shape of the output y, \(5, 2, 4\)"):
        lstm.backward(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        lstm.backward(np.zeros((5, 2, 4), np.float64))
    with pytest.raises(TypeError, match=r"dstate must be a tuple \(dh_n, dc_n\)"):
        lstm.backward(y, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dstate\[0\] \(dh_n\) must have the shape"):
        lstm.backward(y, (np.zeros((1, 2, 4), np.float32), None))
    lstm.backward(y, (None, np.zeros((2, 2, 4), np.float32)))   # either part may be omitted


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(backend="tpu"), ValueError, "backend must be one of"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(dropout=1.0), ValueError, r"dropout must be a number in \[0, 1\)"),
    (dict(num_layers=0), ValueError, "num_layers must be a positive integer"),
    (dict(init="zeros"), ValueError, "init must be one of"),
])
def test_bad_constructor(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fastrnn.LSTM(3, 4, **kwargs)


def test_bad_cell_options():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fastrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="peephole must be 'diagonal' or 'full'"):
        fastrnn.PeepholeLSTM(3, 4, peephole="half")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        fastrnn.GRU(3, 0)
    with pytest.raises(TypeError):
        fastrnn.GRU(3, 4, forget_bias=1.0)     # the LSTM family only


# ---------------------------------------------------------------- cells and backends

@pytest.mark.parametrize("name", sorted(fastrnn.cells.CELLS))
def test_each_layer_builds_the_cell_its_registry_entry_names(name):
    spec = fastrnn.cells.CELLS[name]
    cls_name, kwargs = spec.layer[0], spec.layer_kwargs
    assert fastrnn.layers.layer_cell(cls_name, **kwargs) is spec
    assert getattr(fastrnn, cls_name)(3, 4, **kwargs).cell is spec
    if spec.torch is None:      # state_dict(as_torch=True) reads the registry too
        with pytest.raises(ValueError, match=f"{cls_name} \\({name}\\) has no torch.nn"):
            getattr(fastrnn, cls_name)(3, 4, **kwargs).state_dict(as_torch=True)


def test_layer_cell_names_the_registered_options():
    with pytest.raises(ValueError, match=r"^nonlinearity must be 'tanh' or 'relu', got 'gelu'$"):
        fastrnn.layers.layer_cell("RNN", nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"^reset_after must be True or False, got None$"):
        fastrnn.layers.layer_cell("GRU", reset_after=None)
    with pytest.raises(ValueError, match="no cell is registered"):
        fastrnn.layers.layer_cell("Transformer")


def test_backend_is_resolved_when_set_and_auto_at_each_call(monkeypatch):
    layer = fastrnn.GRU(3, 4, backend="numpy", seed=0)
    x = np.zeros((2, 1, 3), np.float32)
    calls = []
    d = fastrnn.dispatch
    get, resolve = d.get_backend, d.resolve_backend
    monkeypatch.setattr(d, "get_backend", lambda n: calls.append(("get", n)) or get(n))
    monkeypatch.setattr(d, "resolve_backend", lambda b, x=None: calls.append(("resolve", b))
                        or resolve(b, x))
    layer(x)
    layer(x)
    assert calls == []                                   # looked up once, at construction
    assert layer._cache["backend"] is get("numpy")
    layer.backend = "auto"                               # "auto": per call, from x's location
    assert layer.backend == "auto" and calls == []
    layer(x)
    layer(x)
    assert [c for c in calls if c[0] == "resolve"] == [("resolve", "auto")] * 2
    assert layer._cache["backend"] is get(resolve("auto"))
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "tpu"
    assert layer.backend == "auto"                       # a refused name changes nothing


def test_layer_copies_and_pickles_with_its_backend():
    import copy
    import pickle
    layer = fastrnn.LSTM(3, 4, backend="numpy", seed=0).eval()
    x = np.ones((2, 1, 3), np.float32)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin.backend == "numpy" and twin._backend is layer._backend
        np.testing.assert_array_equal(twin(x)[0], layer(x)[0])


def test_input_checks_are_plain_functions():
    from fastrnn import _validate
    from fastrnn.layers import HostOps
    ops, f32 = HostOps(), np.dtype(np.float32)
    x, T, B = _validate.sequence_input(np.zeros((2, 5, 3), np.float32), 3, True, f32, ops)
    assert (T, B) == (5, 2) and x.shape == (2, 5, 3)
    h = np.zeros((2, 2, 4), np.float32)
    assert _validate.initial_state(None, (2, 2, 4), True, "LSTM", f32, ops) == (None, None)
    h0, c0 = _validate.initial_state([h, h], (2, 2, 4), True, "LSTM", f32, ops)
    assert h0 is h and c0 is h
    assert _validate.initial_state(h, (2, 2, 4), False, "GRU", f32, ops) == (h, None)
    assert _validate.final_state_gradient((None, h), (2, 2, 4), True, "LSTM", f32, ops) == (None, h)
    with pytest.raises(ValueError, match=r"^dstate \(dh_n\) must have the shape"):
        _validate.final_state_gradient(h[:1], (2, 2, 4), False, "GRU", f32, ops)
    with pytest.raises(ValueError, match=r"^input_size must be a positive integer, got 2.0$"):
        _validate.layer_size("input_size", 2.0)
    assert _validate.dropout_rate("dropout", 0) == 0.0


@pytest.mark.parametrize("variant", ["lstm", "peephole_diagonal", "gru"])
def test_in_place_parameter_updates_are_seen_by_the_next_call(variant):
    # the layer passes its live arrays to the backend (no cached prepared copy):
    # whatever writes them in place (optimizer, load_state_dict, the user) counts
    layer = make(variant, 3, 4, backend="numpy", dtype=np.float64, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 2, 3))
    y0, _ = layer(x)
    for v in layer.params.values():
        v *= 0.5
    fresh = make(variant, 3, 4, backend="numpy", dtype=np.float64, seed=1)
    fresh.load_state_dict(layer.state_dict())
    y1, _ = layer(x)
    assert not np.allclose(y1, y0)
    np.testing.assert_array_equal(y1, fresh(x)[0])


# state_dict(as_torch=True): torch's names and layout
@pytest.mark.parametrize("cls, torch_name, kw", [
    ("LSTM", "LSTM", {}), ("GRU", "GRU", {}), ("RNN", "RNN", {}),
])
def test_state_dict_as_torch_loads_into_torch(cls, torch_name, kw):
    torch = pytest.importorskip("torch")
    layer = getattr(fastrnn, cls)(3, 5, num_layers=2, bidirectional=True, backend="numpy",
                                  dtype=np.float64, seed=0, **kw)
    ref = getattr(torch.nn, torch_name)(3, 5, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(layer.state_dict(as_torch=True))
    x = np.random.default_rng(1).standard_normal((6, 2, 3))
    layer.eval()
    y, _ = layer(x)
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_peephole_has_no_torch_equivalent():
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        fastrnn.PeepholeLSTM(2, 3, backend="numpy").state_dict(as_torch=True)
