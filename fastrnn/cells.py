"""The cell registry: one table that names every cell, its gates and its parameters.

Dispatch, the layers, the tests and the benchmarks all read this table, so a
cell is described exactly once.

Notation (used in every docstring and shape comment of the package):
``T`` time steps, ``B`` batch, ``I`` input features, ``H`` hidden units,
``G`` gates, ``D`` directions, ``L`` layers.

Gate order follows PyTorch so that a ``torch.nn`` state_dict loads unchanged:
LSTM and peephole LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN a single gate.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    """Static description of one recurrent cell.

    Attributes
    ----------
    name : registry key, also used by the kernels (``"lstm"``, ``"gru"``, ...).
    gates : G, the number of ``H``-wide gate blocks in ``weight_ih`` and ``weight_hh``.
    gate_names : the gate order of those blocks.
    has_cell : True for the LSTM family, whose state is ``(h, c)``.
    peephole : ``None``, ``"diagonal"`` (three ``(H,)`` vectors) or ``"full"``
        (three ``(H, H)`` matrices).
    """

    name: str
    gates: int
    gate_names: tuple
    has_cell: bool = False
    peephole: str | None = None

    def peephole_shape(self, hidden_size: int):
        """Shape of one peephole weight (``p_i``, ``p_f`` or ``p_o``), or None."""
        if self.peephole == "diagonal":
            return (hidden_size,)
        if self.peephole == "full":
            return (hidden_size, hidden_size)
        return None


CELLS = {
    # h' = tanh(W x + b_ih + U h + b_hh)
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",)),
    # h' = relu(W x + b_ih + U h + b_hh)
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",)),
    # i,f,g,o = σ,σ,tanh,σ(W x + b_ih + U h + b_hh); c' = f c + i g; h' = o tanh(c')
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), has_cell=True),
    # reset_after=True (PyTorch, cuDNN): n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn))
    "gru": CellSpec("gru", 3, ("r", "z", "n")),
    # reset_after=False (Cho et al. 2014): n = tanh(W_n x + b_in + U_n (r ⊙ h) + b_hn)
    "gru_reset_before": CellSpec("gru_reset_before", 3, ("r", "z", "n")),
    # LSTM whose i, f gates see c and whose o gate sees c' through p_i, p_f, p_o
    "peephole_diagonal": CellSpec("peephole_diagonal", 4, ("i", "f", "g", "o"),
                                  has_cell=True, peephole="diagonal"),
    "peephole_full": CellSpec("peephole_full", 4, ("i", "f", "g", "o"),
                              has_cell=True, peephole="full"),
}

#: the suffixes of the peephole parameters, in the order the backends stack them
PEEPHOLE_GATES = ("i", "f", "o")


def get_cell(name: str) -> CellSpec:
    """Return the :class:`CellSpec` registered under ``name``."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(CELLS)}") from None
