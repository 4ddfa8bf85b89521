"""From trained to used: ``fastrnn predict`` / ``evaluate``, CSV
input that cannot be misread, forecasting with --column / --difference,
history and plots, CLI conventions (--version, --threads, defaults in
--help, quiet broken pipes, the whole CUDA reason in ``info``)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastrnn import data
from fastrnn.cli import inputs, main, train
from fastrnn.models import load_model

FAST = ["--hidden", "8", "--backend", "numpy", "--no-progress"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def fastrnn(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "fastrnn", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, **kw)


def iris_frame():
    sklearn = pytest.importorskip("sklearn.datasets")
    return sklearn.load_iris(as_frame=True)


# ------------------------------------------------------------ the acceptance round trip
def test_iris_round_trip_through_the_command(tmp_path):
    """`fastrnn train classify --data iris.csv` (label last, as pandas writes it,
    index column included) then `fastrnn predict`: >= 0.9 with the labels as
    written (was: the index taken as the label, 'validation accuracy: 0.0000')."""
    iris = iris_frame()
    data = tmp_path / "iris.csv"
    iris.frame.to_csv(data)
    model = tmp_path / "iris.npz"
    r = fastrnn("train", "classify", "--data", data, "--out", model, "--no-progress",
                "--backend", "numpy")      # the default backend is exercised elsewhere
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"read {data}: 150 rows; 3 classes (0, 1, 2); label column "
                            "'target' (named 'target'); skipped index column ''"), first
    assert "1 step(s) x 4 feature(s)" in first
    r = fastrnn("predict", "--model", model, "--data", data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "target" and len(lines) == 151
    pred = np.array([int(v) for v in lines[1:]])
    assert np.mean(pred == iris.frame["target"].to_numpy()) >= 0.9


def test_string_labels_last_column_come_back_as_strings(tmp_path, capsys):
    iris = iris_frame()
    frame = iris.frame.copy()
    frame["species"] = np.asarray(iris.target_names)[frame.pop("target")]
    data = tmp_path / "species.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "sp.npz"
    rc, out, err = run(capsys, "train", "classify", "--data", data, "--label", "species",
                       "--out", model, "--no-plot", *FAST)
    assert rc == 0, err
    assert "3 classes (setosa, versicolor, virginica); label column 'species' (--label)" in out
    rc, out, err = run(capsys, "predict", "--model", model, "--data", data)
    assert rc == 0, err
    got = out.splitlines()
    assert got[0] == "species" and set(got[1:]) <= set(iris.target_names)
    assert np.mean(np.array(got[1:]) == frame["species"].to_numpy()) >= 0.9
    rc, out, err = run(capsys, "evaluate", "--model", model, "--data", data)
    assert rc == 0 and out.startswith("accuracy: ") and float(out.split()[1]) >= 0.9
    rc, out, _ = run(capsys, "predict", "--model", model, "--data", data, "--proba")
    rows = out.splitlines()
    assert rows[0] == "setosa,versicolor,virginica"
    p = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    assert p.shape == (150, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    # the Python API gives the same labels, from raw features, one row unbatched
    clf = load_model(model)
    x = frame.drop(columns="species").to_numpy()
    assert clf.predict(x[0]) == "setosa"
    assert list(clf.predict(x[:, None, :])) == got[1:]


def test_label_column_choice_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["x1,x2,class"] + [f"{a:.3f},{b:.3f},{'ab'[int(a > 0)]}"
                              for a, b in rng.standard_normal((40, 2))]
    data = tmp_path / "d.csv"
    data.write_text("\n".join(rows))
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--epochs", "1",
                     "--out", tmp_path / "m.npz", "--no-plot", *FAST)
    assert rc == 0 and "label column 'class' (named 'class')" in out
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--label", "-1",
                     "--epochs", "1", "--out", tmp_path / "m.npz", "--no-plot", *FAST)
    assert rc == 0 and "label column 'class' (--label)" in out
    rc, _, err = run(capsys, "train", "classify", "--data", data, "--label", "species")
    assert rc == 2 and "--label 'species': no such column" in err and "'class'" in err
    rc, _, err = run(capsys, "train", "classify", "--data", data, "--label", "7")
    assert rc == 2 and "out of range" in err
    # no header: the first column, said explicitly
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(r.split(",")[2] + "," + ",".join(r.split(",")[:2])
                               for r in rows[1:]))
    rc, out, _ = run(capsys, "train", "classify", "--data", plain, "--epochs", "1",
                     "--out", tmp_path / "m.npz", "--no-plot", *FAST)
    assert rc == 0 and "labels in the first column (no header" in out


@pytest.mark.parametrize("header, n, ragged, want", [
    (["sepal", "petal", "width", "height"], 4, False, 4),       # named columns: one step
    ([f"x{i}" for i in range(64)], 64, False, 8),                # numbered, 8 x 8
    (None, 64, False, 8),
    (None, 10, False, 1),
    ([f"t{t}_f{f}" for t in range(5) for f in range(3)], 15, False, 3),
    (None, 12, True, 1),
])
def test_features_inferred_where_the_shape_allows(header, n, ragged, want):
    assert inputs.infer_features(n, ragged, header)[0] == want


def test_first_data_row_never_taken_for_a_header():
    # text labels in the last column, no header (was: the first row dropped as a header)
    assert not data._has_header([["5.1", "3.5", "setosa"], ["4.9", "3.0", "setosa"]])
    assert data._has_header([["a", "b", "species"], ["4.9", "3.0", "setosa"]])
    assert not data._has_header([["pos", "1", "", ""], ["neg", "1", "2", "3"]])   # ragged


# ------------------------------------------------------------------ forecasting
def _gdp_like(tmp_path, n=160):
    t = np.arange(n)
    rng = np.random.default_rng(0)
    gdp = 2700 * np.exp(0.008 * t) + np.cumsum(rng.normal(0, 15, n))
    path = tmp_path / "gdp.csv"
    path.write_text(",year,quarter,realgdp\n" + "\n".join(
        f"{i},{1959 + i // 4}.0,{i % 4 + 1}.0,{v:.3f}" for i, v in enumerate(gdp)))
    return path


def test_forecast_needs_column_when_several_are_numeric(tmp_path, capsys):
    path = _gdp_like(tmp_path)
    rc, _, err = run(capsys, "train", "forecast", "--data", path)
    assert rc == 2 and "3 numeric columns ('year', 'quarter', 'realgdp')" in err
    assert "--column" in err


def test_forecast_difference_beats_persistence_on_a_trend(tmp_path, capsys):
    path = _gdp_like(tmp_path)
    model = tmp_path / "g.npz"
    rc, out, err = run(capsys, "train", "forecast", "--data", path, "--column", "realgdp",
                       "--difference", "--window", "8", "--out", model, "--no-plot",
                       "--hidden", "16", "--backend", "numpy", "--no-progress")
    assert rc == 0, err
    assert "series 'realgdp' (--column); skipped index column ''; differenced at lag 1" in out
    assert "better than persistence" in out
    m = load_model(model)
    assert m.difference == 1 and m.meta["columns"] == ["realgdp"]
    rc, out, _ = run(capsys, "predict", "--model", model, "--data", path, "--steps", "3")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "step,realgdp" and len(lines) == 4
    last = float(path.read_text().splitlines()[-1].split(",")[-1])
    assert abs(float(lines[1].split(",")[1]) - last) < 0.05 * last      # original units
    rc, out, _ = run(capsys, "evaluate", "--model", model, "--data", path)
    assert rc == 0 and out.startswith("RMSE: ") and "persistence baseline" in out


def test_worse_than_persistence_says_worse(capsys):
    assert train.vs_persistence(2.0, 1.0) == "(100.0% worse than persistence)"
    assert train.vs_persistence(0.5, 1.0) == "(50.0% better than persistence)"


def test_macrodata_gdp_with_difference_beats_persistence(tmp_path):
    sm = pytest.importorskip("statsmodels.api")
    path = tmp_path / "gdp.csv"
    sm.datasets.macrodata.load_pandas().data.to_csv(path)
    rc = main(["train", "forecast", "--data", str(path), "--column", "realgdp",
               "--difference", "--out", str(tmp_path / "g.npz"), "--no-progress", "--backend", "numpy",
               "--no-plot"])
    assert rc == 0


# ------------------------------------------------------------- language models
def test_lm_predict_scores_each_character_and_evaluate(tmp_path, capsys):
    text = "it was the best of times, it was the worst of times. " * 20
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    model = tmp_path / "lm.npz"
    rc, _, err = run(capsys, "train", "lm", "--data", corpus, "--out", model, "--epochs", "1",
                     "--bptt", "16", "--batch-size", "4", "--no-plot", *FAST)
    assert rc == 0, err
    rc, out, err = run(capsys, "predict", "--model", model, "--data", corpus)
    rows = out.splitlines()
    assert rc == 0 and rows[0] == "position,char,bits" and len(rows) == len(text)
    bits = np.array([float(r.rsplit(",", 1)[1]) for r in rows[1:]])
    assert "bits per character" in err
    # the training file: its held-out part by default (issue 25), every character with --all
    rc, out, _ = run(capsys, "evaluate", "--model", model, "--data", corpus, "--all")
    assert rc == 0 and float(out.split()[3]) == pytest.approx(bits.mean(), abs=1e-3)
    rc, out, _ = run(capsys, "predict", "--model", model, "--prime", "it ", "--length", "5",
                     "--seed", "0")
    assert rc == 0 and out.startswith("it ") and len(out.strip()) == 8


# ---------------------------------------------------------- history and plots
def test_every_train_writes_history_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    series = tmp_path / "s.csv"
    series.write_text("value\n" + "\n".join(f"{np.sin(i / 3):.4f}" for i in range(80)))
    rc, out, _ = run(capsys, "train", "forecast", "--data", series, "--window", "6",
                     "--epochs", "1", "--out", tmp_path / "f.npz", *FAST)
    assert rc == 0
    hist = json.loads((tmp_path / "f.history.json").read_text())
    assert hist["epoch"] == [1] and len(hist["loss"]) == len(hist["val_loss"]) == 1
    assert (tmp_path / "f.png").stat().st_size > 1000
    rc, out, _ = run(capsys, "train", "forecast", "--data", series, "--window", "6",
                     "--epochs", "1", "--out", tmp_path / "g.npz", "--no-plot", *FAST)
    assert rc == 0 and (tmp_path / "g.history.json").exists() and not (tmp_path / "g.png").exists()


# ------------------------------------------------------------- CLI conventions
def test_version_and_defaults_in_every_help(capsys):
    from fastrnn import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastrnn {__version__}"
    for argv, want in ((["train", "classify"], "(default: 64)"),
                       (["train", "lm"], "(default: 0.003)"),
                       (["train", "forecast"], "(default: 24)"),
                       (["generate"], "(default: 0.8)"),
                       (["demo"], "(default: 128)"),
                       (["predict"], "(default: 300)"),
                       (["evaluate"], "--data")):
        with pytest.raises(SystemExit):
            main(argv + ["--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert want in out, (argv, out)
        assert "(default: None)" not in out and "(default: False)" not in out


def test_threads_option(capsys):
    import fastrnn
    before = fastrnn.get_num_threads()
    try:
        rc, out, _ = run(capsys, "--threads", "1", "info")
        assert rc == 0 and "fastrnn kernel BLAS threads (most) 1" in out
    finally:
        fastrnn.set_num_threads(before)
    rc, _, err = run(capsys, "--threads", "0", "info")
    assert rc == 2 and "--threads" in err


def test_info_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, fastrnn.cli as c; sys.stdout.write('x' * 0); "
                          "sys.exit(c.main(['info']))"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                       # the reader is gone before the first line
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_info_shows_the_whole_backend_reason(monkeypatch, capsys):
    from fastrnn import dispatch
    reason = "CUDA driver library not found: " + "x" * 150 + " (the end)"
    real = dispatch.get_backend

    def fake(name):
        if name == "cuda":
            raise dispatch.BackendUnavailable(reason)
        return real(name)
    monkeypatch.setattr(dispatch, "get_backend", fake)
    rc, out, _ = run(capsys, "info")
    assert rc == 0 and "(the end))" in out
