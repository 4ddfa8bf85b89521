"""The command line: each command on tiny inputs, and the user errors."""
import importlib.util

import numpy as np
import pytest

from fastrnn.cli import main
from fastrnn.models import SequenceClassifier

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 20
FAST = ["--hidden", "8", "--epochs", "2", "--backend", "numpy", "--no-progress"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    for word in ("fastrnn", "numpy", "numba", "backends:", "GPU", "cpu cores"):
        assert word in out


def test_demo_quick(capsys):
    rc, out, _ = run(capsys, "demo", "--quick", "--seconds", "2", "--no-progress")
    assert rc == 0
    assert "held-out bits per character" in out and "unigram baseline" in out
    assert "NumPy reference" in out and "sample" in out


def test_train_lm_then_generate(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    model = tmp_path / "lm.npz"
    rc, out, _ = run(capsys, "train", "lm", "--data", corpus, "--out", model, "--bptt", "16",
                     "--batch-size", "4", *FAST)
    assert rc == 0 and "bits per character" in out and model.exists()
    rc, out, _ = run(capsys, "generate", "--model", model, "--prime", "it was", "--length", "20",
                     "--seed", "1")
    assert rc == 0 and out.startswith("it was") and len(out.strip()) >= 20
    # characters the model never saw are refused, naming them (not read as '?')
    for cmd in ("generate", "predict"):
        rc, out, err = run(capsys, cmd, "--model", model, "--prime", "it wasZ€ Z",
                           "--length", "5")
        assert rc == 2 and out == "", (cmd, out)
        assert "--prime has characters the model never saw" in err
        assert "'Z'" in err and "'€'" in err and "'i'" not in err


def test_train_classify_and_forecast(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["label," + ",".join(f"x{i}" for i in range(8))]
    for _ in range(60):
        v = rng.standard_normal(8)
        n = rng.integers(2, 5) * 2                        # variable lengths, 2 features
        rows.append(("pos" if v[0] > 0 else "neg") + "," + ",".join(f"{a:.3f}" for a in v[:n])
                    + "," * (8 - n))
    data = tmp_path / "cls.csv"
    data.write_text("\n".join(rows))
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--features", "2",
                     "--pooling", "attention", "--out", tmp_path / "c.npz", *FAST)
    assert rc == 0 and "validation accuracy" in out
    series = tmp_path / "s.csv"
    series.write_text("t,value\n" + "\n".join(f"{i},{np.sin(i / 3):.4f}" for i in range(150)))
    rc, out, _ = run(capsys, "train", "forecast", "--data", series, "--column", "value",
                     "--window", "8", "--out", tmp_path / "f.npz", *FAST)
    assert rc == 0 and "persistence baseline" in out


def test_errors(tmp_path, capsys):
    rc, _, err = run(capsys, "train", "lm", "--data", tmp_path / "missing.txt")
    assert rc == 2 and "no such file" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    rc, _, err = run(capsys, "train", "lm", "--data", empty)
    assert rc == 2 and "empty" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,1,2\nb,3,oops\n")
    rc, _, err = run(capsys, "train", "classify", "--data", bad)
    assert rc == 2 and "bad CSV" in err and "line 2" in err and "oops" in err
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3\n")
    rc, _, err = run(capsys, "train", "forecast", "--data", ragged)
    assert rc == 2 and "bad CSV" in err
    clf = SequenceClassifier(2, input_size=1, hidden_size=3, backend="numpy")
    path = clf.save(tmp_path / "clf.npz")
    rc, _, err = run(capsys, "generate", "--model", path)
    assert rc == 2 and "holds a SequenceClassifier, not a LanguageModel" in err
    rc, _, err = run(capsys, "generate", "--model", tmp_path / "nothing.npz")
    assert rc == 2 and "no such file" in err


def test_bench_delegates_or_explains(capsys, monkeypatch):
    if importlib.util.find_spec("fastrnn.bench") is None:
        rc, _, err = run(capsys, "bench")
        assert rc == 2 and "fastrnn.bench" in err
    else:
        import fastrnn.bench as bench
        seen = []
        monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
        rc, _, _ = run(capsys, "bench", "--quick", "x")
        assert rc == 0 and seen == [["--quick", "x"]]


def test_no_command_prints_help(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2 and "demo" in out
    rc, out, _ = run(capsys, "train")
    assert rc == 2 and "forecast" in out


def test_python_dash_m(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "fastrnn", "generate", "--model",
                        str(tmp_path / "x.npz")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "fastrnn: error" in r.stderr
