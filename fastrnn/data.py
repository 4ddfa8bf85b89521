"""Data preparation: padding with lengths, bucketing, standardisation,
sliding windows, vocabularies and mini-batch iterators.

Arrays produced here are batch-major ``(B, T, ...)`` like Keras'
``pad_sequences``; the models transpose to time-major ``(T, B, ...)``.
Every shuffle takes a seeded :class:`numpy.random.Generator`.
"""
from __future__ import annotations

import collections
import csv
import os
import re

import numpy as np

from . import _validate

__all__ = [
    "pad_sequences", "bucket_batches", "Standardizer", "sliding_windows",
    "CharVocab", "WordVocab", "ArrayBatches", "LMBatches", "train_val_split",
    "shard_range", "read_csv_rows",
]


def pad_sequences(seqs, maxlen=None, padding="post", truncating="post",
                  value=0, dtype=None):
    """Pad (or truncate) a list of sequences to one length.

    seqs : list of array-likes, each ``(len_i,)`` or ``(len_i, F)``
    maxlen : final length (default: the longest sequence)
    padding, truncating : ``"post"`` (at the end) or ``"pre"`` (at the start)

    Returns ``(padded (B, maxlen, ...), lengths (B,) int64)`` where
    ``lengths[b]`` is the number of real items kept. The layers' ``lengths``
    argument assumes the real items come first, i.e. ``padding="post"``.
    """
    for name, v in (("padding", padding), ("truncating", truncating)):
        if v not in ("pre", "post"):
            raise ValueError(f"{name} must be 'pre' or 'post', got {v!r}")
    seqs = [np.asarray(s) for s in seqs]
    if not seqs:
        raise ValueError("seqs is empty")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("seqs contains an empty sequence")
    tail = seqs[0].shape[1:]
    if any(s.shape[1:] != tail for s in seqs):
        raise ValueError("all sequences must have the same feature shape")
    if maxlen is None:
        maxlen = max(len(s) for s in seqs)
    if dtype is None:
        dtype = np.result_type(*[s.dtype for s in seqs])
    out = np.full((len(seqs), maxlen) + tail, value, dtype=dtype)
    lengths = np.empty(len(seqs), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = s[:maxlen] if truncating == "post" else s[max(len(s) - maxlen, 0):]
        n = len(s)
        lengths[b] = n
        if padding == "post":
            out[b, :n] = s
        else:
            out[b, maxlen - n:] = s
    return out, lengths


def bucket_batches(lengths, batch_size, rng=None, shuffle=True, bucket_size=None):
    """Group indices into batches of similar length (less padding).

    Indices are sorted by length within windows of ``bucket_size`` (default
    ``50 * batch_size``) after a shuffle, cut into batches, and the batches are
    shuffled. Returns a list of int arrays.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    idx = rng.permutation(n) if shuffle else np.arange(n)
    bucket_size = bucket_size or 50 * batch_size
    batches = []
    for s in range(0, n, bucket_size):
        chunk = idx[s:s + bucket_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


class Standardizer:
    """Per-feature ``(x - mean) / std``, fitted on the training split only."""

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def fit(self, x, axis=None):
        """Fit on ``x``; statistics over every axis but the last by default."""
        x = np.asarray(x, dtype=np.float64)
        if axis is None:
            axis = tuple(range(x.ndim - 1)) if x.ndim > 1 else 0
        self.mean = x.mean(axis=axis)
        std = x.std(axis=axis)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _check(self):
        if self.mean is None:
            raise RuntimeError("Standardizer is not fitted")

    def transform(self, x):
        self._check()
        x = np.asarray(x)
        dt = x.dtype if x.dtype.kind == "f" else np.float64
        return ((x - self.mean) / self.std).astype(dt)

    def fit_transform(self, x, axis=None):
        return self.fit(x, axis).transform(x)

    def inverse_transform(self, z):
        self._check()
        z = np.asarray(z)
        return (z * self.std + self.mean).astype(z.dtype if z.dtype.kind == "f" else np.float64)

    def to_dict(self):
        self._check()
        return {"mean": np.atleast_1d(self.mean).tolist(), "std": np.atleast_1d(self.std).tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["std"])


def sliding_windows(series, window, horizon=1, stride=1):
    """Cut a series into supervised pairs.

    series : ``(N,)`` or ``(N, F)``
    Returns ``X (M, window, F)`` and ``Y (M, horizon, F)`` with
    ``X[m] = series[s : s+window]`` and ``Y[m] = series[s+window : s+window+horizon]``
    for ``s = m * stride``.
    """
    s = np.asarray(series)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"series must be (N,) or (N, F), got {s.shape}")
    window = _validate.positive_int("window", window)
    horizon = _validate.positive_int("horizon", horizon)
    stride = _validate.positive_int("stride", stride)
    n = len(s)
    starts = np.arange(0, n - window - horizon + 1, stride)
    if len(starts) == 0:
        raise ValueError(f"series of length {n} is too short for window {window} "
                         f"+ horizon {horizon}")
    X = np.stack([s[i:i + window] for i in starts])
    Y = np.stack([s[i + window:i + window + horizon] for i in starts])
    return X, Y


def train_val_split(n, val_fraction=0.1, rng=None, shuffle=True):
    """Return ``(train_idx, val_idx)`` index arrays for ``n`` items."""
    idx = np.arange(n)
    if shuffle:
        idx = (rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)).permutation(n)
    n_val = int(round(n * val_fraction))
    return idx[n_val:], idx[:n_val]


# ------------------------------------------------------------ vocabularies
class _Vocab:
    unk = "<unk>"

    def __init__(self, tokens):
        self.itos = list(tokens)
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    def __contains__(self, tok):
        return tok in self.stoi

    def to_dict(self):
        return {"kind": type(self).__name__, "itos": self.itos}

    @staticmethod
    def from_dict(d):
        cls = {"CharVocab": CharVocab, "WordVocab": WordVocab}[d["kind"]]
        v = cls.__new__(cls)
        _Vocab.__init__(v, d["itos"])
        return v

    def _ids(self, toks):
        unk = self.stoi.get(self.unk)
        out = np.empty(len(toks), dtype=np.int64)
        for k, t in enumerate(toks):
            i = self.stoi.get(t, unk)
            if i is None:
                raise KeyError(f"token {t!r} is not in the vocabulary (and no {self.unk})")
            out[k] = i
        return out


class CharVocab(_Vocab):
    """Character vocabulary (sorted characters, plus ``<unk>`` for unseen
    ones when ``unk=True``)."""

    def __init__(self, text=None, unk=True, min_count=1, tokens=None):
        if tokens is None:
            if not text:
                raise ValueError("cannot build a vocabulary from an empty text")
            counts = collections.Counter(text)
            tokens = sorted(c for c, k in counts.items() if k >= min_count)
            if unk:
                tokens = [self.unk] + tokens
        super().__init__(tokens)

    def encode(self, text):
        return self._ids(list(text))

    def decode(self, ids):
        return "".join("?" if self.itos[i] == self.unk else self.itos[i] for i in np.asarray(ids).ravel())


_WORD_RE = re.compile(r"\w+|[^\w\s]")


class WordVocab(_Vocab):
    """Word vocabulary: lower-cased words and punctuation, the ``max_size``
    most frequent (ties broken alphabetically), plus ``<pad>``, ``<unk>``."""

    pad = "<pad>"

    def __init__(self, texts=None, max_size=None, min_count=1, lower=True, tokens=None):
        self.lower = lower
        if tokens is None:
            if isinstance(texts, str):
                texts = [texts]
            counts = collections.Counter()
            for t in texts or ():
                counts.update(self.tokenize(t))
            if not counts:
                raise ValueError("cannot build a vocabulary from an empty text")
            words = sorted((w for w, k in counts.items() if k >= min_count),
                           key=lambda w: (-counts[w], w))
            if max_size is not None:
                words = words[:max_size]
            tokens = [self.pad, self.unk] + words
        super().__init__(tokens)

    def tokenize(self, text):
        if getattr(self, "lower", True):
            text = text.lower()
        return _WORD_RE.findall(text)

    def encode(self, text):
        return self._ids(self.tokenize(text))

    def decode(self, ids):
        return " ".join(self.itos[i] for i in np.asarray(ids).ravel() if self.itos[i] != self.pad)


# --------------------------------------------------------------- batching
def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The part ``[lo, hi)`` of ``n`` items that process ``rank`` of
    ``world`` takes: contiguous blocks in rank order, sizes differing by at
    most one (``lo = rank * n // world``), so the shards of all ranks,
    concatenated in rank order, are the ``n`` items in their order.

    Parameters
    ----------
    n : int
        Number of items (rows of a batch, rows of a prediction input).
    rank : int
        This process's index, ``0 <= rank < world``.
    world : int
        Number of processes.

    Returns
    -------
    tuple of int
        ``(lo, hi)``; empty (``lo == hi``) when ``n < world`` for some ranks.
    """
    n = _validate.nonneg_int("n", n)
    rank, world = _rank_world(rank, world)
    return rank * n // world, (rank + 1) * n // world


def _rank_world(rank, world):
    world = _validate.positive_int("world", world)
    rank = _validate.nonneg_int("rank", rank)
    if rank >= world:
        raise ValueError(f"rank must be in [0, world), got rank {rank} with world {world}")
    return rank, world


class ArrayBatches:
    """Mini-batches over aligned arrays (first axis = samples).

    ``batches(rng)`` yields tuples ``(arrays[0][idx], arrays[1][idx], ...)``
    (with ``lengths[idx]`` appended when ``lengths`` is given); shuffled with
    ``rng`` when ``shuffle``; grouped by length when ``bucket``.

    ``trim`` (with ``lengths``): cut the time axis (axis 1 of batch-major
    ``(B, T, ...)``) of ``arrays[0]`` to the batch's own longest sequence, so
    a batch of sequences no longer than 26 in a set padded to 104 runs 26
    steps, not 104 (with ``bucket=True`` most batches are short). Steps past
    every length change nothing in the models (their outputs are zero and
    they leave the state untouched), so the results are those of the
    untrimmed batch. A tuple of positions (``trim=(0, 1)``) names the arrays
    to cut (e.g. per-step targets too); ``trim=False`` keeps the padding.
    Assumes post-padding (real items first), as ``lengths`` does.

    ``rank``/``world`` (data-parallel training, :mod:`fastrnn.distributed`):
    every process draws the same global batches of ``batch_size`` samples
    (the same ``rng`` state gives the same shuffle) and yields only its
    shard of each, rows :func:`shard_range` ``(len(batch), rank, world)``;
    so the ranks together see every sample exactly once per epoch, and all
    of them step through :func:`len` batches. ``batch_size`` is the
    *global* batch: the same command trains the same model at any world
    size. A shard can be empty (a last batch smaller than ``world``): it is
    yielded with zero rows, and :class:`fastrnn.distributed.DistributedTrainer`
    counts it as contributing nothing.
    """

    def __init__(self, *arrays, batch_size=32, lengths=None, shuffle=True,
                 bucket=False, drop_last=False, trim=True, rank=0, world=1):
        _validate.positive_int("batch_size", batch_size)
        for name, v in (("shuffle", shuffle), ("bucket", bucket), ("drop_last", drop_last)):
            _validate.boolean(name, v)
        if not arrays:
            raise ValueError("give at least one array")
        n = len(arrays[0])
        if any(len(a) != n for a in arrays) or (lengths is not None and len(lengths) != n):
            raise ValueError("all arrays must have the same number of samples")
        if n == 0:
            raise ValueError("no samples")
        self.arrays = [np.asarray(a) for a in arrays]
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size, self.shuffle, self.bucket, self.drop_last = (
            int(batch_size), shuffle, bucket, drop_last)
        if trim is True:
            trim = (0,)
        self.trim = tuple(int(i) for i in trim) if trim else ()
        for i in self.trim:
            if not 0 <= i < len(self.arrays):
                raise ValueError(f"trim names array {i}, but there are {len(self.arrays)}")
        self.n = n
        self.rank, self.world = _rank_world(rank, world)

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _index_batches(self, rng):
        if self.bucket and self.lengths is not None:
            out = bucket_batches(self.lengths, self.batch_size, rng, self.shuffle)
        else:
            idx = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            out = [idx[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return out

    def batches(self, rng=None):
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        for idx in self._index_batches(rng):
            if self.world > 1:
                idx = idx[slice(*shard_range(len(idx), self.rank, self.world))]
            cut = None
            if self.lengths is not None and self.trim and len(idx):
                cut = int(self.lengths[idx].max())
            b = tuple(a[idx, :cut] if (cut is not None and k in self.trim and a.ndim >= 2
                                       and 1 <= cut < a.shape[1]) else a[idx]
                      for k, a in enumerate(self.arrays))
            if self.lengths is not None:
                b = b + (self.lengths[idx],)
            yield b

    def __iter__(self):
        return self.batches(np.random.default_rng(0))


class LMBatches:
    """Language-model chunks for truncated BPTT.

    The token stream is cut into ``batch_size`` contiguous rows; chunk ``k``
    yields ``(x [T, B], y [T, B])`` with ``y`` the next tokens, so row ``b`` of
    chunk ``k+1`` continues row ``b`` of chunk ``k`` and the recurrent state can
    be carried across chunks. ``batches(rng)`` ignores ``rng`` (order matters).

    ``rank``/``world`` (data-parallel training, :mod:`fastrnn.distributed`):
    ``batch_size`` is the global number of rows; process ``rank`` keeps the
    rows :func:`shard_range` ``(batch_size, rank, world)`` (columns of every
    chunk), so the ranks together cover every token exactly once per epoch
    and each carries the state of its own rows. ``batch_size >= world``.
    """

    stateful = True

    def __init__(self, ids, batch_size, bptt, rank=0, world=1):
        _validate.positive_int("batch_size", batch_size)
        _validate.positive_int("bptt", bptt)
        rank, world = _rank_world(rank, world)
        if batch_size < world:
            raise ValueError(f"batch_size {batch_size} is smaller than world {world}: every "
                             "rank needs at least one row of the token stream")
        ids = np.asarray(ids, dtype=np.int64)
        n = (len(ids) - 1) // batch_size
        if n < 1:
            raise ValueError(f"{len(ids)} tokens are too few for batch_size {batch_size}")
        lo, hi = shard_range(batch_size, rank, world)
        self.x = ids[:n * batch_size].reshape(batch_size, n)[lo:hi].T.copy()        # [N, B_r]
        self.y = ids[1:n * batch_size + 1].reshape(batch_size, n)[lo:hi].T.copy()   # [N, B_r]
        self.bptt, self.batch_size = int(bptt), int(batch_size)
        self.rank, self.world = rank, world
        self.n_steps = n

    def __len__(self):
        return -(-self.n_steps // self.bptt)

    def batches(self, rng=None):
        for s in range(0, self.n_steps, self.bptt):
            yield self.x[s:s + self.bptt], self.y[s:s + self.bptt]

    def __iter__(self):
        return self.batches()


# ----------------------------------------------------------------- CSV files
def _is_number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _has_header(rows):
    """Is the first row a header? Yes when some column holds a name above
    numbers (empty cells are no evidence either way; a column of text labels
    says nothing), or when the file is that one row of text."""
    first, rest = rows[0], rows[1:]
    if not rest:
        return any(c.strip() and not _is_number(c) for c in first)
    for j, c in enumerate(first):
        if not c.strip() or _is_number(c):
            continue
        below = [r[j] for r in rest if j < len(r) and r[j].strip()]
        if below and all(_is_number(v) for v in below):
            return True
    return False


def read_csv_rows(path):
    """Read a CSV file: returns ``(header, rows)``.

    ``header`` is the first row's cells (stripped) when that row is a header,
    else ``None``; ``rows`` are the data rows as lists of strings, blank lines
    (and rows of only blank cells) dropped. The first row is a header when
    some column has a name above numbers, so a text label column, wherever it
    is, does not turn the first row of data into a header; a file of one row
    of text is a header alone. The cells are not converted: the caller picks
    its columns and parses them.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` when ``path`` is not a
    file, and ``ValueError`` when it holds no CSV rows or a header but no data
    rows. Every message names ``path``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a CSV file")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty: no CSV rows")
    header = None
    if _has_header(rows):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    return header, rows
