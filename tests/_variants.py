"""One table of every layer variant; the tests iterate over it (import as ``_variants``)."""
import numpy as np

import fastrnn

# id -> (layer class, extra constructor arguments)
VARIANTS = {
    "rnn_tanh": (fastrnn.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (fastrnn.RNN, dict(nonlinearity="relu")),
    "lstm": (fastrnn.LSTM, {}),
    "gru": (fastrnn.GRU, dict(reset_after=True)),
    "gru_reset_before": (fastrnn.GRU, dict(reset_after=False)),
    "peephole_diagonal": (fastrnn.PeepholeLSTM, dict(peephole="diagonal")),
    "peephole_full": (fastrnn.PeepholeLSTM, dict(peephole="full")),
}


def make(variant, input_size, hidden_size, **kw):
    cls, extra = VARIANTS[variant]
    return cls(input_size, hidden_size, **extra, **kw)


def random_state(layer, B, rng):
    """A random initial state of the right structure for ``layer``."""
    shape = (layer.num_layers * layer.num_directions, B, layer.hidden_size)
    h = rng.normal(size=shape).astype(layer.dtype)
    if layer.cell.has_cell:
        return h, rng.normal(size=shape).astype(layer.dtype)
    return h


def seq(layer, T, B, rng):
    shape = (B, T, layer.input_size) if layer.batch_first else (T, B, layer.input_size)
    return rng.normal(size=shape).astype(layer.dtype)
