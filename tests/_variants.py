"""One table of every layer variant; the tests iterate over it (import as ``_variants``)."""
import numpy as np

from fastrnn.cells import CELLS
from fastrnn.models import CELL_TYPES

# registry cell -> (layer class, extra constructor arguments), from CellSpec.layer
VARIANTS = {name: CELL_TYPES[name] for name in CELLS}


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
