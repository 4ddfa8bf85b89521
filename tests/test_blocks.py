"""Blocks: forward values and finite-difference gradient checks in float64."""
import numpy as np
import pytest

from _numeric import numgrad

from fastrnn.testing import assert_close, error_bound
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
    assert_close(y, x @ lin.params["weight"].T + lin.params["bias"], 3 + 1)


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


# -------------------------------------------- the compiled training-step pieces
def _xent_numpy(logits, targets, ignore_index=-100, mask=None, reduction="mean"):
    """The former NumPy formula (float64 log of the clipped probability)."""
    valid = targets != ignore_index
    if mask is not None:
        valid = valid & mask
    safe_t = np.where(valid, targets, 0)
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    p_t = np.take_along_axis(z, safe_t[..., None], axis=-1)[..., 0]
    logp = np.log(np.maximum(p_t.astype(np.float64), np.finfo(logits.dtype).tiny))
    n = int(valid.sum())
    scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
    loss = -float(logp[valid].sum()) * scale
    np.put_along_axis(z, safe_t[..., None],
                      np.take_along_axis(z, safe_t[..., None], axis=-1) - 1, axis=-1)
    z *= (valid * scale).astype(logits.dtype)[..., None]
    return loss, z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_kernel_matches_numpy_formula(rng, dtype, reduction):
    T, B, C = 9, 7, 67
    logits = (rng.standard_normal((T, B, C)) * 4).astype(dtype)
    targets = rng.integers(0, C, (T, B))
    targets[2, 3] = -100
    mask = rng.random((T, B)) > 0.2
    loss, grad = softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction)
    ref_loss, ref_grad = _xent_numpy(logits, targets, mask=mask, reduction=reduction)
    assert grad.dtype == dtype and grad.shape == logits.shape
    # the gradient: a softmax over C classes (a sum of C exponentials, each
    # within a few ulps); the loss: a sum over every element besides
    grad_terms = C + 8
    assert abs(loss - ref_loss) <= error_bound(dtype, T * B * grad_terms, abs(ref_loss))
    assert_close(grad, ref_grad, grad_terms)
    assert not grad[~(mask & (targets != -100))].any()
    # loss only (held-out scoring) and the gradient written over the logits
    l2, none = softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction, grad=False)
    assert none is None and l2 == loss
    x = logits.copy()
    l3, g3 = softmax_cross_entropy(x, targets, mask=mask, reduction=reduction, out=x)
    assert g3.base is x or g3 is x
    assert l3 == loss
    np.testing.assert_array_equal(x, grad)
    with pytest.raises(ValueError, match="out must be"):
        softmax_cross_entropy(logits, targets, out=np.empty((T, B, C + 1), dtype))


def test_softmax_cross_entropy_confident_mistakes_and_nan():
    for dtype in (np.float32, np.float64):
        logits = np.array([[1e4, 0.0, -np.inf], [0.0, 0.0, 0.0]], dtype)
        loss, grad = softmax_cross_entropy(logits, np.array([2, 1]), reduction="sum")
        # the -inf target costs -log(smallest normal), as the clipped formula did
        assert loss == pytest.approx(-np.log(np.finfo(dtype).tiny) + np.log(3.0))
        assert np.isfinite(grad).all()
        loss, grad = softmax_cross_entropy(np.array([[np.nan, 0.0]], dtype), np.array([1]))
        assert np.isnan(loss)
    with pytest.raises(TypeError, match="integers"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_backward_kernel_equals_add_at(rng, dtype, padding_idx):
    V, E = 11, 64
    emb = Embedding(V, E, padding_idx=padding_idx, dtype=dtype, rng=rng)
    idx = rng.integers(0, V, (40, 9))
    dy = rng.standard_normal((40, 9, E)).astype(dtype)
    emb.grads["weight"][...] = rng.standard_normal((V, E))      # accumulates onto this
    expect = emb.grads["weight"].copy()
    keep = idx.reshape(-1) != (padding_idx if padding_idx is not None else -1)
    np.add.at(expect, idx.reshape(-1)[keep], dy.reshape(-1, E)[keep])
    emb(idx)
    emb.backward(dy)
    np.testing.assert_array_equal(emb.grads["weight"], expect)
    with pytest.raises(ValueError, match="dy must have shape"):
        emb.backward(dy[:, :3])
    idx[0, 0] = V                                                 # changed after forward
    with pytest.raises(ValueError, match="out of range"):
        emb.backward(dy)


def test_linear_backward_reuses_workspace_and_accumulates(rng):
    lin = Linear(5, 3, dtype=np.float32, rng=rng)
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 6, 3)).astype(np.float32)
    lin(x)
    lin.backward(dy)
    ws = lin._ws
    lin.backward(dy)
    assert lin._ws is ws
    x2, dy2 = x.reshape(-1, 5), dy.reshape(-1, 3)
    # two backward calls, each a sum over the 24 rows
    assert_close(lin.grads["weight"], 2 * (dy2.T @ x2), 2 * 24)
    assert_close(lin.grads["bias"], 2 * dy2.sum(0), 2 * 24)


def test_numpy_fallbacks_without_numba_agree(rng, monkeypatch):
    """Where Numba cannot load, the blocks and optimizers run NumPy formulas
    that give the same results (bit for bit for the optimizers and the
    embedding)."""
    from fastrnn import blocks
    from fastrnn.optim import Adam, clip_grad_norm
    logits = (rng.standard_normal((50, 13)) * 5).astype(np.float32)
    t = rng.integers(0, 13, 50)
    t[3] = -100
    emb = Embedding(9, 4, padding_idx=2, rng=rng)
    idx = rng.integers(0, 9, (6, 5))
    dy = rng.standard_normal((6, 5, 4)).astype(np.float32)
    grads = {"w": rng.standard_normal((5, 3)).astype(np.float32)}

    def run():
        loss, g = softmax_cross_entropy(logits, t)
        emb.zero_grad()
        emb(idx)
        emb.backward(dy)
        p = {"w": np.ones((5, 3), np.float32)}
        opt = Adam(p, lr=0.1)
        gg = {"w": grads["w"].copy()}
        norm = clip_grad_norm(gg, 0.5)
        opt.step(gg)
        return loss, g, emb.grads["weight"].copy(), p["w"], norm

    fast = run()
    monkeypatch.setattr(blocks, "_KERNELS", False)
    assert blocks._kernels() is None
    slow = run()
    # softmax over 13 classes (exponentials within a few ulps), mean over 50 rows
    assert abs(slow[0] - fast[0]) <= error_bound(np.float32, 50 * (13 + 8), abs(fast[0]))
    assert_close(slow[1], fast[1], 13 + 8)
    assert not slow[1][3].any()
    np.testing.assert_array_equal(slow[2], fast[2])
    np.testing.assert_array_equal(slow[3], fast[3])
    assert slow[4] == pytest.approx(fast[4], rel=1e-12)
