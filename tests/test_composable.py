"""Issue 10, item 7: composable blocks for custom training loops."""
import numpy as np
import pytest

import fastrnn
from fastrnn import Adam, BackwardError, Linear, Sequential, SGD


def test_optimizer_takes_a_list_of_modules_with_unique_names():
    lstm = fastrnn.LSTM(3, 4, backend="numpy", seed=0)
    head = Linear(4, 2, rng=0)
    opt = Adam([lstm, head], lr=1e-2)
    assert "0.weight_ih_l0" in opt.params and "1.weight" in opt.params
    assert len(opt.params) == len(lstm.params) + len(head.params)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    before = head.params["weight"].copy()
    y, _ = lstm(x)
    out = head(y[-1])
    dy = np.zeros_like(y)
    dy[-1] = head.backward(np.ones_like(out))
    lstm.backward(dy)
    opt.step()
    assert not np.array_equal(before, head.params["weight"])     # updated in place


def test_sequential_forward_backward_and_names():
    net = Sequential(rnn=fastrnn.GRU(3, 4, backend="numpy", seed=0), head=Linear(4, 2, rng=0))
    assert set(net.params) == {f"rnn.{k}" for k in net["rnn"].params} | {"head.weight", "head.bias"}
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y = net(x)
    assert y.shape == (5, 2, 2)
    dx = net.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.abs(net.grads["rnn.weight_hh_l0"]).sum() > 0
    SGD(net, lr=0.1).step()
    state = net.state_dict()
    net.load_state_dict(state)
    assert "Sequential(" in repr(net) and "Linear(weight=(2, 4), bias=(2,))" in repr(net)


def test_backward_twice_without_forward_raises():
    layer = fastrnn.LSTM(3, 4, backend="numpy", seed=0)
    x = np.zeros((4, 2, 3), np.float32)
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    g = {k: v.copy() for k, v in layer.grads.items()}
    with pytest.raises(BackwardError, match="already called"):
        layer.backward(np.ones_like(y))
    for k in g:                                   # nothing was added twice
        np.testing.assert_array_equal(layer.grads[k], g[k])
    y, _ = layer(x)                               # a new forward allows it again
    layer.backward(np.ones_like(y), retain_graph=True)
    layer.backward(np.ones_like(y))


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
