"""The sequence encoder of the classifier and the regressor on the GPU with
batches already on the device: the same outputs and input gradients as the
same batch given from the host (one path, fastrnn.models.encoder), and the
same errors.

Runs under NUMBA_ENABLE_CUDASIM=1 or on a GPU; skipped otherwise::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_models.py
"""
import numpy as np
import pytest

pytestmark = pytest.mark.cuda_sim
cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from fastrnn.models import SequenceClassifier, SequenceRegressor  # noqa: E402


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a if a is None or isinstance(a, np.ndarray) else a.copy_to_host()


def both(model, x, lengths, dout):
    """(outputs, dL/dx) of ``x`` given from the host and from the device."""
    out = []
    for batch in (x, dev(x)):
        y = host(model.forward(batch, lengths))
        out.append((y, host(model.backward(dev(dout)))))
    return out


def test_device_batches_of_features_match_host_batches():
    rng = np.random.default_rng(0)
    clf = SequenceClassifier(3, input_size=2, hidden_size=3, bidirectional=True, seed=0,
                             backend="cuda")
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    (yh, dh), (yd, dd) = both(clf, x, np.array([4, 2, 3]), np.full((3, 3), 0.1, np.float32))
    np.testing.assert_array_equal(yd, yh)
    np.testing.assert_array_equal(dd, dh)
    assert dh.shape == x.shape                       # trimmed to 4 steps: nothing to pad
    (yh, dh), (yd, dd) = both(clf, x, np.array([2, 1, 2]), np.full((3, 3), 0.1, np.float32))
    np.testing.assert_array_equal(yd, yh)
    np.testing.assert_array_equal(dd, dh)
    assert dh.shape == x.shape and not dh[:, 2:].any()   # run to 2 steps, padded back
    with pytest.raises(TypeError, match="x must have dtype float32 like the model, got float64"):
        clf.forward(dev(x.astype(np.float64)))
    with pytest.raises(ValueError, match=r"x must be \[B, T, F\], got shape \(3,\)"):
        clf.forward(dev(np.zeros(3, np.float32)))


def test_device_univariate_windows_and_token_ids_match_host():
    rng = np.random.default_rng(1)
    reg = SequenceRegressor(1, horizon=2, hidden_size=3, pooling="attention", seed=1,
                            backend="cuda")
    x = rng.standard_normal((2, 5)).astype(np.float32)           # [B, T]: F = 1
    (yh, dh), (yd, dd) = both(reg, x, None, np.full((2, 2, 1), 0.2, np.float32))
    np.testing.assert_array_equal(yd, yh)
    np.testing.assert_array_equal(dd, dh)
    assert dh.shape == (2, 5, 1)
    tok = SequenceClassifier(2, vocab_size=5, embed_dim=2, hidden_size=3, seed=2,
                             backend="cuda")
    ids = rng.integers(0, 5, (2, 3))
    outs = []
    for batch in (ids, dev(ids)):
        tok.zero_grad()
        y = host(tok.forward(batch, [3, 1]))
        assert tok.backward(dev(np.ones((2, 2), np.float32))) is None
        outs.append((y, {k: host(g) for k, g in tok.grads.items()}))
    np.testing.assert_array_equal(outs[1][0], outs[0][0])
    for k in outs[0][1]:
        np.testing.assert_array_equal(outs[1][1][k], outs[0][1][k], err_msg=k)
    with pytest.raises(ValueError, match=r"x must be token ids \[B, T\], got shape \(2, 3, 1\)"):
        tok.forward(dev(ids[:, :, None]))
