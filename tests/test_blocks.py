"""Blocks: forward values and finite-difference gradient checks in float64."""
import numpy as np
import pytest

from _numeric import numgrad

from fastrnn.blocks import (AttentionPool, Dropout, Embedding, Linear, mse,
                            softmax_cross_entropy)


def check_module(module, x, forward, rng, atol=1e-7, rtol=1e-5, check_input=True):
    """Check dL/dx and dL/dparams of ``forward(x)`` with L = sum(R * out)."""
    out = forward(x)
    R = rng.standard_normal(out.shape)

    def loss():
        return float(np.sum(R * forward(x)))

    module.zero_grad()
    forward(x)
    dx = module.backward(R)
    if check_input:
        np.testing.assert_allclose(dx, numgrad(loss, x), rtol=rtol, atol=atol)
    for name, p in module.params.items():
        np.testing.assert_allclose(module.grads[name], numgrad(loss, p), rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 5)])
def test_linear_gradients(rng, shape):
    lin = Linear(shape[-1], 4, dtype=np.float64, rng=rng)
    check_module(lin, rng.standard_normal(shape), lin.forward, rng)


def test_linear_no_bias_and_shape_error(rng):
    lin = Linear(3, 2, bias=False, dtype=np.float64, rng=rng)
    assert set(lin.params) == {"weight"}
    check_module(lin, rng.standard_normal((2, 5, 3)), lin.forward, rng)
    with pytest.raises(ValueError, match="last axis"):
        lin(np.zeros((2, 4)))


def test_linear_matches_formula(rng):
    lin = Linear(3, 2, dtype=np.float32, rng=rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = lin(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x @ lin.params["weight"].T + lin.params["bias"], rtol=1e-6)


def test_embedding_gradient_with_repeats_and_padding(rng):
    emb = Embedding(6, 3, padding_idx=0, dtype=np.float64, rng=rng)
    assert np.all(emb.params["weight"][0] == 0)
    idx = np.array([[1, 2, 2], [0, 5, 1]])
    out = emb(idx)
    assert out.shape == (2, 3, 3)
    R = rng.standard_normal(out.shape)
    emb.zero_grad()
    emb(idx)
    assert emb.backward(R) is None
    expect = np.zeros((6, 3))
    for (b, t), i in np.ndenumerate(idx):
        if i != 0:
            expect[i] += R[b, t]
    np.testing.assert_allclose(emb.grads["weight"], expect)
    with pytest.raises(ValueError, match="out of range"):
        emb(np.array([6]))
    with pytest.raises(TypeError):
        emb(np.array([0.5]))


def test_gradients_accumulate_and_zero_grad(rng):
    lin = Linear(3, 2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 2))
    lin(x)
    lin.backward(dy)
    once = lin.grads["weight"].copy()
    lin.backward(dy)
    np.testing.assert_allclose(lin.grads["weight"], 2 * once)
    lin.zero_grad()
    assert not lin.grads["weight"].any()


def test_dropout_train_eval_and_seed():
    x = np.ones((200, 50))
    a = Dropout(0.3, rng=7)
    b = Dropout(0.3, rng=7)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)                      # seeded, no global state
    kept = ya != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(ya[kept], 1 / 0.7)
    np.testing.assert_array_equal(a.backward(x), ya)           # backward applies the mask
    a.eval()
    np.testing.assert_array_equal(a(x), x)
    np.testing.assert_array_equal(a.backward(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_softmax_cross_entropy_value_and_gradient(rng):
    logits = rng.standard_normal((4, 3, 5))
    targets = rng.integers(0, 5, (4, 3))
    targets[0, 1] = -100                                       # ignored
    mask = np.ones((4, 3), bool)
    mask[3, 2] = False                                         # padded
    loss, grad = softmax_cross_entropy(logits, targets, mask=mask)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    valid = (targets != -100) & mask
    expect = -np.mean(np.log(p[valid, targets[valid]]))
    assert loss == pytest.approx(expect, rel=1e-12)
    assert not grad[0, 1].any() and not grad[3, 2].any()
    num = numgrad(lambda: softmax_cross_entropy(logits, targets, mask=mask)[0], logits)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    loss_sum, grad_sum = softmax_cross_entropy(logits, targets, mask=mask, reduction="sum")
    assert loss_sum == pytest.approx(expect * valid.sum())
    np.testing.assert_allclose(grad_sum, grad * valid.sum())


def test_softmax_cross_entropy_stable_and_errors():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]], dtype=np.float32)
    loss, grad = softmax_cross_entropy(logits, np.array([1, 0]))
    assert np.isfinite(loss) and np.isfinite(grad).all() and grad.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        softmax_cross_entropy(logits, np.array([1]))
    with pytest.raises(ValueError, match="range"):
        softmax_cross_entropy(logits, np.array([2, 0]))


def test_softmax_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 4))
    targets = np.array([0, 3, -100, 1, 2, 2])
    loss, grad = softmax_cross_entropy(logits, targets)
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.tensor(targets), ignore_index=-100)
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-10)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_mse_value_gradient_and_mask(rng):
    pred = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 4))
    loss, grad = mse(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2))
    np.testing.assert_allclose(grad, numgrad(lambda: mse(pred, target)[0], pred), rtol=1e-6)
    mask = np.array([[1, 1, 0, 0]] * 3, bool)
    lm, gm = mse(pred, target, mask=mask)
    assert lm == pytest.approx(np.mean((pred - target)[mask] ** 2))
    assert not gm[~mask].any()
    np.testing.assert_allclose(gm, numgrad(lambda: mse(pred, target, mask=mask)[0], pred),
                               rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_attention_pool_gradients(rng, lengths):
    att = AttentionPool(5, attn_size=3, dtype=np.float64, rng=rng)
    h = rng.standard_normal((4, 3, 5))

    def fwd(x):
        return att.forward(x, lengths)

    check_module(att, h, fwd, rng)


def test_attention_pool_masks_padded_steps(rng):
    att = AttentionPool(4, dtype=np.float64, rng=rng)
    h = rng.standard_normal((5, 2, 4))
    lengths = np.array([5, 2])
    ctx = att(h, lengths)
    alpha = att.alpha
    np.testing.assert_allclose(alpha.sum(axis=0), 1.0)
    assert not alpha[2:, 1].any()
    h2 = h.copy()
    h2[2:, 1] = 1e3                                            # padding must not matter
    np.testing.assert_allclose(att(h2, lengths), ctx)
    np.testing.assert_allclose(ctx[1], (alpha[:, 1, None] * h[:, 1]).sum(0))
