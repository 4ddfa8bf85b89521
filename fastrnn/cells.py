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
    """Static description of one recurrent cell: everything a backend, a layer,
    a model, a benchmark or a test needs to know about it. Every per-cell table
    of the package is derived from :data:`CELLS`.

    Attributes
    ----------
    name : registry key, also used by the kernels (``"lstm"``, ``"gru"``, ...).
    gates : G, the number of ``H``-wide gate blocks in ``weight_ih`` and ``weight_hh``.
    gate_names : the gate order of those blocks.
    family : ``"rnn"``, ``"lstm"`` or ``"gru"``: the cell's equations up to the
        options below (the peephole LSTMs are of the ``"lstm"`` family).
    has_cell : True for the LSTM family, whose state is ``(h, c)``.
    peephole : ``None``, ``"diagonal"`` (three ``(H,)`` vectors) or ``"full"``
        (three ``(H, H)`` matrices).
    products : dependent recurrent products per step: 1 (``U h`` only), or 2
        when a second product needs the first one's result (GRU reset-before:
        ``U_n (r * h)``; full peephole: ``P_o c'``). The backends' time loops
        come in these two skeletons.
    layer : ``(class name in fastrnn.layers, constructor keywords)`` that builds
        a layer of this cell.
    torch : ``(torch.nn class name, constructor keywords)`` of the PyTorch twin,
        or None.
    aliases : further names :func:`get_cell` (and the models' ``cell=``) accept.
    """

    name: str
    gates: int
    gate_names: tuple
    family: str
    has_cell: bool = False
    peephole: str | None = None
    products: int = 1
    layer: tuple = ()
    torch: tuple | None = None
    aliases: tuple = ()

    def peephole_shape(self, hidden_size: int):
        """Shape of one peephole weight (``p_i``, ``p_f`` or ``p_o``), or None."""
        if self.peephole == "diagonal":
            return (hidden_size,)
        if self.peephole == "full":
            return (hidden_size, hidden_size)
        return None

    @property
    def layer_kwargs(self) -> dict:
        """The constructor keywords of ``layer`` as a dict."""
        return dict(self.layer[1])

    @property
    def torch_kwargs(self) -> dict:
        """The constructor keywords of the torch twin as a dict (empty without one)."""
        return {} if self.torch is None else dict(self.torch[1])


_LSTM_GATES = ("i", "f", "g", "o")

CELLS = {
    # h' = tanh(W x + b_ih + U h + b_hh)
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",), "rnn",
                         layer=("RNN", (("nonlinearity", "tanh"),)),
                         torch=("RNN", (("nonlinearity", "tanh"),)), aliases=("rnn",)),
    # h' = relu(W x + b_ih + U h + b_hh)
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",), "rnn",
                         layer=("RNN", (("nonlinearity", "relu"),)),
                         torch=("RNN", (("nonlinearity", "relu"),))),
    # i,f,g,o = σ,σ,tanh,σ(W x + b_ih + U h + b_hh); c' = f c + i g; h' = o tanh(c')
    "lstm": CellSpec("lstm", 4, _LSTM_GATES, "lstm", has_cell=True,
                     layer=("LSTM", ()), torch=("LSTM", ())),
    # reset_after=True (PyTorch, cuDNN): n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn))
    "gru": CellSpec("gru", 3, ("r", "z", "n"), "gru",
                    layer=("GRU", (("reset_after", True),)), torch=("GRU", ())),
    # reset_after=False (Cho et al. 2014): n = tanh(W_n x + b_in + U_n (r ⊙ h) + b_hn)
    "gru_reset_before": CellSpec("gru_reset_before", 3, ("r", "z", "n"), "gru",
                                 products=2,
                                 layer=("GRU", (("reset_after", False),))),
    # LSTM whose i, f gates see c and whose o gate sees c' through p_i, p_f, p_o
    "peephole_diagonal": CellSpec("peephole_diagonal", 4, _LSTM_GATES, "lstm",
                                  has_cell=True, peephole="diagonal",
                                  layer=("PeepholeLSTM", (("peephole", "diagonal"),)),
                                  aliases=("peephole", "peephole_lstm")),
    "peephole_full": CellSpec("peephole_full", 4, _LSTM_GATES, "lstm", has_cell=True,
                              peephole="full", products=2,
                              layer=("PeepholeLSTM", (("peephole", "full"),))),
}

#: every name :func:`get_cell` accepts (registry keys and aliases) -> registry key
CELL_NAMES = {**{a: n for n, c in CELLS.items() for a in c.aliases}, **{n: n for n in CELLS}}

#: the suffixes of the peephole parameters, in the order the backends stack them
PEEPHOLE_GATES = ("i", "f", "o")


def get_cell(name: str) -> CellSpec:
    """Return the :class:`CellSpec` registered under ``name`` (or one of its aliases)."""
    if isinstance(name, CellSpec):
        return name
    try:
        return CELLS[CELL_NAMES[name]]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(CELL_NAMES)}") from None
