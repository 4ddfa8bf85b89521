"""Optimizers, gradient clipping and learning-rate schedules.

The optimizers follow ``torch.optim``'s update rules and defaults exactly
(tested step by step against it where PyTorch is installed). They work on
dicts ``name -> ndarray`` and update the parameter arrays **in place**, so a
model's parameters stay the same objects:

>>> opt = Adam(model, lr=1e-3)        # or Adam(model.params, ...)
>>> model.zero_grad(); model.batch_loss(batch); opt.step()

``params`` may be a dict or any object with ``.params`` (and ``.grads``): the
dict is then re-read at every step, so a model that rebuilds its flat dict
stays in sync. ``step(grads)`` takes the gradients (defaults to ``.grads`` of
that object).

Each update is one compiled pass per parameter array
(:mod:`fastrnn.kernels.training`) that performs the same float operations,
in the same order and dtype, as the NumPy formula in the class's ``_update``
method, so both give bit-identical parameters; the NumPy formula runs where
the compiled pass cannot (non-contiguous or device arrays, mixed dtypes) or
when ``optimizer.fused = False``.

Parameters on the GPU (a model moved with ``.to("cuda")``) are updated on
the device: one fused kernel per parameter
(:mod:`fastrnn.kernels.cuda_blocks`) with the same float operations as the
compiled host pass, state buffers allocated on the device, no host copy.
``state_dict`` copies device buffers to the host; buffers loaded from the
host move to the device at the next step (and back, for a model moved back
to the host), so a checkpoint written on one side resumes on the other.
Clipping and :func:`global_norm` of device gradients reduce on the device
(one host sync for the norm).

Schedules are callables ``t -> lr`` of the epoch (or step) index ``t >= 0``.
"""
from __future__ import annotations

import math

import numpy as np

from . import _device, _validate
from . import prepared as _prepared

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
    "clip_grad_value", "clip_grad_norm", "global_norm",
    "InverseTimeDecay", "StepDecay", "CosineDecay", "WarmUp", "get_optimizer",
]

_TRAINING = None


def _kernels():
    """:mod:`fastrnn.kernels.training` (the compiled updates and the gradient
    norm), imported on first use, or None where Numba cannot load: the NumPy
    formulas of the ``_update`` methods run instead."""
    global _TRAINING
    if _TRAINING is None:
        try:
            from .kernels import training
        except ImportError:                 # pragma: no cover - depends on the install
            training = False
        _TRAINING = training
    return _TRAINING or None


class Optimizer:
    """Base class: named parameters, per-parameter state, ``state_dict``.

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float
        Learning rate (settable: ``opt.lr = ...``, as schedules do).

    ``step(grads=None)`` applies one update from ``grads`` (default: the
    model's ``grads``).
    """

    #: hyper-parameters saved in ``state_dict`` (besides ``lr``)
    _hparams = ()
    #: names of the per-parameter state buffers
    _buffers = ()
    #: run the compiled one-pass update where it applies (see the module doc)
    fused = True

    def __init__(self, params, lr):
        _validate.optimizer_args(lr=lr)        # a finite number >= 0
        if isinstance(params, (list, tuple)):
            # several modules: one collection with unique prefixed names ("0.weight"...)
            from .blocks import Sequential
            params = Sequential(*params)
        if isinstance(params, dict):
            self._source, self._dict = None, params
        elif hasattr(params, "params"):
            self._source, self._dict = params, None
        else:
            raise TypeError("params must be a dict name -> ndarray, an object "
                            "with .params and .grads, or a list of such modules")
        self.lr = float(lr)
        self.step_count = 0
        self.state = {}        # name -> {buffer: ndarray}
        self._on_gpu = set()   # names whose state buffers live on the GPU

    @property
    def params(self):
        return self._source.params if self._source is not None else self._dict

    def _grads(self, grads):
        if grads is not None:
            return grads
        if self._source is not None and hasattr(self._source, "grads"):
            return self._source.grads
        raise ValueError("step() needs grads when the optimizer was built from a dict")

    def zero_grad(self):
        if self._source is not None and hasattr(self._source, "zero_grad"):
            self._source.zero_grad()

    def step(self, grads=None):
        """Apply one update with ``grads`` (dict name -> ndarray)."""
        grads = self._grads(grads)
        self.step_count += 1
        _prepared.bump()             # prepared copies of the weights are stale from here
        for name, p in self.params.items():
            g = grads.get(name)
            if g is None:
                continue
            st = self.state.setdefault(name, {})
            if not isinstance(p, np.ndarray) and _device.on_device(p):
                self._device_step(name, p, g, st)
                continue
            if self._on_gpu and name in self._on_gpu:     # the model moved back to the host
                self._on_gpu.discard(name)
                for k, v in st.items():
                    if _device.on_device(v):
                        st[k] = _device.to_host(v)
            if (self.fused and _fusable(p, g, st) and _kernels() is not None
                    and self._fused(p, np.ascontiguousarray(g, dtype=p.dtype), st)):
                continue
            self._update(p, np.asarray(g, dtype=p.dtype), st)

    def _fused(self, p, g, st):
        """The compiled update (p, g and the state buffers: C-contiguous, one
        dtype, one shape); returns False where there is none."""
        return False

    def _device_step(self, name, p, g, st):
        """The update of a parameter on the GPU (``g`` must be there too)."""
        k = _device.kernels()
        if not _device.on_device(g):
            raise TypeError(f"grads[{name!r}] is a host array but the parameter lives on the GPU")
        p, g = k.view(p), k.view(g)
        if tuple(g.shape) != tuple(p.shape) or np.dtype(g.dtype) != np.dtype(p.dtype):
            raise ValueError(f"grads[{name!r}] has shape {tuple(g.shape)} ({np.dtype(g.dtype)}), "
                             f"expected {tuple(p.shape)} ({np.dtype(p.dtype)}) like the parameter")
        if not (p.is_c_contiguous() and g.is_c_contiguous()):
            raise ValueError(f"params[{name!r}] and its gradient must be C-contiguous on the GPU")
        if name not in self._on_gpu:             # buffers from the host (a checkpoint) move over
            for b, v in st.items():
                if isinstance(v, np.ndarray):
                    st[b] = k.to_device(np.asarray(v, dtype=np.dtype(p.dtype)))
            self._on_gpu.add(name)
        self._device_update(k, p, g, st)

    def _device_update(self, k, p, g, st):  # pragma: no cover - abstract
        """The device update: the compiled host pass's operations, one kernel."""
        raise NotImplementedError

    def _update(self, p, g, st):  # pragma: no cover - abstract
        """The NumPy update: the reference the compiled one equals bit for bit."""
        raise NotImplementedError

    # ------------------------------------------------------------ state
    def state_dict(self):
        """``{"type", "lr", "step_count", hyper-parameters..., "state": {name:
        {buffer: array}}}`` (arrays copied)."""
        return {
            "type": type(self).__name__,
            "lr": self.lr,
            "step_count": self.step_count,
            **{h: getattr(self, h) for h in self._hparams},
            "state": {n: {k: (v.copy() if isinstance(v, np.ndarray)
                              else _device.to_host(v) if _device.on_device(v) else v)
                          for k, v in st.items()} for n, st in self.state.items()},
        }

    def load_state_dict(self, d):
        if d.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(f"optimizer state is for {d['type']}, not {type(self).__name__}")
        self.lr = float(d["lr"])
        self.step_count = int(d["step_count"])
        for h in self._hparams:
            if h in d:
                setattr(self, h, d[h])
        self.state = {n: {k: (np.array(v, copy=True) if isinstance(v, np.ndarray)
                              else _device.to_host(v) if _device.on_device(v) else v)
                          for k, v in st.items()} for n, st in d["state"].items()}
        self._on_gpu = set()           # host buffers: moved to the GPU at the next step there

    def __repr__(self):
        hp = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hparams)
        return f"{type(self).__name__}(lr={self.lr!r}, {hp})"


class SGD(Optimizer):
    """SGD with momentum / Nesterov (``torch.optim.SGD``):
    ``g += wd p; b = μ b + (1-τ) g (b = g at the first step);
    g = g + μ b (Nesterov) or b; p -= lr g``.

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float, default 1e-2
        Learning rate.
    momentum : float, default 0.0
        Momentum factor ``μ``.
    dampening : float, default 0.0
        Dampening ``τ`` of the momentum.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
    """

    _hparams = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        _validate.optimizer_args(momentum=momentum, dampening=dampening,
                                 weight_decay=weight_decay, nesterov=nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def _fused(self, p, g, st):
        buf = st.get("momentum_buffer")
        first = bool(self.momentum) and buf is None
        if first:
            buf = st["momentum_buffer"] = np.empty_like(p)     # filled with g by the kernel
        t = p.dtype.type
        _kernels().sgd_update_cpu(p.reshape(-1), g.reshape(-1),
                                  (p if buf is None else buf).reshape(-1), t(self.lr),
                                  t(self.weight_decay), t(self.momentum),
                                  t(1 - self.dampening), self.nesterov, first)
        return True

    def _device_update(self, k, p, g, st):
        buf = st.get("momentum_buffer")
        first = bool(self.momentum) and buf is None
        if first:
            buf = st["momentum_buffer"] = k.empty(p.shape, p.dtype)   # filled with g
        t = np.dtype(p.dtype).type
        k.sgd_update(p, g, p if buf is None else buf, t(self.lr), t(self.weight_decay),
                     t(self.momentum), t(1 - self.dampening), self.nesterov, first)

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``), L2 weight decay added to the gradient;
    ``amsgrad`` keeps the running maximum of the second moment.

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float, default 1e-3
        Learning rate.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    amsgrad : bool, default False
        Use the running maximum of the second moment.
    """

    _hparams = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr)
        _validate.optimizer_args(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay, self.amsgrad = float(eps), float(weight_decay), bool(amsgrad)

    def _fused(self, p, g, st):
        if self.amsgrad and "exp_avg" in st and "max_exp_avg_sq" not in st:
            return False
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
            st["step"] = 0
            if self.amsgrad:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        flat = (lambda a: a.reshape(-1))
        _kernels().adam_update_cpu(flat(p), flat(g), flat(st["exp_avg"]), flat(st["exp_avg_sq"]),
                           flat(st.get("max_exp_avg_sq", p)), *self._step_scalars(p, st),
                           self.amsgrad)
        return True

    def _device_update(self, k, p, g, st):
        if "exp_avg" not in st:
            st["exp_avg"] = k.zeros(p.shape, p.dtype)
            st["exp_avg_sq"] = k.zeros(p.shape, p.dtype)
            st["step"] = 0
        if self.amsgrad and "max_exp_avg_sq" not in st:
            st["max_exp_avg_sq"] = k.zeros(p.shape, p.dtype)
        k.adam_update(p, g, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq", p),
                      *self._step_scalars(p, st), amsgrad=self.amsgrad)

    def _step_scalars(self, p, st):
        """Count the step; the scalars of the compiled and device passes, in
        p's dtype: lr/bc1, b1, 1-b1, b2, 1-b2, sqrt(bc2), eps, wd, decay."""
        st["step"] += 1
        b1, b2 = self.betas
        t = st["step"]
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        wd, dec = self.weight_decay, 1.0
        if self._decoupled:
            wd, dec = 0.0, 1 - self.lr * self.weight_decay
        f = np.dtype(p.dtype).type
        return (f(self.lr / bc1), f(b1), f(1 - b1), f(b2), f(1 - b2), f(math.sqrt(bc2)),
                f(self.eps), f(wd), f(dec))

    def _update(self, p, g, st):
        b1, b2 = self.betas
        if self.weight_decay:
            if self._decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
            st["step"] = 0
            if self.amsgrad:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        if self.amsgrad:
            np.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
            v = st["max_exp_avg_sq"]
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        denom = np.sqrt(v) / math.sqrt(bc2) + self.eps
        p -= (self.lr / bc1) * (m / denom)

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.betas = tuple(float(b) for b in self.betas)
        for st in self.state.values():
            if "step" in st:
                st["step"] = int(st["step"])


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): decoupled weight decay
    ``p *= 1 - lr·wd`` before the Adam step; default ``weight_decay=0.01``.

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float, default 1e-3
        Learning rate.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 1e-2
        Decoupled weight decay.
    amsgrad : bool, default False
        Use the running maximum of the second moment.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``): ``s = α s + (1-α) g²``;
    centred: subtract the squared running mean; ``p -= lr g / (√s + ε)``
    (through a momentum buffer when ``momentum > 0``).

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float, default 1e-2
        Learning rate.
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    momentum : float, default 0.0
        Momentum factor.
    centered : bool, default False
        Normalise by the estimated variance (subtract the squared mean).
    """

    _hparams = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False):
        super().__init__(params, lr)
        _validate.optimizer_args(alpha=alpha, eps=eps, weight_decay=weight_decay,
                                 momentum=momentum, centered=centered)
        self.alpha, self.eps = float(alpha), float(eps)
        self.weight_decay, self.momentum, self.centered = (
            float(weight_decay), float(momentum), bool(centered))

    def _fused(self, p, g, st):
        if "square_avg" not in st:
            st["square_avg"] = np.zeros_like(p)
            if self.momentum:
                st["momentum_buffer"] = np.zeros_like(p)
            if self.centered:
                st["grad_avg"] = np.zeros_like(p)
        elif ((self.momentum and "momentum_buffer" not in st)
              or (self.centered and "grad_avg" not in st)):
            return False
        f, flat = p.dtype.type, (lambda a: a.reshape(-1))
        _kernels().rmsprop_update_cpu(flat(p), flat(g), flat(st["square_avg"]),
                              flat(st.get("grad_avg", p)), flat(st.get("momentum_buffer", p)),
                              f(self.lr), f(self.alpha), f(1 - self.alpha), f(self.eps),
                              f(self.weight_decay), f(self.momentum), self.centered)
        return True

    def _device_update(self, k, p, g, st):
        if "square_avg" not in st:
            st["square_avg"] = k.zeros(p.shape, p.dtype)
        if self.momentum and "momentum_buffer" not in st:
            st["momentum_buffer"] = k.zeros(p.shape, p.dtype)
        if self.centered and "grad_avg" not in st:
            st["grad_avg"] = k.zeros(p.shape, p.dtype)
        f = np.dtype(p.dtype).type
        k.rmsprop_update(p, g, st["square_avg"], st.get("grad_avg", p),
                         st.get("momentum_buffer", p), f(self.lr), f(self.alpha),
                         f(1 - self.alpha), f(self.eps), f(self.weight_decay), f(self.momentum),
                         centered=self.centered)

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if "square_avg" not in st:
            st["square_avg"] = np.zeros_like(p)
            if self.momentum:
                st["momentum_buffer"] = np.zeros_like(p)
            if self.centered:
                st["grad_avg"] = np.zeros_like(p)
        a = self.alpha
        sq = st["square_avg"]
        sq *= a
        sq += (1 - a) * (g * g)
        if self.centered:
            ga = st["grad_avg"]
            ga *= a
            ga += (1 - a) * g
            avg = np.sqrt(sq - ga * ga) + self.eps
        else:
            avg = np.sqrt(sq) + self.eps
        if self.momentum:
            buf = st["momentum_buffer"]
            buf *= self.momentum
            buf += g / avg
            p -= self.lr * buf
        else:
            p -= self.lr * (g / avg)


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``): ``Σ += g²;
    p -= lr/(1+(t-1)·lr_decay) · g / (√Σ + ε)``.

    Parameters
    ----------
    params : model, module, list of modules, or dict of str to array
        What to optimise: anything with ``params`` (a model, layer or block;
        its ``params`` are updated in place), a list of those (names
        prefixed ``"0."``, ``"1."``...), or a dict of arrays.
    lr : float, default 1e-2
        Learning rate.
    lr_decay : float, default 0.0
        Learning-rate decay per step.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    initial_accumulator_value : float, default 0.0
        Starting value of the sum of squared gradients.
    eps : float, default 1e-10
        Added to the denominator.
    """

    _hparams = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, lr)
        _validate.optimizer_args(lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                 initial_accumulator_value=initial_accumulator_value)
        self.lr_decay, self.weight_decay = float(lr_decay), float(weight_decay)
        self.initial_accumulator_value, self.eps = float(initial_accumulator_value), float(eps)

    def _fused(self, p, g, st):
        if "sum" not in st:
            st["sum"] = np.full_like(p, self.initial_accumulator_value)
            st["step"] = 0
        st["step"] += 1
        clr = self.lr / (1 + (st["step"] - 1) * self.lr_decay)
        f = p.dtype.type
        _kernels().adagrad_update_cpu(p.reshape(-1), g.reshape(-1), st["sum"].reshape(-1), f(clr),
                              f(self.eps), f(self.weight_decay))
        return True

    def _device_update(self, k, p, g, st):
        if "sum" not in st:
            st["sum"] = k.fill(k.empty(p.shape, p.dtype), self.initial_accumulator_value)
            st["step"] = 0
        st["step"] += 1
        clr = self.lr / (1 + (st["step"] - 1) * self.lr_decay)
        f = np.dtype(p.dtype).type
        k.adagrad_update(p, g, st["sum"], f(clr), f(self.eps), f(self.weight_decay))

    def _update(self, p, g, st):
        if "sum" not in st:
            st["sum"] = np.full_like(p, self.initial_accumulator_value)
            st["step"] = 0
        st["step"] += 1
        if self.weight_decay:
            g = g + self.weight_decay * p
        clr = self.lr / (1 + (st["step"] - 1) * self.lr_decay)
        st["sum"] += g * g
        p -= clr * (g / (np.sqrt(st["sum"]) + self.eps))


def _fusable(p, g, st):
    """Whether the compiled update can run: ``p`` a host C-contiguous float32
    or float64 array, ``g`` a host array of its shape (converted to its dtype
    if need be), every state buffer C-contiguous with p's dtype and shape."""
    if not (isinstance(p, np.ndarray) and p.flags.c_contiguous
            and p.dtype in (np.float32, np.float64)):
        return False
    if not isinstance(g, np.ndarray) or g.shape != p.shape:
        return False
    return all(b.flags.c_contiguous and b.dtype == p.dtype and b.shape == p.shape
               for b in st.values() if isinstance(b, np.ndarray))


_OPTIMIZERS = {c.__name__.lower(): c for c in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def get_optimizer(name, params, **kwargs):
    """Build an optimizer by (case-insensitive) name: sgd, adam, adamw, rmsprop, adagrad."""
    try:
        cls = _OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}") from None
    return cls(params, **kwargs)


# ------------------------------------------------------------------ clipping
def clip_grad_value(grads, clip_value):
    """Clamp every gradient to ``[-clip_value, clip_value]`` in place (on the
    device for device arrays)."""
    for g in grads.values():
        if not isinstance(g, np.ndarray) and _device.on_device(g):
            _device.kernels().clamp(g, -clip_value, clip_value)
            continue
        np.clip(g, -clip_value, clip_value, out=g)


def _sumsq(g):
    """Σ g² in float64: a compiled pass over host float arrays (no float64
    copy of the gradient), the NumPy formula otherwise."""
    k = _kernels()
    if (k is not None and isinstance(g, np.ndarray) and g.dtype in (np.float32, np.float64)
            and g.flags.c_contiguous):
        return k.sumsq_cpu(g.reshape(-1))
    return float(np.sum(np.abs(np.asarray(g, dtype=np.float64)) ** 2))


def global_norm(grads, norm_type=2.0):
    """The norm of all gradients taken as one vector (accumulated in float64).

    Device gradients are reduced on the device, all of them into one value
    read back with one host sync."""
    dev = [g for g in grads.values() if not isinstance(g, np.ndarray) and _device.on_device(g)]
    if dev:
        host = {k: g for k, g in grads.items()
                if isinstance(g, np.ndarray) or not _device.on_device(g)}
        d = _device.kernels().global_norm(dev, norm_type)
        if not host:
            return d
        h = global_norm(host, norm_type)
        if norm_type == math.inf:
            return max(d, h)
        return (d ** norm_type + h ** norm_type) ** (1.0 / norm_type)
    if norm_type == math.inf:
        return max((float(max(g.max(), -g.min())) for g in grads.values() if g.size),
                   default=0.0)
    if norm_type == 2:
        return math.sqrt(sum(_sumsq(g) for g in grads.values()))
    total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                for g in grads.values())
    return total ** (1.0 / norm_type)


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """Scale all gradients in place so that their global norm is at most
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``); returns the norm
    *before* clipping."""
    norm = global_norm(grads, norm_type)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            if not isinstance(g, np.ndarray) and _device.on_device(g):
                _device.kernels().scale(g, coef)
                continue
            g *= g.dtype.type(coef)
    return norm


# ----------------------------------------------------------------- schedules
class InverseTimeDecay:
    """``lr(t) = lr0 / (1 + k t)``."""

    def __init__(self, lr0, k):
        self.lr0, self.k = float(lr0), float(k)

    def __call__(self, t):
        return self.lr0 / (1.0 + self.k * t)


class StepDecay:
    """``lr(t) = lr0 · γ^⌊t / step_size⌋``."""

    def __init__(self, lr0, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError("step_size must be >= 1")
        self.lr0, self.step_size, self.gamma = float(lr0), int(step_size), float(gamma)

    def __call__(self, t):
        return self.lr0 * self.gamma ** (int(t) // self.step_size)


class CosineDecay:
    """``lr(t) = lr_min + (lr0 - lr_min)(1 + cos(π min(t, T)/T))/2``."""

    def __init__(self, lr0, t_max, lr_min=0.0):
        if t_max <= 0:
            raise ValueError("t_max must be > 0")
        self.lr0, self.t_max, self.lr_min = float(lr0), float(t_max), float(lr_min)

    def __call__(self, t):
        t = min(float(t), self.t_max)
        return self.lr_min + (self.lr0 - self.lr_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2


class WarmUp:
    """Linear warm-up over ``warmup`` units from ``start_factor·lr`` to the
    wrapped schedule (or constant lr), which then runs from its own ``t=0``."""

    def __init__(self, after, warmup, start_factor=0.0):
        self.after = after if callable(after) else (lambda t, lr=float(after): lr)
        self.warmup, self.start_factor = int(warmup), float(start_factor)

    def __call__(self, t):
        if t < self.warmup:
            target = self.after(0)
            return target * (self.start_factor + (1 - self.start_factor) * t / self.warmup)
        return self.after(t - self.warmup)
