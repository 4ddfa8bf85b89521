"""The sequence regressor: :class:`SequenceRegressor` (windows to
``horizon`` steps of values, with the input and target scalers and
differencing kept with the model, forecasts fed back, streams)."""
from __future__ import annotations

import numpy as np

from .. import _device, _validate
from ..blocks import as_rng, mse
from .base import _compute_dtype, _dtype_name, _register
from .encoder import _SequenceToVector, _scaler_dict, _with_input_rule
from .fit import fit as _fit


@_register
class SequenceRegressor(_SequenceToVector):
    """Forecast ``horizon`` steps of ``output_size`` values from a window.

    ``forward(x [B, T, F], lengths=None) -> [B, horizon, output_size]``,
    trained with mean squared error. ``forecast`` rolls the one-step model
    forward on its own predictions when ``output_size == input_size``.
    :meth:`fit` sets :attr:`scaler` and :attr:`target_scaler` (and
    :attr:`difference` for a model of changes), so that :meth:`predict`
    takes and returns values in the data's own units. ``fit``, ``predict``
    and ``forecast`` read arrays by one rule (:data:`INPUT_RULE`): a model
    trained on tabular rows takes ``[n, F]`` as ``n`` rows; any other refuses
    an ambiguous 2-D array unless ``sequence=True/False`` says how to read it.

    Parameters
    ----------
    input_size : int
        ``F``, features per time step of the window.
    output_size : int, optional
        Values predicted per step (default ``input_size``).
    horizon : int, default 1
        Steps predicted after the window.
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
    >>> from fastrnn import SequenceRegressor
    >>> from fastrnn.data import sliding_windows
    >>> X, Y = sliding_windows(np.sin(np.arange(200) / 5), 12, 2)   # (N, 12), (N, 2)
    >>> model = SequenceRegressor(1, horizon=2, hidden_size=8, seed=0).fit(X, Y, epochs=2)
    >>> model.predict(X[:3]).shape                    # (B, horizon, output_size)
    (3, 2, 1)
    """

    # what the history files call the loss
    loss_unit = "mean squared error of the targets as the model sees them (standardised by fit)"

    def __init__(self, input_size: int, output_size: int | None = None, horizon: int = 1,
                 hidden_size: int = 64, num_layers: int = 1, cell: str = "lstm",
                 pooling: str = "last", bidirectional: bool = False, dropout: float = 0.0,
                 attn_size: int | None = None, backend: str = "auto", dtype: str = "float32",
                 seed: int | None = None, compute_dtype: str | None = None) -> None:
        _validate.model_args(dict(input_size=input_size, horizon=horizon, hidden_size=hidden_size,
                                  num_layers=num_layers),
                             dict(output_size=output_size, attn_size=attn_size),
                             dropout=dropout, bidirectional=bidirectional, seed_=seed, dtype=dtype)
        compute_dtype = _compute_dtype(compute_dtype, dtype, backend)
        output_size = int(output_size or input_size)
        super().__init__(dict(input_size=int(input_size), output_size=output_size,
                              horizon=int(horizon), hidden_size=int(hidden_size),
                              num_layers=int(num_layers), cell=cell, pooling=pooling,
                              bidirectional=bool(bidirectional), dropout=float(dropout),
                              attn_size=attn_size, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed, compute_dtype=compute_dtype))
        self.output_size, self.horizon = output_size, int(horizon)
        self._build(input_size, output_size * self.horizon, hidden_size, num_layers, cell,
                    pooling, bidirectional, dropout, attn_size, None, None, backend,
                    dtype, as_rng(seed), compute_dtype)

    def forward(self, x, lengths=None):
        """Predictions ``[B, horizon, output_size]`` of prepared (standardised)
        input ``x [B, T, F]`` (``[B, T]`` when ``F = 1``), with optional
        ``lengths [B]``; no scaler or differencing (:meth:`predict` applies
        them). In training mode the pass is kept for :meth:`backward`."""
        out = self._encode(x, lengths)
        return out.reshape(int(out.shape[0]), self.horizon, self.output_size)

    __call__ = forward

    def backward(self, dpred, retain_graph=False):
        """Back-propagate ``dpred [B, horizon, output_size]``; returns dL/dx."""
        if not _device.on_device(dpred):
            dpred = np.asarray(dpred)
        B = int(dpred.shape[0])
        return self._backward_encode(dpred.reshape(B, int(np.prod(dpred.shape)) // max(B, 1)),
                                     retain_graph)

    def batch_loss(self, batch, train=True):
        """``batch = (x [B, T, F], y [B, horizon, output_size])`` (+ lengths);
        ``y`` of shape ``[B, output_size]`` is taken as horizon 1."""
        x, y, lengths = self._unpack(batch)
        pred = self.forward(x, lengths)
        if _device.on_device(y):
            y = _device.to_host(y)
        y = _validate.regression_targets(y, tuple(pred.shape)).astype(pred.dtype, copy=False)
        loss, d = mse(pred, y)
        if train:
            self.backward(d, retain_graph=True)      # a caller may ask for dL/dx after
        return loss, len(y)

    @property
    def target_scaler(self):
        """The :class:`fastrnn.data.Standardizer` whose ``inverse_transform``
        :meth:`predict` applies to the outputs (``meta["target_scaler"]``;
        ``None``: outputs as computed)."""
        d = self.meta.get("target_scaler")
        if d is None and "window" in self.meta and "scaler" in self.meta:
            d = self.meta["scaler"]          # forecasters saved before target_scaler existed
        if d is None:
            return None
        from ..data import Standardizer
        return Standardizer.from_dict(d)

    @target_scaler.setter
    def target_scaler(self, value):
        self.meta.pop("target_scaler", None) if value is None else self.meta.__setitem__(
            "target_scaler", _scaler_dict(value, self.output_size, "target_scaler"))

    @property
    def difference(self):
        """Lag of the differencing the model was trained on (``meta["difference"]``,
        0: none). With a lag ``k`` the network sees ``x[t] - x[t-k]``;
        :meth:`predict` differences raw windows and integrates the predicted
        changes back, so inputs and outputs stay in original units."""
        return int(self.meta.get("difference") or 0)

    @difference.setter
    def difference(self, lag):
        lag = _validate.nonneg_int("difference", lag)
        if lag and self.output_size != self.input_size:
            raise ValueError("difference needs output_size == input_size")
        self.meta.pop("difference", None) if not lag else self.meta.__setitem__("difference", lag)

    @_with_input_rule
    def predict(self, x, lengths=None, *, sequence=None):
        """Predict ``[B, horizon, output_size]`` (``[horizon, output_size]`` for
        one unbatched window) from raw windows or rows.

        Parameters
        ----------
        x : array_like
            Raw windows or rows. The model's :attr:`scaler`,
            :attr:`difference` and :attr:`target_scaler` are applied, so both
            inputs and predictions are in original units (a model trained on
            differences needs ``T > difference``). The rule for arrays
            (:data:`INPUT_RULE`):

            {INPUT_RULE}

        lengths : array_like of int, optional
            ``[B]`` valid steps (not with differencing).
        sequence : bool, optional
            How to read a 2-D ``x``: ``True`` one window ``[T, F]``, ``False``
            one sample per row; ``None`` (default) by the rule.
        """
        x, lengths, one = self._as_batch(x, lengths, sequence)
        lag = self.difference
        base = None
        if lag:
            if lengths is not None:
                raise ValueError("lengths are not supported by a differenced model")
            x = np.asarray(x, dtype=np.float64)
            if x.ndim == 2:
                x = x[:, :, None]
            if x.shape[1] <= lag:
                raise ValueError(f"windows need more than difference = {lag} steps, "
                                 f"got {x.shape[1]}")
            base = x[:, -lag:]                                    # [B, lag, F]
            x = x[:, lag:] - x[:, :-lag]
        out = _device.to_host(self._infer(self._preprocess(x, lengths), lengths))
        ts = self.target_scaler
        if ts is not None:
            out = ts.inverse_transform(out.astype(np.float64))
        if base is not None:
            hist = base
            for k in range(out.shape[1]):
                out[:, k] = out[:, k] + hist[:, -lag]
                hist = np.concatenate([hist, out[:, k:k + 1]], axis=1)
        return out[0] if one else out

    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.ModelStream`: ``s.step(x_t) -> prediction``
        ``(B, horizon, output_size)`` (``(horizon, output_size)`` for one step
        ``(I,)``) of the sequence fed so far, in original units as
        :meth:`predict` gives it (input and target scalers folded into the
        prepared weights), the state kept between calls. Not for a
        differenced model (:attr:`difference`), whose inputs depend on earlier
        frames.

        The weights and scalers are a snapshot: call ``s.refresh()`` after
        training or loading. The returned array is a buffer the next step
        overwrites; it has the model's dtype (:meth:`predict` returns float64)."""
        if self.difference:
            raise ValueError("a differenced model (difference > 0) cannot stream: feed "
                             "windows to predict()")
        if self.pooling != "last":
            raise ValueError(f"a regressor with pooling={self.pooling!r} cannot stream: "
                             "attention weighs every step of the sequence, which a stream "
                             "has not seen yet; use pooling='last'")
        from ..stream import ModelStream
        return ModelStream(self, "regressor", batch_size)

    def forecast(self, x, steps, *, sequence=None):
        """Predict ``steps`` values after each window of ``x [B, T, F]`` (or one
        window ``[T]`` of a univariate model, or ``[T, F]`` with
        ``sequence=True``: a 2-D array is read by :data:`INPUT_RULE`, as in
        :meth:`predict`) by feeding predictions back (needs ``output_size ==
        input_size``); original units, as :meth:`predict`."""
        steps = _validate.positive_int("steps", steps)
        if self.output_size != self.input_size:
            raise ValueError("forecast() feeds outputs back: output_size must equal input_size")
        x, _, one = self._as_batch(x, None, sequence)
        transformed = self.scaler is not None or self.difference or self.target_scaler is not None
        x = np.asarray(x, dtype=np.float64 if transformed else self.rnn.dtype)
        if x.ndim == 2:
            x = x[:, :, None]
        outs = []
        while sum(o.shape[1] for o in outs) < steps:
            p = self.predict(x)                                 # [B, horizon, F]
            outs.append(p)
            x = np.concatenate([x, p.astype(x.dtype)], axis=1)[:, p.shape[1]:]
        out = np.concatenate(outs, axis=1)[:, :steps]
        return out[0] if one else out

    def fit(self, x, y, lengths=None, *, epochs=10, batch_size=32, lr=3e-3, optimizer="adam",
            val_fraction=0.1, standardize=True, clip_norm=1.0, seed=0, progress=False,
            sequence=None, **trainer_kwargs):
        """Train on raw windows ``x [B, T, input_size]`` (``[B, T]`` when
        ``input_size == 1``), or tabular rows ``[n, input_size]`` (a DataFrame
        too: its column names are kept in :attr:`feature_names`), and targets
        ``y [B, horizon, output_size]`` (or ``[B, output_size]``); the model
        records which kind of input it was (:attr:`input_kind`, used by
        :data:`INPUT_RULE` later), keeping the
        preprocessing: with ``standardize``, :attr:`scaler` and
        :attr:`target_scaler` are fitted on the training split and saved with
        the model, so :meth:`predict` takes and returns original units.
        Returns ``self`` (with ``history`` and ``trainer``); the other
        arguments as in :meth:`SequenceClassifier.fit`."""
        return _fit(self, x, y, lengths, sequence=sequence, unit="win",
                    unbatched="fit needs a batch of windows or rows, got one unbatched window",
                    epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                    val_fraction=val_fraction, standardize=standardize, clip_norm=clip_norm,
                    seed=seed, progress=progress, trainer_kwargs=trainer_kwargs)

    def _fit_targets(self, x, y):
        """:meth:`fit`'s targets, checked against ``x``: returns ``(x, y)`` as
        float64, ``y`` shaped ``[B, horizon, output_size]``."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if y.size != len(x) * self.horizon * self.output_size:
            raise ValueError(f"y has shape {y.shape}: expected [B, horizon, output_size] = "
                             f"[{len(x)}, {self.horizon}, {self.output_size}] (or [B, "
                             f"output_size])")
        y = y.reshape(len(x), self.horizon, self.output_size)
        self._note_input(x)
        return x, y

    def _fit_scale_targets(self, y, tr, standardize):
        """With ``standardize``, fit :attr:`target_scaler` on the training
        split ``tr`` and apply it; ``y`` in the model's dtype."""
        if standardize:
            from ..data import Standardizer
            self.target_scaler = Standardizer().fit(y[tr].reshape(-1, self.output_size))
            y = self.target_scaler.transform(y)
        return y.astype(self.dtype)

