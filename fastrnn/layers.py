"""Recurrent layers: RNN, LSTM, GRU and PeepholeLSTM with a PyTorch-shaped API.

A layer stacks ``num_layers`` layers of one cell, each in one or two
directions, with dropout between layers in training. It checks every argument
before anything runs, then calls a backend (:mod:`fastrnn.dispatch`) once per
layer and direction; the backends run whole sequences.

Shapes: ``x`` ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``); ``y``
``(T, B, D*H)``; ``h_n`` (and ``c_n``) ``(L*D, B, H)``.
"""
from __future__ import annotations

import inspect
import numbers
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from . import _validate, dispatch
from .cells import PEEPHOLE_GATES, get_cell
from .dispatch import Weights

if TYPE_CHECKING:                  # annotations only (no runtime cost)
    from numpy.typing import ArrayLike, DTypeLike

    State = Union[Any, "tuple[Any, Any]"]   # h (RNN, GRU) or (h, c) (LSTM family)

INITS = (None, "pytorch", "xavier", "he", "orthogonal")


class BackwardError(RuntimeError, ValueError):
    """``backward`` was called without a forward pass in training mode to match."""


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class HostOps:
    """The array operations a layer needs between kernel calls, on host arrays.

    :class:`fastrnn.kernels.cuda_ops.DeviceOps` implements the same methods for
    GPU arrays, so the layer code below is written once for both.
    """

    on_device = False

    asarray = staticmethod(np.asarray)
    from_host = staticmethod(np.ascontiguousarray)
    zeros = staticmethod(np.zeros)
    empty = staticmethod(np.empty)
    stack0 = staticmethod(np.stack)
    add = staticmethod(np.add)
    mul = staticmethod(np.multiply)

    @staticmethod
    def to_host(a):
        return np.array(a, copy=True)

    @staticmethod
    def contiguous3(a, swap=False):
        return np.ascontiguousarray(a.transpose(1, 0, 2) if swap else a)

    @staticmethod
    def concat_last(parts):
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    @staticmethod
    def take_last(a, lo, hi):
        return np.ascontiguousarray(a[:, :, lo:hi])

    @staticmethod
    def iadd(a, b):
        a += b

    @staticmethod
    def fill0(a):
        a[...] = 0

    @staticmethod
    def set_index0(dst, i, src):
        dst[i] = src


def _device_ops():
    from .kernels.cuda_ops import DeviceOps
    return DeviceOps()


class _RecurrentLayer:
    """Shared machinery of every recurrent layer (see the subclasses)."""

    _cell_name = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype=np.float32, seed=None,
                 init=None, forget_bias=None):
        self.cell = get_cell(self._cell_name)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if (isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real)
                or not 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not isinstance(init, (str, type(None))) or init not in INITS:
            raise ValueError(f"init must be one of {INITS[1:]} or None, got {init!r}")
        # real bools only: the string "False" is truthy and would silently mean True
        self.bias = _validate.boolean("bias", bias)
        self.batch_first = _validate.boolean("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = _validate.boolean("bidirectional", bidirectional)
        if forget_bias is not None:
            forget_bias = _validate.finite_float("forget_bias", forget_bias)
        _validate.seed("seed", seed)
        self.backend = dispatch.check_backend_name(backend)
        self.dtype = _validate.float_dtype("dtype", dtype)
        self.num_directions = 2 if self.bidirectional else 1
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None
        self._ops = HostOps()
        self.params = self._init_params(init, forget_bias)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._zero_bias = np.zeros(self.cell.gates * self.hidden_size, self.dtype)
        if backend in ("cpu", "cuda"):
            dispatch.get_backend(backend)   # fail now, with the reason, not at the first call
        if backend == "cuda":
            self.to("cuda")

    @property
    def rng(self):
        """The layer's seeded generator (initialisation, then dropout masks)."""
        return self._rng

    @rng.setter
    def rng(self, gen):
        self._rng = gen

    # ------------------------------------------------------------------ placement
    @property
    def device(self):
        """``"cuda"`` when parameters and gradients live on the GPU, else ``"cpu"``."""
        return "cuda" if self._ops.on_device else "cpu"

    def to(self, backend: str) -> _RecurrentLayer:
        """Move the layer to ``backend`` and return it.

        ``layer.to("cuda")`` copies parameters and gradients to the GPU once;
        they stay there between calls, and the layer then takes and returns
        device arrays. ``layer.to("cpu")`` (or ``"numpy"``, ``"auto"``) brings
        them back to host arrays.
        """
        backend = dispatch.check_backend_name(backend)
        ops = _device_ops() if backend == "cuda" else HostOps()
        if backend != "auto":
            dispatch.get_backend(backend)
        if ops.on_device != self._ops.on_device:
            old = self._ops
            for d in (self.params, self.grads):
                for k in d:
                    d[k] = ops.from_host(old.to_host(d[k]))
            self._zero_bias = ops.zeros(self.cell.gates * self.hidden_size, self.dtype)
        self._ops, self.backend, self._cache = ops, backend, None
        return self

    # ------------------------------------------------------------------ parameters
    def _suffixes(self):
        """(layer, direction, suffix) in PyTorch's parameter order."""
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                yield k, d, f"_l{k}" + ("_reverse" if d else "")

    def _init_params(self, init, forget_bias):
        G, H, rng, dt = self.cell.gates, self.hidden_size, self._rng, self.dtype
        k = 1.0 / np.sqrt(H)
        params = {}
        for layer, _, sfx in self._suffixes():
            n_in = self.input_size if layer == 0 else H * self.num_directions
            shapes = {"weight_ih": (G * H, n_in), "weight_hh": (G * H, H)}
            if self.bias:
                shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
            for name, shape in shapes.items():
                if init in (None, "pytorch") or name.startswith("bias"):
                    val = rng.uniform(-k, k, shape) if init in (None, "pytorch") else np.zeros(shape)
                elif init == "xavier" or (init == "orthogonal" and name == "weight_ih"):
                    lim = np.sqrt(6.0 / (shape[0] + shape[1]))
                    val = rng.uniform(-lim, lim, shape)
                elif init == "he":
                    val = rng.normal(0.0, np.sqrt(2.0 / shape[1]), shape)
                else:   # orthogonal recurrent weights, one H x H block per gate
                    val = np.concatenate([_orthogonal(rng, H) for _ in range(G)])
                params[name + sfx] = val.astype(dt)
            if forget_bias is not None and self.bias:
                params["bias_ih" + sfx][H:2 * H] = forget_bias
                params["bias_hh" + sfx][H:2 * H] = 0
            shape = self.cell.peephole_shape(H)
            if shape is not None:
                for gate in PEEPHOLE_GATES:
                    params[f"peephole_{gate}{sfx}"] = rng.uniform(-k, k, shape).astype(dt)
        return params

    def _weights(self, sfx, source=None):
        p = self.params if source is None else source
        peep = None
        if self.cell.peephole is not None:
            peep = self._ops.stack0([p[f"peephole_{g}{sfx}"] for g in PEEPHOLE_GATES])
        b_ih = p["bias_ih" + sfx] if self.bias else self._zero_bias
        b_hh = p["bias_hh" + sfx] if self.bias else self._zero_bias
        return Weights(p["weight_ih" + sfx], p["weight_hh" + sfx], b_ih, b_hh, peep)

    def _accumulate(self, sfx, gw):
        g, add = self.grads, self._ops.iadd
        add(g["weight_ih" + sfx], gw.w_ih)
        add(g["weight_hh" + sfx], gw.w_hh)
        if self.bias:
            add(g["bias_ih" + sfx], gw.b_ih)
            add(g["bias_hh" + sfx], gw.b_hh)
        if self.cell.peephole is not None:
            for j, gate in enumerate(PEEPHOLE_GATES):
                add(g[f"peephole_{gate}{sfx}"], gw.peep[j])

    def zero_grad(self) -> None:
        """Set every gradient in :attr:`grads` to zero (in place)."""
        for v in self.grads.values():
            self._ops.fill0(v)

    def train(self, mode: bool = True) -> _RecurrentLayer:
        """Set training mode (``mode=False``: eval mode, dropping the saved
        activations); returns the layer."""
        self.training = bool(mode)
        if not self.training:
            self._cache = None
        return self

    def eval(self) -> _RecurrentLayer:
        """Eval mode: no dropout, no activations kept for ``backward``
        (inference kernels); returns the layer."""
        return self.train(False)

    def state_dict(self, as_torch: bool = False) -> dict[str, Any]:
        """Copies of the parameters as host ndarrays (also for a layer on the GPU).

        Parameters
        ----------
        as_torch : bool
            Return ``torch.Tensor`` copies instead, ready for the matching
            ``torch.nn.RNN/LSTM/GRU``: ``torch_lstm.load_state_dict(
            layer.state_dict(as_torch=True))`` (same names, shapes and gate
            order). Not for :class:`PeepholeLSTM` or ``GRU(reset_after=False)``,
            which PyTorch does not have.
        """
        out = {k: self._ops.to_host(v) for k, v in self.params.items()}
        if not as_torch:
            return out
        if self._cell_name not in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
            raise ValueError(f"{type(self).__name__} ({self._cell_name}) has no torch.nn "
                             "equivalent to load into")
        import torch
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}

    def load_state_dict(self, state_dict: Any) -> None:
        """Load parameters (ndarrays, or anything ``np.asarray`` takes: torch tensors).

        Names and shapes must match exactly; values are cast to the layer's dtype.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match this {type(self).__name__}: "
                             f"missing {missing}, unexpected {unexpected}")
        new = {}
        for k, v in state_dict.items():
            if hasattr(v, "detach"):        # torch tensors (possibly requiring grad)
                v = v.detach().cpu()
            a = np.asarray(v)
            if a.dtype.kind != "f":
                raise TypeError(f"state_dict[{k!r}] must hold floating-point values, got dtype {a.dtype}")
            if a.shape != tuple(self.params[k].shape):
                raise ValueError(f"state_dict[{k!r}] has shape {a.shape}, expected {self.params[k].shape}")
            new[k] = a
        for k, a in new.items():         # in place: optimizers keep their references
            if self._ops.on_device:
                self.params[k].copy_to_device(np.ascontiguousarray(a, dtype=self.dtype))
            else:
                self.params[k][...] = a

    # ------------------------------------------------------------------ checks
    def _check_array(self, name, a):
        on_gpu = dispatch.is_device_array(a)
        if self._ops.on_device and not on_gpu:
            raise TypeError(f"{name} is a host array but this layer lives on the GPU: pass a device "
                            "array (e.g. numba.cuda.to_device(x)), or move the layer with layer.to('cpu')")
        if on_gpu and not self._ops.on_device:
            raise TypeError(f"{name} is a GPU array but this layer's parameters are on the host: "
                            "move the layer with layer.to('cuda') first")
        a = self._ops.asarray(a)
        if a.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} like the layer, got {a.dtype}"
                            f" (convert with .astype(np.{self.dtype}))")
        return a

    def _check_finite(self, name, a):
        # host arrays only: a device-wide scan would cost a reduction and a sync
        if not self._ops.on_device and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity")

    def _check_input(self, x, state, lengths):
        x = self._check_array("x", x)
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if x.ndim != 3:
            raise ValueError(f"x must be 3-D {layout}, got shape {x.shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (input_size) in its last "
                             f"axis {layout}, got shape {x.shape}")
        if 0 in x.shape[:2]:
            raise ValueError(f"x must have at least one time step and one batch entry, got shape {x.shape}")
        self._check_finite("x", x)
        if self.batch_first:
            B, T = x.shape[:2]
        else:
            T, B = x.shape[:2]
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        h0 = c0 = None
        if state is not None:
            if self.cell.has_cell:
                if not isinstance(state, (tuple, list)) or len(state) != 2:
                    raise TypeError("state must be a tuple (h_0, c_0) for "
                                    f"{type(self).__name__}, got {type(state).__name__}")
                h0, c0 = state
            else:
                h0 = state
            names = ("state[0] (h_0)", "state[1] (c_0)") if self.cell.has_cell else ("state (h_0)",)
            checked = []
            for name, s in zip(names, (h0, c0)):
                s = self._check_array(name, s)
                if tuple(s.shape) != (LD, B, H):
                    raise ValueError(f"{name} must have shape (num_layers*num_directions, B, H) = "
                                     f"{(LD, B, H)}, got {s.shape}")
                self._check_finite(name, s)
                checked.append(s)
            h0 = checked[0]
            c0 = checked[1] if self.cell.has_cell else None
        if lengths is not None:
            lengths = _check_lengths(lengths, T, B)
        return x, h0, c0, lengths, T, B

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x: ArrayLike, state: State | None = None,
                 lengths: ArrayLike | None = None) -> tuple[Any, State]:
        """``layer(x, state, lengths)`` is :meth:`forward` (see there)."""
        return self.forward(x, state, lengths)

    def forward(self, x: ArrayLike, state: State | None = None,
                lengths: ArrayLike | None = None) -> tuple[Any, State]:
        """Run the stack over the sequences ``x``.

        ``L`` is ``num_layers``, ``D`` 2 when ``bidirectional`` else 1, ``H``
        ``hidden_size``, ``I`` ``input_size``, ``T`` the time steps and ``B``
        the batch.

        Parameters
        ----------
        x : array, shape (T, B, I), or (B, T, I) with ``batch_first``
            The input sequences, already of the layer's dtype (a host
            ``ndarray``; a device array for a layer on the GPU). Not modified.
        state : array or tuple of arrays, optional
            The initial state: ``h_0`` ``(L*D, B, H)`` for :class:`RNN` and
            :class:`GRU`, ``(h_0, c_0)`` (each ``(L*D, B, H)``) for the LSTM
            family; index ``k*D + d`` is layer ``k``, direction ``d``. Always
            batch-second, also with ``batch_first``. Zeros when ``None``.
        lengths : array of int, shape (B,), optional
            Valid steps per sequence, each in ``[1, T]``. Steps ``t >=
            lengths[b]`` output zeros and leave the state untouched; a reverse
            direction starts at each sequence's last valid step. ``None``:
            every sequence has ``T`` steps.

        Returns
        -------
        y : array, shape (T, B, D*H), or (B, T, D*H) with ``batch_first``
            The top layer's outputs at every step (both directions
            concatenated, forward first).
        state_n : array or tuple of arrays
            The final state, shaped as ``state``: ``h_n``, or ``(h_n, c_n)``
            for the LSTM family; ``h_n[k*D + d]`` is the state of layer ``k``,
            direction ``d`` after each sequence's last valid step.

        Raises
        ------
        ValueError, TypeError
            Bad shapes, dtypes, lengths, or NaN/infinity in host arrays,
            naming the argument, before anything runs.

        Notes
        -----
        In training mode (the default) the activations are kept for one
        :meth:`backward`, and ``dropout`` applies between layers; in
        :meth:`eval` mode neither.
        """
        x, h0, c0, lengths, T, B = self._check_input(x, state, lengths)
        be = dispatch.get_backend(dispatch.resolve_backend(self.backend, x))
        ops, H, D = self._ops, self.hidden_size, self.num_directions
        inp = ops.contiguous3(x, swap=self.batch_first)                   # [T, B, I]
        if self.training and not ops.on_device:
            # backward reads the inputs saved here: keep private copies, so that the
            # caller editing x (or the state) in place in between cannot make the
            # gradients stale (time-major x would otherwise be cached by reference)
            if np.may_share_memory(inp, x):
                inp = inp.copy()
            h0 = None if h0 is None else h0.copy()
            c0 = None if c0 is None else c0.copy()
        zeros = ops.zeros((B, H), self.dtype)
        h_n = ops.empty((self.num_layers * D, B, H), self.dtype)
        c_n = ops.empty((self.num_layers * D, B, H), self.dtype) if self.cell.has_cell else None
        caches, masks = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                y, h, c, cache = be.forward(
                    self.cell, inp, zeros if h0 is None else h0[idx],
                    None if not self.cell.has_cell else (zeros if c0 is None else c0[idx]),
                    self._weights(sfx), lengths, bool(d), self.training)
                ops.set_index0(h_n, idx, h)
                if c_n is not None:
                    ops.set_index0(c_n, idx, c)
                outs.append(y)
                caches.append((sfx, cache))
            inp = ops.concat_last(outs)                                     # [T, B, D*H]
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = self._rng.random(inp.shape) >= self.dropout
                mask = ops.from_host(keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout))
                inp = ops.mul(inp, mask)
                masks.append(mask)
            else:
                masks.append(None)
        if self.training:
            self._cache = dict(caches=caches, masks=masks, backend=be, T=T, B=B)
            self._consumed = False
        y = ops.contiguous3(inp, swap=True) if self.batch_first else inp
        return y, ((h_n, c_n) if self.cell.has_cell else h_n)

    def backward(self, dy: ArrayLike, dstate: State | None = None,
                 retain_graph: bool = False) -> tuple[Any, State]:
        """Back-propagate the last :meth:`forward` call (made in training mode).

        Parameters
        ----------
        dy : array, the shape of ``y``: (T, B, D*H), or (B, T, D*H) with ``batch_first``
            dL/dy, of the layer's dtype. Steps past a sequence's ``lengths``
            are ignored (those outputs were zeros).
        dstate : array or tuple, optional
            dL/dh_n ``(L*D, B, H)``, or ``(dL/dh_n, dL/dc_n)`` for the LSTM
            family (either part may be None); ``None``: zeros.
        retain_graph : bool, default False
            Keep the forward's saved activations for another ``backward``
            (as in PyTorch); by default a second ``backward`` without a new
            ``forward`` raises :class:`BackwardError` instead of silently
            adding the gradients twice.

        Returns
        -------
        dx : array
            dL/dx, shaped like ``x`` (``batch_first`` respected).
        dstate_0 : array or tuple of arrays
            dL/dh_0 (and dL/dc_0 for the LSTM family), each ``(L*D, B, H)``.

        Parameter gradients are *accumulated* into :attr:`grads` (call
        :meth:`zero_grad` between steps).

        Raises
        ------
        BackwardError
            No forward call in training mode to match, or its activations
            were already used.
        """
        if self._cache is None:
            raise BackwardError("backward() needs a forward() call in training mode first "
                                "(none was made, or the layer is in eval mode)")
        if getattr(self, "_consumed", False):
            raise BackwardError("backward() was already called for the last forward(): "
                                "run forward() again, or pass retain_graph=True to the "
                                "first backward() to back-propagate twice")
        cc = self._cache
        T, B, H, D, L = cc["T"], cc["B"], self.hidden_size, self.num_directions, self.num_layers
        dy = self._check_array("dy", dy)
        want = (B, T, D * H) if self.batch_first else (T, B, D * H)
        if tuple(dy.shape) != want:
            raise ValueError(f"dy must have the shape of the output y, {want}, got {dy.shape}")
        dh_n, dc_n = self._check_dstate(dstate, (L * D, B, H))
        self._check_finite("dy", dy)     # a NaN here would silently poison every gradient
        ops = self._ops
        dout = ops.contiguous3(dy, swap=self.batch_first)
        zeros = ops.zeros((B, H), self.dtype)
        dh0 = ops.empty((L * D, B, H), self.dtype)
        dc0 = ops.empty((L * D, B, H), self.dtype) if self.cell.has_cell else None
        be = cc["backend"]
        for layer in range(L - 1, -1, -1):
            if cc["masks"][layer] is not None:
                dout = ops.mul(dout, cc["masks"][layer])
            dinp = None
            for d in range(D):
                idx = layer * D + d
                sfx, cache = cc["caches"][idx]
                dyd = dout if D == 1 else ops.take_last(dout, d * H, (d + 1) * H)
                dx, dh, dc, gw = be.backward(
                    self.cell, cache, dyd, zeros if dh_n is None else dh_n[idx],
                    None if not self.cell.has_cell else (zeros if dc_n is None else dc_n[idx]))
                ops.set_index0(dh0, idx, dh)
                if dc0 is not None:
                    ops.set_index0(dc0, idx, dc)
                self._accumulate(sfx, gw)
                dinp = dx if dinp is None else ops.add(dinp, dx)
            dout = dinp
        dx = ops.contiguous3(dout, swap=True) if self.batch_first else dout
        if not retain_graph:
            self._consumed = True      # the cache stays until the next forward (as before)
        return dx, ((dh0, dc0) if self.cell.has_cell else dh0)

    def _check_dstate(self, dstate, shape):
        if dstate is None:
            return None, None
        if self.cell.has_cell:
            if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
                raise TypeError("dstate must be a tuple (dh_n, dc_n) (either may be None) for "
                                f"{type(self).__name__}, got {type(dstate).__name__}")
            parts, names = dstate, ("dstate[0] (dh_n)", "dstate[1] (dc_n)")
        else:
            parts, names = (dstate,), ("dstate (dh_n)",)
        out = []
        for name, p in zip(names, parts):
            if p is not None:
                p = self._check_array(name, p)
                if tuple(p.shape) != shape:
                    raise ValueError(f"{name} must have the shape of the final state {shape}, got {p.shape}")
                self._check_finite(name, p)
            out.append(p)
        return out[0], (out[1] if len(out) > 1 else None)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self._repr_extra().items())
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra}, bidirectional={self.bidirectional}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    def _repr_extra(self):
        return {}


def _check_lengths(lengths, T, B):
    # integers only (no floats, no bools) in [1, T]; always a fresh int64 array
    return _validate.lengths(lengths, T, B)


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------- docstrings
# The constructors share most arguments; each class's docstring is assembled
# from these entries (numpydoc), so that ``help(fastrnn.LSTM)`` documents
# every argument of that class.
_P = {
    "input_size": """input_size : int
    ``I``, the number of features of each time step of ``x``.""",
    "hidden_size": """hidden_size : int
    ``H``, the number of hidden units of each layer and direction.""",
    "num_layers": """num_layers : int, default 1
    ``L``, layers stacked on top of each other: layer ``k + 1`` reads the
    outputs of layer ``k`` (both directions concatenated).""",
    "nonlinearity": """nonlinearity : {"tanh", "relu"}, default "tanh"
    The activation ``act`` of the cell.""",
    "bias": """bias : bool, default True
    Whether the layer has the biases ``bias_ih_l{k}`` and ``bias_hh_l{k}``
    (a real bool: the string ``"False"`` is refused).""",
    "batch_first": """batch_first : bool, default False
    Take ``x`` and return ``y`` as ``(B, T, ...)`` instead of ``(T, B, ...)``.
    States are ``(L*D, B, H)`` either way (as in PyTorch).""",
    "dropout": """dropout : float in [0, 1), default 0.0
    Dropout on the outputs of every layer but the last, in training mode
    only (the masks come from ``seed``'s generator).""",
    "bidirectional": """bidirectional : bool, default False
    Also run each layer backwards in time (``D = 2``); ``y`` then holds both
    directions, ``[forward, backward]`` on its last axis, and the parameters
    of the reverse direction end in ``_reverse``.""",
    "backend": """backend : {"auto", "numpy", "cpu", "cuda"}, default "auto"
    Where the time loops run: ``"numpy"`` the NumPy reference, ``"cpu"`` the
    Numba kernels, ``"cuda"`` the numba.cuda kernels (the layer then keeps its
    parameters on the GPU and takes device arrays), ``"auto"`` the CPU kernels
    for host arrays, falling back to the reference when they cannot load. An
    unavailable ``"cpu"``/``"cuda"`` raises here, with the reason.""",
    "dtype": """dtype : numpy float dtype, default numpy.float32
    ``float32`` or ``float64``: the dtype of the parameters, and the dtype
    every input must already have.""",
    "seed": """seed : int or None, default None
    Seeds the layer's generator (initial weights, then dropout masks);
    ``None`` draws fresh entropy.""",
    "init": """init : {None, "pytorch", "xavier", "he", "orthogonal"}, default None
    Weight initialisation. ``None``/``"pytorch"``: every parameter
    ``U(-1/sqrt(H), 1/sqrt(H))``, as PyTorch. ``"xavier"`` (Glorot uniform),
    ``"he"`` (normal, ``std = sqrt(2 / fan_in)``) and ``"orthogonal"``
    (orthogonal ``H x H`` recurrent blocks, Glorot input weights) set the
    biases to zero.""",
    "forget_bias": """forget_bias : float or None, default None
    When given, the forget-gate part of ``bias_ih`` is set to this value and
    that of ``bias_hh`` to 0 (e.g. ``1.0``, Jozefowicz et al.); ignored
    without ``bias``.""",
    "reset_after": """reset_after : bool, default True
    ``True``: the reset gate multiplies the recurrent product
    (``n = tanh(W_n x + b_in + r * (U_n h + b_hn))``, PyTorch and cuDNN);
    ``False``: it multiplies the state before it (``U_n (r * h)``, Cho et
    al. 2014; no ``torch.nn`` equivalent).""",
    "peephole": """peephole : {"diagonal", "full"}, default "diagonal"
    Peephole weights per gate: a vector ``(H,)`` multiplying the cell
    elementwise, or a full matrix ``(H, H)``.""",
}

_CALL = """
Attributes
----------
params : dict of str to array
    The parameters, named and shaped as PyTorch names them:
    ``weight_ih_l{{k}}`` ``(G*H, I)`` (``(G*H, D*H)`` above the first layer),
    ``weight_hh_l{{k}}`` ``(G*H, H)``, ``bias_ih_l{{k}}``, ``bias_hh_l{{k}}``
    ``(G*H,)``, with ``_reverse`` for the backward direction; ``G = {gates}``
    (the number of gates).{extra_params}
grads : dict of str to array
    Gradients with the same names and shapes, accumulated by
    :meth:`backward` until :meth:`zero_grad`.
training : bool
    Training mode (:meth:`train`, the default): dropout, and activations
    saved for :meth:`backward`. :meth:`eval` turns both off.

Notes
-----
Calling the layer: ``y, state_n = layer(x, state=None, lengths=None)`` (:meth:`forward`):

- ``x`` ``(T, B, I)``, or ``(B, T, I)`` with ``batch_first``, of the
  layer's dtype;
- ``state`` the initial state, {state_in}; zeros when ``None``;
- ``lengths`` ``(B,)`` integers in ``[1, T]``: sequence ``b`` has
  ``lengths[b]`` valid steps; later steps output zeros and leave the state
  untouched, so ``state_n`` is the state after each sequence's last valid
  step (PyTorch's ``PackedSequence`` semantics, without packing);
- ``y`` ``(T, B, D*H)`` (``(B, T, D*H)`` with ``batch_first``): the top
  layer's outputs; ``state_n`` {state_out}.

``dx, dstate_0 = layer.backward(dy, dstate=None)`` back-propagates the last
forward call (training mode) and accumulates the parameter gradients into
:attr:`grads`.
"""

_EXAMPLE = """
Examples
--------
>>> import numpy as np, fastrnn
>>> layer = fastrnn.{cls}(8, 16, num_layers=2, {ctor}seed=0)
>>> x = np.zeros((5, 3, 8), np.float32)              # (T, B, I)
>>> y, {state} = layer(x, lengths=np.array([5, 2, 4]))
>>> y.shape, {shape}
((5, 3, 16), (2, 3, 16))
>>> dx, _ = layer.backward(np.ones_like(y))
>>> dx.shape, layer.grads["weight_hh_l0"].shape
((5, 3, 8), ({g16}, 16))
"""

_COMMON = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
           "bidirectional", "backend", "dtype", "seed", "init")


def _layer_doc(cls, summary, names, gates, has_cell, ctor="", extra_params=""):
    summary = inspect.cleandoc(summary)
    params = "\n".join(_P[n] for n in names)
    if has_cell:
        state_in, state_out = ("``(h_0, c_0)``, each ``(L*D, B, H)``",
                               "is ``(h_n, c_n)``, each ``(L*D, B, H)``")
        state, shape = "(h_n, c_n)", "h_n.shape"
    else:
        state_in, state_out = "``h_0`` ``(L*D, B, H)``", "is ``h_n`` ``(L*D, B, H)``"
        state, shape = "h_n", "h_n.shape"
    return (summary + "\n\nParameters\n----------\n" + params + "\n"
            + _CALL.format(state_in=state_in, state_out=state_out, gates=gates,
                           extra_params=extra_params)
            + _EXAMPLE.format(cls=cls, ctor=ctor, state=state, shape=shape,
                              g16=gates * 16))


class RNN(_RecurrentLayer):
    __doc__ = _layer_doc(
        "RNN", """Elman RNN: ``h' = act(W x + b_ih + U h + b_hh)``, ``act`` = tanh or relu.

    A stack of ``num_layers`` layers, each in one or two directions, whose
    time loops run as compiled kernels (see ``backend``); parameter names,
    shapes and results match ``torch.nn.RNN``.""",
        ("input_size", "hidden_size", "num_layers", "nonlinearity") + _COMMON[3:], 1, False,
        ctor='nonlinearity="tanh", ')

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, backend: str = "auto",
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 init: str | None = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._cell_name = "rnn_" + nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init)

    def _repr_extra(self):
        return {"nonlinearity": self.nonlinearity}


class LSTM(_RecurrentLayer):
    __doc__ = _layer_doc(
        "LSTM", """Long short-term memory: ``i,f,g,o = σ,σ,tanh,σ(W x + b_ih + U h + b_hh)``;
    ``c' = f c + i g``; ``h' = o tanh(c')``. Gate order i, f, g, o.

    A stack of ``num_layers`` layers, each in one or two directions, whose
    time loops run as compiled kernels (see ``backend``); parameter names,
    shapes, gate order and results match ``torch.nn.LSTM``, whose
    ``state_dict()`` :meth:`load_state_dict` takes.""",
        _COMMON + ("forget_bias",), 4, True, ctor="forget_bias=1.0, ")

    _cell_name = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, backend: str = "auto",
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 init: str | None = None, forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, forget_bias)


class GRU(_RecurrentLayer):
    __doc__ = _layer_doc(
        "GRU", """Gated recurrent unit, gate order r, z, n: ``r, z = σ(W x + b_i + U h + b_h)``,
    ``h' = (1-z) n + z h``.

    ``reset_after=True`` (PyTorch, cuDNN): ``n = tanh(W_n x + b_in + r (U_n h + b_hn))``;
    ``reset_after=False`` (Cho et al.): ``n = tanh(W_n x + b_in + U_n (r h) + b_hn)``.
    A stack of ``num_layers`` layers, each in one or two directions, whose
    time loops run as compiled kernels (see ``backend``); with
    ``reset_after=True`` parameter names, shapes and results match
    ``torch.nn.GRU``.""",
        _COMMON + ("reset_after",), 3, False, ctor="reset_after=True, ")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, backend: str = "auto",
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 init: str | None = None, reset_after: bool = True) -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be True or False, got {reset_after!r}")
        self.reset_after = reset_after
        self._cell_name = "gru" if reset_after else "gru_reset_before"
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init)

    def _repr_extra(self):
        return {"reset_after": self.reset_after}


class PeepholeLSTM(_RecurrentLayer):
    __doc__ = _layer_doc(
        "PeepholeLSTM", """LSTM whose gates see the cell (Gers and Schmidhuber):
    ``i = σ(... + P_i(c))``, ``f = σ(... + P_f(c))``, ``o = σ(... + P_o(c'))``;
    ``P(c) = p ⊙ c`` (``peephole="diagonal"``, ``p`` of shape ``(H,)``) or
    ``P c`` (``"full"``, ``(H, H)``); otherwise as :class:`LSTM` (gate order
    i, f, g, o). There is no ``torch.nn`` equivalent.""",
        _COMMON + ("forget_bias", "peephole"), 4, True, ctor='peephole="diagonal", ',
        extra_params="""
    The peephole weights are ``peephole_i_l{k}``, ``peephole_f_l{k}`` and
    ``peephole_o_l{k}``, ``(H,)`` (diagonal) or ``(H, H)`` (full).""")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, backend: str = "auto",
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 init: str | None = None, forget_bias: float | None = None,
                 peephole: str = "diagonal") -> None:
        if peephole not in ("diagonal", "full"):
            raise ValueError(f"peephole must be 'diagonal' or 'full', got {peephole!r}")
        self.peephole = peephole
        self._cell_name = "peephole_" + peephole
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, forget_bias)

    def _repr_extra(self):
        return {"peephole": self.peephole}
