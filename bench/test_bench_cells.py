"""pytest-benchmark suite: the fused CPU kernels vs the NumPy reference, PyTorch
and onnxruntime (inference; skipped where ``onnxruntime``/``onnx`` are missing).

The same grid, inputs and runners as ``fastrnn bench`` (:mod:`fastrnn.bench`),
one benchmark per (cell, shape, mode, implementation), grouped as
``"{cell}|{T,B,I,H}|{mode}"`` so the report puts the implementations side by side.

    pytest bench/ --benchmark-disable      # smoke test: every runner once, on the
                                           # two small shapes (FASTRNN_BENCH_FULL=1: all)
    pytest bench/ --benchmark-only         # timings (keep the machine quiet)

JIT compilation happens in the fixture's warm-up call, outside the timed region.
Further smoke tests check outputs, never speed: the hand-built ONNX models
against the reference, the training benchmark's fastrnn models against their
torch twins, ``fastrnn bench --quick`` / ``--busy`` end to end.
"""
import os

import numpy as np
import pytest

from fastrnn import bench, reference
from fastrnn.cells import get_cell
from fastrnn.testing import assert_close, cell_terms, make_problem

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0]:  # pragma: no cover
    pytest.skip(cpu.available()[1], allow_module_level=True)

SHAPES = bench.GRID


def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")
IDS = ["x".join(map(str, s)) for s in SHAPES]


class _Recorder:
    """A backend that keeps what its last forward and backward returned."""

    def __init__(self, backend):
        self.backend, self.last = backend, {}

    def forward(self, *args, **kwargs):
        self.last["forward"] = self.backend.forward(*args, **kwargs)
        return self.last["forward"]

    def backward(self, *args, **kwargs):
        self.last["backward"] = self.backend.backward(*args, **kwargs)
        return self.last["backward"]


def _runner(impl, cname, shape, mode):
    """``(fn, inputs, run_recorded)``: the benchmark's timed function, its inputs,
    and a call that runs the same computation once and returns what it computed,
    ``(y, dx)`` (``dx`` None for inference)."""
    cell = get_cell(cname)
    inputs = make_problem(cell, *shape)
    if impl == "torch":
        torch = pytest.importorskip("torch")
        if cell.torch is None:
            pytest.skip(f"{cname} has no PyTorch twin")
        fn = bench.torch_runner(torch, cell, inputs, mode)

        def run_recorded():
            seen = []
            hook = torch.nn.modules.module.register_module_forward_hook(
                lambda module, args, out: seen.append((args[0], out[0])))
            try:
                fn()
            finally:
                hook.remove()
            (x, y), = seen
            dx = x.grad.numpy().copy() if mode == "train" else None
            return y.detach().numpy().copy(), dx
        return fn, inputs, run_recorded
    if impl == "ort":
        if mode != "infer":
            pytest.skip("onnxruntime is an inference peer")
        if cell.name not in bench.ONNX_CELLS:
            pytest.skip(f"{cname} has no ONNX operator")
        ort = _ort()
        fn = bench.ort_runners(ort, cell, inputs, (1,), check_with=cpu)[1]
        return fn, inputs, lambda: (fn()[0][:, 0], None)
    backend = reference if impl == "numpy" else cpu
    fn = bench.backend_runner(backend, cell, inputs, mode)

    def run_recorded():
        rec = _Recorder(backend)
        bench.backend_runner(rec, cell, inputs, mode)()
        dx = rec.last["backward"][0] if mode == "train" else None
        return rec.last["forward"][0], dx
    return fn, inputs, run_recorded


def _assert_computes_the_layer(cell, inputs, y, dx, what):
    """``y`` (and ``dx``) are the cell's outputs (input gradient, for the upstream
    gradient ``dy`` and none on the final states) on ``inputs``, within the
    float32 bound of the float64 reference (every implementation timed here
    runs its own float32 activations: charged as ours, ``approx=True``)."""
    def f64(a):
        return None if a is None else np.asarray(a, np.float64)

    x, h0, c0, w, dy = inputs
    w64 = type(w)(*(f64(a) for a in w))
    y_ref, h, c, cache = reference.forward(cell, f64(x), f64(h0), f64(c0), w64, None, False, True)
    T, B, I = x.shape
    H = h0.shape[1]
    assert_close(y, y_ref, cell_terms(cell, T, B, I, H, approx=True, backward=False),
                 scale=1.0, dtype=np.float32, err_msg=f"{what}: y")
    if dx is not None:
        dc = None if c is None else np.zeros_like(c)
        dx_ref = reference.backward(cell, cache, f64(dy), np.zeros_like(h), dc)[0]
        assert_close(dx, dx_ref, cell_terms(cell, T, B, I, H, approx=True),
                     scale=float(np.abs(dy).max()), dtype=np.float32, err_msg=f"{what}: dx")


@pytest.mark.parametrize("impl", bench.IMPLS)
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("cname", bench.BENCH_CELLS)
def test_cell(request, benchmark, cname, shape, mode, impl):
    """Times one implementation; first checks that what it times computes the
    layer (outputs, and the input gradient when training) on the timed inputs."""
    if (request.config.getoption("benchmark_disable", False) and shape not in SHAPES[:2]
            and not os.environ.get("FASTRNN_BENCH_FULL")):
        pytest.skip("smoke run: small shapes only (FASTRNN_BENCH_FULL=1 runs them all)")
    fn, inputs, run_recorded = _runner(impl, cname, shape, mode)
    y, dx = run_recorded()  # also the warm-up: compiles the kernels outside the timed region
    _assert_computes_the_layer(get_cell(cname), inputs, y, dx, f"{impl} {cname} {shape} {mode}")
    benchmark.group = f"{cname}|{','.join(map(str, shape))}|{mode}"
    benchmark.extra_info.update(flops=bench.layer_flops(get_cell(cname), *shape, mode))
    benchmark(fn)


def test_cli_quick_smoke(tmp_path, capsys):
    """``fastrnn bench`` end to end on one tiny shape (no compile subprocesses)."""
    out = tmp_path / "b.json"
    rc = bench.main(["--cells", "lstm,gru", "--quick", "--shapes", "5,2,3,4",
                     "--gemm-size", "256", "--json", str(out)])
    assert rc == 0
    import json
    data = json.loads(out.read_text())
    recs = data["records"]
    assert {r["impl"] for r in recs} >= {"numpy", "cpu"}
    assert all(r["median_s"] > 0 and np.isfinite(r["median_s"]) for r in recs)
    assert {(r["cell"], r["mode"]) for r in recs} == {
        (c, m) for c in ("lstm", "gru") for m in bench.MODES}
    text = capsys.readouterr().out
    assert "summary" in text and "compile" not in text     # --quick: no compile subprocesses
    torch_recs = [r for r in recs if r["impl"] == "torch"]
    if torch_recs:    # torch timed at 1 and 2 threads, exactly one of them the best
        assert sorted(r["threads"] for r in torch_recs
                      if (r["cell"], r["mode"]) == ("lstm", "train")) == [1, 2]
        assert sum(r["best"] for r in torch_recs if (r["cell"], r["mode"]) == ("lstm", "train")) == 1
    assert set(data["meta"]["gemm_peaks_gflops"]) >= {"numpy"}
    assert data["meta"]["gemm_peak_gflops"] == max(data["meta"]["gemm_peaks_gflops"].values())


def test_cli_busy_smoke(tmp_path, capsys):
    """``--busy 1``: a load-test table, in --json too; no busy process survives."""
    out = tmp_path / "b.json"
    rc = bench.main(["--cells", "lstm", "--quick", "--shapes", "5,2,3,4", "--impls", "cpu,torch",
                     "--busy", "1", "--gemm-size", "256", "--json", str(out)])
    assert rc == 0
    import json
    busy = json.loads(out.read_text())["busy"]
    assert {r["mode"] for r in busy} == set(bench.MODES)
    assert all(r["busy_processes"] == 1 and r["slowdown"] > 0 for r in busy)
    assert "load test" in capsys.readouterr().out
    assert not bench.BusyLoad._live


def test_busy_load_cleans_up_on_error():
    procs = []
    with pytest.raises(KeyboardInterrupt):
        with bench.BusyLoad(2) as load:
            procs = list(load.procs)
            assert load.alive() == 2
            raise KeyboardInterrupt
    assert procs and all(p.poll() is not None for p in procs)
    assert not bench.BusyLoad._live


ONNX_SHAPES = [(7, 3, 5, 6), (20, 9, 17, 40)]


@pytest.mark.parametrize("shape", ONNX_SHAPES, ids=["x".join(map(str, s)) for s in ONNX_SHAPES])
@pytest.mark.parametrize("reg", sorted(bench.ONNX_CELLS))
def test_onnx_model_agrees(reg, shape):
    """The hand-built ONNX node (gate orders, GRU linear_before_reset, peepholes)
    computes the same function as the NumPy reference and the cpu kernels."""
    ort = _ort()
    cell = get_cell(reg)
    inputs = make_problem(cell, *shape, seed=3)
    x, h0, c0, w, _ = inputs
    rng = np.random.default_rng(1)           # a non-zero initial state
    h0[...] = rng.uniform(-0.5, 0.5, h0.shape)
    if c0 is not None:
        c0[...] = rng.uniform(-0.5, 0.5, c0.shape)
    fns = bench.ort_runners(ort, cell, inputs, (1, 2), check_with=cpu)
    y_ref = reference.forward(cell, x, h0, c0, w, None, False, False)[0]
    for fn in fns.values():
        y = fn()[0]
        assert y.shape == (shape[0], 1, shape[1], shape[3])
        # onnxruntime's MLAS activations are approximations too: charged like ours
        T, I, H = shape[0], shape[2], shape[3]
        assert_close(y[:, 0], y_ref, cell_terms(cell, T, 1, I, H, approx=True, backward=False),
                     scale=1.0, dtype=np.float32)


def test_onnx_check_fails_loudly():
    """A wrong model (here: weights in the wrong gate order) must not be timed."""
    ort = _ort()
    cell = get_cell("lstm")
    x, h0, c0, w, dy = make_problem(cell, 6, 2, 3, 4)
    bad = w._replace(w_ih=np.ascontiguousarray(w.w_ih[::-1]))

    class Other:                             # fastrnn's answer for the *right* weights
        @staticmethod
        def forward(*a):
            return cpu.forward(cell, x, h0, c0, w, None, False, False)

    with pytest.raises(RuntimeError, match="disagrees"):
        bench.ort_runners(ort, cell, (x, h0, c0, bad, dy), (1,), check_with=Other)


TINY_LM = dict(embed_dim=8, hidden_size=16, batch_size=4, bptt=8)
TINY_CLF = dict(features=3, hidden_size=8, num_classes=4, batch_size=5, min_len=2,
                max_len=6, pads=(6, 24))


def test_train_pairs_agree_with_torch():
    """The training benchmark compares like with like: fastrnn's models and their
    torch twins give the same logits and the same losses over a few Adam steps."""
    torch = pytest.importorskip("torch")
    from fastrnn.bench import train as bt
    V, tr, ev, _ = bt.lm_data(TINY_LM["batch_size"], TINY_LM["bptt"], 3, 2)
    chk = bt.check_lm(bt.LMPair(torch, V, tr, ev, TINY_LM["embed_dim"],
                                TINY_LM["hidden_size"]), steps=4)
    assert chk["max_logit_diff"] < 1e-5 and chk["max_loss_rel_diff"] < 1e-5, chk
    data = bt.clf_data(5, 3, 4, 2, 6, (6, 24), 2)
    for T in (6, 24):
        pair = bt.ClassifierPair(torch, data[T], 3, 8, 4)
        chk = bt.check_classifier(pair, steps=4)
        assert chk["max_logit_diff"] < 1e-5 and chk["max_loss_rel_diff"] < 1e-5, chk
    # padding to T=24 changes nothing but the cost: same logits as T=6
    a = bt.ClassifierPair(None, data[6], 3, 8, 4).fastrnn_infer()
    b = bt.ClassifierPair(None, data[24], 3, 8, 4).fastrnn_infer()
    # the same sequences, zero-padded to 6 or 24 steps: an LSTM of 8 units
    # over at most 6 valid steps of 3 features, a head of 8 inputs
    assert_close(a, b, cell_terms("lstm", 6, 5, 3, 8, approx=True, backward=False) + 8)


def test_train_bench_smoke(tmp_path, capsys):
    """``run`` end to end on tiny models with a token timing budget."""
    from fastrnn.bench import train as bt
    try:
        import torch
    except ImportError:
        torch = None
    tiny = dict(min_time=0.0, min_rounds=1, max_rounds=1, burst_s=0.001, settle_s=0.0)
    rows = bt.run(torch, quick=True, lm_config=TINY_LM, clf_config=TINY_CLF, timing=tiny)
    items = {r["item"] for r in rows}
    assert items == {"lm train", "lm infer (score held-out)", "clf train T=6",
                     "clf infer T=6", "clf train T=24", "clf infer T=24"}
    for r in rows:
        assert all(v > 0 and np.isfinite(v) for v in r["rate"].values())
        if torch is not None:
            assert set(r["rate"]) == {"fastrnn", "torch@1", "torch@2"} and r["ratio"] > 0
            if r["item"] == "lm train" and r["unit"] == "steps/s":
                assert r["check"]["max_loss_rel_diff"] < 1e-5
    bt.print_table(rows)
    assert "fastrnn/torch" in capsys.readouterr().out


def test_thread_scaling_run(tmp_path, capsys):
    """``fastrnn bench --threads 1,2 --plot``: every count timed for fastrnn and
    torch, speed-up and efficiency against each library's own 1-thread time,
    fastrnn against torch's best count; the JSON and the picture written."""
    import json
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    impls = "cpu,torch" if _torch_or_none() is not None else "cpu"
    assert bench.main(["--threads", "2,1", "--quick", "--cells", "gru", "--shapes", "4,2,3,5",
                       "--impls", impls, "--json", str(out)]
                      + (["--plot", str(png)] if _has_matplotlib() else [])) == 0
    data = json.load(open(out))
    assert data["meta"]["threads"] == [1, 2] and data["meta"]["cpu"]
    recs = data["records"]
    libs = {"fastrnn", "torch"} if impls == "cpu,torch" else {"fastrnn"}
    assert {(r["library"], r["threads"], r["mode"]) for r in recs} == {
        (lib, n, m) for lib in libs for n in (1, 2) for m in ("train", "infer")}
    for r in recs:
        one = next(q for q in recs if q["library"] == r["library"] and q["mode"] == r["mode"]
                   and q["threads"] == 1)
        assert r["speedup"] == pytest.approx(one["median_s"] / r["median_s"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["threads"])
        if r["library"] == "fastrnn" and "torch" in libs:
            best = min(q["median_s"] for q in recs if q["library"] == "torch"
                       and q["mode"] == r["mode"])
            assert r["vs_best_torch"] == pytest.approx(best / r["median_s"])
    if _has_matplotlib():
        assert png.stat().st_size > 1000
    assert "speedup" in capsys.readouterr().out


def test_thread_list_errors(capsys):
    for argv in (["--threads", "0,2"], ["--threads", "a,b"], ["--plot", "x.png"],
                 ["--threads", "1,2", "--train"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
    assert "--threads" in capsys.readouterr().err


def _torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False
