"""fastrnn: fast recurrent networks on NumPy arrays.

RNN (tanh/ReLU), LSTM, GRU and peephole-LSTM layers with PyTorch's parameter
names and shapes, whose time loops run as fused compiled kernels (Numba on the
CPU, numba.cuda on NVIDIA GPUs), checked against a plain NumPy reference.
"""
__version__ = "0.1.0"

from .cells import CELL_NAMES, CELLS, CellSpec, get_cell
from .checkpoint import CheckpointError
from .contract import BackendUnavailable, Weights
from .layers import GRU, LSTM, RNN, BackwardError, PeepholeLSTM
from . import blocks, callbacks, data, metrics, models, optim, train
from .blocks import (AttentionPool, Dropout, Embedding, Linear, Sequential, mse,
                     softmax_cross_entropy)
from .models import LanguageModel, SequenceClassifier, SequenceRegressor, load_model
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop, clip_grad_norm, clip_grad_value
from .callbacks import Callback, LearningRateScheduler, ModelCheckpoint
from .train import EarlyStopping, Trainer


def set_num_threads(n):
    """Set the number of threads the compiled CPU kernels (and their BLAS) use."""
    from ._validate import positive_int
    n = positive_int("n (the number of threads)", n)     # not 2.5, None or True
    from .kernels.cpu import set_num_threads as _set
    _set(n)


def get_num_threads():
    """The number of threads the compiled CPU kernels use."""
    from .kernels.cpu import get_num_threads as _get
    return _get()

__all__ = [
    "RNN", "LSTM", "GRU", "PeepholeLSTM", "CELLS", "CELL_NAMES", "CellSpec", "get_cell", "Weights",
    "BackendUnavailable", "BackwardError", "CheckpointError", "__version__",
    "Embedding", "Linear", "Dropout", "Sequential", "AttentionPool", "softmax_cross_entropy", "mse",
    "LanguageModel", "SequenceClassifier", "SequenceRegressor", "load_model",
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm", "clip_grad_value",
    "Trainer", "EarlyStopping", "Callback", "LearningRateScheduler", "ModelCheckpoint",
    "set_num_threads", "get_num_threads",
]
