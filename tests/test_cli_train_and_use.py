"""Nothing silently wrong on the command line: each of these cases is an
error or a documented right answer, never a wrong answer with exit status 0:
an empty cell, swapped or renamed columns, a shuffled pandas index, the units
of a language model's history, why training stopped, what evaluate scored."""
import json
import math

import numpy as np
import pytest

from fastrnn.cli import inputs, main

datasets = pytest.importorskip("sklearn.datasets")

FAST = ["--hidden", "8", "--backend", "numpy", "--no-progress", "--no-plot"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def wine_files(tmp_path_factory):
    """wine.csv as pandas writes it (index first, label last), and variants."""
    d = tmp_path_factory.mktemp("wine")
    f = datasets.load_wine(as_frame=True).frame
    f.to_csv(d / "wine.csv")
    holed = f.copy()
    holed.iloc[5, 3] = np.nan                          # pandas writes NaN as an empty cell
    holed.to_csv(d / "nan.csv")
    cols = list(f.columns)
    i, j = cols.index("alcohol"), cols.index("proline")
    cols[i], cols[j] = cols[j], cols[i]
    f[cols].to_csv(d / "swapped.csv")
    f.rename(columns={"alcohol": "alcohol_pct"}).to_csv(d / "renamed.csv")
    f.to_csv(d / "noheader.csv", header=False, index=False)
    return d


@pytest.fixture(scope="module")
def wine_model(wine_files):
    model = wine_files / "w.npz"
    assert main(["train", "classify", "--data", str(wine_files / "wine.csv"), "--out",
                 str(model), "--epochs", "40", "--lr", "1e-2", *FAST]) == 0
    return model


def test_an_empty_cell_is_an_error_naming_line_and_column(wine_files, capsys):
    rc, out, err = run(capsys, "train", "classify", "--data", wine_files / "nan.csv",
                       "--epochs", "1", "--out", wine_files / "x.npz", *FAST)
    # was: exit 0, the file read as variable-length single-feature sequences
    assert rc == 2 and "line 7, column 5 ('alcalinity_of_ash'): missing value" in err, err
    assert "--missing drop" in err
    rc, out, err = run(capsys, "train", "classify", "--data", wine_files / "nan.csv",
                       "--epochs", "1", "--missing", "drop", "--out", wine_files / "x.npz", *FAST)
    assert rc == 0, err
    assert "177 rows" in out and "dropped 1 row(s) with missing values (--missing drop: " \
        "line(s) 7)" in out and "1 step(s) x 13 feature(s)" in out, out


def test_trailing_empty_cells_of_numbered_sequences_stay_variable_length(tmp_path):
    path = tmp_path / "seq.csv"
    path.write_text("label,x1,x2,x3,x4\na,1,2,3,\nb,1,2,,\na,1,2,3,4\nb,1,,,\n")
    t = inputs.read_classify(str(path))
    assert t.ragged and [len(s) for s in t.seqs] == [3, 2, 4, 1]
    path.write_text("label,x1,x2,x3,x4\na,1,,3,4\nb,1,2,3,4\n")         # a hole: missing
    with pytest.raises(inputs.CLIError, match=r"line 2, column 3 \('x2'\): missing value"):
        inputs.read_classify(str(path))


def test_evaluate_scores_the_held_out_part_of_the_training_file(wine_files, wine_model, capsys):
    rc, out, _ = run(capsys, "evaluate", "--model", wine_model, "--data", wine_files / "wine.csv")
    assert rc == 0
    assert "(18 rows;" in out and "scored the held-out part of" in out
    assert "18 of 178 rows" in out
    rc, out, _ = run(capsys, "evaluate", "--model", wine_model, "--data",
                     wine_files / "wine.csv", "--all")
    assert rc == 0 and "(178 rows;" in out and "--all" in out
    acc = float(out.split()[1])
    assert acc >= 0.9                                     # the wine round trip reproduces


def test_swapped_columns_are_put_back_by_name(wine_files, wine_model, capsys):
    _, out, _ = run(capsys, "evaluate", "--model", wine_model, "--data", wine_files / "wine.csv",
                    "--all")
    rc, out2, err = run(capsys, "evaluate", "--model", wine_model, "--data",
                        wine_files / "swapped.csv")
    # was: accuracy 0.33, exit 0
    assert rc == 0 and "columns put in the training order by name" in err
    assert out2.split()[1] == out.split()[1]                        # the same accuracy
    assert "not the training file" in out2


def test_renamed_columns_are_an_error_naming_them(wine_files, wine_model, capsys):
    for cmd in ("evaluate", "predict"):
        rc, _, err = run(capsys, cmd, "--model", wine_model, "--data", wine_files / "renamed.csv")
        assert rc == 2 and "missing 'alcohol'; unexpected 'alcohol_pct'" in err, err


def test_a_file_without_header_is_read_in_training_order_with_a_warning(wine_files, wine_model,
                                                                       capsys):
    rc, out, err = run(capsys, "evaluate", "--model", wine_model, "--data",
                       wine_files / "noheader.csv")
    assert rc == 0 and "has no header: its columns cannot be checked" in err
    assert float(out.split()[1]) >= 0.9


def test_a_shuffled_index_is_skipped_and_a_test_file_without_it_fits(tmp_path, capsys):
    ms = pytest.importorskip("sklearn.model_selection")
    frame = datasets.load_breast_cancer(as_frame=True).frame
    train, test = ms.train_test_split(frame, test_size=0.25, random_state=0)
    train.to_csv(tmp_path / "train.csv")                 # index 0..568, shuffled
    test.to_csv(tmp_path / "test.csv", index=False)
    rc, out, err = run(capsys, "train", "classify", "--data", tmp_path / "train.csv",
                       "--out", tmp_path / "bc.npz", "--epochs", "15", "--lr", "1e-2", *FAST)
    assert rc == 0, err
    # was: the index read as a 31st feature
    assert "skipped index column '' (unnamed, distinct integers: a pandas index)" in out
    assert "x 30 feature(s)" in out
    rc, out, err = run(capsys, "evaluate", "--model", tmp_path / "bc.npz", "--data",
                       tmp_path / "test.csv")
    assert rc == 0, err
    assert "(143 rows;" in out and float(out.split()[1]) > 0.85
    rc, out, err = run(capsys, "predict", "--model", tmp_path / "bc.npz", "--data",
                       tmp_path / "test.csv")
    assert rc == 0 and len(out.splitlines()) == 144


def test_every_summary_says_why_training_stopped(wine_files, capsys):
    data = wine_files / "wine.csv"
    out_ = wine_files / "s.npz"
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--out", out_, "--epochs", "2",
                     *FAST)
    assert rc == 0 and "stopped: all 2 epochs done" in out
    hist = json.loads((wine_files / "s.history.json").read_text())
    assert hist["stop_reason"] == "epochs" and hist["units"]["loss"] == "nats per sequence"
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--out", out_, "--epochs", "50",
                     "--seconds", "0.01", *FAST)
    assert rc == 0 and "stopped: the --seconds 0.01 budget ran out during epoch" in out
    # weights that cannot move: the validation loss never improves after epoch 1
    rc, out, _ = run(capsys, "train", "classify", "--data", data, "--out", out_, "--epochs", "50",
                     "--patience", "1", "--optimizer", "sgd", "--lr", "1e-30", *FAST)
    assert rc == 0 and "stopped early after epoch 2 of 50" in out and "--patience 1" in out
    assert json.loads((wine_files / "s.history.json").read_text())["stop_reason"] == \
        "early_stopping"


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    text = "".join(datasets.load_wine().DESCR.split("\n\n")[:6])    # real prose, ~2 KB
    (d / "text.txt").write_text(text)
    (d / "other.txt").write_text("Vins de Bourgogne: élevés à Nuits ✓")
    return d


def test_language_model_history_is_in_bits_and_says_so(lm_files, capsys):
    rc, out, err = run(capsys, "train", "lm", "--data", lm_files / "text.txt", "--out",
                       lm_files / "lm.npz", "--epochs", "2", "--bptt", "16", "--batch-size", "4",
                       *FAST)
    assert rc == 0, err
    assert "stopped: all 2 epochs done" in out
    hist = json.loads((lm_files / "lm.history.json").read_text())
    assert hist["units"]["loss"] == hist["units"]["val_loss"] == "bits per character"
    assert hist["units"]["throughput"] == "characters per second"
    # the console's bits per character (was: the file held nats, x 0.69, and named no unit)
    shown = float(out.split("validation bits per character: ")[1].split()[0])
    assert hist["val_loss"][-1] == pytest.approx(shown, rel=0.05)


def test_trainer_history_with_units_converts_only_the_losses():
    from fastrnn import Adam, LanguageModel, Trainer
    from fastrnn.data import LMBatches
    ids = np.arange(200) % 7
    model = LanguageModel(7, embed_dim=4, hidden_size=4, backend="numpy", seed=0)
    tr = Trainer(model, Adam(model), LMBatches(ids, 2, 8), LMBatches(ids[:50], 2, 8),
                 progress=False, unit="char")
    tr.fit(1)
    hist, units = tr.history_with_units()
    assert hist["loss"][0] == pytest.approx(tr.history["loss"][0] / math.log(2))
    assert hist["val_loss"][0] == pytest.approx(tr.history["val_loss"][0] / math.log(2))
    assert hist["lr"] == tr.history["lr"] and units["time"] == "seconds"


def test_evaluate_counts_characters_the_model_never_saw(lm_files, capsys):
    if not (lm_files / "lm.npz").exists():
        assert main(["train", "lm", "--data", str(lm_files / "text.txt"), "--out",
                     str(lm_files / "lm.npz"), "--epochs", "1", "--bptt", "16",
                     "--batch-size", "4", *FAST]) == 0
        capsys.readouterr()
    rc, out, err = run(capsys, "evaluate", "--model", lm_files / "lm.npz", "--data",
                       lm_files / "text.txt")
    assert rc == 0 and "the held-out part of" in out and "warning" not in out
    rc, out, err = run(capsys, "evaluate", "--model", lm_files / "lm.npz", "--data",
                       lm_files / "other.txt")
    assert rc == 0 and "not the training file" in out
    unseen = sorted(set("Vins de Bourgogne: élevés à Nuits ✓"[1:])
                    - set((lm_files / "text.txt").read_text()))
    assert unseen and "characters scored are ones the model never saw" in out
    assert f"({len(unseen)} distinct:" in out


def test_forecast_evaluate_and_plot(tmp_path, capsys):
    t = np.arange(160)
    series = 10 + np.sin(t / 4) + 0.1 * np.cos(t / 1.7)
    path = tmp_path / "s.csv"
    path.write_text("value\n" + "\n".join(f"{v:.5f}" for v in series) + "\n")
    rc, out, err = run(capsys, "train", "forecast", "--data", path, "--out", tmp_path / "f.npz",
                       "--epochs", "2", "--window", "8", *FAST[:-1])
    assert rc == 0, err
    assert "stopped: all 2 epochs done" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "f.png").exists()
    rc, out, _ = run(capsys, "evaluate", "--model", tmp_path / "f.npz", "--data", path)
    # was: every window scored, mostly training data, without saying so
    assert rc == 0 and "over 16 windows" in out and "the held-out part of" in out
    rc, out, _ = run(capsys, "evaluate", "--model", tmp_path / "f.npz", "--data", path, "--all")
    assert rc == 0 and "over 152 windows" in out


def test_small_items(capsys):
    rc, out, err = run(capsys, "train")
    assert rc == 2 and "train needs a task: lm" in err and "classify" in err \
        and "forecast" in err
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    kinds = [line.split(" threads")[0] for line in out.splitlines() if " threads " in line]
    assert len(kinds) == len(set(kinds)), out                 # openmp once, not twice
