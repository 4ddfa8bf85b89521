"""Optimizers against hand-computed steps and torch.optim; clipping; schedules."""
import math

import numpy as np
import pytest

from fastrnn.testing import assert_close
from fastrnn.optim import (SGD, Adagrad, Adam, AdamW, CosineDecay, InverseTimeDecay,
                           RMSprop, StepDecay, WarmUp, clip_grad_norm, clip_grad_value,
                           get_optimizer)


def one(value=1.0):
    return {"w": np.array([value])}


def run(opt, params, grads_seq):
    for g in grads_seq:
        opt.step({"w": np.array([g])})
    return params["w"][0]


def test_sgd_plain_momentum_nesterov_by_hand():
    p = one()
    assert run(SGD(p, lr=0.1), p, [0.5]) == pytest.approx(0.95)
    p = one()
    # b1 = g = 0.5 -> 0.95; b2 = 0.9*0.5 + 0.5 = 0.95 -> 0.855
    assert run(SGD(p, lr=0.1, momentum=0.9), p, [0.5, 0.5]) == pytest.approx(0.855)
    p = one()
    # nesterov: g + 0.9 b = 0.5 + 0.45 = 0.95 -> 0.905
    assert run(SGD(p, lr=0.1, momentum=0.9, nesterov=True), p, [0.5]) == pytest.approx(0.905)
    p = one()
    # weight decay: g = 0.5 + 0.1 * 1 = 0.6 -> 0.94
    assert run(SGD(p, lr=0.1, weight_decay=0.1), p, [0.5]) == pytest.approx(0.94)
    with pytest.raises(ValueError):
        SGD(one(), lr=0.1, nesterov=True)


def test_adam_adamw_rmsprop_adagrad_first_step_by_hand():
    p = one()
    # bias-corrected first step: m̂/√v̂ = g/|g|
    assert run(Adam(p, lr=0.01), p, [0.5]) == pytest.approx(1 - 0.01 * 0.5 / (0.5 + 1e-8))
    p = one()
    decayed = 1 - 0.01 * 0.1
    assert run(AdamW(p, lr=0.01, weight_decay=0.1), p, [0.5]) == pytest.approx(
        decayed - 0.01 * 0.5 / (0.5 + 1e-8))
    p = one()
    # s = 0.01 * 0.25; √s = 0.05
    assert run(RMSprop(p, lr=0.01), p, [0.5]) == pytest.approx(1 - 0.01 * 0.5 / (0.05 + 1e-8))
    p = one()
    assert run(Adagrad(p, lr=0.1), p, [0.5]) == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-10))
    p = one()
    # second Adagrad step: Σ = 0.25 + 1 = 1.25, lr_decay: lr / (1 + 1 * 0.5)
    got = run(Adagrad(p, lr=0.1, lr_decay=0.5), p, [0.5, 1.0])
    assert got == pytest.approx(1 - 0.1 - (0.1 / 1.5) * 1.0 / math.sqrt(1.25))


CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
]


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_matches_torch_optim(name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in w0.items()} for _ in range(6)]
    params = {k: v.copy() for k, v in w0.items()}
    opt = get_optimizer(name, params, **kw)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in w0.items()}
    topt = getattr(torch.optim, name)(list(tparams.values()), **kw)
    for g in grads:
        opt.step(g)
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    for k in w0:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_state_dict_round_trip_continues_identically(name, kw):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(6)]
    p1 = {"w": w0.copy()}
    o1 = get_optimizer(name, p1, **kw)
    for g in grads:
        o1.step({"w": g})
    p2 = {"w": w0.copy()}
    o2 = get_optimizer(name, p2, **kw)
    for g in grads[:3]:
        o2.step({"w": g})
    saved = o2.state_dict()
    o3 = get_optimizer(name, p2, lr=123.0)
    o3.load_state_dict(saved)
    for g in grads[3:]:
        o3.step({"w": g})
    np.testing.assert_array_equal(p1["w"], p2["w"])


def test_optimizer_takes_a_model_like_object_and_updates_in_place():
    class M:
        def __init__(self):
            self.params = {"w": np.ones(2, np.float32)}
            self.grads = {"w": np.full(2, 0.5, np.float32)}

        def zero_grad(self):
            self.grads["w"][...] = 0

    m = M()
    ref = m.params["w"]
    opt = SGD(m, lr=0.1)
    opt.step()
    assert m.params["w"] is ref and m.params["w"].dtype == np.float32
    np.testing.assert_allclose(ref, 0.95)
    opt.zero_grad()
    assert not m.grads["w"].any()
    with pytest.raises(ValueError, match="unknown optimizer"):
        get_optimizer("lbfgs", m)
    with pytest.raises(ValueError):
        opt.load_state_dict(Adam(m).state_dict())


def test_clip_grad_norm_and_value():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = clip_grad_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(sum(np.sum(v ** 2) for v in g.values())) == pytest.approx(1.0, rel=1e-5)
    g2 = {"a": np.array([0.3])}
    assert clip_grad_norm(g2, 1.0) == pytest.approx(0.3)
    assert g2["a"][0] == 0.3                                        # untouched below the limit
    g3 = {"a": np.array([-2.0, 0.5, 3.0])}
    clip_grad_value(g3, 1.0)
    np.testing.assert_array_equal(g3["a"], [-1.0, 0.5, 1.0])


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    g = {"a": rng.standard_normal((3, 3)), "b": rng.standard_normal(4)}
    ts = [torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for v in g.values()]
    for t, v in zip(ts, g.values()):
        t.grad = torch.tensor(v.copy())
    tn = torch.nn.utils.clip_grad_norm_(ts, 0.5)
    n = clip_grad_norm(g, 0.5)
    assert n == pytest.approx(tn.item())
    for t, v in zip(ts, g.values()):
        np.testing.assert_allclose(v, t.grad.numpy(), rtol=1e-12)


def test_schedules():
    inv = InverseTimeDecay(0.1, 0.5)
    assert [inv(t) for t in (0, 2)] == pytest.approx([0.1, 0.05])
    st = StepDecay(1.0, 3, 0.5)
    assert [st(t) for t in range(7)] == pytest.approx([1, 1, 1, .5, .5, .5, .25])
    cos = CosineDecay(1.0, 10, lr_min=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)
    assert cos(5) == pytest.approx(0.55) and cos(20) == pytest.approx(0.1)
    wu = WarmUp(StepDecay(1.0, 2, 0.1), warmup=4)
    assert [wu(t) for t in range(8)] == pytest.approx([0, .25, .5, .75, 1, 1, .1, .1])
    wc = WarmUp(0.3, warmup=2, start_factor=0.5)
    assert [wc(t) for t in range(4)] == pytest.approx([0.15, 0.225, 0.3, 0.3])


# ------------------------------------------------------ the compiled update
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", CONFIGS + [
    ("AdamW", dict(lr=0.01, weight_decay=0.0)),
    # RMSprop's compiled update has one loop per (momentum, centred) case
    ("RMSprop", dict(lr=0.01, momentum=0.9)), ("RMSprop", dict(lr=0.01, centered=True))])
def test_fused_equals_numpy_bitwise(name, kw, dtype):
    """The compiled one-pass update performs the NumPy formula's operations in
    the same order and dtype: parameters and state agree bit for bit."""
    rng = np.random.default_rng(2)
    w0 = {"a": rng.standard_normal((7, 5)).astype(dtype), "b": rng.standard_normal(9).astype(dtype)}
    grads = [{k: (rng.standard_normal(v.shape) * 10.0 ** rng.integers(-4, 2)).astype(dtype)
              for k, v in w0.items()} for _ in range(8)]
    pf, pn = ({k: v.copy() for k, v in w0.items()} for _ in range(2))
    of, on = get_optimizer(name, pf, **kw), get_optimizer(name, pn, **kw)
    on.fused = False
    calls = []
    real = _k_update_spy(calls)
    try:
        for g in grads:
            of.step(g)
            on.step(g)
    finally:
        real()
    assert calls, "the compiled update did not run"
    for k in w0:
        assert pf[k].dtype == dtype
        np.testing.assert_array_equal(pf[k], pn[k], err_msg=k)
        for buf, v in on.state[k].items():
            np.testing.assert_array_equal(of.state[k][buf], v, err_msg=f"{k}/{buf}")


def _k_update_spy(calls):
    """Record the compiled optimizer kernels' calls; returns the undo."""
    from fastrnn import optim
    real = optim._kernels()
    names = ("sgd_update_cpu", "adam_update_cpu", "rmsprop_update_cpu", "adagrad_update_cpu")

    class Spy:
        def __getattr__(self, n):
            f = getattr(real, n)
            if n not in names:
                return f

            def wrapped(*a):
                calls.append(n)
                return f(*a)
            return wrapped

    optim._TRAINING = Spy()

    def undo():
        optim._TRAINING = real
    return undo


def test_fused_falls_back_for_odd_layouts_and_dtypes():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 4)).astype(np.float32)
    g32 = rng.standard_normal((6, 4)).astype(np.float32)
    # a non-contiguous parameter (a column slice) and a float64 gradient for a float32 one
    outs = []
    for fused in (True, False):
        holder = base.copy()
        p = {"w": holder[:, :3], "v": holder[:, 3].copy()}
        opt = Adam(p, lr=0.1)
        opt.fused = fused
        for _ in range(3):
            opt.step({"w": g32[:, :3], "v": g32[:, 3].astype(np.float64)})
        outs.append((holder.copy(), p["v"].copy()))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][1].dtype == np.float32


def test_fused_matches_torch_in_float32():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((16, 8)).astype(np.float32)
    p = {"w": w0.copy()}
    opt = Adam(p, lr=1e-2, weight_decay=0.01)
    t = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.Adam([t], lr=1e-2, weight_decay=0.01, foreach=False)
    for _ in range(10):
        g = rng.standard_normal(w0.shape).astype(np.float32)
        opt.step({"w": g})
        t.grad = torch.tensor(g)
        topt.step()
    # 10 steps of Adam's elementwise update (about 12 operations each, one
    # square root and one division among them) on the same gradients
    assert_close(p["w"], t.detach().numpy(), 10 * 12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_accumulates_in_float64_without_copies(dtype):
    from fastrnn.optim import global_norm
    rng = np.random.default_rng(6)
    g = {"a": (rng.standard_normal((300, 70)) * 1e3).astype(dtype),
         "b": rng.standard_normal(5).astype(dtype), "empty": np.zeros((0, 3), dtype),
         "strided": rng.standard_normal((8, 6)).astype(dtype)[:, ::2]}
    expect = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values()))
    assert global_norm(g) == pytest.approx(expect, rel=1e-14)
    assert global_norm(g, math.inf) == max(float(np.abs(v).max()) for v in g.values() if v.size)
    assert global_norm(g, 1.0) == pytest.approx(
        sum(float(np.abs(v.astype(np.float64)).sum()) for v in g.values()), rel=1e-12)
    bad = {"a": np.array([1.0, np.nan], dtype)}
    assert math.isnan(global_norm(bad))
    assert global_norm({"a": np.array([np.inf, 1.0], dtype)}) == math.inf


_CACHE_RUN = """
import numpy as np
from fastrnn.kernels import training as T
f, a = np.float32, [np.ones(16, np.float32) for _ in range(5)]
T.sgd_update_cpu(a[0], a[1], a[2], f(0.1), f(0), f(0.9), f(1), False, False)
T.adam_update_cpu(*a, f(1), f(0.9), f(0.1), f(0.999), f(0.001), f(1), f(1e-8), f(0), f(1), False)
T.rmsprop_update_cpu(*a, f(0.01), f(0.99), f(0.01), f(1e-8), f(0), f(0), True)
T.adagrad_update_cpu(a[0], a[1], a[2], f(0.1), f(1e-10), f(0))
print(" ".join(f"{k.__name__}:{sum(k.stats.cache_hits.values())}:"
               f"{sum(k.stats.cache_misses.values())}"
               for k in (T.sgd_update_cpu, T.adam_update_cpu, T.rmsprop_update_cpu,
                         T.adagrad_update_cpu)))
"""


def test_optimizer_kernels_load_from_the_cache_in_a_new_process(tmp_path):
    """The host loops inline the shared scalar formulas (njit(inline='always')
    dispatchers, module globals): Numba's on-disk cache still serves them."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", _CACHE_RUN], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    second = {name: (int(h), int(m)) for name, h, m in
              (item.split(":") for item in runs[1].stdout.split())}
    assert len(second) == 4
    for name, (hits, misses) in second.items():
        assert misses == 0 and hits >= 1, f"{name} recompiled in a new process: {second}"
