"""fastrnn.data.read_csv_rows called directly (the CLI reads its CSVs through it)."""
import pytest

from fastrnn.data import read_csv_rows


def test_read_csv_rows_header_blank_lines_and_no_header(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text("x, y ,label\n1.5,2,pos\n\n , \n-3,4e1,neg\n")
    header, rows = read_csv_rows(p)
    assert header == ["x", "y", "label"]
    assert rows == [["1.5", "2", "pos"], ["-3", "4e1", "neg"]]   # cells kept as text
    # text labels under no header: the first data row is not taken for one
    p.write_text("5.1,3.5,setosa\n4.9,3.0,setosa\n")
    assert read_csv_rows(str(p)) == (None, [["5.1", "3.5", "setosa"], ["4.9", "3.0", "setosa"]])


@pytest.mark.parametrize("text, match", [("", "is empty: no CSV rows"),
                                         ("\n , \n", "is empty: no CSV rows"),
                                         ("a,b,label\n", "has a header but no data rows")])
def test_read_csv_rows_malformed(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        read_csv_rows(p)
    assert str(p) in str(err.value)


def test_read_csv_rows_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_csv_rows(tmp_path / "missing.csv")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_csv_rows(tmp_path)
