"""fastrnn: fast recurrent networks on NumPy arrays.

RNN (tanh/ReLU), LSTM, GRU and peephole-LSTM layers with PyTorch's parameter
names and shapes, whose time loops run as fused compiled kernels (Numba on the
CPU, numba.cuda on NVIDIA GPUs), checked against a plain NumPy reference.
"""
__version__ = "0.1.0"

from .cells import CELLS, CellSpec, get_cell
from .dispatch import BackendUnavailable, Weights
from .layers import GRU, LSTM, RNN, BackwardError, PeepholeLSTM

__all__ = [
    "RNN", "LSTM", "GRU", "PeepholeLSTM", "CELLS", "CellSpec", "get_cell", "Weights",
    "BackendUnavailable", "BackwardError", "__version__",
]
