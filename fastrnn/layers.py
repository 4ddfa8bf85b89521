"""Recurrent layers: RNN, LSTM, GRU and PeepholeLSTM with a PyTorch-shaped API.

A layer stacks ``num_layers`` layers of one cell, each in one or two
directions, with dropout between layers in training. It checks every argument
before anything runs (the checks are functions of :mod:`fastrnn._validate`),
then calls a backend (:mod:`fastrnn.dispatch`, looked up when the layer's
``backend`` is set) once per layer and direction; the backends run whole
sequences. The cell comes from the registry (:data:`fastrnn.cells.CELLS`,
:func:`layer_cell`), the initial weights from :mod:`fastrnn.init`.

Shapes: ``x`` ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``); ``y``
``(T, B, D*H)``; ``h_n`` (and ``c_n``) ``(L*D, B, H)``.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from . import _validate, dispatch, prepared
from .bf16 import check_compute_dtype
from .cells import CELLS, PEEPHOLE_GATES
from .contract import Weights
from .functional import BackwardError, _backward_core, _forward_core
from .init import check_init, recurrent_params
from .ops import HostOps
from .ops import device_ops as _device_ops

if TYPE_CHECKING:                  # annotations only (no runtime cost)
    from numpy.typing import ArrayLike, DTypeLike

    State = Union[Any, "tuple[Any, Any]"]   # h (RNN, GRU) or (h, c) (LSTM family)


def layer_cell(layer, **options):
    """The registered :class:`~fastrnn.cells.CellSpec` that the layer class named
    ``layer`` builds with the cell options ``options`` (``nonlinearity``,
    ``reset_after``, ``peephole``): the entry of :data:`fastrnn.cells.CELLS`
    whose ``layer`` field is ``(layer, options)``.

    An option value no cell is registered under raises ValueError naming the
    values that are (``"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"``).
    """
    specs = [c for c in CELLS.values() if c.layer and c.layer[0] == layer]
    for spec in specs:
        if spec.layer_kwargs == options:
            return spec
    for name, value in options.items():
        known = [c.layer_kwargs.get(name) for c in specs]
        if value not in known:
            raise ValueError(f"{name} must be " + " or ".join(map(repr, known))
                             + f", got {value!r}")
    raise ValueError(f"no cell is registered for {layer}({options})")


class _RecurrentLayer:
    """Shared machinery of every recurrent layer (see the subclasses).

    ``cell`` is the :class:`~fastrnn.cells.CellSpec` the subclass looked up
    with :func:`layer_cell`; the other arguments are the subclasses'."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, backend="auto",
                 dtype=np.float32, seed=None, init=None, forget_bias=None, compute_dtype=None):
        self.cell = cell
        self.input_size = _validate.layer_size("input_size", input_size)
        self.hidden_size = _validate.layer_size("hidden_size", hidden_size)
        self.num_layers = _validate.layer_size("num_layers", num_layers)
        self.dropout = _validate.dropout_rate("dropout", dropout)
        check_init(init)
        # real bools only: the string "False" is truthy and would silently mean True
        self.bias = _validate.boolean("bias", bias)
        self.batch_first = _validate.boolean("batch_first", batch_first)
        self.bidirectional = _validate.boolean("bidirectional", bidirectional)
        if forget_bias is not None:
            forget_bias = _validate.finite_float("forget_bias", forget_bias)
        _validate.seed("seed", seed)
        backend = dispatch.check_backend_name(backend)
        self.dtype = _validate.float_dtype("dtype", dtype)
        self._set_compute_dtype(compute_dtype, backend)
        self.num_directions = 2 if self.bidirectional else 1
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None
        self._ops = HostOps()
        self.params = recurrent_params(cell, self.input_size, self.hidden_size, self.num_layers,
                                       self.num_directions, self.bias, self._rng, self.dtype,
                                       init, forget_bias)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._zero_bias = np.zeros(self.cell.gates * self.hidden_size, self.dtype)
        self.backend = backend      # an unavailable "cpu"/"cuda" fails here, with the reason
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
    def backend(self) -> str:
        """Where the time loops run: ``"auto"``, ``"numpy"``, ``"cpu"`` or ``"cuda"``.

        Setting it looks the backend up once (an unavailable one raises
        :class:`~fastrnn.dispatch.BackendUnavailable` then); only ``"auto"``
        is resolved at each call, from where the input lives. Setting it does
        not move the parameters: use :meth:`to` for that."""
        return self._backend_name

    @backend.setter
    def backend(self, name):
        name = dispatch.check_backend_name(name)
        if name == "cuda":
            self._check_mode(self.compute_dtype, name)
        self._backend = None if name == "auto" else dispatch.get_backend(name)
        self._backend_name = name

    # ------------------------------------------------------------------ compute mode
    @property
    def compute_dtype(self):
        """``None`` (products in the layer's dtype) or ``"bfloat16"``: the
        operands of the matrix products rounded to bfloat16, their products
        summed in float32 (:mod:`fastrnn.bf16`). Parameters, gradients, states
        and outputs stay float32 either way. Settable (a float32 layer on the
        host only); a forward's backward computes in the forward's mode."""
        return self.__dict__.get("_compute_dtype")

    @compute_dtype.setter
    def compute_dtype(self, value):
        self._set_compute_dtype(value, self._backend_name)

    def _set_compute_dtype(self, value, backend):
        value = check_compute_dtype(value, "compute_dtype", self.dtype)
        self._check_mode(value, backend)
        self._compute_dtype = value

    def _check_mode(self, value, backend):
        """Refuse the bfloat16 mode where it cannot run, naming compute_dtype."""
        if value is None:
            return
        if self.dtype != np.float32:
            raise ValueError(f"compute_dtype={value!r} is for float32 layers (float32 "
                             f"parameters, bfloat16 products); this layer is {self.dtype.name}")
        ops = self.__dict__.get("_ops")
        if backend == "cuda" or (ops is not None and ops.on_device):
            raise ValueError(f"compute_dtype={value!r} runs on the CPU backends only "
                             "('numpy', 'cpu', or 'auto' with host arrays), not on 'cuda'")

    def __getstate__(self):         # copy / pickle: a module does not pickle, its name does
        return dict(self.__dict__, _backend=None, _prepared=None)   # prepared: re-made on use

    def __setstate__(self, state):
        state.setdefault("_compute_dtype", None)        # pickled before the mode existed
        self.__dict__.update(state)
        self.backend = self._backend_name

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
        if backend == "cuda":
            self._check_mode(self.compute_dtype, backend)
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
        prepared.bump()
        return self

    def refresh(self) -> _RecurrentLayer:
        """Drop the prepared copy of the weights that eval-mode calls reuse
        (:mod:`fastrnn.prepared`). Everything in fastrnn that writes
        parameters (optimizers, ``load_state_dict``, ``to``, the trainers)
        does this itself; call it after writing :attr:`params` in place
        yourself. Streams are separate snapshots: see ``Stream.refresh``.
        Returns the layer."""
        self.__dict__.pop("_prepared", None)
        return self

    # ------------------------------------------------------------------ parameters
    def _weights(self, sfx):
        # The live parameter arrays, not a prepared copy: optimizers, load_state_dict
        # and users write them in place, and the next call must see that. Building
        # this costs ~0.5 us (3.5 us with the peephole stack, H=32); a cached copy
        # would need every writer to bump a version, which users cannot be held to.
        p = self.params
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
        if self.cell.torch is None:
            raise ValueError(f"{type(self).__name__} ({self.cell.name}) has no torch.nn "
                             "equivalent to load into")
        import torch
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}

    def load_state_dict(self, state_dict: Any) -> None:
        """Load parameters (ndarrays, or anything ``np.asarray`` takes: torch tensors).

        Names and shapes must match exactly; values are cast to the layer's dtype.
        """
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        new = _validate.state_dict(state_dict, shapes, type(self).__name__)
        for k, a in new.items():         # in place: optimizers keep their references
            if self._ops.on_device:
                self.params[k].copy_to_device(np.ascontiguousarray(a, dtype=self.dtype))
            else:
                self.params[k][...] = a
        prepared.bump()

    # ------------------------------------------------------------------ streaming
    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.Stream`: this stack fed one time step per
        call (``s.step(x_t)``), its state kept between calls, with the weights
        prepared once.

        The stream holds a snapshot of the weights and never sees later
        changes by itself (training, ``load_state_dict``): call its
        ``refresh()`` after them. Unidirectional layers on the host only (a
        bidirectional layer raises ValueError: its reverse direction needs the
        whole sequence), computing in the layer's dtype (a layer with
        ``compute_dtype="bfloat16"`` raises ValueError: streams have no
        bfloat16 mode; run ``layer(x)`` on chunks of steps instead).

        Examples
        --------
        >>> import numpy as np, fastrnn
        >>> s = fastrnn.LSTM(4, 8, seed=0).stream()
        >>> s.step(np.zeros(4, np.float32)).shape
        (8,)
        """
        from .stream import Stream
        return Stream(self, batch_size)

    # ------------------------------------------------------------------ checks
    def _check_input(self, x, state, lengths):
        """The checked ``(x, h0, c0, lengths, T, B)`` of a forward call."""
        ops, dt = self._ops, self.dtype
        x, T, B = _validate.sequence_input(x, self.input_size, self.batch_first, dt, ops)
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        h0, c0 = _validate.initial_state(state, shape, self.cell.has_cell, type(self).__name__,
                                         dt, ops)
        if lengths is not None:
            lengths = _validate.lengths(lengths, T, B)
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
        mode = self.compute_dtype
        # small batches: the latency kernels, weights prepared once (in the
        # layer's dtype only: they have no bfloat16 mode)
        if not self.training and mode is None:
            out = prepared.eval_forward(self, x, h0, c0, lengths, T, B)
            if out is not None:
                return out
        ops, H, D = self._ops, self.hidden_size, self.num_directions
        # looked up when ``backend`` was set; "auto" depends on where x lives,
        # which the check above made the parameters' side (a host x: nothing to ask)
        be = self._backend or dispatch.get_backend(
            dispatch.resolve_backend("auto", x if ops.on_device else None))
        inp = ops.contiguous3(x, swap=self.batch_first)                   # [T, B, I]
        if self.training and not ops.on_device:
            # backward reads the inputs saved here: keep private copies, so that the
            # caller editing x (or the state) in place in between cannot make the
            # gradients stale (time-major x would otherwise be cached by reference)
            if np.may_share_memory(inp, x):
                inp = inp.copy()
            h0 = None if h0 is None else h0.copy()
            c0 = None if c0 is None else c0.copy()
        h_n = ops.empty((self.num_layers * D, B, H), self.dtype)
        c_n = ops.empty((self.num_layers * D, B, H), self.dtype) if self.cell.has_cell else None
        caches, masks = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                # the one code path of every layer and direction (fastrnn.functional's)
                y, h, c, cache = _forward_core(
                    self.cell, be, inp, None if h0 is None else h0[idx],
                    None if c0 is None else c0[idx], self._weights(sfx), lengths, bool(d),
                    self.training, ops.zeros, mode)
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
        ops = self._ops
        dy = _validate.output_gradient(dy, (B, T, D * H) if self.batch_first else (T, B, D * H),
                                       self.dtype, ops)
        dh_n, dc_n = _validate.final_state_gradient(dstate, (L * D, B, H), self.cell.has_cell,
                                                    type(self).__name__, self.dtype, ops)
        # a NaN here would silently poison every gradient
        _validate.finite_array("dy", dy, ops.on_device)
        dout = ops.contiguous3(dy, swap=self.batch_first)
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
                dx, dh, dc, gw = _backward_core(
                    self.cell, be, cache, dyd, None if dh_n is None else dh_n[idx],
                    None if dc_n is None else dc_n[idx], ops.zeros)
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

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self._repr_extra().items())
        mode = "" if self.compute_dtype is None else f", compute_dtype={self.compute_dtype!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra}, bidirectional={self.bidirectional}, "
                f"backend={self.backend!r}, dtype={self.dtype.name}{mode})")

    def _repr_extra(self):
        return {}


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
    "compute_dtype": """compute_dtype : {None, "bfloat16"}, default None
    ``"bfloat16"`` (float32 layers, CPU backends): the operands of the
    matrix products (weights, inputs, the state entering ``U h``, the gate
    gradients in backward) are rounded to bfloat16 and their products summed
    in float32; parameters, gradients, states and outputs stay float32 (see
    :mod:`fastrnn.bf16`). ``None``: everything in ``dtype``.""",
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
           "bidirectional", "backend", "dtype", "seed", "init", "compute_dtype")


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
                 init: str | None = None, compute_dtype: str | None = None) -> None:
        cell = layer_cell("RNN", nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, compute_dtype=compute_dtype)

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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, backend: str = "auto",
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 init: str | None = None, forget_bias: float | None = None,
                 compute_dtype: str | None = None) -> None:
        super().__init__(layer_cell("LSTM"), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, forget_bias, compute_dtype)


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
                 init: str | None = None, reset_after: bool = True,
                 compute_dtype: str | None = None) -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be True or False, got {reset_after!r}")
        self.reset_after = reset_after
        super().__init__(layer_cell("GRU", reset_after=reset_after), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, compute_dtype=compute_dtype)

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
                 peephole: str = "diagonal", compute_dtype: str | None = None) -> None:
        cell = layer_cell("PeepholeLSTM", peephole=peephole)
        self.peephole = peephole
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed, init, forget_bias, compute_dtype)

    def _repr_extra(self):
        return {"peephole": self.peephole}
