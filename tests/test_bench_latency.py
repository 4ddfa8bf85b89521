"""`fastrnn bench --latency --quick` runs, checks its peers against the
stream before timing them, and prints its three tables."""
import json

from fastrnn import bench


def test_bench_latency_quick(capsys, tmp_path):
    out = tmp_path / "lat.json"
    assert bench.main(["--latency", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| lstm | 32, 32 |" in text
    assert "LanguageModel.stream().step" in text
    assert "| 200, 1, 32, 32 |" in text and "| 100, 1, 64, 64 |" in text
    recs = json.loads(out.read_text())
    kinds = {r["kind"] for r in recs}
    assert kinds == {"step", "lm", "sequence"}
    step = next(r for r in recs if r["kind"] == "step")
    assert step["fastrnn"]["p50_us"] > 0


def test_bench_latency_without_peers(capsys):
    assert bench.main(["--latency", "--quick", "--impls", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "| lstm | 32, 32 |" in text and "| - | - | - | - |" in text
