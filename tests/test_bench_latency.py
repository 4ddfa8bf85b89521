"""`fastrnn bench --latency --quick` runs, checks its peers against the
stream before timing them, and prints its three tables."""
import json

import pytest

from fastrnn import bench


def test_bench_latency_quick(capsys, tmp_path):
    out = tmp_path / "lat.json"
    assert bench.main(["--latency", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| lstm | 32, 32 |" in text
    assert "LanguageModel.stream().step" in text and "read alone" in text and "GB/s" in text
    assert "| 200, 1, 32, 32 |" in text and "| 100, 1, 64, 64 |" in text
    recs = json.loads(out.read_text())
    kinds = {r["kind"] for r in recs}
    assert kinds == {"step", "lm", "read", "sequence"}
    step = next(r for r in recs if r["kind"] == "step")
    assert step["fastrnn"]["p50_us"] > 0
    lm = next(r for r in recs if r["kind"] == "lm")
    assert lm["lm_read_p50_us"] > 0 and lm["lm_mib"] > lm["layer_mib"] > 0


def test_bench_latency_without_peers(capsys):
    assert bench.main(["--latency", "--quick", "--impls", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "| lstm | 32, 32 |" in text and "| - | - | - | - |" in text


def test_read_sum_and_step_weights():
    """The memory-floor probe sums what it reads (every length, the tail past
    the vector blocks included), and step_weights counts the weights a
    prepared stack and head read per step."""
    import numpy as np

    import fastrnn
    from fastrnn.kernels import latency

    rng = np.random.default_rng(0)
    for n in (0, 5, 128, 1000, 4099):
        a = rng.integers(-8, 8, n).astype(np.float32)      # small integers: exact sums
        assert latency.read_sum(a) == float(a.sum())
    for bad in (np.ones(8), np.ones((2, 8), np.float32), np.ones(16, np.float32)[::-1]):
        with pytest.raises(ValueError, match="read_sum: a must be"):
            latency.read_sum(bad)
    I, H, V = 12, 32, 10
    s = fastrnn.LSTM(I, H, num_layers=2, seed=0, backend="cpu").stream()
    biases = 4 * H if latency.uses_panels("lstm", np.float32, H) else 8 * H
    want = (I + H) * 4 * H + (H + H) * 4 * H + 2 * biases
    assert latency.step_weights(s._meta) == want
    lm = fastrnn.LanguageModel(V, embed_dim=I, hidden_size=H, num_layers=2, seed=0,
                               backend="cpu").stream()
    assert latency.step_weights(lm._meta) == want + (H + 1) * V + I
