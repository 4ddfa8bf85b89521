"""fastrnn.cli.inputs: how the command reads its files, called directly (no
training, no kernels): which column holds the labels, a pandas index column
skipped, which columns are features and how many make a step, the series
columns of a forecast, and each bad file refused with a ValueError naming
the file and the problem."""
import numpy as np
import pytest

from fastrnn.cli import inputs


def write(tmp_path, text, name="rows.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------- label column
@pytest.mark.parametrize("name", ["label", "target", "class", "Target", " CLASS "])
def test_label_column_found_by_name_wherever_it_is(tmp_path, name):
    p = write(tmp_path, f"x1,{name},x2\n1,a,2\n3,b,4\n5,a,6\n")
    t = inputs.read_classify(p)
    assert t.label_col == 1 and t.labels == ["a", "b", "a"]
    assert f"named '{name.strip().lower()}'" in t.label_how
    assert [s.ravel().tolist() for s in t.seqs] == [[1, 2], [3, 4], [5, 6]]


def test_label_column_without_a_name_is_the_first(tmp_path):
    t = inputs.read_classify(write(tmp_path, "y,x1,x2\nu,1,2\nv,3,4\n"))
    assert t.label_col == 0 and t.labels == ["u", "v"]
    assert "the first column, as no column is named" in t.label_how
    t = inputs.read_classify(write(tmp_path, "u,1,2\nv,3,4\n", "nohead.csv"))
    assert t.header is None and t.label_col == 0 and t.labels == ["u", "v"]
    assert "no header" in t.label_how


@pytest.mark.parametrize("spec, col", [("y", 2), ("Y", 2), ("0", 0), ("-1", 2), ("1", 1)])
def test_label_option_by_name_or_position(tmp_path, spec, col):
    p = write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n")
    t = inputs.read_classify(p, label=spec)
    assert t.label_col == col and "(--label)" in t.label_how
    assert t.labels == [["1", "4"], ["2", "5"], ["3", "6"]][col]


def test_label_option_naming_no_column_is_refused(tmp_path):
    p = write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"--label 'z': no such column \(columns: 'a', 'b', 'y'\)"):
        inputs.read_classify(p, label="z")
    with pytest.raises(ValueError, match=r"--label 3: column index out of range \(0\.\.2"):
        inputs.read_classify(p, label="3")
    nohead = write(tmp_path, "1,2,3\n4,5,6\n", "nohead.csv")
    with pytest.raises(ValueError, match="the file has no header: give an index"):
        inputs.read_classify(nohead, label="y")


# ------------------------------------------------------------- index column
@pytest.mark.parametrize("name", ["", "Unnamed: 0", "index"])
def test_pandas_index_column_is_skipped(tmp_path, name):
    # after a shuffle the index keeps its values, in any order
    p = write(tmp_path, f"{name},sepal,petal,target\n7,0.5,1.5,0\n2,2.5,3.5,1\n9,4.5,5.5,0\n")
    t = inputs.read_classify(p)
    assert t.skipped == [0] and t.label_col == 3
    assert t.feature_names == ["sepal", "petal"] and t.features == 2
    assert [s.ravel().tolist() for s in t.seqs] == [[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]]
    assert "a pandas index" in inputs.summary_classify(p, t)


@pytest.mark.parametrize("text", [
    ",w,target\n1,0.5,0\n1,1.5,1\n",          # repeated values: data, not an index
    ",w,target\n0.5,0.5,0\n1.5,1.5,1\n",      # not integers
    "id,w,target\n0,0.5,0\n1,1.5,1\n",        # a named column is data
])
def test_a_first_column_that_is_no_index_is_kept(tmp_path, text):
    t = inputs.read_classify(write(tmp_path, text))
    assert t.skipped == [] and t.features == 2 and len(t.feature_names) == 2


def test_an_index_column_chosen_as_label_is_not_skipped(tmp_path):
    t = inputs.read_classify(write(tmp_path, ",x1,x2\n0,1,2\n1,3,4\n"), label="0")
    assert t.label_col == 0 and t.skipped == [] and t.labels == ["0", "1"]


# ----------------------------------------------------------- feature columns
def test_named_feature_columns_are_one_step_of_each(tmp_path):
    t = inputs.read_classify(write(tmp_path, "height,weight,age,label\n1,2,3,a\n4,5,6,b\n"))
    assert t.feature_names == ["height", "weight", "age"]
    assert t.features == 3 and [s.shape for s in t.seqs] == [(1, 3), (1, 3)]
    assert t.features_how.startswith("named columns")


@pytest.mark.parametrize("names, n, ragged, want, how", [
    (["a", "b", "c"], 3, False, 3, "named columns"),
    ([f"s{t}_f{f}" for t in range(3) for f in range(2)], 6, False, 2, "step_feature"),
    ([f"px{k}" for k in range(16)], 16, False, 4, "4 rows of 4"),
    (None, 16, False, 4, "4 rows of 4"),
    (None, 9, False, 1, "1 value per step"),          # n*n below 16: a sequence
    (None, 5, False, 1, "1 value per step"),
    (None, 16, True, 1, "different lengths"),
])
def test_features_per_step_inferred(names, n, ragged, want, how):
    features, said = inputs.infer_features(n, ragged, names)
    assert features == want and how in said


def test_features_option_reshapes_each_row(tmp_path):
    t = inputs.read_classify(write(tmp_path, "a,1,2,3,4,5,6\nb,6,5,4,3,2,1\n"), features=3)
    assert t.features == 3 and t.features_how == "--features"
    assert t.seqs[0].tolist() == [[1, 2, 3], [4, 5, 6]] and t.seqs[0].dtype == np.float32


def test_feature_columns_put_in_the_training_order_by_name(tmp_path):
    p = write(tmp_path, "b,label,a\n2,x,1\n4,y,3\n")
    t = inputs.read_classify(p, model_meta={"feature_names": ["a", "b"]})
    assert [s.ravel().tolist() for s in t.seqs] == [[1, 2], [3, 4]]
    assert t.order_note == "columns put in the training order by name"
    with pytest.raises(ValueError, match=r"do not match the model's features: missing 'c'; "
                                         r"unexpected 'b'"):
        inputs.read_classify(p, model_meta={"feature_names": ["a", "c"]})


def test_labels_kept_as_written():
    assert inputs.natural_labels(["0", "2", "+1"]) == [0, 2, 1]
    assert inputs.natural_labels(["01", "2"]) == ["01", "2"]      # not integer literals as read
    assert inputs.natural_labels(["cat", "dog"]) == ["cat", "dog"]


# ------------------------------------------------------------------ bad CSVs
@pytest.mark.parametrize("text, want", [
    ("label,x1,x2\na,1,2\nb,3,oops\n", r"line 3, column 3: 'oops' is not a number"),
    ("label,x1,x2\na,1,2\nb,inf,4\n", r"line 3, column 2: 'inf' is not finite"),
    ("label,x1,x2\na,1,2\nb,1e39,4\n", r"line 3, column 2: '1e39' is out of the float32 range"),
    ("label,x1,x2\na,1,2\nb,,4\n", r"line 3, column 2 \('x1'\): missing value \(empty cell\)"),
    ("label,x1,x2\na,1,2\n,3,4\n", r"line 3: empty label"),
    ("label,h,w\na,1,2\nb,,\n", r"line 3, column 2 \('h'\): missing value"),
    # numbered columns, most rows short: empty cells at the end end a sequence
    ("label,x1,x2\na,1,\nb,,\n", r"line 3: no feature values after the label"),
])
def test_bad_cells_name_file_line_and_column(tmp_path, text, want):
    p = write(tmp_path, text)
    with pytest.raises(ValueError, match="bad CSV .*rows.csv: " + want):
        inputs.read_classify(p)


def test_missing_values_dropped_on_request(tmp_path):
    p = write(tmp_path, "label,x1,x2\na,1,2\nb,,4\na,5,6\n")
    t = inputs.read_classify(p, missing="drop")
    assert t.labels == ["a", "a"] and t.dropped == [3] and t.row_ids.tolist() == [0, 2]
    p = write(tmp_path, "label,h,w\na,,2\nb,3,\n", "holes.csv")
    with pytest.raises(ValueError, match="every row has a missing value"):
        inputs.read_classify(p, missing="drop")


def test_a_row_not_a_multiple_of_the_features_is_refused(tmp_path):
    p = write(tmp_path, "a,1,2,3,4\nb,1,2,3\n")
    with pytest.raises(ValueError, match=r"line 2: 3 values is not a multiple of --features 2"):
        inputs.read_classify(p, features=2)


@pytest.mark.parametrize("text, want", [
    ("", "is empty: no CSV rows"),
    ("label,x1\n", "has a header but no data rows"),
])
def test_empty_files_are_refused(tmp_path, text, want):
    with pytest.raises(ValueError, match=want):
        inputs.read_classify(write(tmp_path, text))


def test_a_directory_or_no_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory, not a CSV file"):
        inputs.read_classify(str(tmp_path))
    with pytest.raises(ValueError, match="no such file"):
        inputs.read_classify(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="is a directory, not a text file"):
        inputs.read_text(str(tmp_path))
    with pytest.raises(ValueError, match="is empty: a corpus needs some text"):
        inputs.read_text(write(tmp_path, "  \n", "blank.txt"))


# -------------------------------------------------------------------- series
def test_series_the_only_numeric_column_and_the_index_skipped(tmp_path):
    p = write(tmp_path, ",date,sales\n0,mon,1.5\n1,tue,2.5\n2,wed,3.5\n")
    series, names, how, skipped = inputs.read_series(p, None)
    assert names == ["sales"] and how == "the only numeric column" and skipped == ["''"]
    assert series.dtype == np.float64 and series[:, 0].tolist() == [1.5, 2.5, 3.5]


def test_series_columns_chosen_by_option(tmp_path):
    p = write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n7,8,9\n")
    with pytest.raises(ValueError, match=r"has 3 numeric columns \('a', 'b', 'c'\): choose"):
        inputs.read_series(p, None)
    assert inputs.read_series(p, "b")[0][:, 0].tolist() == [2, 5, 8]
    series, names, how, _ = inputs.read_series(p, "c,0")
    assert names == ["c", "a"] and how == "--column" and series[0].tolist() == [3, 1]
    assert inputs.read_series(p, "all")[1] == ["a", "b", "c"]


def test_series_with_rows_of_different_lengths_is_refused(tmp_path):
    p = write(tmp_path, "1,2\n3,4\n5\n")
    with pytest.raises(ValueError, match=r"line 3 has 1 columns, expected 2"):
        inputs.read_series(p, "0")


def test_fingerprint_knows_the_training_file_again(tmp_path):
    p = write(tmp_path, "1\n2\n3\n")

    class Model:
        meta = {"data": inputs.fingerprint(p, rows_from=2)}
    assert inputs.training_file(Model, p) == {"rows_from": 2}
    other = write(tmp_path, "1\n2\n4\n", "other.csv")          # same size, other bytes
    assert inputs.training_file(Model, other) is None
