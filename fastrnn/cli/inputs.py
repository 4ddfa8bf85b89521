"""Reading the ``fastrnn`` command's input files: a text corpus, a
classification CSV (which column holds the labels, a pandas index column
skipped, which columns are features and how many values make a time step,
missing values, the training layout found again in a new file) and a series
CSV (which numeric column(s) are the series), and the fingerprint that tells a
model's training file again. Every bad file is a :class:`CLIError` naming the
file and the problem (line and column where there is one)."""
from __future__ import annotations

import math
import os
import re
import sys

import numpy as np

from ..data import _is_number, read_csv_rows   # CSV reading lives in fastrnn.data
from .parser import CLIError


def read_text(path):
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a text file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        raise CLIError(f"{path} is empty: a corpus needs some text")
    return text


def _read_csv(path, need_label=False):
    """:func:`fastrnn.data.read_csv_rows`, its errors reported as :class:`CLIError`.
    ``need_label`` is kept for callers; the rule is the same."""
    try:
        return read_csv_rows(path)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None


_LABEL_NAMES = ("label", "target", "class")
_INDEX_NAMES = ("", "unnamed: 0", "index")


def _column(spec, header, ncol, path, option):
    """Column index of ``spec``: a header name, or an integer index (0 is the
    first column, -1 the last)."""
    if header and spec in header:
        return header.index(spec)
    if header:
        low = [h.lower() for h in header]
        if spec.lower() in low and low.count(spec.lower()) == 1:
            return low.index(spec.lower())
    try:
        j = int(spec)
    except ValueError:
        raise CLIError(f"{path}: {option} {spec!r}: no such column"
                       + (f" (columns: {', '.join(repr(h) for h in header)})" if header
                          else " (the file has no header: give an index, 0 = first)")) from None
    if not -ncol <= j < ncol:
        raise CLIError(f"{path}: {option} {spec}: column index out of range "
                       f"(0..{ncol - 1}, or -1 for the last)")
    return j % ncol


def _col_name(header, j):
    return repr(header[j]) if header else f"{j}"


def _index_columns(header, rows, exclude=()):
    """``[0]`` when the first column is a pandas index, else ``[]``: a column
    with no name (or ``Unnamed: 0``, ``index``) holding distinct integers, in
    any order (after a shuffle or ``train_test_split`` a frame keeps its
    original index, so it no longer counts 0, 1, 2...). Not data."""
    if not header or 0 in exclude or header[0].strip().lower() not in _INDEX_NAMES:
        return []
    try:
        vals = [int(r[0]) for r in rows]
    except (ValueError, IndexError):
        return []
    return [0] if vals and len(set(vals)) == len(vals) else []


def _index_note(header, skipped):
    """The summary's words on a skipped index column."""
    return ("skipped index column " + ", ".join(_col_name(header, j) for j in skipped)
            + " (unnamed, distinct integers: a pandas index)")


def _float(cell, path, line, col):
    if not cell.strip():
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: missing value (empty cell)")
    try:
        v = float(cell)
    except ValueError:
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is not finite")
    if abs(v) > F32_MAX:
        raise CLIError(f"bad CSV {path}: line {line}, column {col}: {cell!r} is out of the "
                       f"float32 range the models compute in (|x| <= {F32_MAX:.3g})")
    return v


F32_MAX = float(np.finfo(np.float32).max)


class _Table:
    """What was read from a classification CSV (see :func:`read_classify`)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _pick_label(header, ncol, spec, path):
    """``(column, how it was chosen)`` of the label column."""
    if spec is not None:
        j = _column(spec, header, ncol, path, "--label")
        return j, f"label column {_col_name(header, j)} (--label)"
    if header:
        for want in _LABEL_NAMES:
            for j, h in enumerate(header):
                if h.strip().lower() == want:
                    return j, f"label column {h!r} (named {want!r})"
        return 0, (f"label column {header[0]!r}: the first column, as no column is named "
                   f"label, target or class (choose with --label NAME|INDEX)")
    return 0, "labels in the first column (no header; choose with --label INDEX)"


_NUMBERED = re.compile(r"^\D*?(\d+)$")
_GRID = re.compile(r"^\D*?(\d+)\D+(\d+)$")


def infer_features(n, ragged, names):
    """``(features per step, how)`` for rows of ``n`` values (or ragged rows)."""
    if ragged:
        return 1, ("1 value per step: the rows have different lengths (set --features F "
                   "when each step has F values)")
    if names:
        grid = [_GRID.match(h) for h in names]
        if all(grid):
            F = len({m.group(2) for m in grid})
            if F > 1 and n % F == 0 and len({m.group(1) for m in grid}) * F == n:
                return F, "from the column names (step_feature)"
        if not all(_NUMBERED.match(h) for h in names):
            return n, "named columns: one step of every column per row"
    root = int(round(math.sqrt(n)))
    if n >= 16 and root * root == n:
        return root, (f"{n} values read as {root} rows of {root}, like an image row by row "
                      "(set --features to change)")
    return 1, "1 value per step (set --features F when each step has F values)"


def read_classify(path, features=None, label=None, *, header_rows=None, has_label=True,
                   model_meta=None, missing="error"):
    """Read a classification CSV: the label column (``--label`` name or index;
    default a column named label/target/class, else the first), a pandas index
    column skipped, the other columns as values, ``features`` per step
    (inferred when None). ``has_label=False`` reads unlabelled rows;
    ``model_meta`` (``meta["csv"]`` of a trained model) finds the training
    layout again, and its ``feature_names`` the columns by name (see
    :func:`_match_names`). A missing value (see :func:`_missing_cells`) is an
    error naming its line and column, unless ``missing="drop"`` drops its
    row. Returns a :class:`_Table`."""
    header, rows = header_rows if header_rows is not None else _read_csv(path)
    ncol = max(len(r) for r in rows)
    first = 2 if header else 1
    lab, how = None, "no labels"
    info = model_meta or {}
    if has_label is True and label is None and info:      # evaluate: the training label column
        if header and info.get("label_name") in header:
            lab = header.index(info["label_name"])
            how = f"label column {info['label_name']!r} (as in training)"
        elif not header and info.get("label_index") is not None:
            lab = _label_index_again(info, ncol, path)
            how = f"labels in column {lab} (as in training)"
        else:
            lab, how = _pick_label(header, ncol, label, path)
    elif has_label is True:
        lab, how = _pick_label(header, ncol, label, path)
    elif has_label == "auto":                    # predict: the label column if the file has it
        info = model_meta or {}
        if label is not None:
            lab, how = _pick_label(header, ncol, label, path)
        elif header and info.get("label_name") in header:
            lab = header.index(info["label_name"])
            how = f"label column {info['label_name']!r} ignored"
        elif (not header and info.get("label_index") is not None
              and ncol in (info.get("columns"), info.get("columns", 0) - len(info.get("skipped", ())))):
            lab = _label_index_again(info, ncol, path)
            how = f"label column {lab} ignored"
    skip = _index_columns(header, rows, exclude=() if lab is None else (lab,))
    feat = [j for j in range(ncol) if j != lab and j not in skip]
    feat, order_note = _match_names(path, header, feat, info.get("feature_names"))
    holes = _missing_cells(header, rows, feat)
    dropped = []
    if holes and missing == "drop":
        dropped = sorted(holes)
    elif holes:
        i, j = min(holes.items())
        more = f" ({len(holes)} rows have one)" if len(holes) > 1 else ""
        raise CLIError(f"bad CSV {path}: line {i + first}, column {j + 1}"
                       + (f" ({header[j]!r})" if header and j < len(header) else "")
                       + f": missing value (empty cell){more}; fill it in, or drop such "
                         "rows with --missing drop")
    gone = set(dropped)
    labels, values, row_ids = [], [], []
    for i, r in enumerate(rows):
        if i in gone:
            continue
        line = i + first
        if lab is not None:
            if lab >= len(r) or not r[lab].strip():
                raise CLIError(f"bad CSV {path}: line {line}: empty label")
            labels.append(r[lab].strip())
        cells = [(j, r[j]) for j in feat if j < len(r) and r[j].strip()]
        if not cells:
            raise CLIError(f"bad CSV {path}: line {line}: no feature values"
                           + (" after the label" if lab is not None else ""))
        values.append([_float(c, path, line, j + 1) for j, c in cells])
        row_ids.append(i)
    if not values:
        raise CLIError(f"{path}: every row has a missing value (--missing drop left none)")
    sizes = {len(v) for v in values}
    ragged = len(sizes) > 1
    names = [header[j] for j in feat] if header else None
    if features is None:
        features, fhow = infer_features(len(values[0]), ragged, names)
    else:
        fhow = "--features"
    seqs = []
    for i, v in enumerate(values):
        if len(v) % features:
            raise CLIError(f"bad CSV {path}: line {i + first}: {len(v)} values is not a "
                           f"multiple of --features {features}")
        seqs.append(np.array(v, dtype=np.float32).reshape(-1, features))
    return _Table(header=header, labels=labels, seqs=seqs, label_col=lab, label_how=how,
                  skipped=skip, features=features, features_how=fhow, ncol=ncol,
                  ragged=ragged, feature_names=names, row_ids=np.array(row_ids, np.int64),
                  dropped=[i + first for i in dropped], n_rows=len(rows),
                  order_note=order_note)


def _label_index_again(info, ncol, path):
    """The training label column's index in a headerless file of ``ncol``
    columns: as in training, or shifted when the file lacks the pandas index
    column the training file had (``info["skipped"]``)."""
    lab, cols = info["label_index"], info.get("columns")
    skipped = info.get("skipped") or []
    if ncol == cols or cols is None:
        return lab
    if ncol == cols - len(skipped) and lab not in skipped:
        return lab - sum(j < lab for j in skipped)
    raise CLIError(f"{path} has {ncol} columns and no header; the model was trained on "
                   f"{cols} columns with the labels in column {lab}: choose it with --label INDEX")


def _missing_cells(header, rows, feat):
    """``{row index: first column index}`` of the rows with a missing value
    among the feature columns ``feat``.

    An empty cell before a value is always a missing value. Empty cells at the
    end of a row are missing values too when the columns are named features
    (a header of names that are not numbered steps), or when most rows are
    complete (the file's rows otherwise have one length); they end a shorter
    sequence only in a file of numbered or unnamed columns where most rows
    are shorter than the longest (variable-length sequences, padded at the
    end)."""
    ends, out = [], {}
    for i, r in enumerate(rows):
        full = [j < len(r) and bool(r[j].strip()) for j in feat]
        last = max((k for k, f in enumerate(full) if f), default=-1)
        hole = next((k for k in range(last) if not full[k]), None)
        if hole is not None:
            out[i] = feat[hole]
        ends.append(last + 1)
    named = bool(header) and not all(_NUMBERED.match(header[j]) for j in feat if j < len(header))
    complete = sum(e == len(feat) for e in ends)
    if named or complete > len(rows) / 2:
        for i, e in enumerate(ends):
            if e < len(feat) and i not in out:
                out[i] = feat[e]
    return out


def _match_names(path, header, feat, names):
    """The feature columns ``feat`` put in the order of the training names
    ``names`` (a model's ``feature_names``), by the file's header. Returns
    ``(columns, note)``: the note says when they were reordered. Names missing
    from the file, or columns the model does not know, are an error naming
    them; a file without a header cannot be checked, and a warning says so."""
    if not names:
        return feat, None
    if not header:
        print(f"warning: {path} has no header: its columns cannot be checked against the "
              f"model's feature names; read in the training order "
              f"{_short_list(names, 6)}", file=sys.stderr)
        return feat, None
    have = [header[j].strip() for j in feat]
    missing = [n for n in names if n not in have]
    unexpected = [h for h in have if h not in names]
    if missing or unexpected:
        raise CLIError(f"{path}: the columns do not match the model's features: "
                       + "; ".join(p for p in (
                           f"missing {', '.join(repr(n) for n in missing)}" if missing else "",
                           f"unexpected {', '.join(repr(n) for n in unexpected)}"
                           if unexpected else "") if p)
                       + f" (the model was trained on {len(names)} columns: "
                         f"{', '.join(repr(n) for n in names)})")
    cols = [feat[have.index(n)] for n in names]
    return cols, (None if cols == feat else "columns put in the training order by name")


def load_classify_csv(path, features, label=None):
    """``(labels as str, sequences [T_i, features])`` of a classification CSV."""
    t = read_classify(path, features, label)
    return t.labels, t.seqs


def natural_labels(labels):
    """CSV labels as integers when every one is an integer literal, else as
    the strings read (so a file's ``0, 1, 2`` come back as written)."""
    try:
        ints = [int(v) for v in labels]
    except ValueError:
        return list(labels)
    return ints if all(str(i) == v.lstrip("+") for i, v in zip(ints, labels)) else list(labels)


def summary_classify(path, t, classes=None):
    steps = sorted({len(s) for s in t.seqs})
    span = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    parts = [f"read {path}: {len(t.seqs)} rows"]
    if classes is not None:
        parts.append(f"{len(classes)} classes {_short_list(classes)}")
    parts.append(t.label_how)
    if t.skipped:
        parts.append(_index_note(t.header, t.skipped))
    if t.dropped:
        parts.append(f"dropped {len(t.dropped)} row(s) with missing values (--missing drop: "
                     f"line(s) {_short_list(t.dropped)[1:-1]})")
    if t.order_note:
        parts.append(t.order_note)
    parts.append(f"each row {span} step(s) x {t.features} feature(s) ({t.features_how})")
    return "; ".join(parts)


def _short_list(seq, n=8):
    seq = [str(v) for v in seq]
    return "(" + ", ".join(seq[:n]) + (f", ... {len(seq)} in all" if len(seq) > n else "") + ")"


def read_series(path, column, meta=None):
    """``(series [N, C] float64, column names, how chosen)``: the column(s) of
    ``--column`` (a name, an index, ``a,b`` or ``all``), or the only numeric
    column; several numeric columns and no ``--column`` is an error."""
    header, rows = _read_csv(path)
    first = 2 if header else 1
    ncol = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != ncol:
            raise CLIError(f"bad CSV {path}: line {i + first} has {len(r)} columns, expected {ncol}")
    skip = _index_columns(header, rows)
    numeric = [j for j in range(ncol) if j not in skip
               and all(_is_number(r[j]) for r in rows if r[j].strip())
               and any(r[j].strip() for r in rows)]
    if column is None and meta is not None:            # predict/evaluate: the training columns
        names = meta.get("columns")
        if names and header and all(n in header for n in names):
            cols = [header.index(n) for n in names]
        elif len(numeric) == len(names or [None]) or not numeric:
            cols = numeric
        else:
            raise CLIError(f"{path}: the model was trained on column(s) {names}; this file "
                           f"has {[_col_name(header, j) for j in numeric]}: choose with --column")
        how = "the model's column(s)"
    elif column is None:
        if len(numeric) == 1 or (len(numeric) == 0 and ncol == 1):
            cols = numeric or [0]
            how = "the only numeric column" if ncol > 1 else "the only column"
        else:
            names = ", ".join(_col_name(header, j) for j in numeric) or "none"
            raise CLIError(f"{path} has {len(numeric)} numeric columns ({names}): choose the "
                           "series with --column NAME|INDEX (or --column all for all of them)")
    elif column.strip().lower() == "all":
        cols, how = numeric, "--column all"
        if not cols:
            raise CLIError(f"{path}: no numeric columns")
    else:
        cols = [_column(c.strip(), header, ncol, path, "--column") for c in column.split(",")]
        how = "--column"
    data = []
    for i, r in enumerate(rows):
        data.append([_float(r[c], path, i + first, c + 1) for c in cols])
    names = [header[c] if header else str(c) for c in cols]
    return np.array(data, dtype=np.float64), names, how, [_col_name(header, j) for j in skip]


def _load_series_csv(path, column):
    return read_series(path, column)[0]


def fingerprint(path, **held_out):
    """What a model file keeps of its training file (``meta["data"]``): the
    name, size and SHA-256 of the bytes, and which part was held out
    (``held_out``: ``rows`` data-row numbers, ``rows_from`` the first held-out
    row of a series, ``chars_from`` the first held-out character), so that
    ``fastrnn evaluate`` knows the training file again and scores only that
    part by default."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": os.path.basename(path), "size": os.path.getsize(path),
            "sha256": h.hexdigest(), "held_out": held_out}


def training_file(model, path):
    """``meta["data"]["held_out"]`` when ``path`` holds the bytes the model
    was trained on (same size and SHA-256), else None."""
    d = model.meta.get("data") or {}
    if not d.get("sha256") or not os.path.isfile(path) or os.path.getsize(path) != d.get("size"):
        return None
    return d.get("held_out") if fingerprint(path)["sha256"] == d["sha256"] else None
