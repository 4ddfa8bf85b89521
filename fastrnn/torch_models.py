"""PyTorch twins of fastrnn layers and models (``to_torch()``; needs torch).

Owns the one place torch is imported for the conversions
(:func:`require_torch`, with the install hint when it is missing), a layer's
``torch.nn.RNN``/``LSTM``/``GRU`` twin (:func:`torch_rnn`), and the model
twins (:func:`torch_model`). :mod:`fastrnn.convert` builds on these; this
module imports nothing of fastrnn's.

Each twin is a ``torch.nn.Module`` whose sub-modules carry the fastrnn
model's parameter names (``rnn.weight_ih_l0``, ``head.weight``,
``embed.weight``, ``attn.weight``/``attn.bias``/``attn.v``), so
``twin.load_state_dict(model.state_dict(as_torch=True))`` works both ways
round, and whose ``forward`` takes the model ``forward``'s inputs as tensors
and returns its outputs:

- ``TorchLanguageModel``: ``forward(tokens (T, B) long, state=None) ->
  (logits (T, B, V), state_n)``;
- ``TorchSequenceClassifier``: ``forward(x (B, T, F) | ids (B, T), lengths=None)
  -> logits (B, C)``; ``predict_proba`` applies the model's input scaler
  and the softmax (``predict_proba`` of the fastrnn model), ``classes``
  holds the labels;
- ``TorchSequenceRegressor``: ``forward(...) -> (B, horizon, output_size)``;
  ``predict`` applies the scaler, differencing and target scaler (float64
  out, as the fastrnn model's ``predict``).

The recurrent layer is the matching ``torch.nn.LSTM``/``GRU``/``RNN``
(variable lengths through ``pack_padded_sequence``, which has fastrnn's
semantics); peephole LSTMs and ``GRU(reset_after=False)`` have none and are
refused. The twin is in eval mode, with the model's dtype.
"""
from __future__ import annotations

import numpy as np

_CLASSES = {}


def require_torch():
    """The ``torch`` module; ImportError with the install hint when it is missing."""
    try:
        import torch
    except ImportError:
        raise ImportError("this needs PyTorch: pip install 'fastrnn[torch]' (or torch)") from None
    return torch


def torch_rnn(layer):
    """The ``torch.nn.RNN``/``LSTM``/``GRU`` of a fastrnn layer: same configuration
    and weights (ValueError for a cell without one)."""
    torch = require_torch()
    spec = layer.cell
    if spec.torch is None:
        raise ValueError(f"{type(layer).__name__} ({spec.name}) has no torch.nn equivalent")
    cls = getattr(torch.nn, spec.torch[0])
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[layer.dtype]
    mod = cls(layer.input_size, layer.hidden_size, num_layers=layer.num_layers, bias=layer.bias,
              batch_first=layer.batch_first, dropout=layer.dropout,
              bidirectional=layer.bidirectional, dtype=dtype, **spec.torch_kwargs)
    mod.load_state_dict(layer.state_dict(as_torch=True))
    return mod


def _classes():
    """The twin classes, defined on first use (torch imported then)."""
    if _CLASSES:
        return _CLASSES
    torch = require_torch()
    nn = torch.nn

    class Attention(nn.Module):
        """``e_t = v . tanh(W h_t + b)``, softmax over the valid steps, weighted sum."""

        def __init__(self, width, attn, dtype):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(attn, width, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(attn, dtype=dtype))
            self.v = nn.Parameter(torch.zeros(attn, dtype=dtype))

        def forward(self, y, lengths=None):                      # y (T, B, W)
            e = torch.tanh(y @ self.weight.T + self.bias) @ self.v   # (T, B)
            if lengths is not None:
                steps = torch.arange(y.shape[0], device=y.device)[:, None]
                e = e.masked_fill(steps >= lengths.to(y.device)[None, :], float("-inf"))
            alpha = torch.softmax(e, dim=0)
            return (alpha[:, :, None] * y).sum(0)                   # (B, W)

    def run_rnn(rnn, e, state=None, lengths=None):
        if lengths is None:
            return rnn(e, state)
        T = e.shape[0]
        packed = nn.utils.rnn.pack_padded_sequence(e, torch.as_tensor(lengths).cpu(),
                                                   enforce_sorted=False)
        y, st = rnn(packed, state)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=T)
        return y, st

    class TorchLanguageModel(nn.Module):
        def __init__(self, model, rnn):
            super().__init__()
            dt = rnn.weight_ih_l0.dtype
            self.embed = nn.Embedding(model.vocab_size, model.embed.embedding_dim, dtype=dt)
            self.rnn = rnn
            self.drop = nn.Dropout(model.drop.p)
            self.head = nn.Linear(model.head.in_features, model.head.out_features, dtype=dt)

        def forward(self, tokens, state=None):
            """tokens (T, B) long -> (logits (T, B, V), state_n)."""
            y, st = self.rnn(self.embed(tokens), state)
            return self.head(self.drop(y)), st

    class _Encoder(nn.Module):
        def __init__(self, model, rnn):
            super().__init__()
            dt = rnn.weight_ih_l0.dtype
            self.pooling = model.pooling
            self.num_directions = 2 if rnn.bidirectional else 1
            if model.embed is not None:
                self.embed = nn.Embedding(model.embed.num_embeddings,
                                          model.embed.embedding_dim, dtype=dt)
            else:
                self.embed = None
            self.rnn = rnn
            if model.attn is not None:
                self.attn = Attention(model.attn.hidden_size, model.attn.attn_size, dt)
            else:
                self.attn = None
            self.drop = nn.Dropout(model.drop.p)
            self.head = nn.Linear(model.head.in_features, model.head.out_features, dtype=dt)
            sc = model.scaler if model.embed is None else None
            self.register_buffer("scaler_mean", None if sc is None else
                                 torch.as_tensor(np.asarray(sc.mean, np.float64)),
                                 persistent=False)
            self.register_buffer("scaler_std", None if sc is None else
                                 torch.as_tensor(np.asarray(sc.std, np.float64)),
                                 persistent=False)

        def encode(self, x, lengths=None):
            if self.embed is not None:
                e = self.embed(x.T)                                  # (T, B, E)
            else:
                e = x.transpose(0, 1).to(self.head.weight.dtype)     # (T, B, F)
            y, st = run_rnn(self.rnn, e, None, lengths)
            if self.attn is not None:
                pooled = self.attn(y, None if lengths is None else torch.as_tensor(lengths))
            else:
                h = st[0] if isinstance(st, tuple) else st
                pooled = torch.cat(list(h[-self.num_directions:]), dim=1)
            return self.head(self.drop(pooled))

        def scale(self, x):
            """The model's input scaler on raw features (float64, as fastrnn)."""
            if self.scaler_mean is None or self.embed is not None:
                return x
            return (x.double() - self.scaler_mean) / self.scaler_std

    class TorchSequenceClassifier(_Encoder):
        def __init__(self, model, rnn):
            super().__init__(model, rnn)
            self.classes = model.classes

        def forward(self, x, lengths=None):
            """x (B, T, F) float or ids (B, T) long -> logits (B, C)."""
            return self.encode(x, lengths)

        def predict_proba(self, x, lengths=None):
            """Raw features (the model's scaler applied) -> probabilities (B, C)."""
            return torch.softmax(self.encode(self.scale(x), lengths).double(), dim=1)

    class TorchSequenceRegressor(_Encoder):
        def __init__(self, model, rnn):
            super().__init__(model, rnn)
            self.horizon, self.output_size = model.horizon, model.output_size
            self.difference = model.difference
            ts = model.target_scaler
            self.register_buffer("target_mean", None if ts is None else
                                 torch.as_tensor(np.asarray(ts.mean, np.float64)),
                                 persistent=False)
            self.register_buffer("target_std", None if ts is None else
                                 torch.as_tensor(np.asarray(ts.std, np.float64)),
                                 persistent=False)

        def forward(self, x, lengths=None):
            """x (B, T, F) -> (B, horizon, output_size)."""
            out = self.encode(x, lengths)
            return out.reshape(out.shape[0], self.horizon, self.output_size)

        def predict(self, x, lengths=None):
            """Raw windows -> predictions in the data's units (float64), as the
            fastrnn model's ``predict``."""
            lag = self.difference
            x = x.double()
            base = None
            if lag:
                base = x[:, -lag:]
                x = x[:, lag:] - x[:, :-lag]
            out = self.forward(self.scale(x), lengths).double()
            if self.target_mean is not None:
                out = out * self.target_std + self.target_mean
            if lag:
                hist, steps = list(base.unbind(1)), []
                for k in range(self.horizon):
                    steps.append(out[:, k] + hist[k])
                    hist.append(steps[-1])
                out = torch.stack(steps, 1)
            return out

    _CLASSES.update(LanguageModel=TorchLanguageModel,
                    SequenceClassifier=TorchSequenceClassifier,
                    SequenceRegressor=TorchSequenceRegressor)
    return _CLASSES


def torch_model(model):
    """The PyTorch twin of a fastrnn model (see the module docstring)."""
    classes = _classes()
    name = type(model).__name__
    if name not in classes:
        raise TypeError(f"to_torch takes a LanguageModel, SequenceClassifier or "
                        f"SequenceRegressor (or a layer), got {name}")
    rnn = torch_rnn(model.rnn)
    twin = classes[name](model, rnn)
    twin.load_state_dict(model.state_dict(as_torch=True))
    return twin.eval()


def torch_state_dict(model):
    """``model.state_dict(as_torch=True)``: tensor copies of the parameters."""
    torch = require_torch()
    spec = model.rnn.cell
    if spec.torch is None:
        raise ValueError(f"{type(model).__name__} with cell {spec.name!r} has no torch.nn "
                         "equivalent to load into")
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in model.state_dict().items()}
