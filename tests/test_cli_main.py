"""Every user error of the ``fastrnn`` command is one
``fastrnn: error:`` line and exit status 2, never a traceback; and valid data
that used to crash or print nonsense (a constant series, a huge value, text
labels without a header) works or is refused clearly."""
import subprocess
import sys

import numpy as np
import pytest

from fastrnn.cli import inputs, main
from fastrnn.models import LanguageModel, load_model

FAST = ["--hidden", "4", "--epochs", "1", "--backend", "numpy", "--no-progress"]
TEXT = "the quick brown fox jumps over the lazy dog. " * 30


def one_error(capsys, *argv, want=None):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("fastrnn: error: "), err
    assert "Traceback" not in err
    if want is not None:
        assert want in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.txt").write_text(TEXT)
    rng = np.random.default_rng(0)
    (d / "cls.csv").write_text("\n".join(
        f"{'ab'[i % 2]}," + ",".join(f"{v:.3f}" for v in rng.standard_normal(4)) for i in range(40)))
    (d / "series.csv").write_text("\n".join(f"{np.sin(i / 4):.4f}" for i in range(120)))
    (d / "huge_cls.csv").write_text("a,1,2\nb,1e300,3\na,1,1\nb,2,2\n")
    (d / "huge_series.csv").write_text("\n".join(["1e300"] + [f"{i % 7}" for i in range(80)]))
    (d / "sub").mkdir()
    lm = LanguageModel(5, 3, 4, backend="numpy")
    path = lm.save(d / "lm.npz")
    data = open(path, "rb").read()
    (d / "empty.npz").write_bytes(b"")
    (d / "truncated.npz").write_bytes(data[:len(data) // 3])
    return d


@pytest.mark.parametrize("argv, want", [
    # bad options: each names the option
    (["train", "lm", "--data", "{d}/corpus.txt", "--batch-size", "0"], "--batch-size"),
    (["train", "classify", "--data", "{d}/cls.csv", "--features", "0"], "--features"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--bptt", "0"], "--bptt"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--hidden", "0"], "--hidden"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--cell", "banana"], "--cell"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--optimizer", "sgdx"], "--optimizer"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--backend", "tpu"], "--backend"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--dropout", "1.5"], "--dropout"),
    (["train", "forecast", "--data", "{d}/series.csv", "--window", "0"], "--window"),
    (["train", "forecast", "--data", "{d}/series.csv", "--horizon", "0"], "--horizon"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--lr", "-1"], "--lr"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--lr", "nan"], "--lr"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--epochs", "2.5"], "--epochs"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--val-fraction", "1"], "--val-fraction"),
    (["generate", "--model", "{d}/lm.npz", "--length", "-1"], "--length"),
    (["generate", "--model", "{d}/lm.npz", "--temperature", "-1"], "--temperature"),
    (["train", "lm"], "--data"),
    (["frobnicate"], "invalid choice"),
    # bad files: each names the file
    (["train", "classify", "--data", "{d}/sub"], "is a directory"),
    (["train", "forecast", "--data", "{d}/sub"], "is a directory"),
    (["train", "lm", "--data", "{d}/sub"], "is a directory"),
    (["train", "classify", "--data", "{d}/huge_cls.csv"], "float32 range"),
    (["train", "forecast", "--data", "{d}/huge_series.csv"], "float32 range"),
    (["generate", "--model", "{d}/empty.npz"], "empty.npz"),
    (["generate", "--model", "{d}/truncated.npz"], "truncated.npz"),
    (["generate", "--model", "{d}/sub"], "is a directory"),
    (["train", "lm", "--data", "{d}/corpus.txt", "--checkpoint", "{d}/lm.npz", "--resume"],
     "not a training checkpoint"),
])
def test_user_errors_are_one_line(files, capsys, argv, want):
    one_error(capsys, *[a.replace("{d}", str(files)) for a in argv], want=want)


def test_errors_end_to_end_without_traceback(files):
    # the real command in its own process: status 2 and one line on stderr
    for argv in (["train", "lm", "--data", str(files / "corpus.txt"), "--hidden", "0"],
                 ["generate", "--model", str(files / "truncated.npz")],
                 ["train", "forecast", "--data", str(files / "sub")]):
        r = subprocess.run([sys.executable, "-m", "fastrnn", *argv], capture_output=True,
                           text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("fastrnn: error: ") and "Traceback" not in r.stderr


def test_constant_series_trains_and_reports(tmp_path, capsys):
    data = tmp_path / "const.csv"
    data.write_text("\n".join(["5.0"] * 80))
    rc = main(["train", "forecast", "--data", str(data), "--window", "4",
               "--out", str(tmp_path / "f.npz"), *FAST])
    out, err = capsys.readouterr()
    assert rc == 0, err                       # was: ZeroDivisionError
    assert "persistence is perfect" in out and "RMSE" in out


@pytest.mark.parametrize("spike", ["3e38", "1e30", "1e6"])
def test_forecast_with_a_huge_value_never_saves_nonsense(tmp_path, capsys, spike):
    # was: exit 0, "RMSE: nan" and an unusable model saved
    data = tmp_path / "spike.csv"
    data.write_text("\n".join([spike] + [f"{np.sin(i / 3):.3f}" for i in range(100)]))
    rc = main(["train", "forecast", "--data", str(data), "--window", "4",
               "--out", str(tmp_path / "f.npz"), *FAST])
    out, err = capsys.readouterr()
    assert "nan" not in out.lower()
    if spike == "1e6":                        # large but representable: trains
        assert rc == 0, err
        model = load_model(tmp_path / "f.npz")
        assert all(np.isfinite(v).all() for v in model.params.values())
    else:                                     # the rest of the series would be lost in float32
        assert rc == 2 and err.startswith("fastrnn: error: ") and len(err.strip().splitlines()) == 1
        assert "outliers" in err and not (tmp_path / "f.npz").exists()


def test_text_labels_without_header_keep_their_first_row(tmp_path):
    p = tmp_path / "nohead.csv"
    p.write_text("pos,1,2\nneg,3,4\npos,5,6\n")
    labels, seqs = inputs.load_classify_csv(str(p), 2)
    assert labels == ["pos", "neg", "pos"] and len(seqs) == 3      # was: 2 rows
    p.write_text("label,x1,x2\npos,1,2\nneg,3,4\n")
    assert inputs.load_classify_csv(str(p), 2)[0] == ["pos", "neg"]
    p.write_text("label,1,2\n0,1,2\n1,3,4\n")                        # numeric column names
    assert inputs.load_classify_csv(str(p), 2)[0] == ["0", "1"]
    p.write_text("0,1,2\n1,3,4\n")                                  # numeric labels, no header
    assert inputs.load_classify_csv(str(p), 2)[0] == ["0", "1"]
