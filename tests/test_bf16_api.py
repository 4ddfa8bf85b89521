"""``compute_dtype="bfloat16"`` through the API: layers, models, save/load,
the CLI, the errors, and that a bf16 layer never silently computes float32.

The arithmetic of the mode is the reference's (tests/test_bf16_reference.py);
here the layers and models on the "numpy" backend must give exactly what the
reference gives layer by layer, and every path that cannot run the mode
(streams, the prepared eval path, a backend without the mode, the GPU) must
refuse it or step aside, never run float32 in its place.
"""
import copy
import importlib.util
import json
import pickle
import types

import numpy as np
import pytest

import fastrnn
from fastrnn import LanguageModel, SequenceClassifier, SequenceRegressor
from fastrnn import reference as ref
from fastrnn.cells import CELLS
from fastrnn.cli import main
from fastrnn.functional import _forward_core
from fastrnn.testing import assert_close, cell_terms

from _variants import make, random_state, seq

BF16 = "bfloat16"


def _ref_stack(layer, x, state, dy, mode):
    """``layer`` (unidirectional, no dropout) run layer by layer on the
    reference with ``compute_dtype=mode``: y, final states, dx, grads."""
    L, H = layer.num_layers, layer.hidden_size
    h0, c0 = state if layer.cell.has_cell else (state, None)
    inp, caches, hs, cs = x, [], [], []
    for k in range(L):
        w = layer._weights(f"_l{k}")
        y, h, c, cache = ref.forward(layer.cell, inp, h0[k], None if c0 is None else c0[k], w,
                                     compute_dtype=mode)
        caches.append(cache)
        hs.append(h)
        cs.append(c)
        inp = y
    grads = {}
    d = dy
    for k in range(L - 1, -1, -1):
        zero = np.zeros((x.shape[1], H), np.float32)
        d, _, _, gw = ref.backward(layer.cell, caches[k], d, zero,
                                   zero if layer.cell.has_cell else None)
        grads[f"weight_ih_l{k}"], grads[f"weight_hh_l{k}"] = gw.w_ih, gw.w_hh
        grads[f"bias_ih_l{k}"], grads[f"bias_hh_l{k}"] = gw.b_ih, gw.b_hh
    return inp, np.stack(hs), d, grads


@pytest.mark.parametrize("variant", sorted(CELLS))
def test_layer_on_numpy_is_the_reference_layer_by_layer(variant):
    rng = np.random.default_rng(0)
    layer = make(variant, 3, 5, num_layers=2, backend="numpy", seed=1, compute_dtype=BF16)
    assert layer.compute_dtype == BF16 and f"compute_dtype={BF16!r}" in repr(layer)
    x = seq(layer, 4, 2, rng)
    state = random_state(layer, 2, rng)
    y, st = layer(x, state)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(dy)
    y_r, h_r, dx_r, g_r = _ref_stack(layer, x, state, dy, BF16)
    np.testing.assert_array_equal(y, y_r)
    np.testing.assert_array_equal(st[0] if layer.cell.has_cell else st, h_r)
    np.testing.assert_array_equal(dx, dx_r)
    for k, g in g_r.items():
        np.testing.assert_array_equal(layer.grads[k], g, err_msg=k)
        assert layer.grads[k].dtype == np.float32 and layer.params[k].dtype == np.float32
    # and it is not float32's result
    y32, _, _, _ = _ref_stack(layer, x, state, dy, None)
    assert not np.array_equal(y, y32)


def test_switching_the_mode_on_a_layer_and_bidirectional_eval():
    rng = np.random.default_rng(2)
    layer = fastrnn.GRU(3, 4, bidirectional=True, backend="numpy", seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y32, _ = layer(x)
    layer.compute_dtype = "bf16"
    assert layer.compute_dtype == BF16
    y16, _ = layer(x)
    layer.eval()
    y16e, _ = layer(x)
    np.testing.assert_array_equal(y16, y16e)
    assert not np.array_equal(y16, y32)
    layer.compute_dtype = None
    np.testing.assert_array_equal(layer(x)[0], y32)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU, fastrnn.PeepholeLSTM])
def test_errors(cls):
    with pytest.raises(ValueError, match="compute_dtype"):
        cls(3, 4, dtype=np.float64, compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype.*CPU"):
        cls(3, 4, backend="cuda", compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype"):
        cls(3, 4, compute_dtype="float16")
    layer = cls(3, 4, backend="numpy", compute_dtype=BF16)
    with pytest.raises(ValueError, match="CPU backends only"):
        layer.to("cuda")
    with pytest.raises(ValueError, match="CPU backends only"):
        layer.backend = "cuda"
    assert layer.backend == "numpy" and layer.device == "cpu"
    f64 = cls(3, 4, dtype=np.float64, backend="numpy")
    with pytest.raises(ValueError, match="compute_dtype.*float32"):
        f64.compute_dtype = BF16
    assert f64.compute_dtype is None
    # float32 spelled out is the default mode, on a float32 layer only
    assert cls(3, 4, compute_dtype="float32").compute_dtype is None
    with pytest.raises(ValueError, match="compute_dtype='float32' on a float64 layer"):
        cls(3, 4, dtype=np.float64, compute_dtype="float32")


@pytest.mark.parametrize("cls", [LanguageModel, SequenceClassifier, SequenceRegressor])
def test_model_errors(cls):
    args = (10,) if cls is LanguageModel else (3, 4) if cls is SequenceClassifier else (3,)
    with pytest.raises(ValueError, match="compute_dtype"):
        cls(*args, dtype="float64", compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype.*CPU"):
        cls(*args, backend="cuda", compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype"):
        cls(*args, compute_dtype="int8")
    with pytest.raises(ValueError, match="compute_dtype='float32' on a float64"):
        cls(*args, dtype="float64", compute_dtype="float32")


def test_backend_without_the_mode_is_refused_by_name():
    """A backend whose forward takes no compute_dtype: float32 runs, bf16 is a
    ValueError naming compute_dtype (never float32 in its place)."""
    OldBackend = types.ModuleType("old")

    def forward(cell, x, h0, c0, weights, lengths, reverse, training):
        return ref.forward(cell, x, h0, c0, weights, lengths, reverse, training)

    OldBackend.forward = forward

    layer = fastrnn.LSTM(3, 4, backend="numpy", seed=0)
    x = np.ones((2, 1, 3), np.float32)
    args = (layer.cell, OldBackend, x, None, None, layer._weights("_l0"), None, False, True)
    y, *_ = _forward_core(*args)
    assert y.shape == (2, 1, 4)
    with pytest.raises(ValueError, match="compute_dtype='bfloat16'.*'old'"):
        _forward_core(*args, compute_dtype=BF16)


def test_cpu_backend_eval_step_is_bf16_or_refused():
    """The eval path of the CPU backend (the prepared latency kernels serve
    float32 there): one step from a given state, B = 1. Either the CPU
    backend has the mode, and the step matches the bf16 reference within the
    float32-sum bound (identical rounded operands; float32 itself is outside
    it, checked), or it refuses, naming compute_dtype."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    layer = fastrnn.LSTM(16, 32, backend="cpu", seed=0, compute_dtype=BF16).eval()
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    state = random_state(layer, 1, rng)
    w = layer._weights("_l0")
    want, _, _, _ = ref.forward(layer.cell, x, state[0][0], state[1][0], w, compute_dtype=BF16)
    f32, _, _, _ = ref.forward(layer.cell, x, state[0][0], state[1][0], w)
    terms = cell_terms("lstm", 1, 1, 16, 32, approx=True, backward=False)
    with pytest.raises(AssertionError):
        assert_close(f32, want, terms, scale=1.0)       # the bound tells the modes apart
    try:
        y, _ = layer(x, state)
    except ValueError as exc:
        assert "compute_dtype" in str(exc)
        return
    assert_close(y, want, terms, scale=1.0)


def test_streams_refuse_the_mode():
    layer = fastrnn.LSTM(3, 4, seed=0, compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype.*stream"):
        layer.stream()
    lm = LanguageModel(7, 3, 4, seed=0, compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype.*stream"):
        lm.stream()


def test_language_model_samples_in_bf16_without_a_stream(monkeypatch):
    lm = LanguageModel(7, 3, 8, seed=0, backend="numpy", compute_dtype=BF16)
    ids = lm.sample(6, [1, 2], temperature=0)
    # the same greedy decode by hand, on the model's bf16 forward
    lm.eval()
    logits, st = lm.forward(np.array([[1], [2]]))
    want = []
    for _ in range(6):
        tok = int(np.argmax(logits[-1, 0]))
        want.append(tok)
        logits, st = lm.forward(np.array([[tok]]), st)
    assert ids.tolist() == want
    # on the compiled backend: never the (float32) stream
    monkeypatch.setattr(LanguageModel, "_sample_stream",
                        lambda *a, **k: pytest.fail("a bf16 model sampled on a stream"))
    lm2 = LanguageModel(7, 3, 8, seed=0, backend="auto", compute_dtype=BF16)
    try:
        lm2.sample(3, [1], temperature=0)
    except ValueError as exc:       # CPU kernels without the mode: refused by name
        assert "compute_dtype" in str(exc)


def test_model_bf16_forward_matches_reference_and_keeps_float32_state():
    rng = np.random.default_rng(4)
    m = SequenceClassifier(3, input_size=4, hidden_size=6, backend="numpy", seed=0,
                           compute_dtype=BF16)
    x = rng.standard_normal((5, 7, 4)).astype(np.float32)
    logits = m.forward(x)
    m.rnn.compute_dtype = None
    logits32 = m.forward(x)
    m.compute_dtype = BF16
    assert m.config["compute_dtype"] == BF16 and m.rnn.compute_dtype == BF16
    assert not np.array_equal(logits, logits32)
    np.testing.assert_array_equal(m.forward(x), logits)
    # one optimizer step: parameters and optimizer state stay float32
    y = rng.integers(0, 3, 5)
    opt = fastrnn.optim.Adam(m.params, lr=1e-2)
    m.zero_grad()
    m.batch_loss((x, y))
    opt.step(m.grads)
    assert all(v.dtype == np.float32 for v in m.params.values())
    assert all(a.dtype == np.float32 for st in opt.state.values() for a in st.values()
               if isinstance(a, np.ndarray))


@pytest.mark.parametrize("cls", [LanguageModel, SequenceClassifier, SequenceRegressor])
def test_save_load_round_trip(tmp_path, cls):
    args = (10,) if cls is LanguageModel else (3, 4) if cls is SequenceClassifier else (3,)
    m = cls(*args, hidden_size=6, backend="numpy", seed=0, compute_dtype=BF16)
    assert "compute_dtype='bfloat16'" in repr(m)
    path = m.save(tmp_path / "m.npz")
    back = fastrnn.load_model(path)
    assert back.compute_dtype == BF16 and back.rnn.compute_dtype == BF16
    assert back.config == m.config
    # an old file (no compute_dtype in its config) loads as the float32 mode
    with np.load(path) as z:
        arrays = dict(z)
    header = json.loads(str(arrays["__header__"]))
    del header["config"]["compute_dtype"]
    arrays["__header__"] = np.array(json.dumps(header))
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    assert fastrnn.load_model(old).compute_dtype is None


def test_layer_pickle_and_copy_keep_the_mode():
    layer = fastrnn.LSTM(3, 4, seed=0, backend="numpy", compute_dtype=BF16)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert other.compute_dtype == BF16
    state = layer.__getstate__()
    del state["_compute_dtype"]             # a layer pickled before the mode existed
    old = fastrnn.LSTM.__new__(fastrnn.LSTM)
    old.__setstate__(state)
    assert old.compute_dtype is None


def test_trainer_checkpoint_resumes_across_modes(tmp_path):
    from fastrnn.data import ArrayBatches
    from fastrnn.train import Trainer
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 5, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1, 3)).astype(np.float32)

    def trainer(mode):
        m = SequenceRegressor(3, hidden_size=4, backend="numpy", seed=0, compute_dtype=mode)
        return Trainer(m, fastrnn.optim.Adam(m.params, lr=1e-2),
                       ArrayBatches(x, y, batch_size=8, shuffle=False), progress=False)

    t = trainer(BF16)
    t.fit(1)
    path = t.save_checkpoint(tmp_path / "ck.npz")
    t32 = trainer(None)          # float32 master weights either way: resumable in float32
    t32.resume(path)
    for k, v in t.model.params.items():
        np.testing.assert_array_equal(t32.model.params[k], v)


def test_cli_train_with_bf16(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "lm.npz"
    rc = main(["train", "lm", "--data", str(corpus), "--out", str(out), "--bptt", "8",
               "--batch-size", "4", "--hidden", "8", "--epochs", "1", "--backend", "numpy",
               "--no-progress", "--no-plot", "--compute-dtype", "bfloat16"])
    capsys.readouterr()
    assert rc == 0
    assert fastrnn.load_model(out).compute_dtype == BF16
    rc = main(["train", "lm", "--data", str(corpus), "--compute-dtype", "float16"])
    err = capsys.readouterr().err
    assert rc == 2 and "--compute-dtype" in err and "bfloat16" in err
    rc = main(["train", "lm", "--data", str(corpus), "--compute-dtype", "bf16",
               "--backend", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "CPU backends only" in err


def test_cli_info_reports_bf16(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = [s for s in out.splitlines() if s.startswith("bfloat16:")]
    assert len(line) == 1 and "avx512_bf16" in line[0] and "amx_bf16" in line[0]


def test_bench_bf16_rows(tmp_path, capsys):
    """``fastrnn bench --compute-dtype bfloat16`` adds a bf16 row under each
    grid row and bf16 records, leaving the float32 rows as they are."""
    pytest.importorskip("numba")
    from fastrnn import bench
    out = tmp_path / "b.json"
    common = ["--quick", "--no-compile", "--shapes", "3,2,4,8", "--gemm-size", "32",
              "--impls", "numpy,torch"]
    assert bench.main(common + ["--compute-dtype", "bfloat16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith(" " * 33 + "bf16")]
    assert len(rows) == 2 and all("numpy" in r for r in rows)     # train and infer
    recs = json.load(open(out))["records"]
    mine = [r for r in recs if r["impl"] == "numpy" and r["compute_dtype"] == "bfloat16"]
    assert {r["mode"] for r in mine} == {"train", "infer"}
    if importlib.util.find_spec("torch") is not None:
        assert any(r["impl"] == "torch" and r["compute_dtype"] == "bfloat16" for r in recs)
        assert all("vs torch bf16" in r for r in rows)
    # without the flag: no bf16 row, no compute_dtype field
    assert bench.main(common + ["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert not any(line.startswith(" " * 33 + "bf16") or line.startswith("bf16 rows")
                   for line in text.splitlines())
    assert all("compute_dtype" not in r for r in json.load(open(out))["records"])
    with pytest.raises(SystemExit):
        bench.main(["--compute-dtype", "float16"])


def test_bench_train_bf16_columns(capsys):
    """``fastrnn bench --train --compute-dtype bfloat16``: the models in the
    mode, torch in float32 and under bf16 autocast (own columns and ratio);
    the agreement check still passes against the float32 twin."""
    pytest.importorskip("numba")
    from fastrnn.bench import train as bt
    torch = pytest.importorskip("torch")
    tiny = dict(min_time=0.0, min_rounds=1, max_rounds=1, burst_s=0.001, settle_s=0.0)
    rows = bt.run(torch, quick=True, timing=tiny, backend="numpy", compute_dtype=BF16,
                  lm_config=dict(embed_dim=8, hidden_size=16, batch_size=4, bptt=8),
                  clf_config=dict(features=3, hidden_size=8, num_classes=4, batch_size=5,
                                  min_len=2, max_len=6, pads=(6,)),
                  verbose=False)
    assert len(rows) == 6          # lm train (steps, chars), lm infer, clf train (2), infer
    for r in rows:
        assert set(r["rate"]) == {"fastrnn", "torch@1", "torch@2", "torch_bf16@1",
                                  "torch_bf16@2"}
        assert r["ratio"] > 0 and r["ratio_bf16"] > 0 and r["compute_dtype"] == BF16
    assert rows[0]["check"]["max_loss_rel_diff"] < 1e-5
    bt.print_table(rows)
    assert "/torch_bf16" in capsys.readouterr().out


def test_quality_script_smoke(tmp_path, capsys):
    """bench/bf16_quality.py (the issue's quality comparison) runs end to end
    on tiny models: both modes trained, the three tasks reported."""
    import importlib.util as iu
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "bf16_quality.py"
    spec = iu.spec_from_file_location("bf16_quality", path)
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 100)
    out = tmp_path / "q.json"
    mod.main(["--quick", "--backend", "numpy", "--text", str(text), "--json", str(out),
              "--baseline"])
    rows = json.load(open(out))["rows"]
    assert [r["task"] for r in rows] == ["lm", "classifier", "forecaster"]
    for r in rows:
        assert np.isfinite(r["float32"]) and np.isfinite(r["bfloat16"]) and "nudged_diff" in r
    assert "bfloat16" in capsys.readouterr().out
