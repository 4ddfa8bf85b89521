"""The bfloat16 compute mode of ``Linear`` (fastrnn/kernels/linear_bf16.py) and
the language model's head in that mode.

Both routes (AMX tiles where this CPU has them, the float32 products of the
rounded operands otherwise) against float64 products of the same rounded
operands (only the float32 sums differ: the float32 bound over each sum's
length, scaled by ``sum |a||b|``), and against the float32 layer (bfloat16's
unit roundoff, one product stage: tests/README.md).
"""
import copy
import pickle

import numpy as np
import pytest

import fastrnn
from fastrnn import LanguageModel
from fastrnn.bf16 import round_bf16
from fastrnn.blocks import Linear
from fastrnn.kernels import linear_bf16 as lb
from fastrnn.kernels.cpu_settings import settings
from fastrnn.testing import BF16_UNIT_ROUNDOFF, assert_close, unit_roundoff

BF16 = "bfloat16"
ROUTES = ["amx", "native", "emulated"]


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    monkeypatch.setattr(settings, "bf16_native", request.param != "emulated")
    monkeypatch.setattr(settings, "bf16_amx", request.param == "amx")
    if lb.route() != request.param:
        pytest.skip(f"no {'AMX-BF16' if request.param == 'amx' else 'AVX512-BF16'} here")
    return request.param


def _r64(a):
    return round_bf16(np.ascontiguousarray(a, dtype=np.float32)).astype(np.float64)


def _check_products(lin, x, dy, gw0, gb0, y, dx):
    """``y``, ``dx`` and the accumulated gradients against float64 products of
    the rounded operands: only the float32 sums differ (their length in terms)."""
    F, O = lin.in_features, lin.out_features
    w, b = lin.params["weight"], lin.params["bias"]
    x2, dy2 = x.reshape(-1, F), dy.reshape(-1, O)
    rx, rw, rdy = _r64(x2), _r64(w), _r64(dy2)
    want = rx @ rw.T + b
    assert_close(y.reshape(-1, O), want, F + 1, scale=(np.abs(rx) @ np.abs(rw).T).max()
                 + np.abs(b).max(), dtype=np.float32, err_msg="y")
    assert_close(dx.reshape(-1, F), rdy @ rw, O, scale=(np.abs(rdy) @ np.abs(rw)).max(),
                 dtype=np.float32, err_msg="dx")
    # the accumulation onto earlier gradients adds one float32 rounding
    assert_close(lin.grads["weight"], gw0 + rdy.T @ rx, len(x2) + 1,
                 scale=(np.abs(rdy).T @ np.abs(rx)).max() + np.abs(gw0).max(),
                 dtype=np.float32, err_msg="dW")
    assert_close(lin.grads["bias"], gb0 + dy2.astype(np.float64).sum(0), len(x2) + 1,
                 scale=np.abs(dy2).sum(0).max() + np.abs(gb0).max(), dtype=np.float32,
                 err_msg="db")


@pytest.mark.parametrize("shape", [(3, 40, 40, 37), (2, 40, 64, 32)])
def test_linear_bf16_products(route, shape):
    """[T, B, F] -> O with ragged sizes (row, k and column padding of the tiles),
    then a call with fewer rows in the same padded shapes: the gradients must
    not pick up the first call's rows (the padding is rewritten)."""
    T, B, F, O = shape
    rng = np.random.default_rng(0)
    lin = Linear(F, O, rng=1, compute_dtype=BF16)
    for rows in (B, B - 5):
        x = rng.standard_normal((T, rows, F)).astype(np.float32)
        dy = rng.standard_normal((T, rows, O)).astype(np.float32)
        xs, dys = x.copy(), dy.copy()
        assert lb.route(T * rows) == (route if T * rows >= lb.MIN_ROWS else "emulated")
        gw0, gb0 = lin.grads["weight"].astype(np.float64), lin.grads["bias"].astype(np.float64)
        y = lin.forward(x)
        dx = lin.backward(dy)
        assert y.shape == (T, rows, O) and y.dtype == np.float32
        assert dx.shape == x.shape and dx.dtype == np.float32
        _check_products(lin, x, dy, gw0, gb0, y, dx)
        np.testing.assert_array_equal(x, xs)              # inputs untouched
        np.testing.assert_array_equal(dy, dys)


def test_linear_bf16_threads_give_the_same_bits(route, monkeypatch):
    """Large enough to split in tasks (rows forward, dx | dW backward; 500 rows:
    a ragged second half): the products, then one thread against two, bit for bit."""
    from fastrnn.kernels import cpu
    rng = np.random.default_rng(5)
    T, B, F, O = 4, 125, 128, 70
    assert 2.0 * T * B * F * O >= settings.split_gemm_flops
    x = rng.standard_normal((T, B, F)).astype(np.float32)
    dy = rng.standard_normal((T, B, O)).astype(np.float32)
    out = []
    saved = cpu.get_num_threads()
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            lin = Linear(F, O, rng=3, compute_dtype=BF16)
            y, dx = lin.forward(x), lin.backward(dy)
            out.append((y, dx, lin.grads["weight"].copy(), lin.grads["bias"].copy()))
    finally:
        cpu.set_num_threads(saved)
    _check_products(lin, x, dy, np.zeros((O, F)), np.zeros(O), y, dx)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows", [8, 96])
def test_linear_bf16_backward_uses_the_x_it_is_given(route, rows):
    """backward(x1) after forward(x1), forward(x2) of the same shape: the weight
    gradient of x1, as a fresh layer gives it (no operand kept from a forward)."""
    rng = np.random.default_rng(7)
    F, O = 20, 12
    x1, x2 = (rng.standard_normal((rows, F)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal((O, F)).astype(np.float32)
    dy = rng.standard_normal((rows, O)).astype(np.float32)
    used, fresh = lb.LinearBF16(), lb.LinearBF16()
    used.forward(x1, w, None, np.matmul)
    used.forward(x2, w, None, np.matmul)
    g_used, g_fresh = np.zeros((O, F), np.float32), np.zeros((O, F), np.float32)
    dx_used = used.backward(x1, dy, w, g_used, None, np.matmul)
    dx_fresh = fresh.backward(x1, dy, w, g_fresh, None, np.matmul)
    np.testing.assert_array_equal(g_used, g_fresh)
    np.testing.assert_array_equal(dx_used, dx_fresh)


def test_linear_bf16_python_threads_share_a_layer(route):
    """Two Python threads calling one layer's products at once (the compiled code
    runs without the GIL; the packing buffers are the layer's): each call gives
    what it gives alone."""
    import threading
    rng = np.random.default_rng(8)
    N, F, O = 256, 256, 128
    xs = [rng.standard_normal((N, F)).astype(np.float32) for _ in range(2)]
    w = rng.standard_normal((O, F)).astype(np.float32)
    want = [lb.LinearBF16().forward(x, w, None, np.matmul) for x in xs]
    shared = lb.LinearBF16()
    wrong = [0, 0]

    def run(i):
        for _ in range(60):
            wrong[i] += not np.array_equal(shared.forward(xs[i], w, None, np.matmul), want[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [0, 0]


def test_linear_bf16_near_float32():
    """The mode within bfloat16's product-stage bound of the float32 layer."""
    rng = np.random.default_rng(1)
    F, O = 96, 50
    x = rng.standard_normal((4, 30, F)).astype(np.float32)
    dy = rng.standard_normal((4, 30, O)).astype(np.float32)
    l32, l16 = Linear(F, O, rng=2), Linear(F, O, rng=2, compute_dtype=BF16)
    y32, y16 = l32.forward(x), l16.forward(x)
    dx32, dx16 = l32.backward(dy), l16.backward(dy)
    w = l32.params["weight"]
    f32 = unit_roundoff(np.float32) / BF16_UNIT_ROUNDOFF       # float32 sums, in bf16 units
    for got, want, n, scale in (
            (y16, y32, F, (np.abs(x.reshape(-1, F)) @ np.abs(w).T).max()),
            (dx16, dx32, O, (np.abs(dy.reshape(-1, O)) @ np.abs(w)).max()),
            (l16.grads["weight"], l32.grads["weight"], 120,
             (np.abs(dy.reshape(-1, O)).T @ np.abs(x.reshape(-1, F))).max())):
        assert_close(got, want, 1 + int(np.ceil(2 * n * f32)), scale=scale, dtype=BF16)
    np.testing.assert_array_equal(l16.grads["bias"], l32.grads["bias"])   # float32 sums


def test_rounding_of_the_packing_is_round_bf16():
    """The packers' rounding (selects, to vectorize) is round_bf16's: ties to
    even, denormals to signed zero, infinities kept, NaN quieted."""
    rng = np.random.default_rng(2)
    special = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000,
                        0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0xFF7FFFFF,
                        0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00001, 0x7FBFFFFF],
                       dtype=np.uint32)
    u = np.concatenate([special, rng.integers(0, 2**32, 32 * 64 - len(special),
                                              dtype=np.uint64).astype(np.uint32)])
    want = (round_bf16(u.view(np.float32)).view(np.uint32) >> 16).astype(np.uint16)
    a = u.reshape(32, 64)
    out = np.zeros((2, 2, 16, 32), np.uint16)
    lb.pack_rows(a, out)
    np.testing.assert_array_equal(out.transpose(0, 2, 1, 3).reshape(32, 64), want.reshape(32, 64))
    words = np.zeros((4, 16, 16), np.uint32)          # b = a: k = 32 rows, n = 64 columns
    lb.pack_cols(a, words)
    pairs = words.view(np.uint16).reshape(4, 16, 16, 2)       # [n/16, k/2, n%16, k%2]
    np.testing.assert_array_equal(pairs.transpose(1, 3, 0, 2).reshape(32, 64),
                                  want.reshape(32, 64))


def test_linear_bf16_nan_and_saturation(route):
    """A NaN in one input row gives NaNs in that row of y only; huge inputs stay
    finite where float32 would (the bf16 range is float32's)."""
    rng = np.random.default_rng(3)
    lin = Linear(32, 16, rng=0, compute_dtype=BF16)
    x = rng.standard_normal((80, 32)).astype(np.float32)
    x[5, 3] = np.nan
    x[6] *= 1e30
    y = lin.forward(x)
    assert np.isnan(y[5]).all() and np.isfinite(np.delete(y, 5, axis=0)).all()


def test_language_model_head_follows_the_mode():
    lm = LanguageModel(11, embed_dim=4, hidden_size=8, backend="numpy", seed=0,
                       compute_dtype=BF16)
    assert lm.head.compute_dtype == BF16 and lm.embed is not None
    lm.compute_dtype = None
    assert lm.head.compute_dtype is None and lm.rnn.compute_dtype is None
    assert lm.config["compute_dtype"] is None
    lm.compute_dtype = "bf16"
    assert lm.head.compute_dtype == BF16 and lm.config["compute_dtype"] == BF16
    assert LanguageModel(11, embed_dim=4, hidden_size=8, seed=0).head.compute_dtype is None
    for other in (pickle.loads(pickle.dumps(lm)), copy.deepcopy(lm)):
        assert other.head.compute_dtype == BF16
    # the head's products in the mode: logits = round(y) round(W)^T + b
    tokens = np.random.default_rng(4).integers(0, 11, (6, 3))
    lm.eval()
    logits, _ = lm.forward(tokens)
    y, _ = lm.rnn(lm.embed(tokens))
    w, b = lm.head.params["weight"], lm.head.params["bias"]
    want = _r64(y.reshape(-1, 8)) @ _r64(w).T + b
    assert_close(logits.reshape(-1, 11), want, 9,
                 scale=(np.abs(_r64(y.reshape(-1, 8))) @ np.abs(_r64(w)).T).max() + 1,
                 dtype=np.float32)


def test_linear_bf16_takes_float64_input(route):
    """float64 input (as the float32 layer takes it): rounded like its float32 value."""
    rng = np.random.default_rng(6)
    lin = Linear(32, 8, rng=0, compute_dtype=BF16)
    x = rng.standard_normal((70, 32))
    dy = rng.standard_normal((70, 8))
    y, dx = lin.forward(x), lin.backward(dy)
    lin2 = Linear(32, 8, rng=0, compute_dtype=BF16)
    np.testing.assert_array_equal(y, lin2.forward(x.astype(np.float32)))
    np.testing.assert_array_equal(dx, lin2.backward(dy.astype(np.float32)))


def test_linear_rejects_bad_compute_dtype():
    with pytest.raises(ValueError, match="compute_dtype"):
        Linear(3, 2, compute_dtype="float16")
    with pytest.raises(ValueError, match="compute_dtype"):
        Linear(3, 2, dtype=np.float64, compute_dtype=BF16)
    assert Linear(3, 2, compute_dtype="float32").compute_dtype is None
    assert fastrnn.blocks.Linear(3, 2).compute_dtype is None
