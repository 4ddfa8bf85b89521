"""Streams: a recurrent stack fed one time step per call, its state kept.

``s = layer.stream(batch_size=1)`` snapshots the layer's weights in the
latency kernels' prepared layout (:mod:`fastrnn.kernels.latency`), once;
``s.step(x_t)`` then runs one time step of every layer in one compiled call
on the calling thread, and ``s(x)`` runs a chunk of steps, continuing the
same state. Outputs and states equal ``layer(x)`` over the same sequence
(within the kernels' tolerance: the products are summed in another order).

Speech, audio, sensor and control loops feed a network one frame at a time
and need each answer at once: at batch 1 the arithmetic of a step is a few
microseconds or less, so a stream does nothing per call that it can do once
(weights prepared when made, buffers owned, input checks of a few tuple
comparisons).

A stream never sees later changes of the layer's weights by itself (an
optimizer step, ``load_state_dict``, an in-place edit): call
:meth:`Stream.refresh` after them.
"""
from __future__ import annotations

import numpy as np

from .ops import HostOps

__all__ = ["Stream", "ModelStream", "stream_weights", "available"]


def _latency():
    """The latency kernels, or a clear error where the compiled CPU kernels do
    not load (no Numba, a broken install): streams need them."""
    try:
        from .kernels import latency
    except ImportError as exc:
        from .contract import BackendUnavailable
        raise BackendUnavailable(
            f"streams need the compiled CPU kernels, which do not load here ({exc}); "
            "run the layer or model on whole sequences instead (the NumPy reference)"
        ) from None
    return latency


def available():
    """Whether streams can run here: the compiled CPU kernels load."""
    try:
        _latency()
        return True
    except Exception:           # BackendUnavailable, or a kernel module failing to build
        return False


def stream_weights(layer):
    """The host :class:`~fastrnn.contract.Weights` of every layer of a
    unidirectional recurrent stack, bottom first (refusing what a stream
    cannot run, with the reason)."""
    if getattr(layer, "compute_dtype", None) is not None:
        # the latency kernels compute in the layer's dtype: never run float32 silently
        raise ValueError(
            f"{type(layer).__name__}(compute_dtype={layer.compute_dtype!r}) cannot stream: "
            "streams have no bfloat16 mode. Run the layer or model on chunks of steps "
            "(layer(x, state) carries the state), or set compute_dtype=None to stream in float32")
    if layer.bidirectional:
        raise ValueError(
            f"{type(layer).__name__}(bidirectional=True) cannot stream: its backward direction "
            "reads the sequence from its last step, which a stream has not seen yet. Run "
            "bidirectional layers on whole sequences (layer(x)), or stream a unidirectional one")
    if layer.device != "cpu":
        raise ValueError("a stream runs on the host CPU: move the layer with layer.to('cpu') "
                         "first (its weights live on the GPU)")
    return [layer._weights(f"_l{k}") for k in range(layer.num_layers)]


class Stream:
    """One step per call through a recurrent stack, its state kept between calls.

    Made by ``layer.stream(batch_size)`` (:meth:`fastrnn.LSTM.stream` and the
    other layers); see the module doc. ``B`` is ``batch_size``, ``I`` the
    layer's ``input_size``, ``H`` its ``hidden_size``, ``L`` ``num_layers``.

    The weights are a snapshot taken when the stream is made: **a stream
    never sees later changes of the layer's weights by itself** (training
    steps, ``load_state_dict``, in-place edits); call :meth:`refresh` to
    re-read them. The state starts at zero.

    Not thread-safe: one stream serves one caller at a time (make one per
    thread; they may share a layer).

    Attributes
    ----------
    batch_size, input_size, hidden_size, num_layers : int
    dtype : numpy.dtype
        The layer's dtype, which every input must have.
    cell : CellSpec
    """

    __slots__ = ("batch_size", "input_size", "hidden_size", "num_layers", "dtype", "cell",
                 "batch_first", "_layer", "_w", "_meta", "_st", "_ws", "_y", "_y1",
                 "_xshape", "_step", "_run")

    def __init__(self, layer, batch_size=1):
        latency = _latency()
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        stream_weights(layer)                       # refuses bidirectional / GPU layers
        B = int(batch_size)
        self._layer = layer
        self.batch_size = B
        self.input_size = layer.input_size
        self.hidden_size = H = layer.hidden_size
        self.num_layers = L = layer.num_layers
        self.dtype = np.dtype(layer.dtype)
        self.cell = layer.cell
        self.batch_first = layer.batch_first
        self._step, self._run = latency.step, latency.run
        self._st = latency.new_state(L, B, H, self.dtype)           # [2, L, B, H]
        self._ws = latency.new_workspace(B, layer.cell.gates * H, self.dtype)
        self._y = np.zeros((B, H), self.dtype)                      # step's output buffer
        self._y1 = self._y[0]                                       # its (H,) view for B = 1
        self._xshape = (B, self.input_size)
        self.refresh()

    # ------------------------------------------------------------------ weights
    def refresh(self):
        """Re-read the layer's weights (after training, ``load_state_dict`` or
        any in-place change: a stream never sees them by itself). The state is
        kept. Returns the stream."""
        latency = _latency()
        w, meta = latency.prepare(self.cell, stream_weights(self._layer), self.dtype)
        meta[0, 2] = self.batch_size
        self._w, self._meta = w, meta
        return self

    # ------------------------------------------------------------------ steps
    def step(self, x, out=None):
        """Feed one time step; return the top layer's new hidden state.

        Parameters
        ----------
        x : ndarray, shape (B, I), or (I,) when B = 1
            The step's input, of the layer's dtype. Not modified. Not checked
            for NaN (a NaN makes the state NaN until :meth:`reset`).
        out : ndarray, optional
            Where to write the result: ``(B, H)`` (or ``(H,)`` when B = 1 and
            ``x`` is 1-d), C-contiguous, of the layer's dtype.

        Returns
        -------
        ndarray, shape (B, H), or (H,) for a 1-d ``x``
            Without ``out``, a buffer the stream owns and **overwrites at the
            next step** (no allocation per call): copy it to keep it. Writing
            into it does not change the state.
        """
        # the hot path: two comparisons and one compiled call
        if out is None and type(x) is np.ndarray and x.dtype == self.dtype \
                and x.flags.c_contiguous:
            if x.shape == self._xshape:
                self._step(self._meta, self._w, self._st, self._ws, x, self._y)
                return self._y
            if self.batch_size == 1 and x.shape == self._xshape[1:]:
                self._step(self._meta, self._w, self._st, self._ws, x.reshape(self._xshape),
                           self._y)
                return self._y1
        return self._step_checked(x, out)

    def _step_checked(self, x, out):
        B, I, H = self.batch_size, self.input_size, self.hidden_size
        x = self._input("x", x)
        one = x.ndim == 1
        if one and B == 1 and x.shape == (I,):
            x = x.reshape(1, I)
        elif x.shape != (B, I):
            want = f"({B}, {I})" + (f" or ({I},)" if B == 1 else "")
            raise ValueError(f"x must have shape {want} (batch_size, input_size), "
                             f"got {x.shape}")
        x = np.ascontiguousarray(x)
        if out is None:
            self._step(self._meta, self._w, self._st, self._ws, x, self._y)
            return self._y1 if one else self._y
        o = self._out(out, (H,) if one else (B, H))
        self._step(self._meta, self._w, self._st, self._ws, x, o.reshape(B, H))
        return out

    def __call__(self, x, out=None):
        """Feed a chunk of steps, continuing the state: ``x`` ``(T, B, I)``
        (``(B, T, I)`` for a ``batch_first`` layer) -> the top layer's outputs
        ``(T, B, H)`` (``(B, T, H)``), a new array unless ``out`` is given."""
        B, I, H = self.batch_size, self.input_size, self.hidden_size
        x = self._input("x", x)
        if x.ndim != 3 or (x.shape[0] if self.batch_first else x.shape[1]) != B \
                or x.shape[2] != I:
            want = f"(B={B}, T, {I})" if self.batch_first else f"(T, B={B}, {I})"
            raise ValueError(f"x must have shape {want}, got {x.shape}")
        xt = np.ascontiguousarray(x.transpose(1, 0, 2) if self.batch_first else x)
        T = xt.shape[0]
        shape = (B, T, H) if self.batch_first else (T, B, H)
        if out is None:
            out = np.empty(shape, self.dtype)
        else:
            self._out(out, shape)
        y = out if not self.batch_first else np.empty((T, B, H), self.dtype)
        if T:
            self._run(self._meta, self._w, self._st, self._ws, xt, y)
        if self.batch_first:
            out[...] = y.transpose(1, 0, 2)
        return out

    def _input(self, name, x):
        if not isinstance(x, np.ndarray):
            if hasattr(x, "__cuda_array_interface__"):
                raise TypeError(f"{name} is a GPU array: a stream runs on the host")
            x = np.asarray(x, dtype=self.dtype)
        if x.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} like the layer, got {x.dtype}"
                            f" (convert with .astype(np.{self.dtype}))")
        return x

    def _out(self, out, shape):
        if not isinstance(out, np.ndarray) or out.dtype != self.dtype or out.shape != shape \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous {self.dtype} ndarray of "
                             f"shape {shape}, got "
                             + (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray)
                                else type(out).__name__))
        return out

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """The current state, shaped as a layer's: ``h`` ``(L, B, H)``, or
        ``(h, c)`` for the LSTM family (copies). Settable with the same
        shapes (``None`` zeroes it), e.g. ``s.state = layer(x)[1]``."""
        h = self._st[0].copy()
        return (h, self._st[1].copy()) if self.cell.has_cell else h

    @state.setter
    def state(self, value):
        from . import _validate
        if value is None:
            self.reset()
            return
        shape = (self.num_layers, self.batch_size, self.hidden_size)
        h, c = _validate.initial_state(value, shape, self.cell.has_cell, "Stream", self.dtype,
                                       HostOps())
        self._st[0] = h
        if c is not None:
            self._st[1] = c

    def reset(self, rows=None):
        """Zero the state: every batch row, or only ``rows`` (an int or a
        sequence of ints in ``[0, B)``), e.g. when one of ``B`` sources starts
        a new sequence. Returns the stream."""
        if rows is None:
            self._st[...] = 0
            return self
        r = np.asarray(rows)
        if r.dtype == bool or not np.issubdtype(r.dtype, np.integer) or r.ndim > 1:
            raise TypeError(f"rows must be an int or a sequence of ints, got {rows!r}")
        r = r.reshape(-1)
        if r.size and (r.min() < -self.batch_size or r.max() >= self.batch_size):
            raise ValueError(f"rows must lie in [0, {self.batch_size}), got {rows!r}")
        self._st[:, :, r] = 0
        return self

    def __repr__(self):
        return (f"Stream({type(self._layer).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}), batch_size={self.batch_size}, "
                f"dtype={self.dtype.name})")


class ModelStream(Stream):
    """A model fed one time step per call: its recurrent stack and head in one
    compiled call (made by ``model.stream()``: :meth:`fastrnn.LanguageModel.stream`,
    :meth:`fastrnn.SequenceRegressor.stream`, :meth:`fastrnn.SequenceClassifier.stream`).

    ``step(x_t)`` returns what the model's one-shot prediction returns after
    the steps fed so far: a language model's logits ``(B, V)`` for token ids
    ``(B,)`` (``(V,)`` for one int token), a classifier's probabilities
    ``(B, C)`` (last-step pooling), a regressor's prediction ``(B, horizon,
    output_size)`` in original units. A model with an embedding takes token
    ids; one without takes raw features ``(B, I)`` (``(I,)`` when B = 1), to
    which the model's input scaler is applied (folded into the first layer's
    prepared weights, so it costs nothing per step).

    As for :class:`Stream`: the weights, the head and the scalers are a
    snapshot (call :meth:`refresh` after training or loading), the state starts
    at zero (:meth:`reset`), and the returned array is a buffer the stream
    overwrites at the next step (copy it to keep it).
    """

    __slots__ = ("_model", "_kind", "_tok", "_o", "_o1", "_oshape", "_vocab", "_head_step",
                 "_lm_step")

    def __init__(self, model, kind, batch_size=1):
        latency = _latency()
        self._model = model
        self._kind = kind
        super().__init__(model.rnn, batch_size)
        embed = getattr(model, "embed", None)
        self._vocab = 0 if embed is None else int(embed.params["weight"].shape[0])
        if embed is not None:
            I = embed.params["weight"].shape[1]
            self._ws = latency.new_workspace(self.batch_size, self.cell.gates * self.hidden_size,
                                             self.dtype, I)
        B = self.batch_size
        O = int(model.head.params["weight"].shape[0])
        self._tok = np.zeros(B, np.int64)
        self._o = np.zeros((B, O), self.dtype)
        if kind == "regressor":
            view = self._o.reshape(B, model.horizon, model.output_size)
            self._o1 = view[0]
            self._oshape = view
        else:
            self._o1 = self._o[0]
            self._oshape = self._o
        self._head_step, self._lm_step = latency.head_step, latency.lm_step

    def refresh(self):
        """Re-read the weights of the recurrent stack and the head, and the
        scalers (a stream never sees later changes by itself). The state is
        kept. Returns the stream."""
        latency = _latency()
        m = self._model
        layers = stream_weights(m.rnn)
        if self._kind != "lm" and m.embed is None:
            layers = _fold_input_scaler(layers, m.scaler)
        w, meta = latency.prepare(self.cell, layers, self.dtype)
        meta[0, 2] = self.batch_size
        hw = m.head.params["weight"]
        hb = m.head.params.get("bias")
        if self._kind == "regressor" and m.target_scaler is not None:
            hw, hb = _fold_target_scaler(hw, hb, m.target_scaler, m.horizon, m.output_size)
        embed = getattr(m, "embed", None)
        self._w, self._meta = latency.prepare_head(
            w, meta, hw, hb, softmax=self._kind == "classifier",
            embedding=None if embed is None else embed.params["weight"])
        return self

    def step(self, x, out=None):
        """Feed one time step (token ids for a model with an embedding, else
        features); see the class doc for what it returns."""
        if out is not None:
            raise TypeError("a model stream returns its own buffer: copy it to keep it "
                            "(out= is for Stream.step)")
        if self._vocab:
            return self._step_tokens(x)
        if type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous:
            if x.shape == self._xshape:
                self._head_step(self._meta, self._w, self._st, self._ws, x, self._o)
                return self._oshape
            if self.batch_size == 1 and x.shape == self._xshape[1:]:
                self._head_step(self._meta, self._w, self._st, self._ws,
                                x.reshape(self._xshape), self._o)
                return self._o1
        B, I = self.batch_size, self.input_size
        x = self._input("x", x)
        one = x.ndim == 1
        if not ((one and B == 1 and x.shape == (I,)) or x.shape == (B, I)):
            want = f"({B}, {I})" + (f" or ({I},)" if B == 1 else "")
            raise ValueError(f"x must have shape {want} (batch_size, input_size), got {x.shape}")
        self._head_step(self._meta, self._w, self._st, self._ws,
                        np.ascontiguousarray(x).reshape(B, I), self._o)
        return self._o1 if one else self._oshape

    def _step_tokens(self, tok):
        V, B = self._vocab, self.batch_size
        if type(tok) is int or isinstance(tok, np.integer):
            if B != 1:
                raise ValueError(f"tokens must be {B} ids (batch_size), got one int")
            if not 0 <= tok < V:
                raise ValueError(f"token ids must lie in [0, {V}), got {tok}")
            self._tok[0] = tok
            self._lm_step(self._meta, self._w, self._st, self._ws, self._tok, self._o)
            return self._o1
        ids = np.asarray(tok)
        if ids.shape != (B,) or ids.dtype.kind not in "iu":
            raise ValueError(f"tokens must be an int or {B} int ids of shape ({B},), got "
                             f"{ids.dtype} {ids.shape}")
        lo, hi = min(ids.tolist()), max(ids.tolist())
        if lo < 0 or hi >= V:
            raise ValueError(f"token ids must lie in [0, {V}), got values from {lo} to {hi}")
        self._tok[:] = ids
        self._lm_step(self._meta, self._w, self._st, self._ws, self._tok, self._o)
        return self._oshape

    def __call__(self, x):
        """Feed a chunk of steps ``x`` (steps first: ``(T, B, ...)``, or
        ``(T, ...)`` of what :meth:`step` takes) and return every step's
        result stacked, a new array."""
        return np.stack([self.step(x[t]).copy() for t in range(len(x))])

    def __repr__(self):
        return f"ModelStream({type(self._model).__name__}, batch_size={self.batch_size})"


def _fold_input_scaler(layers, scaler):
    """Layer 0's weights with ``x -> (x - mean) / std`` folded in:
    ``W' = W / std`` (per input column), ``b_ih' = b_ih - W' mean``."""
    if scaler is None:
        return layers
    from .contract import Weights
    w0 = layers[0]
    I = w0.w_ih.shape[1]
    mean = np.broadcast_to(np.asarray(scaler.mean, np.float64).ravel(), (I,)) \
        if np.size(scaler.mean) in (1, I) else None
    std = np.broadcast_to(np.asarray(scaler.std, np.float64).ravel(), (I,)) \
        if np.size(scaler.std) in (1, I) else None
    if mean is None or std is None:
        raise ValueError(f"the model's scaler has {np.size(scaler.mean)} means for {I} inputs")
    w_ih = np.asarray(w0.w_ih, np.float64) / std
    b_ih = np.asarray(w0.b_ih, np.float64) - w_ih @ mean
    return [Weights(w_ih, w0.w_hh, b_ih, w0.b_hh, w0.peep)] + list(layers[1:])


def _fold_target_scaler(weight, bias, ts, horizon, output_size):
    """The head with ``pred -> pred * std + mean`` folded in (the target
    scaler's per-output statistics, repeated over the horizon)."""
    std = np.tile(np.broadcast_to(np.asarray(ts.std, np.float64).ravel(), (output_size,)),
                  horizon)
    mean = np.tile(np.broadcast_to(np.asarray(ts.mean, np.float64).ravel(), (output_size,)),
                   horizon)
    b = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return np.asarray(weight, np.float64) * std[:, None], b * std + mean
