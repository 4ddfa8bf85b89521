"""Training on the GPU end to end: blocks, losses, optimizers, clipping, models,
the Trainer, checkpoints and the CLI on device arrays, each against its host
version (the host path is the reference).

Runs under NUMBA_ENABLE_CUDASIM=1 (tiny shapes, launch sizes shrunk so that
they still span several blocks) or on a GPU; skipped otherwise::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_training.py
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.cuda_sim     # its own process: see tests/README.md

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from fastrnn import blocks, optim  # noqa: E402
from fastrnn.data import ArrayBatches, LMBatches  # noqa: E402
from fastrnn.kernels import cuda as kc  # noqa: E402
from fastrnn.models import (LanguageModel, SequenceClassifier, SequenceRegressor,  # noqa: E402
                            load_model)
from fastrnn.train import Trainer  # noqa: E402
from fastrnn.testing import assert_close, error_bound  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# several blocks even for these shapes; GEMM tiles of 8 (the simulator's cost is per block)
SMALL = dict(tile=8, threads=8, gemm_blocking=(8, 8, 8, 4, 4), blocked_min_rows=4,
             use_cupy=False)
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    with kc.configure(**SMALL):
        yield


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a if a is None or isinstance(a, np.ndarray) else a.copy_to_host()


#: the longest chain of sums in the blocks compared here (a Linear of 5 inputs,
#: attention over 4 steps of 4 features, a softmax over 6 classes, 4 optimizer
#: steps of a few operations each): 32 terms bounds them all (fastrnn.testing)
BLOCK_TERMS = 32
#: the small models' predictions: an LSTM/GRU forward of a few steps of at most
#: 16 + 16 terms, a head and a softmax
MODEL_TERMS = 512


def close(actual, expected, dtype, msg="", terms=BLOCK_TERMS):
    assert_close(host(actual), expected, terms, dtype=dtype, err_msg=msg)


def close_scalar(actual, expected, dtype, terms):
    """A reduced scalar (a loss over ``terms`` elements)."""
    assert abs(actual - expected) <= error_bound(dtype, terms, abs(expected)), (actual, expected)


def on_device(module):
    return all(not isinstance(v, np.ndarray) for v in module.params.values())


# ------------------------------------------------------------------ blocks
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dtype):
    h = blocks.Embedding(7, 3, padding_idx=2, dtype=dtype, rng=0)
    d = blocks.Embedding(7, 3, padding_idx=2, dtype=dtype, rng=0).to("cuda")
    assert d.device == "cuda" and on_device(d)
    idx = np.array([[1, 2, 6], [1, 0, 1]])                 # repeats and the padding row
    dy = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(dtype)
    close(d(idx), h(idx), dtype)
    h.backward(dy)
    d.backward(dev(dy))
    close(d.grads["weight"], h.grads["weight"], dtype)
    d.zero_grad()
    close(d(dev(idx.astype(np.int32))), h(idx), dtype)    # indices already on the device
    d.backward(dev(dy))
    close(d.grads["weight"], h.grads["weight"], dtype)
    with pytest.raises(ValueError, match="out of range"):
        d(np.array([7]))
    with pytest.raises(TypeError, match="host array"):
        d.backward(dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(dtype, bias):
    h = blocks.Linear(5, 4, bias=bias, dtype=dtype, rng=0)
    d = blocks.Linear(5, 4, bias=bias, dtype=dtype, rng=0).to("cuda")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 5)).astype(dtype)
    dy = rng.normal(size=(3, 2, 4)).astype(dtype)
    close(d(dev(x)), h(x), dtype)
    close(d.backward(dev(dy)), h.backward(dy), dtype)
    for k in h.grads:
        close(d.grads[k], h.grads[k], dtype, k)
    with pytest.raises(TypeError, match="host array but this Linear lives on the GPU"):
        d(x)
    with pytest.raises(TypeError, match="dtype"):
        d(dev(x.astype(np.float16)))
    with pytest.raises(TypeError, match="GPU array but this Linear's parameters are on the host"):
        h(dev(x))
    sd = d.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    d.to("cpu")
    assert d.device == "cpu" and isinstance(d.params["weight"], np.ndarray)
    np.testing.assert_array_equal(d.params["weight"], sd["weight"])


def test_dropout_masks_on_the_device():
    x = np.ones((20, 50), np.float32)
    a, b = blocks.Dropout(0.3, rng=5), blocks.Dropout(0.3, rng=5)
    ya, yb = host(a(dev(x))), host(b(dev(x)))
    np.testing.assert_array_equal(ya, yb)                      # reproducible from the seed
    assert set(np.unique(ya)) == {0, np.float32(1) / np.float32(0.7)}
    assert abs((ya == 0).mean() - 0.3) < 0.05
    y2 = host(a(dev(x)))
    assert (y2 != ya).any()                                     # a fresh mask per call
    dy = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(host(a.backward(dev(dy))), dy * y2)
    a.eval()
    xd = dev(x)
    assert a(xd) is xd and a.backward(xd) is xd


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(2, 3, 6)) * 3).astype(dtype)
    t = rng.integers(0, 6, size=(2, 3))
    t[0, 1] = -100
    mask = rng.random((2, 3)) > 0.3
    for kw, kwd in ((dict(), dict()), (dict(mask=mask), dict(mask=mask)),
                    (dict(mask=mask), dict(mask=dev(mask.astype(np.uint8)), targets=dev(t))),
                    (dict(reduction="sum"), dict(reduction="sum"))):
        loss, g = blocks.softmax_cross_entropy(x, t, **kw)
        ld, gd = blocks.softmax_cross_entropy(dev(x), kwd.pop("targets", t), **kwd)
        assert isinstance(ld, float)
        close_scalar(ld, loss, dtype, x.size + BLOCK_TERMS)
        close(gd, g, dtype)
    loss, _ = blocks.softmax_cross_entropy(x, t, grad=False)
    ld, gd = blocks.softmax_cross_entropy(dev(x), t, grad=False)
    assert gd is None
    close_scalar(ld, loss, dtype, x.size + BLOCK_TERMS)
    xd = dev(x)
    ld, gd = blocks.softmax_cross_entropy(xd, t, out=xd)          # in place, as the LM does
    assert gd is xd
    close(gd, blocks.softmax_cross_entropy(x, t)[1], dtype)
    bad = t.copy()
    bad[1, 2] = 6
    with pytest.raises(ValueError, match="out of range"):
        blocks.softmax_cross_entropy(dev(x), bad)
    with pytest.raises(ValueError, match="out of range"):
        blocks.softmax_cross_entropy(dev(x), dev(bad))
    with pytest.raises(ValueError, match="does not match"):
        blocks.softmax_cross_entropy(dev(x), t[:1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse(dtype):
    rng = np.random.default_rng(4)
    p = rng.normal(size=(5, 3)).astype(dtype)
    y = rng.normal(size=(5, 3)).astype(dtype)
    mask = rng.random((5, 3)) > 0.4
    for kw, kwd in ((dict(), dict()), (dict(mask=mask), dict(mask=mask)),
                    (dict(mask=mask), dict(mask=dev(mask.astype(np.uint8)))),
                    (dict(reduction="sum"), dict(reduction="sum"))):
        loss, g = blocks.mse(p, y, **kw)
        for target in (y, dev(y)):
            ld, gd = blocks.mse(dev(p), target, **kwd)
            close_scalar(ld, loss, dtype, p.size + BLOCK_TERMS)
            close(gd, g, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_pool(dtype):
    h = blocks.AttentionPool(4, 3, dtype=dtype, rng=0)
    d = blocks.AttentionPool(4, 3, dtype=dtype, rng=0).to("cuda")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 4)).astype(dtype)
    dctx = rng.normal(size=(3, 4)).astype(dtype)
    lengths = np.array([4, 1, 3])
    close(d(dev(x), lengths), h(x, lengths), dtype)
    close(d.alpha, h.alpha, dtype)
    close(d.backward(dev(dctx)), h.backward(dctx), dtype)
    for k in h.grads:
        close(d.grads[k], h.grads[k], dtype, k)
    close(d(dev(x)), h(x), dtype)                                   # no lengths
    close(d.alpha, h.alpha, dtype)


# ------------------------------------------------------------------ optimizers
OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.1, momentum=0.5, dampening=0.2)),
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.01)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.01,
                         initial_accumulator_value=0.1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_optimizer_on_device_matches_host(cls, kw, dtype):
    rng = np.random.default_rng(6)
    ph = {"w": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=5).astype(dtype)}
    pd = {k: dev(v) for k, v in ph.items()}
    oh, od = cls(ph, **kw), cls(pd, **kw)
    for _ in range(3):
        g = {k: rng.normal(size=v.shape).astype(dtype) for k, v in ph.items()}
        oh.step(g)
        od.step({k: dev(v) for k, v in g.items()})
    for k in ph:
        assert not isinstance(pd[k], np.ndarray)
        close(pd[k], ph[k], dtype, k)
    sh, sd = oh.state_dict(), od.state_dict()
    for name, st in sh["state"].items():
        for buf, v in st.items():
            w = sd["state"][name][buf]
            if isinstance(v, np.ndarray):
                assert isinstance(w, np.ndarray)
                close(w, v, dtype, f"{name}/{buf}")
            else:
                assert w == v
    # host buffers (a checkpoint) move to the device at the next step there
    od2 = cls(pd, **kw)
    od2.load_state_dict(sd)
    g = {k: rng.normal(size=v.shape).astype(dtype) for k, v in ph.items()}
    oh.step(g)
    od2.step({k: dev(v) for k, v in g.items()})
    for k in ph:
        close(pd[k], ph[k], dtype, k)
    with pytest.raises(TypeError, match="host array"):
        od2.step(g)


def test_optimizer_formulas_have_one_source():
    """The device kernels compile the host's scalar formulas
    (kernels/training.py) as device functions: one source, no copies."""
    from fastrnn.kernels import cuda_optim, training
    for name in ("sgd_step", "adam_step", "rmsprop_step", "adagrad_step"):
        assert getattr(cuda_optim, "_" + name).py_func is getattr(training, name), name


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 3.0])
def test_clipping_on_device(norm_type):
    rng = np.random.default_rng(7)
    gh = {"a": rng.normal(size=(4, 5)).astype(np.float32),
          "b": rng.normal(size=7).astype(np.float32)}
    gd = {k: dev(v) for k, v in gh.items()}
    nh = optim.clip_grad_norm(gh, 1.0, norm_type)
    nd = optim.clip_grad_norm(gd, 1.0, norm_type)
    assert math.isclose(nd, nh, rel_tol=1e-6)
    for k in gh:
        close(gd[k], gh[k], np.float32, k)
    optim.clip_grad_value(gh, 0.1)
    optim.clip_grad_value(gd, 0.1)
    for k in gh:
        close(gd[k], gh[k], np.float32, k)
    assert optim.global_norm({"z": dev(np.zeros(0, np.float32))}) == 0.0


# ------------------------------------------------------------------ models
def lm(backend, **kw):
    return LanguageModel(7, embed_dim=4, hidden_size=5, seed=0, backend=backend, **kw)


def lm_data():
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 7, 2 * 2 * 2 + 1)
    return LMBatches(ids, 2, 2)                     # 2 steps of [T=2, B=2]


def classifier(backend):
    return SequenceClassifier(3, vocab_size=6, embed_dim=3, hidden_size=4, cell="gru",
                              bidirectional=True, seed=1, backend=backend)


def classifier_data():
    rng = np.random.default_rng(9)
    return ArrayBatches(rng.integers(0, 6, (4, 4)), rng.integers(0, 3, 4),
                        lengths=np.array([4, 2, 3, 1]), batch_size=2, shuffle=False)


def regressor(backend):
    return SequenceRegressor(2, horizon=2, hidden_size=4, pooling="attention", attn_size=3,
                             seed=2, backend=backend)


def regressor_data():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(4, 3, 2)).astype(np.float32)
    return ArrayBatches(x, rng.normal(size=(4, 2, 2)).astype(np.float32),
                        lengths=np.array([3, 2, 3, 1]), batch_size=2, shuffle=False)


MODELS = {"lm": (lm, lm_data), "classifier": (classifier, classifier_data),
          "regressor": (regressor, regressor_data)}


def train(model, data, steps=2):
    trainer = Trainer(model, optim.Adam(model, lr=0.05), data, clip_norm=0.5, seed=0,
                      progress=False)
    trainer.fit(epochs=None, steps=steps)
    return trainer


@pytest.fixture(scope="module")
def trained():
    """name -> (cpu model, gpu model, cpu trainer, gpu trainer) after 2 steps,
    built on first use and shared (the LM's by the tests after the first)."""
    cache = {}

    def get(name):
        if name not in cache:
            build, data = MODELS[name]
            cpu, gpu = build("cpu"), build("cuda")
            assert gpu.device == "cuda" and cpu.device == "cpu"
            assert all(not isinstance(v, np.ndarray) for v in gpu.params.values())
            cache[name] = (cpu, gpu, train(cpu, data()), train(gpu, data()))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_training_steps_match_cpu(name, trained):
    _, data = MODELS[name]
    cpu, gpu, tc, tg = trained(name)
    assert all(not isinstance(v, np.ndarray) for v in gpu.grads.values())
    assert all(not isinstance(b, np.ndarray) for st in tg.optimizer.state.values()
               for b in st.values() if not isinstance(b, int))
    assert tg.history["loss"] == pytest.approx(tc.history["loss"], rel=1e-4)
    assert tg.optimizer.step_count == 2
    sc, sg = cpu.state_dict(), gpu.state_dict()
    for k in sc:
        np.testing.assert_allclose(sg[k], sc[k], rtol=1e-3, atol=1e-5, err_msg=k)
    # the loss reached: the same on both sides
    batch = next(iter(data().batches(np.random.default_rng(0))))
    cpu.reset_state()
    gpu.reset_state()
    assert gpu.batch_loss(batch, train=False)[0] == pytest.approx(
        cpu.batch_loss(batch, train=False)[0], rel=1e-4)


def test_predict_sample_and_save_load_across(tmp_path, trained):
    gpu = trained("lm")[1]
    path = gpu.save(tmp_path / "gpu.npz")
    cpu = load_model(path, backend="cpu")
    assert cpu.device == "cpu" and load_model(path).device == "cuda"
    again = load_model(path)
    for k, v in cpu.params.items():
        np.testing.assert_array_equal(host(again.params[k]), v)
    np.testing.assert_array_equal(gpu.sample(6, [1, 2], temperature=0),
                                  cpu.sample(6, [1, 2], temperature=0))
    ids = np.random.default_rng(0).integers(0, 7, 12)
    assert gpu.evaluate(ids, batch_size=2, bptt=3) == pytest.approx(
        cpu.evaluate(ids, batch_size=2, bptt=3), rel=1e-5)
    # saved on the host, loaded onto the GPU; predictions from either side
    reg = regressor("cpu")
    rpath = reg.save(tmp_path / "cpu.npz")
    rg = load_model(rpath, backend="cuda")
    assert rg.device == "cuda"
    x = np.random.default_rng(1).normal(size=(3, 3, 2))
    close(rg.predict(x), reg.predict(x), np.float32, terms=MODEL_TERMS)
    clf = classifier("cpu")
    cg = classifier("cpu").to("cuda")
    assert cg.device == "cuda" and cg.config["backend"] == "cuda"
    t = np.random.default_rng(2).integers(0, 6, (3, 4))
    close(cg.predict_proba(t, [4, 2, 1]), clf.predict_proba(t, [4, 2, 1]), np.float32,
          terms=MODEL_TERMS)
    cg.to("cpu")
    assert cg.device == "cpu" and all(isinstance(v, np.ndarray) for v in cg.params.values())


def test_checkpoint_resumes_on_the_other_side(tmp_path, trained):
    """A trainer checkpoint written on the GPU (optimizer state, the LM's carried
    state) resumes on the host, and the model moved with to() keeps training."""
    _, gpu, _, tg = trained("lm")
    tg.fit(epochs=None, steps=1)                     # an open epoch: the carried state is saved
    ck = tg.save_checkpoint(tmp_path / "ck.npz")
    cpu = lm("cpu")
    tc = Trainer(cpu, optim.Adam(cpu, lr=0.05), lm_data(), clip_norm=0.5, seed=0, progress=False)
    tc.resume(ck)
    tc.fit(epochs=None, steps=1)
    tg.fit(epochs=None, steps=1)
    sc, sg = cpu.state_dict(), gpu.state_dict()
    for k in sc:
        np.testing.assert_allclose(sg[k], sc[k], rtol=1e-3, atol=1e-5, err_msg=k)
    # moved back and forth: the optimizer's buffers follow
    gpu.to("cpu")
    assert all(isinstance(v, np.ndarray) for v in gpu.params.values())
    tg.fit(epochs=None, steps=1)
    assert all(isinstance(b, np.ndarray) for st in tg.optimizer.state.values()
               for b in st.values() if not isinstance(b, int))


def test_cli_train_lm_on_cuda(tmp_path, capsys):
    from fastrnn import cli
    text = tmp_path / "t.txt"
    text.write_text("abcab cabba bacca cabab abc")
    out = tmp_path / "lm.npz"
    rc = cli.main(["train", "lm", "--data", str(text), "--backend", "cuda", "--hidden", "4",
                   "--embed", "3", "--batch-size", "2", "--bptt", "5", "--epochs", "1",
                   "--val-fraction", "0.25", "--no-progress", "--no-plot", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    assert load_model(out, backend="cpu").device == "cpu"


def test_without_a_gpu_cuda_is_one_clear_error(tmp_path):
    """No GPU and no simulator: ``--backend cuda`` is one error line, and a model
    saved on the GPU loads on the host."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; "
                            "print(cuda.is_available())"], env=env, capture_output=True,
                           text=True, cwd=ROOT)
    if probe.stdout.strip() != "False":
        pytest.skip("a GPU is present: there is no missing-GPU error to check")
    r = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "--backend", "cuda",
                        "--quick"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "backend 'cuda' is not available" in lines[0], r.stderr
    path = lm("cuda").save(tmp_path / "gpu.npz")
    code = ("import json, sys; from fastrnn import load_model; m = load_model(sys.argv[1]); "
            "print(json.dumps([m.device, m.backend, m.sample(4, [1], temperature=0).tolist()]))")
    r = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    device, backend, sample = json.loads(r.stdout)
    assert device == "cpu" and backend == "auto"
    assert sample == lm("cpu").sample(4, [1], temperature=0).tolist()
