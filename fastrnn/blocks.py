"""Building blocks around the recurrent layers: embeddings, linear heads,
dropout, losses and additive attention pooling.

Every block follows the layers' conventions:

- ``forward`` caches what ``backward`` needs (only the *last* call);
- ``backward`` returns the gradient with respect to the input and
  **accumulates** parameter gradients into ``block.grads``;
- ``params`` / ``grads`` are dicts ``name -> ndarray`` that stay the same
  arrays for the life of the block (optimizers update ``params`` in place);
- randomness comes from a seeded :class:`numpy.random.Generator` passed in
  (or a seed), never from NumPy's global state;
- ``block.to("cuda")`` moves ``params`` and ``grads`` to the GPU (``"cpu"``
  brings them back): the block then takes and returns device arrays (numba
  device arrays, or anything with ``__cuda_array_interface__``) and runs
  :mod:`fastrnn.kernels.cuda_blocks`; integer inputs (indices, targets,
  lengths, masks) may stay on the host and are copied over once. Dropout and
  the losses follow their input: a device array runs on the device.

Notation: ``T`` time steps, ``B`` batch, ``F`` features, ``H`` hidden units,
``A`` attention units, ``C`` classes, ``V`` vocabulary size.
"""
from __future__ import annotations

import numpy as np

from . import _device
from . import prepared as _prepared
from .bf16 import check_compute_dtype

__all__ = [
    "Module", "Sequential", "Embedding", "Linear", "Dropout", "AttentionPool",
    "softmax_cross_entropy", "mse", "as_rng", "rng_state", "set_rng_state",
]


_KERNELS = None


def _kernels():
    """:mod:`fastrnn.kernels.training` (compiled loops of the training step),
    imported on first use, or None where Numba cannot load: the NumPy
    formulas run instead, as the layers fall back to the reference."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from .kernels import training
        except ImportError:                 # pragma: no cover - depends on the install
            training = False
        _KERNELS = training
    return _KERNELS or None


_MATMUL = None


def _matmul(a, b, out=None):
    """``a @ b`` through :func:`fastrnn.kernels.cpu.matmul` (stays fast when
    another process holds a core), or NumPy's where the CPU kernels cannot load."""
    global _MATMUL
    if _MATMUL is None:
        try:
            from .kernels import cpu
            _MATMUL = cpu.matmul if cpu.available()[0] else False
        except ImportError:                 # pragma: no cover - depends on the install
            _MATMUL = False
    if _MATMUL is False or not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return np.matmul(a, b, out=out)
    return _MATMUL(a, b, out)


def as_rng(seed=None):
    """Return a :class:`numpy.random.Generator` for a seed, or ``seed`` itself
    when it already is a generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def rng_state(rng):
    """JSON-serialisable state of a generator (see :func:`set_rng_state`)."""
    return rng.bit_generator.state


def set_rng_state(rng, state):
    rng.bit_generator.state = state


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Module:
    """Minimal base: ``params``/``grads`` dicts, ``zero_grad``, train/eval,
    placement (:meth:`to`)."""

    _on_device = False          # params and grads live on the GPU (see to())

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True

    def _add_param(self, name, value):
        value = np.ascontiguousarray(value)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def zero_grad(self):
        if self._on_device:
            for g in self.grads.values():
                _device.kernels().fill(g, 0)
            return
        for g in self.grads.values():
            g[...] = 0

    @property
    def device(self):
        """``"cuda"`` when the block's parameters live on the GPU, else ``"cpu"``."""
        return "cuda" if self._on_device else "cpu"

    def to(self, device):
        """Move ``params`` and ``grads`` to ``"cuda"`` or back to ``"cpu"``
        (the arrays are replaced: an optimizer reading a model's ``params``
        follows); returns the block."""
        on = _device.placement(device)
        if on != self._on_device:
            k = _device.kernels() if on else None
            for d in (self.params, self.grads):
                for name in d:
                    d[name] = k.to_device(d[name]) if on else _device.to_host(d[name])
            self._on_device = on
            for attr in ("_x", "_idx", "_cache", "_mask", "_ws"):
                if hasattr(self, attr):
                    setattr(self, attr, None)
        return self

    def _check_host(self, name, a):
        if self._on_device:
            return
        if _device.on_device(a):
            raise TypeError(f"{name} is a GPU array but this {type(self).__name__}'s parameters "
                            "are on the host: move it with .to('cuda') first")

    def _device_input(self, name, a):
        """``a`` as a numba device array of the block's dtype (a block on the GPU)."""
        if not _device.on_device(a):
            raise TypeError(f"{name} is a host array but this {type(self).__name__} lives on the "
                            "GPU: pass a device array (e.g. numba.cuda.to_device(x)), or move the "
                            "block with .to('cpu')")
        a = _device.kernels().view(a)
        if np.dtype(a.dtype) != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} like the block, got "
                            f"{np.dtype(a.dtype)}")
        return a

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        if self._on_device:
            return {k: _device.host_copy(v) for k, v in self.params.items()}
        return {k: v.copy() for k, v in self.params.items()}

    def __repr__(self):
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.params.items())
        extra = f"p={self.p}" if hasattr(self, "p") else ""
        return f"{type(self).__name__}({', '.join(x for x in (shapes, extra) if x)})"

    def load_state_dict(self, state):
        missing = set(self.params) - set(state)
        unexpected = set(state) - set(self.params)
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
        for k, v in state.items():
            v = _device.to_host(v)
            if v.shape != tuple(self.params[k].shape):
                raise ValueError(f"{k}: shape {v.shape} does not match "
                                 f"{tuple(self.params[k].shape)}")
            _device.assign(self.params[k], v)
        _prepared.bump()


class Sequential(Module):
    """A container of modules (layers and blocks) for custom training loops.

    ``Sequential(lstm, head)`` names the parameters ``"0.weight_ih_l0"``,
    ``"1.weight"``... (PyTorch's convention); ``Sequential(rnn=lstm,
    head=head)`` names them ``"rnn.weight_ih_l0"``, ``"head.weight"``. The
    ``params``/``grads`` dicts are views over the modules' own arrays, so an
    optimizer built on the container updates the modules in place
    (``Adam([lstm, head])`` builds one for you).

    ``forward(x)`` runs the modules in turn (a recurrent layer passes on its
    output ``y``, not its state); ``backward(dy)`` runs them in reverse.

    Examples
    --------
    >>> net = Sequential(fastrnn.LSTM(3, 8), Linear(8, 2))        # doctest: +SKIP
    >>> opt = fastrnn.Adam(net, lr=1e-3)                           # doctest: +SKIP
    """

    def __init__(self, *modules, **named):                 # noqa: D107 - params are views
        if modules and named:
            raise TypeError("give modules either by position or by name, not both")
        self.training = True
        items = named.items() if named else ((str(i), m) for i, m in enumerate(modules))
        self.modules = {}
        for name, m in items:
            if not (hasattr(m, "params") and hasattr(m, "grads")):
                raise TypeError(f"module {name!r} ({type(m).__name__}) has no params/grads")
            if "." in name:
                raise ValueError(f"module names cannot contain '.', got {name!r}")
            self.modules[name] = m

    @property
    def params(self):
        return {f"{n}.{k}": v for n, m in self.modules.items() for k, v in m.params.items()}

    @property
    def grads(self):
        return {f"{n}.{k}": v for n, m in self.modules.items() for k, v in m.grads.items()}

    def __getitem__(self, key):
        return list(self.modules.values())[key] if isinstance(key, int) else self.modules[key]

    def __len__(self):
        return len(self.modules)

    def zero_grad(self):
        for m in self.modules.values():
            m.zero_grad()

    def to(self, device):
        """Move every module to ``"cuda"`` or ``"cpu"``; returns the container."""
        for m in self.modules.values():
            m.to(device)
        return self

    def train(self, mode=True):
        self.training = bool(mode)
        for m in self.modules.values():
            m.train(mode)
        return self

    def state_dict(self):
        return {k: _device.host_copy(v) for k, v in self.params.items()}

    def load_state_dict(self, state):
        own = self.params
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
        for n, m in self.modules.items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in state.items()
                               if k.startswith(n + ".")})

    def forward(self, x):
        for m in self.modules.values():
            x = m(x)
            if isinstance(x, tuple):          # a recurrent layer: (y, state)
                x = x[0]
        return x

    __call__ = forward

    def backward(self, dy):
        for m in reversed(list(self.modules.values())):
            dy = m.backward(dy)
            if isinstance(dy, tuple):         # a recurrent layer: (dx, dstate0)
                dy = dy[0]
        return dy

    def __repr__(self):
        inner = "\n".join(f"  ({n}): {m!r}" for n, m in self.modules.items())
        return f"Sequential(\n{inner}\n)"


class Embedding(Module):
    """Lookup table: ``y[...] = weight[idx[...]]``.

    Parameters: ``weight (V, E)`` initialised N(0, ``init_std``²) (PyTorch uses
    std 1; a smaller default keeps the first recurrent pre-activations sane).
    ``padding_idx`` rows are zero and receive no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None,
                 dtype=np.float32, rng=None, init_std=1.0):
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = padding_idx
        self.dtype = _check_dtype(dtype)
        rng = as_rng(rng)
        w = (rng.standard_normal((self.num_embeddings, self.embedding_dim))
             * init_std).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self._add_param("weight", w)
        self._idx = None

    def forward(self, idx):
        """idx: int array of any shape (...)  ->  (..., E)"""
        if self._on_device:
            return self._forward_device(idx)
        self._check_host("idx", idx)
        idx = np.asarray(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"idx must be an integer array, got {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"idx out of range [0, {self.num_embeddings})")
        self._idx = idx
        return self.params["weight"][idx]

    __call__ = forward

    def backward(self, dy):
        """dy: (..., E). Accumulates ``grads['weight']``; returns None (no
        gradient flows to integer indices)."""
        if self._idx is None:
            raise RuntimeError("backward() called before forward()")
        if self._on_device:
            return self._backward_device(dy)
        gw = self.grads["weight"]
        idx = self._idx
        dy = np.asarray(dy)
        if dy.shape != idx.shape + (self.embedding_dim,):
            raise ValueError(f"dy must have shape {idx.shape + (self.embedding_dim,)}, "
                             f"got {dy.shape}")
        idx = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)     # [N]
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError("the indices of the last forward() changed since (out of range)")
        dy = np.ascontiguousarray(dy.reshape(-1, self.embedding_dim), dtype=gw.dtype)  # [N, E]
        k = _kernels()
        if k is not None and isinstance(gw, np.ndarray) and gw.flags.c_contiguous:
            # a compiled scatter-add in np.add.at's order (bit-identical, ~10x faster)
            pad = self.padding_idx
            k.embedding_backward_cpu(gw, idx, dy, 0 if pad is None else int(pad), pad is not None)
        else:
            if self.padding_idx is not None:
                keep = idx != self.padding_idx
                idx, dy = idx[keep], dy[keep]
            np.add.at(gw, idx, dy)
        return None

    def _forward_device(self, idx):
        # indices from the host are checked there and copied over once; device
        # indices are not scanned (a sync): rows out of range read zeros and get
        # no gradient
        k = _device.kernels()
        if _device.on_device(idx):
            d = k.view(idx)
            if np.dtype(d.dtype).kind not in "iu":
                raise TypeError(f"idx must be an integer array, got {np.dtype(d.dtype)}")
            shape = tuple(d.shape)
            d = k.contiguous(d).reshape(int(np.prod(shape, dtype=np.int64)))
        else:
            idx = np.asarray(idx)
            if not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(f"idx must be an integer array, got {idx.dtype}")
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
                raise ValueError(f"idx out of range [0, {self.num_embeddings})")
            shape = idx.shape
            d = k.to_device(np.ascontiguousarray(idx.reshape(-1), dtype=np.int64))
        self._idx = (d, shape)
        return k.embedding_forward(self.params["weight"], d).reshape(shape + (self.embedding_dim,))

    def _backward_device(self, dy):
        k = _device.kernels()
        d, shape = self._idx
        dy = self._device_input("dy", dy)
        if tuple(dy.shape) != shape + (self.embedding_dim,):
            raise ValueError(f"dy must have shape {shape + (self.embedding_dim,)}, "
                             f"got {tuple(dy.shape)}")
        dy2 = k.contiguous(dy).reshape(d.shape[0], self.embedding_dim)
        k.embedding_backward(self.grads["weight"], d, dy2, self.padding_idx)
        return None


class Linear(Module):
    """``y = x Wᵀ + b`` on the last axis: ``(B, F)`` or per time step on
    ``(T, B, F)``.  ``weight (O, F)``, ``bias (O,)``, PyTorch's uniform init
    U(-1/√F, 1/√F).

    Parameters
    ----------
    in_features : int
        ``F``, the size of the last axis of the input.
    out_features : int
        ``O``, the size of the last axis of the output.
    bias : bool, default True
        Whether to add the bias ``b``.
    dtype : numpy float dtype, default numpy.float32
        Parameter dtype.
    rng : int or numpy.random.Generator, optional
        Seed or generator of the initial weights.
    compute_dtype : {None, "bfloat16"}, default None
        ``"bfloat16"`` (float32 layers, host arrays): the three products take
        bf16 operands summed in float32, the bias and its gradient stay
        float32 (:mod:`fastrnn.kernels.linear_bf16`; AMX tiles where the CPU
        has them). The language model sets it with its own mode.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32,
                 rng=None, compute_dtype=None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = _check_dtype(dtype)
        self.compute_dtype = check_compute_dtype(compute_dtype, "compute_dtype", dtype)
        if self.compute_dtype is not None and self.dtype != np.float32:
            raise ValueError(f"compute_dtype={compute_dtype!r} is for float32 layers, got {dtype}")
        self._bf16 = None        # the bf16 mode's products and packing buffers
        rng = as_rng(rng)
        k = 1.0 / np.sqrt(self.in_features)
        self._add_param("weight", rng.uniform(-k, k, (self.out_features, self.in_features))
                        .astype(self.dtype))
        if bias:
            self._add_param("bias", rng.uniform(-k, k, self.out_features).astype(self.dtype))
        self._x = None
        self._ws = None          # workspace of the weight-gradient product

    def forward(self, x):
        if self._on_device:
            return self._forward_device(x)
        self._check_host("x", x)
        x = np.asarray(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: last axis is {x.shape[-1]}, expected {self.in_features}")
        self._x = x
        if getattr(self, "compute_dtype", None) is not None:      # None: pickled before
            y = self._bf16_ops().forward(x.reshape(-1, self.in_features), self.params["weight"],
                                         self.params.get("bias"), _matmul)
            return y.reshape(x.shape[:-1] + (self.out_features,))
        # one 2-D GEMM over all rows: numpy's stacked 3-D matmul is much slower
        y = _matmul(x.reshape(-1, self.in_features), self.params["weight"].T)  # [N, O]
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(x.shape[:-1] + (self.out_features,))

    __call__ = forward

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("backward() called before forward()")
        if self._on_device:
            return self._backward_device(dy)
        x2 = self._x.reshape(-1, self.in_features)       # [N, F]
        dy2 = np.asarray(dy).reshape(-1, self.out_features)  # [N, O]
        gw = self.grads["weight"]
        if getattr(self, "compute_dtype", None) is not None:
            dx = self._bf16_ops().backward(x2, dy2, self.params["weight"], gw,
                                           self.grads.get("bias"), _matmul)
            return dx.reshape(self._x.shape)
        ws = getattr(self, "_ws", None)
        if ws is None or ws.dtype != gw.dtype:
            ws = self._ws = np.empty_like(gw)             # [O, F], reused by every call
        _matmul(dy2.T, x2, out=ws)
        gw += ws
        if "bias" in self.grads:
            self.grads["bias"] += dy2.sum(axis=0)
        return _matmul(dy2, self.params["weight"]).reshape(self._x.shape)

    def _bf16_ops(self):
        if getattr(self, "_bf16", None) is None:
            from .kernels.linear_bf16 import LinearBF16
            self._bf16 = LinearBF16()
        return self._bf16

    def _forward_device(self, x):
        k = _device.kernels()
        x = self._device_input("x", x)
        shape = tuple(x.shape)
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"x: last axis is {shape[-1] if shape else None}, expected "
                             f"{self.in_features}")
        n = int(np.prod(shape[:-1], dtype=np.int64))
        x2 = k.contiguous(x).reshape(n, self.in_features)                 # [N, F]
        self._x = (x2, shape)
        y = k.linear_forward(x2, self.params["weight"], self.params.get("bias"))  # [N, O]
        return y.reshape(shape[:-1] + (self.out_features,))

    def _backward_device(self, dy):
        k = _device.kernels()
        x2, shape = self._x
        dy = self._device_input("dy", dy)
        if tuple(dy.shape) != shape[:-1] + (self.out_features,):
            raise ValueError(f"dy must have shape {shape[:-1] + (self.out_features,)}, "
                             f"got {tuple(dy.shape)}")
        dy2 = k.contiguous(dy).reshape(x2.shape[0], self.out_features)    # [N, O]
        dx = k.linear_backward(x2, dy2, self.params["weight"], self.grads["weight"],
                               self.grads.get("bias"))
        return dx.reshape(shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p``
    and scale the rest by 1/(1-p); identity in eval mode.

    Parameters
    ----------
    p : float in [0, 1), default 0.5
        Probability of zeroing an element.
    rng : int or numpy.random.Generator, optional
        Seed or generator of the masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = as_rng(rng)
        self._mask = None

    def forward(self, x):
        if not isinstance(x, np.ndarray) and _device.on_device(x):
            return self._forward_device(x)
        x = np.asarray(x)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        return x * self._mask

    __call__ = forward

    def backward(self, dy):
        if self._mask is not None and _device.on_device(self._mask):
            if not _device.on_device(dy):
                raise TypeError("dy is a host array but the last forward() ran on the GPU")
            k = _device.kernels()
            dy = k.view(dy)
            if tuple(dy.shape) != tuple(self._mask.shape):
                raise ValueError(f"dy must have shape {tuple(self._mask.shape)}, "
                                 f"got {tuple(dy.shape)}")
            return k.mul(k.contiguous(dy), self._mask)
        return dy if self._mask is None else dy * self._mask

    def _forward_device(self, x):
        # the mask is drawn on the device: a hash of each element's index under a
        # key of two integers from the block's seeded generator (one draw per call)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        k = _device.kernels()
        x = k.view(x)
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"x must hold floats, got dtype {np.dtype(x.dtype)}")
        key = self.rng.integers(0, 2 ** 32, size=2)
        y, self._mask = k.dropout_forward(k.contiguous(x), self.p, key)
        return y


def softmax_cross_entropy(logits, targets, ignore_index=-100, mask=None,
                          reduction="mean", *, grad=True, out=None):
    """Softmax cross-entropy and its gradient.

    logits  : (..., C) floats
    targets : (...) ints; entries equal to ``ignore_index`` do not count
    mask    : optional (...) bool/0-1 array; False entries do not count
              (e.g. padded steps, ``t >= lengths[b]``)
    reduction : "mean" (over counted entries) or "sum"
    grad    : False skips the gradient (held-out scoring): returns ``(loss, None)``
    out     : optional C-contiguous array of the logits' shape and (float)
              dtype to write the gradient into; may be ``logits`` itself,
              which is then overwritten (the language model's step does this)

    Returns ``(loss, dlogits)``; ``dlogits`` has the logits' shape and dtype and
    is zero at ignored entries.  ``loss`` is a Python float (nats).

    Two compiled passes and NumPy's (SIMD) ``exp`` between them
    (:mod:`fastrnn.kernels.training`): per row the maximum ``m``, ``z = x - m``;
    ``e = exp(z)`` in place; then ``log p_t = z_t - log Σ e`` in float64 and the
    gradient ``scale·(e/Σe - onehot)`` written over ``e``. ``log p_t`` is
    clipped at the log of the dtype's smallest normal, so a confident mistake
    gives a large finite loss.

    With ``logits`` on the GPU one fused kernel per row does it all
    (:func:`fastrnn.kernels.cuda_blocks.softmax_cross_entropy`); ``targets``
    and ``mask`` may be host or device arrays, the gradient is a device array
    and the loss comes back as one float (one host sync).
    """
    if not isinstance(logits, np.ndarray) and _device.on_device(logits):
        return _device.kernels().softmax_cross_entropy(logits, targets, ignore_index, mask,
                                                       reduction, grad, out)
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets shape {targets.shape} does not match logits "
                         f"{logits.shape[:-1]}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integers, got dtype {targets.dtype}")
    C = logits.shape[-1]
    dtype = logits.dtype if logits.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    valid = targets != ignore_index
    if mask is not None:
        valid = valid & np.asarray(mask, dtype=bool)
    valid = np.ascontiguousarray(valid.reshape(-1))
    t = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
    if t.size:
        tv = t[valid]
        if tv.size and (tv.min() < 0 or tv.max() >= C):
            raise ValueError(f"targets out of range [0, {C})")
    n = int(np.count_nonzero(valid))
    scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
    x2 = np.ascontiguousarray(logits.reshape(-1, C), dtype=dtype)       # [N, C]
    if grad and out is not None:
        if (not isinstance(out, np.ndarray) or out.shape != logits.shape or out.dtype != dtype
                or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {logits.shape}")
        e2 = out.reshape(-1, C)
    else:
        e2 = np.empty_like(x2)
    if x2.size == 0:
        e2[...] = 0
        return 0.0, (e2.reshape(logits.shape) if grad else None)
    min_logp = float(np.log(np.finfo(dtype).tiny))
    k = _kernels()
    if k is None:
        loss = _softmax_xent_numpy(x2, t, valid, e2, scale, min_logp, grad)
    else:
        zt = np.empty(len(t))
        k.softmax_xent_shift_cpu(x2, t, valid, e2, zt)                  # e2 = x - m
        np.exp(e2, out=e2)
        loss = k.softmax_xent_cpu(e2, t, valid, zt, dtype.type(scale), min_logp, bool(grad))
    if reduction == "mean":
        loss *= scale
    if not grad:
        return float(loss), None
    g = e2.reshape(logits.shape)
    if logits.dtype.kind == "f" and g.dtype != logits.dtype:      # float16: as before
        g = g.astype(logits.dtype)
    return float(loss), g


def _softmax_xent_numpy(x, t, valid, out, scale, min_logp, grad):
    """The NumPy formula of the two compiled passes (where Numba is missing):
    x, out [N, C]; returns the unscaled loss and writes the gradient to out."""
    m = x.max(axis=1, keepdims=True)
    rows = np.arange(len(t))
    safe_t = np.where(valid, t, 0)
    zt = x[rows, safe_t].astype(np.float64) - m[:, 0]
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    s = out.sum(axis=1, dtype=np.float64)
    logp = np.maximum(zt - np.log(s), min_logp)
    loss = -float(logp[valid].sum())
    if grad:
        out /= s.astype(out.dtype)[:, None]
        out[rows, safe_t] -= valid.astype(out.dtype)
        out *= (valid * scale).astype(out.dtype)[:, None]
        out[~valid] = 0
    return loss


def mse(pred, target, mask=None, reduction="mean"):
    """Mean squared error ``mean((pred - target)²)`` and its gradient.

    ``mask`` (broadcastable to ``pred``) excludes entries; the mean is over the
    counted elements.  Returns ``(loss, dpred)``. A ``pred`` on the GPU runs
    one fused kernel (``target``/``mask`` host or device; one host sync).
    """
    if not isinstance(pred, np.ndarray) and _device.on_device(pred):
        return _device.kernels().mse(pred, target, mask, reduction)
    pred = np.asarray(pred)
    target = np.asarray(target, dtype=pred.dtype)
    if pred.shape != target.shape:
        raise ValueError(f"target shape {target.shape} does not match pred {pred.shape}")
    diff = pred - target
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, dtype=bool), pred.shape)
        diff = np.where(m, diff, 0).astype(pred.dtype)
        n = int(m.sum())
    else:
        n = diff.size
    if reduction == "mean":
        scale = 1.0 / max(n, 1)
    elif reduction == "sum":
        scale = 1.0
    else:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    loss = float(np.sum(diff.astype(np.float64) ** 2)) * scale
    return loss, (2.0 * scale * diff).astype(pred.dtype)


class AttentionPool(Module):
    """Additive attention pooling over time.

    .. math::
        e_t = v^T \\tanh(W_a h_t + b_a), \\quad
        \\alpha = \\mathrm{softmax}_t(e) \\text{ over } t < \\mathrm{lengths}[b], \\quad
        c = \\sum_t \\alpha_t h_t

    Parameters ``weight (A, H)``, ``bias (A,)``, ``v (A,)``.
    ``forward(h [T,B,H], lengths=None) -> context [B,H]``; the weights of the
    last call are kept in ``self.alpha [T,B]`` (zero at padded steps).
    """

    def __init__(self, hidden_size, attn_size=None, dtype=np.float32, rng=None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.attn_size = int(attn_size or hidden_size)
        self.dtype = _check_dtype(dtype)
        rng = as_rng(rng)
        k = 1.0 / np.sqrt(self.hidden_size)
        ka = 1.0 / np.sqrt(self.attn_size)
        A, H = self.attn_size, self.hidden_size
        self._add_param("weight", rng.uniform(-k, k, (A, H)).astype(self.dtype))
        self._add_param("bias", rng.uniform(-k, k, A).astype(self.dtype))
        self._add_param("v", rng.uniform(-ka, ka, A).astype(self.dtype))
        self._cache = None
        self.alpha = None

    def forward(self, h, lengths=None):
        if self._on_device:
            return self._forward_device(h, lengths)
        self._check_host("h", h)
        h = np.asarray(h)
        if h.ndim != 3 or h.shape[2] != self.hidden_size:
            raise ValueError(f"h must be [T, B, {self.hidden_size}], got {h.shape}")
        T, B, _ = h.shape
        s = np.tanh(h @ self.params["weight"].T + self.params["bias"])   # [T,B,A]
        e = s @ self.params["v"]                                          # [T,B]
        if lengths is not None:
            lengths = np.asarray(lengths)
            valid = np.arange(T)[:, None] < lengths[None, :]              # [T,B]
            e = np.where(valid, e, -np.inf)
        e = e - e.max(axis=0, keepdims=True)
        alpha = np.exp(e)
        alpha /= alpha.sum(axis=0, keepdims=True)
        alpha = alpha.astype(h.dtype)
        self.alpha = alpha
        self._cache = (h, s, alpha)
        return np.einsum("tb,tbh->bh", alpha, h)

    __call__ = forward

    def backward(self, dctx):
        if self._cache is None:
            raise RuntimeError("backward() called before forward()")
        if self._on_device:
            return self._backward_device(dctx)
        h, s, alpha = self._cache
        dctx = np.asarray(dctx, dtype=h.dtype)                 # [B,H]
        dh = alpha[:, :, None] * dctx[None]                    # [T,B,H]
        dalpha = np.einsum("tbh,bh->tb", h, dctx)              # [T,B]
        de = alpha * (dalpha - (alpha * dalpha).sum(axis=0, keepdims=True))
        A = self.attn_size
        self.grads["v"] += np.einsum("tb,tba->a", de, s)
        du = (de[:, :, None] * self.params["v"]) * (1 - s * s)  # [T,B,A]
        du2 = du.reshape(-1, A)
        self.grads["weight"] += du2.T @ h.reshape(-1, self.hidden_size)
        self.grads["bias"] += du2.sum(axis=0)
        dh += du @ self.params["weight"]
        return dh

    def _forward_device(self, h, lengths):
        k = _device.kernels()
        h = self._device_input("h", h)
        if len(h.shape) != 3 or h.shape[2] != self.hidden_size:
            raise ValueError(f"h must be [T, B, {self.hidden_size}], got {tuple(h.shape)}")
        T, B, _ = h.shape
        if lengths is not None:
            if _device.on_device(lengths):
                lengths = k.contiguous(k.view(lengths))
            else:
                lengths = k.to_device(np.asarray(lengths, dtype=np.int64))
            if tuple(lengths.shape) != (B,):
                raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        h = k.contiguous(h)
        p = self.params
        ctx, s, alpha = k.attention_forward(h, p["weight"], p["bias"], p["v"], lengths)
        self.alpha = alpha
        self._cache = (h, s, alpha)
        return ctx

    def _backward_device(self, dctx):
        k = _device.kernels()
        h, s, alpha = self._cache
        dctx = self._device_input("dctx", dctx)
        if tuple(dctx.shape) != (h.shape[1], self.hidden_size):
            raise ValueError(f"dctx must have shape {(h.shape[1], self.hidden_size)}, "
                             f"got {tuple(dctx.shape)}")
        return k.attention_backward(h, s, alpha, k.contiguous(dctx), self.params["weight"],
                                    self.params["v"], self.grads)
