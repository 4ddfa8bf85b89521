"""Ready-made models: a language model, a sequence classifier and a
sequence regressor, each built from one recurrent stack and the blocks.

Every model exposes the same surface as the layers:

- ``params`` / ``grads``: flat dicts with prefixed names
  (``"rnn.weight_ih_l0"``, ``"head.weight"``...) over the *same* arrays the
  sub-modules own, so optimizers update them in place;
- ``zero_grad()``, ``train()``, ``eval()``, ``training``;
- ``batch_loss(batch, train=True) -> (mean loss, count)``: forward, loss and,
  when ``train``, backward (accumulating into ``grads``) — what
  :class:`fastrnn.train.Trainer` calls;
- ``save(path)`` / ``Model.load(path)``: one ``.npz`` holding the parameters
  and a JSON config; loading a checkpoint of another model class fails with a
  clear error. :func:`load_model` picks the class from the file.

Layouts: the language model is time-major (tokens ``[T, B]``, as the
truncated-BPTT stream is); the classifier and regressor take batch-major
``[B, T, F]`` (or ``[B, T]`` token ids) like :func:`fastrnn.data.pad_sequences`
produces.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .blocks import (AttentionPool, Dropout, Embedding, Linear, as_rng, mse,
                     softmax_cross_entropy)
from .layers import GRU, LSTM, RNN, PeepholeLSTM

__all__ = ["LanguageModel", "SequenceClassifier", "SequenceRegressor", "load_model",
           "make_recurrent", "CELL_TYPES", "CheckpointError"]

#: cell name -> (layer class, extra constructor arguments)
CELL_TYPES = {
    "rnn": (RNN, {"nonlinearity": "tanh"}),
    "rnn_tanh": (RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "gru": (GRU, {"reset_after": True}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "peephole": (PeepholeLSTM, {"peephole": "diagonal"}),
    "peephole_diagonal": (PeepholeLSTM, {"peephole": "diagonal"}),
    "peephole_full": (PeepholeLSTM, {"peephole": "full"}),
}

_FORMAT = "fastrnn-model/1"


class CheckpointError(ValueError):
    """A file is not a fastrnn checkpoint, or holds another kind of model."""


def make_recurrent(cell, input_size, hidden_size, num_layers=1, dropout=0.0,
                   bidirectional=False, backend="auto", dtype=np.float32, seed=None):
    """Build the recurrent layer for a cell name (see :data:`CELL_TYPES`)."""
    try:
        cls, extra = CELL_TYPES[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELL_TYPES)}") from None
    return cls(input_size, hidden_size, num_layers=num_layers, dropout=dropout,
               bidirectional=bidirectional, backend=backend, dtype=dtype, seed=seed, **extra)


def _seed(rng):
    return int(rng.integers(2 ** 31 - 1))


class _Model:
    """Shared machinery: sub-modules, flat params, train/eval, save/load."""

    def __init__(self, config):
        self.config = config           # JSON-serialisable constructor arguments
        self.meta = {}                 # extra JSON saved with the model (vocab, scaler...)
        self.training = True
        self._modules = {}             # prefix -> module (layer or block)

    # ---------------------------------------------------------------- params
    @property
    def params(self):
        return {f"{p}.{k}": v for p, m in self._modules.items() for k, v in m.params.items()}

    @property
    def grads(self):
        return {f"{p}.{k}": v for p, m in self._modules.items() for k, v in m.grads.items()}

    def zero_grad(self):
        for m in self._modules.values():
            m.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def num_params(self):
        return int(sum(v.size for v in self.params.values()))

    @property
    def backend(self):
        return self.rnn.backend

    @property
    def dtype(self):
        return self.rnn.dtype

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        own = self.params
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"parameters do not match this {type(self).__name__}: "
                                  f"missing {missing}, unexpected {unexpected}")
        for k, v in state.items():
            v = np.asarray(v)
            if v.shape != own[k].shape:
                raise CheckpointError(f"parameter {k!r} has shape {v.shape}, expected {own[k].shape}")
            own[k][...] = v

    def generators(self):
        """Every random generator the model draws from (dropout masks), in a
        fixed order, so a checkpoint can save and restore their states."""
        out = []
        for p in sorted(self._modules):
            m = self._modules[p]
            for attr in ("rng", "_rng"):
                g = getattr(m, attr, None)
                if isinstance(g, np.random.Generator):
                    out.append(g)
        return out

    def reset_state(self):
        """Forget a carried recurrent state (stateful models only)."""

    # ------------------------------------------------------------ save / load
    def save(self, path):
        """Write parameters and config to ``path`` (``.npz`` appended if missing)."""
        header = {"format": _FORMAT, "model": type(self).__name__,
                  "config": self.config, "meta": self.meta}
        arrays = {"param/" + k: v for k, v in self.params.items()}
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, __header__=np.array(json.dumps(header)), **arrays)
        return path

    @classmethod
    def load(cls, path, backend=None):
        """Rebuild a model saved by :meth:`save`; ``backend`` overrides the
        saved one."""
        header, arrays = read_checkpoint(path)
        if cls is not _Model and header["model"] != cls.__name__:
            raise CheckpointError(f"{os.fspath(path)!r} holds a {header['model']}, "
                                  f"not a {cls.__name__}")
        return _build(header, arrays, backend)


def read_checkpoint(path):
    """Return ``(header dict, {name: array})`` of a model file, with clear
    errors for a missing file or a file that is not a fastrnn model."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__header__" not in f:
                raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint")
            header = json.loads(str(f["__header__"]))
            arrays = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint: {exc}") from exc
    if header.get("format") != _FORMAT or header.get("model") not in _MODELS:
        raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint")
    return header, arrays


def _build(header, arrays, backend=None):
    cls = _MODELS[header["model"]]
    config = dict(header["config"])
    if backend is not None:
        config["backend"] = backend
    model = cls(**config)
    model.meta = header.get("meta", {})
    model.load_state_dict(arrays)
    return model


def load_model(path, backend=None):
    """Load any model saved by ``save``, choosing the class from the file."""
    header, arrays = read_checkpoint(path)
    return _build(header, arrays, backend)


def _dtype_name(dtype):
    return np.dtype(dtype).name


# ====================================================================== LM
class LanguageModel(_Model):
    """Token-level language model: embedding → recurrent stack → dropout →
    linear projection to the vocabulary.

    ``forward(tokens [T, B], state=None) -> (logits [T, B, V], state_n)``.
    Training with truncated BPTT carries the state across consecutive chunks
    (see :class:`fastrnn.data.LMBatches`): ``batch_loss`` starts each chunk
    from the final state of the previous one, without back-propagating into
    it; :meth:`reset_state` forgets it (the Trainer calls it every epoch).
    """

    stateful = True

    def __init__(self, vocab_size, embed_dim=64, hidden_size=256, num_layers=1,
                 cell="lstm", dropout=0.0, backend="auto", dtype="float32", seed=None):
        super().__init__(dict(vocab_size=int(vocab_size), embed_dim=int(embed_dim),
                              hidden_size=int(hidden_size), num_layers=int(num_layers),
                              cell=cell, dropout=float(dropout), backend=backend,
                              dtype=_dtype_name(dtype), seed=seed))
        rng = as_rng(seed)
        dt = np.dtype(dtype)
        self.vocab_size = int(vocab_size)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dt, rng=rng)
        self.rnn = make_recurrent(cell, embed_dim, hidden_size, num_layers, dropout,
                                  False, backend, dt, _seed(rng))
        self.drop = Dropout(dropout, rng=_seed(rng))
        self.head = Linear(hidden_size, vocab_size, dtype=dt, rng=rng)
        self._modules = {"embed": self.embed, "rnn": self.rnn, "head": self.head,
                         "drop": self.drop}
        self._carry = None

    def forward(self, tokens, state=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [T, B] ints, got shape {tokens.shape}")
        e = self.embed(tokens)                           # [T, B, E]
        y, state_n = self.rnn(e, state)                  # [T, B, H]
        return self.head(self.drop(y)), state_n          # [T, B, V]

    __call__ = forward

    def backward(self, dlogits, dstate=None):
        dy = self.drop.backward(self.head.backward(dlogits))
        de, dstate0 = self.rnn.backward(dy, dstate)
        self.embed.backward(de)
        return dstate0

    def reset_state(self):
        self._carry = None

    def _carried(self, B):
        st = self._carry
        if st is None:
            return None
        h = st[0] if isinstance(st, tuple) else st
        return st if h.shape[1] == B else None

    def batch_loss(self, batch, train=True):
        """``batch = (x [T, B], y [T, B])``; carries the state across calls."""
        x, y = batch[0], batch[1]
        logits, st = self.forward(x, self._carried(x.shape[1]))
        loss, dlogits = softmax_cross_entropy(logits, y)
        if train:
            self.backward(dlogits)
        self._carry = st
        return loss, int(np.asarray(y).size)

    def evaluate(self, ids, batch_size=32, bptt=128):
        """Mean cross-entropy (nats per token) of predicting ``ids[1:]`` from
        ``ids[:-1]``, in eval mode, carrying state over the whole stream."""
        ids = np.asarray(ids, dtype=np.int64)
        was = self.training
        self.eval()
        try:
            batch_size = max(1, min(batch_size, (len(ids) - 1) // 2))
            n = (len(ids) - 1) // batch_size
            x = ids[:n * batch_size].reshape(batch_size, n).T
            y = ids[1:n * batch_size + 1].reshape(batch_size, n).T
            state, total = None, 0.0
            for s in range(0, n, bptt):
                logits, state = self.forward(x[s:s + bptt], state)
                loss, _ = softmax_cross_entropy(logits, y[s:s + bptt], reduction="sum")
                total += loss
            return total / y.size
        finally:
            self.train(was)

    def sample(self, n, prime=None, temperature=1.0, rng=None, top_k=None):
        """Generate ``n`` tokens after the ``prime`` ids (default: token 0).

        ``temperature`` < 1 sharpens, > 1 flattens the distribution; 0 takes the
        most likely token. Returns the generated ids (without the prime).
        """
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        rng = as_rng(rng)
        prime = np.asarray([0] if prime is None or len(prime) == 0 else prime, dtype=np.int64)
        was = self.training
        self.eval()
        try:
            logits, state = self.forward(prime[:, None])
            last = logits[-1, 0].astype(np.float64)
            out = np.empty(n, dtype=np.int64)
            for k in range(n):
                if temperature == 0:
                    tok = int(np.argmax(last))
                else:
                    z = last / temperature
                    if top_k is not None and top_k < len(z):
                        cut = np.partition(z, -top_k)[-top_k]
                        z = np.where(z >= cut, z, -np.inf)
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    tok = int(rng.choice(len(p), p=p))
                out[k] = tok
                logits, state = self.forward(np.array([[tok]]), state)
                last = logits[-1, 0].astype(np.float64)
            return out
        finally:
            self.train(was)

    generate = sample


# ====================================================== sequence -> vector
class _SequenceToVector(_Model):
    """Recurrent stack over ``[B, T, F]`` (or token ids ``[B, T]``), pooled
    to one vector per sequence by the last valid step (final hidden state of
    the top layer, both directions) or additive attention, then a head."""

    def _build(self, input_size, out_features, hidden_size, num_layers, cell, pooling,
               bidirectional, dropout, attn_size, vocab_size, embed_dim, backend, dtype, rng):
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
                                  bidirectional, backend, dt, _seed(rng))
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

    def _encode(self, x, lengths):
        x = np.asarray(x)
        if self.embed is not None:
            if x.ndim != 2:
                raise ValueError(f"x must be token ids [B, T], got shape {x.shape}")
            e = self.embed(x.T)                                   # [T, B, E]
        else:
            if x.ndim == 2:
                x = x[:, :, None]
            if x.ndim != 3:
                raise ValueError(f"x must be [B, T, F], got shape {x.shape}")
            e = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=self.rnn.dtype)  # [T, B, F]
        T, B = e.shape[:2]
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64)
        y, state = self.rnn(e, None, lengths)                     # [T, B, D*H]
        if self.pooling == "attention":
            pooled = self.attn(y, lengths)                         # [B, D*H]
        else:
            h_n = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
            D = self.rnn.num_directions
            pooled = np.concatenate(list(h_n[-D:]), axis=1)       # [B, D*H]
        self._shape = (T, B, y.shape[2], state[0].shape if isinstance(state, tuple) else state.shape)
        return self.head(self.drop(pooled))

    def _backward_encode(self, dout):
        dpooled = self.drop.backward(self.head.backward(dout))     # [B, D*H]
        T, B, W, sshape = self._shape
        dt = self.rnn.dtype
        if self.pooling == "attention":
            dy = self.attn.backward(dpooled).astype(dt, copy=False)
            dstate = None
        else:
            dy = np.zeros((T, B, W), dt)
            dh = np.zeros(sshape, dt)
            D, H = self.rnn.num_directions, self.rnn.hidden_size
            for d in range(D):
                dh[sshape[0] - D + d] = dpooled[:, d * H:(d + 1) * H]
            dstate = (dh, None) if self.rnn.cell.has_cell else dh
        dx, _ = self.rnn.backward(dy, dstate)
        if self.embed is not None:
            self.embed.backward(dx)
            return None
        return dx.transpose(1, 0, 2)

    @staticmethod
    def _unpack(batch):
        x, y = batch[0], batch[1]
        lengths = batch[2] if len(batch) > 2 else None
        return x, y, lengths


class SequenceClassifier(_SequenceToVector):
    """Sequence classification: recurrent stack, pooling (``"last"`` valid
    step or ``"attention"``), linear head to ``num_classes`` logits.

    The attention LSTM in one line:
    ``SequenceClassifier(input_size=F, num_classes=C, cell="lstm", pooling="attention")``.
    ``forward(x [B, T, F] | ids [B, T], lengths=None) -> logits [B, C]``.
    """

    def __init__(self, num_classes, input_size=None, hidden_size=64, num_layers=1,
                 cell="lstm", pooling="last", bidirectional=False, dropout=0.0,
                 attn_size=None, vocab_size=None, embed_dim=None, backend="auto",
                 dtype="float32", seed=None):
        super().__init__(dict(num_classes=int(num_classes), input_size=input_size,
                              hidden_size=int(hidden_size), num_layers=int(num_layers),
                              cell=cell, pooling=pooling, bidirectional=bool(bidirectional),
                              dropout=float(dropout), attn_size=attn_size,
                              vocab_size=vocab_size, embed_dim=embed_dim, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed))
        self.num_classes = int(num_classes)
        self._build(input_size, num_classes, hidden_size, num_layers, cell, pooling,
                    bidirectional, dropout, attn_size, vocab_size, embed_dim, backend,
                    dtype, as_rng(seed))

    def forward(self, x, lengths=None):
        return self._encode(x, lengths)

    __call__ = forward

    def backward(self, dlogits):
        return self._backward_encode(dlogits)

    def batch_loss(self, batch, train=True):
        """``batch = (x, labels [B]) or (x, labels, lengths)``."""
        x, y, lengths = self._unpack(batch)
        logits = self.forward(x, lengths)
        loss, d = softmax_cross_entropy(logits, np.asarray(y))
        if train:
            self.backward(d)
        return loss, len(y)

    def batch_metrics(self, batch):
        """Number of correct predictions in a batch (for the Trainer)."""
        x, y, lengths = self._unpack(batch)
        return {"accuracy": float(np.mean(self.predict(x, lengths) == np.asarray(y)))}

    def predict_proba(self, x, lengths=None):
        was = self.training
        self.eval()
        try:
            z = self.forward(x, lengths).astype(np.float64)
        finally:
            self.train(was)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, x, lengths=None):
        return self.predict_proba(x, lengths).argmax(axis=1)


class SequenceRegressor(_SequenceToVector):
    """Forecast ``horizon`` steps of ``output_size`` values from a window.

    ``forward(x [B, T, F], lengths=None) -> [B, horizon, output_size]``,
    trained with mean squared error. ``forecast`` rolls the one-step model
    forward on its own predictions when ``output_size == input_size``.
    """

    def __init__(self, input_size, output_size=None, horizon=1, hidden_size=64,
                 num_layers=1, cell="lstm", pooling="last", bidirectional=False,
                 dropout=0.0, attn_size=None, backend="auto", dtype="float32", seed=None):
        output_size = int(output_size or input_size)
        super().__init__(dict(input_size=int(input_size), output_size=output_size,
                              horizon=int(horizon), hidden_size=int(hidden_size),
                              num_layers=int(num_layers), cell=cell, pooling=pooling,
                              bidirectional=bool(bidirectional), dropout=float(dropout),
                              attn_size=attn_size, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed))
        self.output_size, self.horizon = output_size, int(horizon)
        self._build(input_size, output_size * self.horizon, hidden_size, num_layers, cell,
                    pooling, bidirectional, dropout, attn_size, None, None, backend,
                    dtype, as_rng(seed))

    def forward(self, x, lengths=None):
        out = self._encode(x, lengths)
        return out.reshape(out.shape[0], self.horizon, self.output_size)

    __call__ = forward

    def backward(self, dpred):
        dpred = np.asarray(dpred)
        return self._backward_encode(dpred.reshape(dpred.shape[0], -1))

    def batch_loss(self, batch, train=True):
        """``batch = (x [B, T, F], y [B, horizon, output_size])`` (+ lengths);
        ``y`` of shape ``[B, output_size]`` is taken as horizon 1."""
        x, y, lengths = self._unpack(batch)
        pred = self.forward(x, lengths)
        y = np.asarray(y, dtype=pred.dtype).reshape(pred.shape)
        loss, d = mse(pred, y)
        if train:
            self.backward(d)
        return loss, len(y)

    def predict(self, x, lengths=None):
        was = self.training
        self.eval()
        try:
            return self.forward(x, lengths)
        finally:
            self.train(was)

    def forecast(self, x, steps):
        """Predict ``steps`` values after each window of ``x [B, T, F]`` by
        feeding predictions back (needs ``output_size == input_size``)."""
        if self.output_size != self.input_size:
            raise ValueError("forecast() feeds outputs back: output_size must equal input_size")
        x = np.asarray(x, dtype=self.rnn.dtype)
        if x.ndim == 2:
            x = x[:, :, None]
        outs = []
        while sum(o.shape[1] for o in outs) < steps:
            p = self.predict(x)                                 # [B, horizon, F]
            outs.append(p)
            x = np.concatenate([x, p], axis=1)[:, p.shape[1]:]
        return np.concatenate(outs, axis=1)[:, :steps]


_MODELS = {c.__name__: c for c in (LanguageModel, SequenceClassifier, SequenceRegressor)}
