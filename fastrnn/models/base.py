"""The base of every model: :class:`_Model` (sub-modules, flat ``params`` and
``grads``, train/eval, moving to the GPU, state dicts, save/load), the
recurrent stack a cell name builds (:func:`make_recurrent`,
:data:`CELL_TYPES`), and :func:`load_model` with the model table
(:data:`_MODELS`: class name -> class, which the model modules fill in as
they define their classes; :mod:`fastrnn.checkpoint` reads files against it).
"""
from __future__ import annotations

import numpy as np

from .. import _device
from .. import prepared as _prepared
from .. import checkpoint as _ckpt
from ..checkpoint import CheckpointError
from .. import layers as _layers
from ..bf16 import check_compute_dtype
from ..cells import CELL_NAMES, get_cell

#: every cell name ``cell=`` accepts (registry keys and their aliases, see
#: :data:`fastrnn.cells.CELL_NAMES`) -> (layer class, extra constructor arguments),
#: from each cell's ``CellSpec.layer``
CELL_TYPES = {name: (getattr(_layers, get_cell(name).layer[0]), get_cell(name).layer_kwargs)
              for name in CELL_NAMES}

# CheckpointError (a ValueError) lives in fastrnn.checkpoint; imported above


def make_recurrent(cell, input_size, hidden_size, num_layers=1, dropout=0.0,
                   bidirectional=False, backend="auto", dtype=np.float32, seed=None,
                   compute_dtype=None):
    """Build the recurrent layer for a cell name (see :data:`CELL_TYPES`)."""
    cls, extra = CELL_TYPES[get_cell(cell).name]     # get_cell names the accepted cells
    return cls(input_size, hidden_size, num_layers=num_layers, dropout=dropout,
               bidirectional=bidirectional, backend=backend, dtype=dtype, seed=seed,
               compute_dtype=compute_dtype, **extra)


def _compute_dtype(value, dtype, backend):
    """The models' ``compute_dtype`` checked before anything is built: the
    mode's name (None or ``"bfloat16"``), refused for float64 and for cuda."""
    value = check_compute_dtype(value, "compute_dtype", dtype)
    if value is not None:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"compute_dtype={value!r} is for float32 models (float32 "
                             f"parameters, bfloat16 products); dtype is {np.dtype(dtype).name}")
        if backend == "cuda":
            raise ValueError(f"compute_dtype={value!r} runs on the CPU backends only "
                             "('numpy', 'cpu', or 'auto' with host arrays), not on 'cuda'")
    return value


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
        """Set every gradient in :attr:`grads` to zero, in place (the arrays
        stay the same objects); ``backward`` accumulates into them."""
        for m in self._modules.values():
            m.zero_grad()

    def train(self, mode=True):
        """Training mode (``mode=True``: dropout active, the forward pass saves
        what ``backward`` needs) or evaluation mode (``False``); returns the
        model."""
        self.training = bool(mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        """Evaluation mode, ``train(False)``: no dropout, and the forward pass
        runs the inference kernels (nothing saved for ``backward``); returns
        the model. ``predict``, ``evaluate`` and ``sample`` switch to it and
        back themselves."""
        return self.train(False)

    def num_params(self):
        """The number of trainable values (the sizes of :attr:`params` added up)."""
        return int(sum(v.size for v in self.params.values()))

    @property
    def backend(self):
        return self.rnn.backend

    @property
    def dtype(self):
        return self.rnn.dtype

    @property
    def compute_dtype(self):
        """The recurrent layers' compute mode: None or ``"bfloat16"`` (see
        :attr:`fastrnn.LSTM.compute_dtype`); the embedding computes in
        :attr:`dtype`, the head too except the language model's, which follows
        the mode.
        Settable; saved with the model."""
        return self.rnn.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, value):
        self.rnn.compute_dtype = value
        self.config["compute_dtype"] = self.rnn.compute_dtype

    @property
    def device(self):
        """``"cuda"`` when the model's parameters live on the GPU, else ``"cpu"``."""
        return self.rnn.device

    def to(self, backend):
        """Move the model to ``"cuda"`` (parameters, gradients, every block), or
        back to the host with ``"cpu"`` (or ``"numpy"``, ``"auto"``: the
        recurrent layers' backend there); returns the model.

        An optimizer built on the model follows (it reads ``model.params`` at
        every step and moves its state buffers at the next step)."""
        from .. import dispatch
        backend = dispatch.check_backend_name(backend)
        _device.placement("cuda" if backend == "cuda" else "cpu")   # clear error first
        self.rnn.to(backend)
        where = "cuda" if backend == "cuda" else "cpu"
        for m in self._modules.values():
            if m is not self.rnn:
                m.to(where)
        self.config["backend"] = backend
        self._moved()
        return self

    def _moved(self):
        """Hook: move carried state after :meth:`to`."""

    def _to_model(self, a, dtype=None):
        """A host batch array for a model on the GPU: copied over (once)."""
        if self.device == "cuda" and not _device.on_device(a):
            return _device.kernels().to_device(np.asarray(a), dtype)
        return a

    def state_dict(self, as_torch=False):
        """A copy of the parameters, ``{name: host ndarray}`` with the names of
        :attr:`params` (``"rnn.weight_ih_l0"``, ``"head.weight"``...); changing
        it does not change the model. :meth:`load_state_dict` takes it back.
        ``as_torch=True``: ``torch.Tensor`` copies that the model's
        :meth:`to_torch` twin loads (``twin.load_state_dict``)."""
        if as_torch:
            from ..torch_models import torch_state_dict
            return torch_state_dict(self)
        if self.device == "cuda":
            return {k: _device.host_copy(v) for k, v in self.params.items()}
        return {k: v.copy() for k, v in self.params.items()}

    def to_torch(self):
        """An equivalent ``torch.nn.Module`` (needs torch: ``pip install
        'fastrnn[torch]'``): same parameters, ``forward`` as this model's
        (see :mod:`fastrnn.torch_models`)."""
        from ..torch_models import torch_model
        return torch_model(self)

    def load_state_dict(self, state):
        own = self.params
        # every name and shape checked before the first write: no half-loaded model
        new = _ckpt.check_state_dict(own, state, type(self).__name__)
        for k, v in new.items():
            if isinstance(own[k], np.ndarray):
                own[k][...] = v
            else:
                _device.assign(own[k], v)
        _prepared.bump()

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

    def __repr__(self):
        c = self.config
        skip = {"backend", "dtype", "seed", "compute_dtype"}
        args = ", ".join(f"{k}={v!r}" for k, v in c.items()
                         if k not in skip and v is not None)
        extra = []
        if self.meta.get("classes") is not None:
            extra.append(f"classes={_short(self.meta['classes'])}")
        if self.meta.get("scaler") is not None:
            extra.append("scaler=Standardizer")
        if self.meta.get("difference"):
            extra.append(f"difference={self.meta['difference']}")
        mode = "" if self.compute_dtype is None else f", compute_dtype={self.compute_dtype!r}"
        return (f"{type(self).__name__}({args}, backend={self.backend!r}, "
                f"dtype={np.dtype(self.dtype).name}{mode}; {self.num_params():,} parameters"
                + ("; " + ", ".join(extra) if extra else "") + ")")

    # ------------------------------------------------------------ save / load
    def save(self, path):
        """Write parameters and config to ``path`` (``.npz`` appended if missing)."""
        params = self.state_dict() if self.device == "cuda" else self.params
        # the format is written in one place (atomically: a temporary file, fsynced, renamed)
        return _ckpt.save_model(path, self, params)

    @classmethod
    def load(cls, path, backend=None):
        """Rebuild a model saved by :meth:`save`; ``backend`` overrides the
        saved one."""
        path, header, arrays, _ = _ckpt.read_model(path, _MODELS)
        if cls is not _Model and header["model"] != cls.__name__:
            raise CheckpointError(f"{path!r} holds a {header['model']}, "
                                  f"not a {cls.__name__}")
        return _ckpt.build_model(path, header, arrays, _MODELS, backend)


def read_checkpoint(path):
    """Return ``(header dict, {name: array})`` of a model file: a missing file
    is a FileNotFoundError, any broken one a CheckpointError naming the file
    (see :mod:`fastrnn.checkpoint`)."""
    _, header, arrays, _ = _ckpt.read_model(path, _MODELS)
    return header, arrays


def load_model(path, backend=None):
    """Load any model saved by ``save``, choosing the class from the file."""
    path, header, arrays, _ = _ckpt.read_model(path, _MODELS)
    return _ckpt.build_model(path, header, arrays, _MODELS, backend)


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _short(seq, n=6):
    seq = list(seq)
    return repr(seq) if len(seq) <= n else repr(seq[:n])[:-1] + f", ... ({len(seq)} in all)]"


#: the model table: class name (as a file's header records it) -> class. It is
#: :data:`fastrnn.checkpoint.MODELS`, which reads files against it without
#: importing the models; each model module enters its class with
#: :func:`_register` as it is imported.
_MODELS = _ckpt.MODELS
_register = _ckpt.register_model
