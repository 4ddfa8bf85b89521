"""Composing modules for a custom training loop (fastrnn.blocks): one optimizer
over a list of modules, and Sequential's forward, backward, names and state."""
import numpy as np

import fastrnn
from fastrnn import Adam, Linear, Sequential, SGD


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
