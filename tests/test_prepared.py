"""Prepared weights of eval-mode calls (fastrnn.prepared): the small-batch path
on the latency kernels equals the sequence kernels bit for bit, and its
prepared copy never goes stale through any path of fastrnn that writes
parameters."""
import numpy as np
import pytest

import fastrnn
from fastrnn import prepared
from fastrnn.data import LMBatches
from fastrnn.optim import SGD, Adam
from fastrnn.train import Trainer
from fastrnn.testing import assert_close, cell_terms

H = 16      # a multiple of the SIMD width (8 or 16): the micro-kernel (prepared) path


def _ref(layer, x, state=None):
    """layer(x) on the sequence kernels (the prepared path off)."""
    old = prepared.enabled
    prepared.enabled = False
    try:
        return layer(x, state)
    finally:
        prepared.enabled = old


def _check(a, b, exact, layer=None, T=None):
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        # two compiled paths over T steps (fastrnn.testing's bound, both sides)
        assert_close(a, b, 2 * cell_terms(layer.cell, T, 1, layer.input_size,
                                           layer.hidden_size, layer.num_layers,
                                           layer.num_directions, approx=True,
                                           backward=False), scale=1.0)


def _same(layer, x, state=None):
    """The prepared path equals the sequence kernels: bit for bit for B > 1
    (the same micro-kernels, the same sums), within the kernel tolerance for
    one row (whose input product is one GEMM over all steps first)."""
    y, st = layer(x, state)
    yr, sr = _ref(layer, x, state)
    exact = x.shape[0 if layer.batch_first else 1] > 1
    T = x.shape[1 if layer.batch_first else 0]
    _check(y, yr, exact, layer, T)
    for a, b in zip(st if isinstance(st, tuple) else (st,), sr if isinstance(sr, tuple) else (sr,)):
        _check(a, b, exact, layer, T)
    return y


def _x(T, B, I, seed=1):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}),
                                    (fastrnn.PeepholeLSTM, {})], ids=["lstm", "gru", "peep"])
def test_prepared_path_equals_the_sequence_kernels(cls, kw):
    layer = cls(5, H, num_layers=2, seed=0, **kw).eval()
    for B in (1, 2, 3, 8):
        x = _x(13, B, 5)
        h0 = np.random.default_rng(B).standard_normal((2, B, H)).astype(np.float32)
        _same(layer, x, (h0, -h0) if layer.cell.has_cell else h0)
    assert "_prepared" in layer.__dict__              # it ran on the prepared path
    wide = cls(5, 64, seed=0, **kw).eval()              # one row: four panels per call
    _same(wide, _x(20, 1, 5))
    bf = cls(5, H, batch_first=True, seed=0, **kw).eval()
    _same(bf, _x(3, 11, 5))                            # (B, T, I)


def _stale_check(layer, change):
    """Prepare, change the parameters through ``change``, and check the next
    eval call sees the change."""
    layer.eval()
    x = _x(9, 2, layer.input_size)
    before = _same(layer, x)
    change()
    layer.eval()
    after = _same(layer, x)
    assert np.abs(after - before).max() > 1e-4


def test_optimizer_step_invalidates():
    layer = fastrnn.LSTM(4, H, seed=0)

    def step():
        layer.train()
        y, _ = layer(_x(9, 2, 4))
        layer.backward(np.ones_like(y))
        Adam(layer, lr=0.05).step()
    _stale_check(layer, step)


def test_load_state_dict_and_to_invalidate():
    layer = fastrnn.GRU(4, H, seed=0)
    other = fastrnn.GRU(4, H, seed=1)
    _stale_check(layer, lambda: layer.load_state_dict(other.state_dict()))
    v = prepared.version()
    layer.to("cpu")
    assert prepared.version() > v
    # parameter arrays replaced outright are seen by identity
    _stale_check(layer, lambda: layer.params.__setitem__(
        "weight_hh_l0", layer.params["weight_hh_l0"] * 2))


def test_in_place_edit_needs_refresh():
    layer = fastrnn.LSTM(4, H, seed=0).eval()
    x = _x(9, 1, 4)
    before = layer(x)[0]
    layer.params["weight_ih_l0"][...] *= 3            # invisible to fastrnn ...
    np.testing.assert_array_equal(layer(x)[0], before)
    layer.refresh()                                     # ... until refresh
    _same(layer, x)
    assert np.abs(layer(x)[0] - before).max() > 1e-4


def test_model_load_state_dict_trainer_and_resume(tmp_path):
    ids = np.random.default_rng(0).integers(0, 7, 400)
    lm = fastrnn.LanguageModel(7, 4, H, num_layers=2, seed=0)
    toks = ids[:20, None]

    def logits(m):
        m.eval()
        out = m(toks)[0]
        old = prepared.enabled
        prepared.enabled = False
        try:
            ref = m(toks)[0]
        finally:
            prepared.enabled = old
        # + the head (H terms) and the embedding
        assert_close(out, ref, 2 * cell_terms("lstm", 20, 1, 4, H, 2, approx=True,
                                              backward=False) + H + 4, scale=1.0)
        return out

    start = logits(lm)
    tr = Trainer(lm, SGD(lm, lr=0.5), LMBatches(ids[:300], 2, 10), LMBatches(ids[300:], 2, 10),
                 progress=False)
    tr.fit(1)                       # validation ran in eval mode between the steps
    trained = logits(lm)
    assert np.abs(trained - start).max() > 1e-4
    path = tmp_path / "ckpt.npz"
    tr.save_checkpoint(path)
    fresh = fastrnn.LanguageModel(7, 4, H, num_layers=2, seed=5)
    before = logits(fresh)
    Trainer(fresh, SGD(fresh, lr=0.5), LMBatches(ids[:300], 2, 10), progress=False).resume(path)
    np.testing.assert_array_equal(logits(fresh), trained)         # the same weights
    assert np.abs(before - trained).max() > 1e-4
    other = fastrnn.LanguageModel(7, 4, H, num_layers=2, seed=9)
    lm.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(logits(lm), logits(other))


def test_saving_per_call_is_real():
    """Not a timing: the prepared copy is reused while nothing changes (the
    same buffer object), and re-made after a change."""
    layer = fastrnn.LSTM(4, H, seed=0).eval()
    x = _x(5, 1, 4)
    layer(x)
    w1 = layer._prepared[1]
    layer(x)
    assert layer._prepared[1] is w1
    layer.load_state_dict(layer.state_dict())
    layer(x)
    assert layer._prepared[1] is not w1


def test_copies_do_not_carry_the_prepared_copy():
    import copy
    import pickle
    layer = fastrnn.LSTM(4, H, seed=0).eval()
    x = _x(5, 2, 4)
    y = layer(x)[0]
    for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert twin.__dict__.get("_prepared") is None
        np.testing.assert_array_equal(twin(x)[0], y)
        twin.params["weight_hh_l0"][...] = 0            # the twin's own arrays
        twin.refresh()
        assert np.abs(twin(x)[0] - y).max() > 1e-4
    np.testing.assert_array_equal(layer(x)[0], y)


def test_distributed_parameter_writes_bump_the_version():
    """The distributed trainer writes averaged / broadcast parameters through
    its _unpack: that bumps the version."""
    from types import SimpleNamespace

    from fastrnn import distributed
    a = {"w": np.zeros((2, 2), np.float32)}
    v = prepared.version()
    distributed._unpack(a, SimpleNamespace(host=[("w", 0, 4, (2, 2))]), np.ones(4, np.float32))
    assert prepared.version() > v and a["w"].sum() == 4
