"""The sequence classifier: :class:`SequenceClassifier` (class labels kept
with the model, probabilities, accuracy, streams)."""
from __future__ import annotations

import numpy as np

from .. import _device, _validate
from ..blocks import as_rng, softmax_cross_entropy
from .base import _compute_dtype, _dtype_name, _register, _short
from .encoder import _SequenceToVector, _with_input_rule
from .fit import fit as _fit


@_register
class SequenceClassifier(_SequenceToVector):
    """Sequence classification: recurrent stack, pooling (``"last"`` valid
    step or ``"attention"``), linear head to ``num_classes`` logits.

    The attention LSTM in one line:
    ``SequenceClassifier(input_size=F, num_classes=C, cell="lstm", pooling="attention")``.
    ``forward(x [B, T, F] | ids [B, T], lengths=None) -> logits [B, C]``.
    :meth:`fit` sets :attr:`classes` (any labels) and :attr:`scaler`, so that
    :meth:`predict` takes raw features and returns the original labels.
    ``fit``, ``predict``, ``predict_proba`` and ``score`` read arrays by one
    rule (:data:`INPUT_RULE`): a model trained on tabular rows takes ``[n, F]``
    as ``n`` rows; any other refuses an ambiguous 2-D array unless
    ``sequence=True/False`` says how to read it.

    Parameters
    ----------
    num_classes : int
        ``C``, the number of classes (logits per sequence).
    input_size : int, optional
        ``F``, features per time step; required unless ``vocab_size`` is given.
    hidden_size : int, default 64
        Hidden units per recurrent layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    cell : str, default "lstm"
        The recurrent cell: ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
        ``"rnn_tanh"`` (or ``"rnn"``), ``"rnn_relu"``, ``"peephole"``
        (``"peephole_diagonal"``) or ``"peephole_full"`` (see :data:`CELL_TYPES`).
    pooling : {"last", "attention"}, default "last"
        How a sequence becomes one vector: the top layer's state at the last
        valid step (both directions), or additive attention over the valid
        steps (:class:`fastrnn.blocks.AttentionPool`).
    bidirectional : bool, default False
        Bidirectional recurrent layers.
    dropout : float in [0, 1), default 0.0
        Dropout between recurrent layers and before the head (training only).
    attn_size : int, optional
        Width ``A`` of the attention's hidden layer (default: the pooled width
        ``D*H``); only with ``pooling="attention"``.
    vocab_size : int, optional
        Inputs are token ids ``[B, T]`` embedded first (then ``embed_dim`` is
        required and ``input_size`` unused).
    embed_dim : int, optional
        Width of the token embedding, with ``vocab_size``.
    backend : {"auto", "numpy", "cpu", "cuda"}, default "auto"
        Where the recurrent layers run (see :class:`fastrnn.LSTM`).
    dtype : {"float32", "float64"}, default "float32"
        Parameter dtype (inputs are converted to it).
    seed : int or None, default None
        Seeds the initial weights and the dropout masks.
    compute_dtype : {None, "bfloat16"}, default None
        ``"bfloat16"``: the recurrent layers' matrix products take bfloat16
        operands, summed in float32 (float32 models on the CPU; see
        :attr:`fastrnn.LSTM.compute_dtype`). Parameters, gradients and the
        optimizer state stay float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import SequenceClassifier
    >>> X = np.random.default_rng(0).standard_normal((40, 6, 3))   # (B, T, F)
    >>> y = np.where(X[:, 0, 0] > 0, "up", "down")
    >>> model = SequenceClassifier(2, input_size=3, hidden_size=8, seed=0)
    >>> model = model.fit(X, y, epochs=2)
    >>> sorted(model.classes), model.predict(X[:2]).shape
    (['down', 'up'], (2,))
    """

    loss_unit = "nats per sequence"     # cross-entropy (history files say so)

    def __init__(self, num_classes: int, input_size: int | None = None, hidden_size: int = 64,
                 num_layers: int = 1, cell: str = "lstm", pooling: str = "last",
                 bidirectional: bool = False, dropout: float = 0.0,
                 attn_size: int | None = None, vocab_size: int | None = None,
                 embed_dim: int | None = None, backend: str = "auto",
                 dtype: str = "float32", seed: int | None = None,
                 compute_dtype: str | None = None) -> None:
        _validate.model_args(dict(num_classes=num_classes, hidden_size=hidden_size,
                                  num_layers=num_layers),
                             dict(input_size=input_size, attn_size=attn_size, vocab_size=vocab_size,
                                  embed_dim=embed_dim),
                             dropout=dropout, bidirectional=bidirectional, seed_=seed, dtype=dtype)
        compute_dtype = _compute_dtype(compute_dtype, dtype, backend)
        super().__init__(dict(num_classes=int(num_classes), input_size=input_size,
                              hidden_size=int(hidden_size), num_layers=int(num_layers),
                              cell=cell, pooling=pooling, bidirectional=bool(bidirectional),
                              dropout=float(dropout), attn_size=attn_size,
                              vocab_size=vocab_size, embed_dim=embed_dim, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed, compute_dtype=compute_dtype))
        self.num_classes = int(num_classes)
        self._build(input_size, num_classes, hidden_size, num_layers, cell, pooling,
                    bidirectional, dropout, attn_size, vocab_size, embed_dim, backend,
                    dtype, as_rng(seed), compute_dtype)

    def forward(self, x, lengths=None):
        """Logits ``[B, C]`` of prepared input (no scaler, no label mapping:
        :meth:`predict` does those).

        Parameters
        ----------
        x : array ``[B, T, F]`` (``[B, T]`` when ``F = 1``), or token ids ``[B, T]``
            Batch-major; a batch, always (use :meth:`predict` for the other
            shapes of :data:`INPUT_RULE`).
        lengths : int array ``[B]``, optional
            Valid steps of each padded sequence.

        In training mode the pass is kept for :meth:`backward`.
        """
        return self._encode(x, lengths)

    __call__ = forward

    def backward(self, dlogits, retain_graph=False):
        """Back-propagate ``dlogits [B, C]`` of the last forward; returns dL/dx
        (``None`` for token ids). A second call needs ``retain_graph=True``
        in the first (``batch_loss`` keeps the graph for one more call)."""
        return self._backward_encode(dlogits, retain_graph)

    # ---------------------------------------------------------------- labels
    @property
    def classes(self):
        """The original labels, ``classes[k]`` for class index ``k`` (saved in
        ``meta["classes"]``), or ``None``: :meth:`predict` then returns class
        indices. Strings, integers or floats; :meth:`fit` sets them."""
        c = self.meta.get("classes")
        return None if c is None else list(c)

    @classes.setter
    def classes(self, labels):
        if labels is None:
            self.meta.pop("classes", None)
            return
        labels = [_plain(v) for v in labels]
        if len(labels) != self.num_classes:
            raise ValueError(f"classes must list num_classes = {self.num_classes} labels, "
                             f"got {len(labels)}")
        if len(set(labels)) != len(labels):
            raise ValueError("classes must be unique")
        self.meta["classes"] = labels

    def encode_labels(self, y):
        """Class indices ``[B]`` of original labels ``y`` (see :attr:`classes`);
        an unknown label is a ValueError naming it."""
        c = self.classes
        if c is None:
            return _labels_or_hint(y, self.num_classes)
        index = {v: i for i, v in enumerate(c)}
        out = np.empty(np.shape(y)[0] if np.ndim(y) else 1, dtype=np.int64)
        for k, v in enumerate(np.atleast_1d(np.asarray(y, dtype=object))):
            try:
                out[k] = index[_plain(v)]
            except (KeyError, TypeError):
                raise ValueError(f"label {v!r} is not one of the model's classes "
                                 f"{_short(c)}") from None
        return out

    def _targets(self, y):
        """Labels of a training batch: class indices, or original labels
        (strings...) mapped through :attr:`classes`."""
        kind = np.asarray(y).dtype.kind
        if self.classes is not None and kind not in "iufb":
            return self.encode_labels(y)
        return _labels_or_hint(y, self.num_classes)

    def batch_loss(self, batch, train=True):
        """``batch = (x, labels [B]) or (x, labels, lengths)``; labels are class
        indices, or original labels when :attr:`classes` is set."""
        x, y, lengths = self._unpack(batch)
        y = _validate.class_labels(self._targets(y), "y (class labels)", self.num_classes, len(x))
        logits = self.forward(x, lengths)
        loss, d = softmax_cross_entropy(logits, np.asarray(y), grad=train,
                                        out=logits if train else None)
        if train:
            self.backward(d, retain_graph=True)      # a caller may ask for dL/dx after
            self._scored = None
        else:
            self._scored = (batch, _device.to_host(logits).argmax(axis=1))   # for batch_metrics
        return loss, len(y)

    def batch_metrics(self, batch):
        """Accuracy on a batch (for the Trainer); reuses the predictions of a
        ``batch_loss(batch, train=False)`` call on the same batch object
        instead of running the network again."""
        x, y, lengths = self._unpack(batch)
        scored = getattr(self, "_scored", None)
        if scored is not None and scored[0] is batch and not self.training:
            pred = scored[1]
        else:
            pred = _device.to_host(self._infer(x, lengths)).argmax(axis=1)   # prepared input
        self._scored = None
        return {"accuracy": float(np.mean(pred == self._targets(y)))}

    @_with_input_rule
    def predict_proba(self, x, lengths=None, *, sequence=None):
        """Class probabilities ``[B, C]`` (``[C]`` for one unbatched sequence).

        Parameters
        ----------
        x : array_like
            Raw features (the model's :attr:`scaler` is applied), or token ids
            ``[B, T]`` (``[T]``: one sequence) for a model with an embedding.
            The rule for arrays of features (:data:`INPUT_RULE`):

            {INPUT_RULE}

        lengths : array_like of int, optional
            ``[B]`` valid steps of each padded sequence.
        sequence : bool, optional
            How to read a 2-D ``x``: ``True`` one sequence ``[T, F]``,
            ``False`` one sample per row; ``None`` (default) by the rule.

        Returns
        -------
        ndarray of float64
            Column ``k`` is the probability of ``classes[k]``.
        """
        x, lengths, one = self._as_batch(x, lengths, sequence)
        z = _device.to_host(self._infer(self._preprocess(x, lengths), lengths)).astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        return p[0] if one else p

    def predict(self, x, lengths=None, *, sequence=None):
        """Predicted labels ``[B]`` (one label for an unbatched sequence): the
        original labels of :attr:`classes` when set, else class indices.
        ``x``, ``lengths`` and ``sequence`` as in :meth:`predict_proba`: a
        model trained on rows takes ``[n, F]`` as ``n`` rows (``n`` labels);
        any other model refuses an ambiguous 2-D array unless ``sequence=``
        says how to read it (see :data:`INPUT_RULE`).

        Examples
        --------
        >>> clf.fit(X, ["cat", "dog", ...])        # doctest: +SKIP
        >>> clf.predict(X[:2])                      # doctest: +SKIP
        array(['cat', 'dog'], dtype='<U3')
        """
        idx = self.predict_proba(x, lengths, sequence=sequence).argmax(axis=-1)
        c = self.classes
        return idx if c is None else np.asarray(c)[idx]

    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.ModelStream`: ``s.step(x_t) ->
        probabilities`` ``(B, C)`` (``(C,)`` for one step ``(I,)``) of the
        sequence fed so far, as :meth:`predict_proba` gives for it, the state
        kept between calls (raw features: the :attr:`scaler` is applied;
        token ids for a model with an embedding). Last-step pooling only:
        attention pools over every step, which a stream has not seen yet.

        The weights and scaler are a snapshot: call ``s.refresh()`` after
        training or loading. The returned array is a buffer the next step
        overwrites."""
        if self.pooling != "last":
            raise ValueError(f"a classifier with pooling={self.pooling!r} cannot stream: "
                             "attention weighs every step of the sequence, which a stream "
                             "has not seen yet; use pooling='last'")
        from ..stream import ModelStream
        return ModelStream(self, "classifier", batch_size)

    def score(self, x, y, lengths=None, *, sequence=None):
        """Accuracy of :meth:`predict` against the labels ``y`` (original
        labels when :attr:`classes` is set); ``x``, ``lengths`` and
        ``sequence`` as in :meth:`predict_proba` (:data:`INPUT_RULE`)."""
        pred = np.atleast_1d(self.predict(x, lengths, sequence=sequence))
        y = np.atleast_1d(np.asarray(y))
        if len(y) != len(pred):
            raise ValueError(f"y has {len(y)} labels for {len(pred)} sequences")
        return float(np.mean([_plain(a) == _plain(b) for a, b in zip(pred, y)]))

    def fit(self, x, y, lengths=None, *, epochs=10, batch_size=32, lr=3e-3, optimizer="adam",
            val_fraction=0.1, standardize=True, clip_norm=1.0, seed=0, progress=False,
            sequence=None, **trainer_kwargs):
        """Train on raw data with the model's own preprocessing, keeping it.

        Sets :attr:`classes` from ``y`` (sorted; any labels: strings,
        integers...), fits :attr:`scaler` on the training split's valid steps
        (``standardize``), then trains with :class:`fastrnn.train.Trainer`
        (``val_fraction`` of the rows held out for validation). Afterwards
        :meth:`predict` takes raw inputs and returns the original labels, and
        :meth:`save` keeps both.

        Parameters
        ----------
        x : array_like
            ``[B, T, F]`` sequences, a list of sequences ``[T_i, F]``,
            ``[B, T]`` (``F = 1``), or tabular rows ``[n, F]`` (a DataFrame
            too: its column names are kept in :attr:`feature_names`). The
            model records which it was (:attr:`input_kind`: ``"tabular"``
            when every sample is one step), and later calls read 2-D arrays
            by that (:data:`INPUT_RULE`).
        y : array_like
            ``[B]`` labels.
        lengths : array_like of int, optional
            ``[B]`` valid steps when ``x`` is padded.
        epochs, batch_size, lr, optimizer, clip_norm, seed, progress
            As for :class:`fastrnn.train.Trainer` and
            :func:`fastrnn.optim.get_optimizer`.

        Returns
        -------
        self
            With ``history`` (the Trainer's history) and ``trainer``.
        """
        return _fit(self, x, y, lengths, sequence=sequence, unit="seq",
                    unbatched="fit needs a batch of sequences or rows, got one unbatched "
                              "sequence: give [B, T, F] sequences or [n, F] rows",
                    epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                    val_fraction=val_fraction, standardize=standardize, clip_norm=clip_norm,
                    seed=seed, progress=progress, trainer_kwargs=trainer_kwargs)

    def _fit_targets(self, x, y):
        """:meth:`fit`'s labels: checked against ``x``, :attr:`classes` set
        from them (sorted) unless already set; returns ``(x, class indices)``."""
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} sequences but y has {len(y)} labels")
        self._note_input(x)
        if self.classes is None:
            uniq = np.unique(y).tolist()
            if len(uniq) == self.num_classes:
                self.classes = uniq
            elif (y.dtype.kind in "iu" and len(uniq) < self.num_classes and min(uniq) >= 0
                  and max(uniq) < self.num_classes):
                self.classes = list(range(self.num_classes))
            else:
                raise ValueError(f"y has {len(uniq)} distinct labels but the model has "
                                 f"num_classes = {self.num_classes}")
        return x, self.encode_labels(y)

    @staticmethod
    def _fit_scale_targets(t, tr, standardize):
        return t                                   # class indices are not scaled


def _plain(v):
    """A label as a plain JSON-able Python value (NumPy scalars unwrapped)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (str, int, float)) or v is None:
        return v
    raise TypeError(f"labels must be strings or numbers, got {v!r} ({type(v).__name__})")



def _labels_or_hint(y, num_classes):
    arr = np.asarray(y)
    if arr.dtype.kind in "USO":
        raise TypeError(f"y (class labels) {_short(arr.ravel()[:3].tolist())}... are not class "
                        "indices: "
                        "set model.classes = sorted(set(y)) first (SequenceClassifier.fit "
                        "does it), or pass indices in [0, num_classes)")
    return arr


