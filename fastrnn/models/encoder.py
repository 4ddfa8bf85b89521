"""The sequence encoder that the classifier and the regressor share:
:class:`_SequenceToVector` (recurrent stack over a batch, pooled to one
vector per sequence, then a head), the one rule by which both read arrays
(:data:`INPUT_RULE`), and the preprocessing a model carries (scaler,
feature names, input kind).

The encoder's forward and backward are written once for the host and the
GPU, as the layers' are: what differs (batch layout, copies, last-step
pooling) is a method of an ops object, :class:`_HostEncoderOps` here (the
layers' :class:`~fastrnn.ops.HostOps` and more) or
:class:`fastrnn.models.encoder_device.DeviceEncoderOps` (their
``DeviceOps`` and more) for a model on the GPU."""
from __future__ import annotations

import numpy as np

from .. import _validate
from ..blocks import AttentionPool, Dropout, Embedding, Linear
from ..ops import HostOps
from .base import _Model, _seed, make_recurrent

#: The one rule by which the classifier and the regressor read an array ``x``
#: of features (``F = input_size``); quoted by every method that takes one.
INPUT_RULE = """\
``[B, T, F]`` is a batch of sequences; ``[n, F]`` is ``n`` rows of tabular
data for a model that :meth:`fit` trained on rows (one step each:
:attr:`input_kind` ``"tabular"``). For any other model a 2-D array that could
be one sequence ``[T, F]`` or ``n`` rows is refused, with the reshapes that
say which (``X[None]``: one sequence; ``X[:, None, :]``: rows of one step;
``X[:, :, None]``: univariate sequences), unless ``sequence=True`` (one
sequence) or ``sequence=False`` (one sample per row) says it; ``[B, T]`` with
``T != F = 1`` is ``B`` univariate sequences. One row ``[F]`` (``F > 1``) is
one sample; ``[T]`` is one sequence for a sequence model of 1 feature. A
list of sequences of different lengths is padded. A pandas DataFrame is a
table of rows whose columns are put in the order of :attr:`feature_names` by
name (missing or unexpected names are a ValueError naming them)."""


def _with_input_rule(func):
    """Put :data:`INPUT_RULE` into ``func``'s docstring at its ``{INPUT_RULE}``
    line, indented as that line is."""
    import textwrap
    if not func.__doc__:                  # python -OO strips docstrings
        return func
    lines = func.__doc__.split("\n")
    for k, line in enumerate(lines):
        if line.strip() == "{INPUT_RULE}":
            lines[k] = textwrap.indent(INPUT_RULE, line[:len(line) - len(line.lstrip())])
    func.__doc__ = "\n".join(lines)
    return func


class _HostEncoderOps(HostOps):
    """The array steps of the sequence encoder on host arrays: the layers'
    :class:`~fastrnn.ops.HostOps` plus the batch layout and the last-step
    pooling. :class:`fastrnn.models.encoder_device.DeviceEncoderOps` has the
    same methods for a model on the GPU."""

    @staticmethod
    def batch(x):
        return np.asarray(x)

    @staticmethod
    def lengths(lengths):
        return lengths                 # checked as given: a list's items one by one

    @staticmethod
    def ids_time_major(x):
        return x.T                                                 # [B, T] -> [T, B]

    @staticmethod
    def feature_axis(x):
        return x[:, :, None]                                       # [B, T] -> [B, T, 1]

    @staticmethod
    def time_major(x, dtype):
        return np.ascontiguousarray(x.transpose(1, 0, 2), dtype=dtype)   # [T, B, F]

    @staticmethod
    def pool_last(h_n, D):
        """The top ``D`` rows of ``h_n [L*D, B, H]`` side by side: ``[B, D*H]``."""
        return np.concatenate(list(h_n[-D:]), axis=1)

    @staticmethod
    def unpool_last(dpooled, shape, D, dtype):
        """The gradient of :meth:`pool_last`: zeros of ``shape`` but the top ``D`` rows."""
        dh = np.zeros(shape, dtype)
        H = shape[2]
        for d in range(D):
            dh[shape[0] - D + d] = dpooled[:, d * H:(d + 1) * H]
        return dh

    @staticmethod
    def cast(a, dtype):
        return a.astype(dtype, copy=False)

    @staticmethod
    def batch_major(dx, T_in):
        """``dx [T, B, F]`` as ``[B, T_in, F]``, zero-padded over the trimmed steps."""
        T, B = dx.shape[:2]
        dx = dx.transpose(1, 0, 2)
        if T_in is not None and T_in > T:
            dx = np.concatenate([dx, np.zeros((B, T_in - T, dx.shape[2]), dx.dtype)], axis=1)
        return dx


_HOST_OPS = _HostEncoderOps()


class _SequenceToVector(_Model):
    """Recurrent stack over ``[B, T, F]`` (or token ids ``[B, T]``), pooled
    to one vector per sequence by the last valid step (final hidden state of
    the top layer, both directions) or additive attention, then a head.

    With ``lengths``, a batch runs only to its longest sequence (``x`` is cut
    to ``lengths.max()`` steps; the gradient returned for ``x`` is zero-padded
    back): the steps after every length produce zero outputs, leave the
    states untouched and receive no gradient, so the result is that of the
    whole padded batch, in fewer steps.
    """

    _trim = True       # False runs every padded step (tests compare the two)

    def _build(self, input_size, out_features, hidden_size, num_layers, cell, pooling,
               bidirectional, dropout, attn_size, vocab_size, embed_dim, backend, dtype, rng,
               compute_dtype=None):
        if pooling not in ("last", "attention"):
            raise ValueError(f"pooling must be 'last' or 'attention', got {pooling!r}")
        dt = np.dtype(dtype)
        self.pooling = pooling
        self.embed = None
        if vocab_size is not None:
            if embed_dim is None:
                raise ValueError("embed_dim is required with vocab_size")
            self.embed = Embedding(vocab_size, embed_dim, dtype=dt, rng=rng)
            input_size = embed_dim
        elif input_size is None:
            raise ValueError("give input_size (features) or vocab_size (token ids)")
        self.input_size = int(input_size)
        self.rnn = make_recurrent(cell, input_size, hidden_size, num_layers, dropout,
                                  bidirectional, backend, dt, _seed(rng), compute_dtype)
        D = 2 if bidirectional else 1
        width = D * hidden_size
        self.attn = AttentionPool(width, attn_size, dtype=dt, rng=rng) if pooling == "attention" else None
        self.drop = Dropout(dropout, rng=_seed(rng))
        self.head = Linear(width, out_features, dtype=dt, rng=rng)
        mods = {"rnn": self.rnn, "head": self.head, "drop": self.drop}
        if self.embed is not None:
            mods["embed"] = self.embed
        if self.attn is not None:
            mods["attn"] = self.attn
        self._modules = mods
        if backend == "cuda":
            self.to("cuda")

    # ------------------------------------------- preprocessing carried by the model
    @property
    def scaler(self):
        """The input :class:`fastrnn.data.Standardizer` that :meth:`predict`
        applies to raw features (saved with the model in ``meta["scaler"]``);
        ``None``: inputs are used as given. Set it to a fitted Standardizer
        (or ``None``)."""
        d = self.meta.get("scaler")
        if d is None:
            return None
        from ..data import Standardizer
        return Standardizer.from_dict(d)

    @scaler.setter
    def scaler(self, value):
        self.meta.pop("scaler", None) if value is None else self.meta.__setitem__(
            "scaler", _scaler_dict(value, self.input_size, "scaler"))

    # ------------------------------------------------------- the input rule
    @property
    def input_kind(self):
        """What :meth:`fit` trained the model on: ``"tabular"`` (rows of one
        step of ``input_size`` features), ``"sequence"`` (sequences of
        several steps), or ``None`` (built by hand, or saved before this was
        recorded: read as ``"sequence"``). Saved in ``meta["input"]``."""
        return self.meta.get("input")

    @input_kind.setter
    def input_kind(self, kind):
        if kind not in (None, "tabular", "sequence"):
            raise ValueError(f"input_kind must be 'tabular', 'sequence' or None, got {kind!r}")
        self.meta.pop("input", None) if kind is None else self.meta.__setitem__("input", kind)

    @property
    def feature_names(self):
        """Names of the input features, in the order the model takes them
        (``meta["feature_names"]``: a CSV header's, or a DataFrame's columns
        given to :meth:`fit`), or ``None``. A DataFrame given to ``predict``
        has its columns put in this order by name."""
        names = self.meta.get("feature_names")
        return None if names is None else list(names)

    @feature_names.setter
    def feature_names(self, names):
        if names is None:
            self.meta.pop("feature_names", None)
            return
        names = [str(n) for n in names]
        if len(names) != self.input_size:
            raise ValueError(f"feature_names must list input_size = {self.input_size} names, "
                             f"got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError("feature_names must be unique")
        self.meta["feature_names"] = names

    def _from_frame(self, x, fitting):
        """A pandas DataFrame (anything with ``columns`` and ``to_numpy``) as
        an array: at :meth:`fit` its column names are kept; later its columns
        are put in the training order by name (missing or unexpected names are
        a ValueError naming them)."""
        if not (hasattr(x, "columns") and hasattr(x, "to_numpy")) or self.embed is not None:
            return x
        cols = [str(c) for c in x.columns]
        arr = x.to_numpy(dtype=np.float64)
        if fitting:
            if len(set(cols)) == len(cols) and len(cols) == self.input_size:
                self._fit_names = cols
            return arr
        want = self.feature_names
        if want is None or cols == want:
            return arr
        missing = [n for n in want if n not in cols]
        unexpected = [n for n in cols if n not in want]
        if missing or unexpected:
            raise ValueError(f"x's columns do not match the model's features: missing "
                             f"{missing}, unexpected {unexpected} (trained on {want})")
        return arr[:, [cols.index(n) for n in want]]

    def _as_batch(self, x, lengths, sequence=None, fitting=False):
        """Turn ``x`` into a batch, by the one rule of :data:`INPUT_RULE`.
        Returns ``(x, lengths, unbatched)``; for a model of features ``x`` is
        ``[B, T, input_size]``."""
        if sequence is not None:
            sequence = _validate.boolean("sequence", sequence)
        x = self._from_frame(x, fitting)
        if isinstance(x, (list, tuple)) and len(x) and all(np.ndim(s) >= 1 for s in x):
            ls = {len(s) for s in x}
            if len(ls) > 1:                       # ragged: pad, lengths from the sequences
                if lengths is not None:
                    raise ValueError("lengths cannot be given with a list of sequences of "
                                     "different lengths (they are taken from the list)")
                from ..data import pad_sequences
                if self.embed is not None:
                    return (*pad_sequences(x), False)
                seqs = [np.asarray(s, dtype=np.float64) for s in x]
                seqs = [s[:, None] if s.ndim == 1 and self.input_size == 1 else s for s in seqs]
                return (*pad_sequences(seqs, dtype=np.float64), False)
        x = np.asarray(x)
        one = False
        F = self.input_size
        tabular = self.input_kind == "tabular"
        if self.embed is not None:
            one = x.ndim == 1
            if one:
                x = x[None]
        elif x.ndim == 1:
            if len(x) == F and (F > 1 or sequence is False):
                x, one = x[None, None, :], True           # one row: one step of F features
            elif F == 1 and (sequence or (sequence is None and not tabular)):
                x, one = x[None, :, None], True           # one univariate sequence
            else:
                raise ValueError(self._ambiguous(x.shape) if F == 1 else
                                 f"x of shape {x.shape} must be one row of input_size = {F} "
                                 f"features, or a batch [B, T, {F}]")
        elif x.ndim == 2:
            n, m = x.shape
            if sequence is None:
                if tabular:
                    sequence = False
                elif m == F:                  # one sequence [T, F], or n rows of F features
                    raise ValueError(self._ambiguous(x.shape))
                elif F == 1:
                    sequence = False          # n univariate sequences of m steps: [B, T]
                else:
                    raise ValueError(self._bad_width(x.shape))
            if sequence:
                if m != F:
                    raise ValueError(self._bad_width(x.shape))
                x, one = x[None], True                    # one sequence [T, F]
            elif m == F:
                x = x[:, None, :]                         # n rows of one step each
            elif F == 1:
                x = x[:, :, None]                         # n univariate sequences [B, T]
            else:
                raise ValueError(self._bad_width(x.shape))
        elif x.ndim == 3:
            if x.shape[2] != F:
                raise ValueError(f"x must be [B, T, {F}] (batch, steps, input_size {F}), "
                                 f"got shape {x.shape}")
        else:
            raise ValueError(f"x must be [B, T, {F}], [n, {F}] or [{F}], got shape {x.shape}")
        if one and lengths is not None:
            lengths = np.reshape(np.asarray(lengths), (1,))
        return x, lengths, one

    def _ambiguous(self, shape):
        F = self.input_size
        n = shape[0]
        what = ("was trained on sequences" if self.input_kind == "sequence" else
                "does not know whether it takes rows or sequences (not trained by fit)")
        if len(shape) == 1:
            return (f"x of shape {shape} is ambiguous: this model of 1 feature {what}; "
                    f"pass X[None, :, None] (one sequence of {n} steps) or X[:, None, None] "
                    f"({n} rows), or say sequence=True (one sequence) / sequence=False")
        return (f"x of shape {shape} is ambiguous: this model (input_size {F}) {what}. "
                f"Reshape it: X[None] is one sequence of {n} steps, X[:, None, :] is {n} rows "
                f"of one step of {shape[1]} features each (tabular data), X[:, :, None] is {n} "
                f"sequences of {shape[1]} steps of one feature (needs input_size 1); or say "
                "sequence=True (one sequence) / sequence=False (one sample per row)")

    def _bad_width(self, shape):
        F = self.input_size
        return (f"x of shape {shape} does not fit this model (input_size {F}): give rows "
                f"[n, {F}], one sequence [T, {F}] (sequence=True) or a batch [B, T, {F}]"
                + (" (as it was trained on rows of one step)" if self.input_kind == "tabular"
                   else ""))

    def _note_input(self, x):
        """At :meth:`fit`: remember whether ``x`` (``[B, T, F]``) held rows of
        one step (``"tabular"``) or sequences, and a DataFrame's column names."""
        if self.embed is None:
            self.input_kind = "tabular" if np.shape(x)[1] == 1 else "sequence"
        names = getattr(self, "_fit_names", None)
        self._fit_names = None
        if names is not None:
            self.feature_names = names

    def _preprocess(self, x, lengths):
        """Apply the model's input scaler (if any) to raw batch-major ``x``;
        padded steps (after ``lengths``) stay zero."""
        sc = self.scaler if self.embed is None else None
        if sc is None:
            return x
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        z = sc.transform(x)
        if lengths is not None and z.ndim == 3:
            lengths = _validate.lengths(lengths, z.shape[1], z.shape[0])
            z[np.arange(z.shape[1])[None, :] >= lengths[:, None]] = 0
        return z.astype(self.dtype)

    def _infer(self, x, lengths):
        """Forward in eval mode (the inference kernels) on prepared input."""
        was = self.training
        self.eval()
        try:
            return self.forward(x, lengths)
        finally:
            self.train(was)

    def _array_ops(self):
        """The array steps of :meth:`_encode` and :meth:`_backward_encode`
        where the model is: :data:`_HOST_OPS`, or the device's
        (:mod:`fastrnn.models.encoder_device`, loaded for a model on the GPU)."""
        if self.device == "cuda":
            from .encoder_device import device_ops
            return device_ops()
        return _HOST_OPS

    def _encode(self, x, lengths):
        """The pooled and projected batch ``[B, out_features]``, host or
        device: on the GPU a host batch is cut to its longest sequence and
        copied over once (a device batch is taken as it is)."""
        ops = self._array_ops()
        x = ops.batch(x)
        shape = tuple(x.shape)
        T_in = shape[1] if len(shape) >= 2 else None
        if lengths is not None:
            # integers in [1, T] only: floats are not truncated, bools not taken as 1
            lengths = ops.lengths(lengths)
            lengths = (_validate.lengths(lengths, shape[1], shape[0]) if len(shape) >= 2
                       else np.asarray(lengths))
            if self._trim and len(shape) >= 2 and lengths.size and 1 <= lengths.max() < shape[1]:
                # run only to the batch's longest sequence: the steps after it
                # change nothing (outputs zero, states untouched, no gradient)
                x = x[:, :int(lengths.max())]
                shape = tuple(x.shape)
        if self.embed is not None:
            if len(shape) != 2:
                raise ValueError(f"x must be token ids [B, T], got shape {shape}")
            e = self.embed(ops.ids_time_major(x))                  # [T, B, E]
        else:
            if len(shape) == 2:
                x, shape = ops.feature_axis(x), shape + (1,)
            if len(shape) != 3:
                raise ValueError(f"x must be [B, T, F], got shape {shape}")
            e = ops.time_major(x, self.rnn.dtype)                  # [T, B, F]
        T, B = e.shape[:2]
        y, state = self.rnn(e, None, lengths)                      # [T, B, D*H]
        h_n = state[0] if isinstance(state, tuple) else state      # [L*D, B, H]
        if self.pooling == "attention":
            pooled = self.attn(y, lengths)                         # [B, D*H]
        else:
            pooled = ops.pool_last(h_n, self.rnn.num_directions)   # [B, D*H]
        self._shape = (T, B, y.shape[2], tuple(h_n.shape))
        self._T_in = T_in                                          # x's length before trimming
        return self.head(self.drop(pooled))

    def _backward_encode(self, dout, retain_graph=False):
        """Back-propagate ``dout [B, out_features]`` of the last
        :meth:`_encode`; returns dL/dx ``[B, T, F]`` (zero over trimmed
        steps), or ``None`` for token ids."""
        ops = self._array_ops()
        dpooled = self.drop.backward(self.head.backward(dout))     # [B, D*H]
        T, B, W, sshape = self._shape
        dt = self.rnn.dtype
        if self.pooling == "attention":
            dy = ops.cast(self.attn.backward(dpooled), dt)
            dstate = None
        else:
            dy = ops.zeros((T, B, W), dt)
            dh = ops.unpool_last(dpooled, sshape, self.rnn.num_directions, dt)
            dstate = (dh, None) if self.rnn.cell.has_cell else dh
        dx, _ = self.rnn.backward(dy, dstate, retain_graph=retain_graph)
        if self.embed is not None:
            self.embed.backward(dx)
            return None
        return ops.batch_major(dx, getattr(self, "_T_in", T))     # [B, T_in, F]

    @staticmethod
    def _unpack(batch):
        x, y = batch[0], batch[1]
        lengths = batch[2] if len(batch) > 2 else None
        return x, y, lengths


def _scaler_dict(value, size, name):
    d = value.to_dict() if hasattr(value, "to_dict") else dict(value)
    for k in ("mean", "std"):
        v = np.atleast_1d(np.asarray(d[k], dtype=np.float64))
        if v.ndim != 1 or len(v) not in (1, size) or not np.isfinite(v).all():
            raise ValueError(f"{name}.{k} must hold 1 or {size} finite values, got shape {v.shape}")
    return {"mean": np.atleast_1d(np.asarray(d["mean"], float)).tolist(),
            "std": np.atleast_1d(np.asarray(d["std"], float)).tolist()}

