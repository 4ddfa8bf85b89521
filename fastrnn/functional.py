"""Stateless forward and backward of one recurrent layer in one direction,
values in and values out, in the caller's own conventions.

``T`` time steps, ``B`` batch, ``I`` input features, ``H`` hidden units, ``G``
gates (LSTM 4, GRU 3, RNN 1).

Each cell has a forward function and a backward function::

    y, state_n, ctx = F.lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, *,
                             lengths=None, batch_first=False, gate_order="ifgo",
                             weight_layout="out_in", training=True)
    dx, dstate0, (dw_ih, dw_hh, db_ih, db_hh) = F.lstm_backward(ctx, dy, dstate_n=None)

and the same for :func:`rnn` (``nonlinearity``), :func:`gru` (``reset_after``)
and :func:`peephole_lstm` (its peephole weights, whose gradient comes back
fifth). The equations are those of :mod:`fastrnn.cells`.

Conventions the caller names
----------------------------
gate_order : the order of the caller's ``H``-wide gate blocks, one letter per
    gate. LSTM and peephole LSTM: ``i f g o`` in any order, ``c`` accepted for
    ``g`` (PyTorch ``"ifgo"``, Keras ``"ifco"``, CS231n ``"ifog"``, ONNX
    ``"iofc"``); GRU: ``r z n``, ``h`` accepted for ``n`` (PyTorch ``"rzn"``,
    Keras ``"zrh"``). The RNN has one gate and takes no ``gate_order``.
weight_layout : ``"out_in"``: ``w_ih`` ``(G*H, I)``, ``w_hh`` ``(G*H, H)``
    (PyTorch, ONNX; the cell computes ``x @ w_ih.T``); ``"in_out"``: ``w_ih``
    ``(I, G*H)``, ``w_hh`` ``(H, G*H)`` (Keras, TensorFlow, CS231n: ``x @ w_ih``).
    A full peephole matrix follows the same layout (``"out_in"``: ``P @ c``,
    ``"in_out"``: ``c @ P``).
biases : two (``b_ih``, ``b_hh``, PyTorch), one (``b_hh=None``: Keras,
    CS231n), or none; a missing bias is zero and its gradient comes back as
    ``None``. In the GRU with ``reset_after=True`` the two biases differ in
    meaning (``b_hn`` sits inside ``r * (U_n h + b_hn)``); one bias is ``b_ih``.
state : ``None`` (zeros), ``h0`` ``(B, H)``, or for the LSTM family
    ``(h0, c0)`` where either part may be ``None``; ``dstate_n`` likewise.
dtypes : ``x`` (float32 or float64) sets the arithmetic; weights and states
    of another float dtype are converted, and every gradient comes back in
    the dtype, layout and gate order of the argument it belongs to.

Cost of the conventions
-----------------------
In PyTorch's convention (``weight_layout="out_in"``, PyTorch's gate order,
two biases or none, time-major ``x``) no weight, bias or gradient is copied:
the arrays go to the backend and the backend's results come back as they
are (the CPU backend's float LSTM weight gradients are transposed views of
one ``[I+H+1, 4H]`` buffer when ``H`` is a multiple of the SIMD width, copies
otherwise). ``weight_layout="in_out"`` alone copies nothing more: the
weights go to the backend as transposed views, the CPU backend packs them
from that memory order, and its LSTM weight gradients are computed in it
(the bfloat16 mode copies the weights and returns contiguous gradients).
Another gate order costs one pass over the weights on the way in and one
over the weight gradients on the way out (copies of contiguous gate blocks),
and ``batch_first`` one transposing copy of ``dy`` and of ``x`` (``y`` and
``dx`` come back as transposed views; a training forward of the CPU
backend's packed LSTM gathers ``x`` into its saved rows from the caller's
strides: no copy of ``x`` there); a missing bias is one zero vector.
Measured on a 2-core Intel Xeon (one thread, medians of 40 calls,
``bench/dropin_pieces.py``) in CS231n's convention (``batch_first``,
``"ifog"``, ``"in_out"``, one bias) at B=32, T=50, I=64, H=128: the weights
in 0.04 ms (float64 0.07), their gradients out 0.03 ms (float64 0.06),
``dy`` 0.03 ms (float64 0.10), against a forward + backward of ~6 ms in
float32 and ~13 ms in float64. A training forward also copies ``y`` once
(0.02 ms, float64 0.09), in every convention: the CPU kernels' ``y`` is a
view of the rows the backward reads, and the caller may edit ``y`` in place.
In any convention the calls' own checks (shapes, NaN in
``x``, the state and ``dy``) and bookkeeping cost ~20 us per forward +
backward (13 + 6 us at T=200, B=1, I=H=32 against the backend called directly).

Contexts
--------
``ctx`` is what the backward needs from one forward call in training mode
(``None`` when ``training=False``). It belongs to that call only: any number
of forwards may be outstanding and their backwards run in any order. A ctx
serves one backward; the second raises :class:`BackwardError` unless the
first passed ``retain=True``. The ctx keeps private copies of ``x`` and the
state but refers to the weights passed in (or to the converted copies): do
not change the weights in place between a forward and its backward.

Backends
--------
``backend="auto"`` (the CUDA kernels for device arrays, else the compiled CPU
kernels, else the NumPy reference), ``"numpy"``, ``"cpu"`` or ``"cuda"``:
chosen by :mod:`fastrnn.dispatch`, as for the layers, which are built on the
same core (:func:`_forward_core`, :func:`_backward_core`). float64 runs on
the same backends as float32. Device arrays (``"cuda"``) are taken in
PyTorch's convention only.
"""
from __future__ import annotations

import numpy as np

from . import _validate, dispatch
from .cells import CELLS
from .contract import Weights, is_device_array
from .ops import device_ops as _device_ops

__all__ = ["rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward",
           "peephole_lstm", "peephole_lstm_backward", "Context", "BackwardError"]


class BackwardError(RuntimeError, ValueError):
    """A backward without its forward: no forward in training mode to match,
    or its saved activations were already used."""


# ----------------------------------------------------------------------------- core
def _forward_core(cell, be, x, h0, c0, weights, lengths, reverse, training, zeros=np.zeros,
                  compute_dtype=None):
    """One layer, one direction, in the backends' convention: ``x`` ``[T, B, I]``,
    :class:`~fastrnn.contract.Weights` in PyTorch's layout and gate order,
    ``h0``/``c0`` ``[B, H]`` or None (zeros). The layers and the public functions
    below both run every layer and direction through here. ``compute_dtype``
    (None or ``"bfloat16"``, already checked) goes to the backend only when set,
    so that a backend without the argument still runs the layer's own dtype.

    Returns ``(y [T,B,H], h_n [B,H], c_n [B,H] or None, cache)``."""
    if h0 is None or (cell.has_cell and c0 is None):
        z = zeros((x.shape[1], weights.w_hh.shape[1]), x.dtype)
        h0 = z if h0 is None else h0
        c0 = z if c0 is None else c0
    c0 = c0 if cell.has_cell else None
    if compute_dtype is None:
        y, h, c, cache = be.forward(cell, x, h0, c0, weights, lengths, reverse, training)
    else:
        _takes_compute_dtype(be, compute_dtype)
        y, h, c, cache = be.forward(cell, x, h0, c0, weights, lengths, reverse, training,
                                    compute_dtype=compute_dtype)
    if training and isinstance(y, np.ndarray) and y.base is not None:
        # the packed kernels' y is a view of the activations they keep for the
        # backward: the caller may edit y in place before then (NumPy code does)
        y = y.copy()
    return y, h, c, cache


_TAKES_MODE = {}    # backend forward -> whether it has a compute_dtype argument


def _takes_compute_dtype(be, compute_dtype):
    """Refuse, by name, a backend whose ``forward`` has no ``compute_dtype``
    argument (rather than a TypeError from inside the call)."""
    ok = _TAKES_MODE.get(be.forward)
    if ok is None:
        import inspect
        try:
            ok = "compute_dtype" in inspect.signature(be.forward).parameters
        except (TypeError, ValueError):     # pragma: no cover - no signature to read
            ok = True
        _TAKES_MODE[be.forward] = ok
    if not ok:
        raise ValueError(f"compute_dtype={compute_dtype!r}: the backend {be.__name__!r} does "
                         "not run it (its forward takes no compute_dtype); use backend='numpy' "
                         "or a fastrnn whose CPU kernels have the mode")


def _backward_core(cell, be, cache, dy, dh_n, dc_n, zeros=np.zeros):
    """Back through :func:`_forward_core`: ``dy`` ``[T,B,H]``, ``dh_n``/``dc_n``
    ``[B,H]`` or None (zeros). Returns ``(dx, dh0, dc0 or None, dweights)``."""
    if dh_n is None or (cell.has_cell and dc_n is None):
        z = zeros((dy.shape[1], dy.shape[2]), dy.dtype)
        dh_n = z if dh_n is None else dh_n
        dc_n = z if dc_n is None else dc_n
    return be.backward(cell, cache, dy, dh_n, dc_n if cell.has_cell else None)


# ----------------------------------------------------------------------------- conventions
_LETTERS = {"lstm": ("ifgo", {"c": "g"}), "gru": ("rzn", {"h": "n"})}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_PERMS = {}         # (gate_order, family) -> src: a call parses its string once


def _gate_perm(gate_order, family):
    """``src`` with canonical block ``j`` = the caller's block ``src[j]``; None
    when the caller's order is the canonical one."""
    try:
        return _PERMS[gate_order, family]
    except (KeyError, TypeError):       # TypeError: an unhashable gate_order
        pass
    canon, alias = _LETTERS[family]
    if not isinstance(gate_order, str):
        raise TypeError(f"gate_order must be a string of the gate letters "
                        f"({canon!r} is PyTorch's), got {type(gate_order).__name__}")
    s = "".join(alias.get(ch, ch) for ch in gate_order.lower())
    if sorted(s) != sorted(canon):
        names = ", ".join(f"{a} for {b}" for a, b in alias.items())
        raise ValueError(f"gate_order must name each of the gates {', '.join(canon)} once "
                         f"({names} accepted), got {gate_order!r}")
    src = None if s == canon else tuple(s.index(ch) for ch in canon)
    if len(_PERMS) < 256:
        _PERMS[gate_order, family] = src
    return src


def _layout(weight_layout):
    if weight_layout not in ("out_in", "in_out"):
        raise ValueError(f"weight_layout must be 'out_in' ((G*H, I), PyTorch/ONNX) or "
                         f"'in_out' ((I, G*H), Keras/TensorFlow), got {weight_layout!r}")
    return weight_layout == "in_out"


def _host_array(name, a, dims=None):
    if a is None or isinstance(a, (str, bytes, dict)):
        raise TypeError(f"{name} must be a float32 or float64 array, got {type(a).__name__}")
    if not isinstance(a, np.ndarray) and is_device_array(a):
        raise TypeError(f"{name} is a device array but x is a host array: pass both on the "
                        "same side")
    a = np.asarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if dims is not None and a.ndim != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {a.shape}")
    return a


def _finite(name, a):
    # float64: the sum is one cheap pass; only a non-finite sum (NaN/inf, or an
    # overflow) needs the exact elementwise check. float32: NumPy's float32 sum
    # is about twice as slow as the elementwise check, which is exact
    if a.dtype == np.float32:
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity")
    elif not np.isfinite(a.sum()) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")


def _shape(name, a, shape, hint=""):
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}{hint}, got {a.shape}")


def _to_canon(w, src, in_out, G, H, dtype):
    """A caller's matrix -> ``[G*H, n]`` in PyTorch's shape and gate order, as a
    view when nothing is reordered (the backend converts dtype and layout itself),
    else one reordering pass into a new array of ``dtype``. The in_out layout stays
    in its memory order (the result is a transposed view): the CPU backend packs
    either order, so no transposing copy is made."""
    if src is None:
        w = w.T if in_out else w
        return w if w.dtype == dtype else w.astype(dtype)
    if in_out:          # [n, G*H] with the gate blocks reordered: contiguous row blocks
        out = np.empty((w.shape[0], G * H), dtype)
        for j, s in enumerate(src):
            out[:, j * H:(j + 1) * H] = w[:, s * H:(s + 1) * H]
        return out.T
    out = np.empty((G * H, w.shape[1]), dtype)
    for j, s in enumerate(src):
        out[j * H:(j + 1) * H] = w[s * H:(s + 1) * H]
    return out


def _from_canon(g, src, in_out, G, H, dtype):
    """A gradient ``[G*H, n]`` (PyTorch's layout and order) -> the caller's layout,
    gate order and ``dtype``."""
    if src is None:
        g = g.T if in_out else g
        return g if g.dtype == dtype else g.astype(dtype)
    n = g.shape[1]
    out = np.empty((n, G * H) if in_out else (G * H, n), dtype)
    for j, s in enumerate(src):
        if in_out:
            out[:, s * H:(s + 1) * H] = g[j * H:(j + 1) * H].T
        else:
            out[s * H:(s + 1) * H] = g[j * H:(j + 1) * H]
    return out


def _bias_to_canon(b, src, H, dtype):
    if src is None:
        return b if b.dtype == dtype else b.astype(dtype)
    out = np.empty(b.shape[0], dtype)
    for j, s in enumerate(src):
        out[j * H:(j + 1) * H] = b[s * H:(s + 1) * H]
    return out


def _bias_from_canon(g, src, H, dtype):
    if src is None:
        return g if g.dtype == dtype else g.astype(dtype)
    out = np.empty(g.shape[0], dtype)
    for j, s in enumerate(src):
        out[s * H:(s + 1) * H] = g[j * H:(j + 1) * H]
    return out


# ----------------------------------------------------------------------------- context
class Context:
    """What one forward call in training mode leaves for its backward (opaque).

    A ctx serves one backward (``retain=True`` keeps it for another); it holds
    the backend's saved activations and the caller's conventions, so that the
    gradients come back in them."""

    __slots__ = ("cell", "_be", "_cache", "_dims", "_batch_first", "_src", "_in_out",
                 "_w_dtypes", "_bias", "_state_dtypes", "_peep_form", "_device", "_dtype")

    def __repr__(self):
        T, B, I, H = self._dims
        state = "used" if self._cache is None else "ready"
        return f"<fastrnn.functional.Context {self.cell.name} T={T} B={B} I={I} H={H} {state}>"


def _forward(fname, cell, x, w_ih, w_hh, b_ih, b_hh, peep, state, lengths, batch_first,
             gate_order, weight_layout, training, reverse, backend):
    """The public forward of every cell: check, convert, run, wrap."""
    batch_first = _validate.boolean("batch_first", batch_first)
    training = _validate.boolean("training", training)
    reverse = _validate.boolean("reverse", reverse)
    # "auto" asks where x lives; a host ndarray needs no question
    name = dispatch.resolve_backend(backend, None if isinstance(x, np.ndarray) else x)
    in_out = _layout(weight_layout)
    src = None if cell.family == "rnn" else _gate_perm(gate_order, cell.family)
    G = cell.gates
    if name == "cuda":
        return _forward_device(fname, cell, x, w_ih, w_hh, b_ih, b_hh, peep, state, lengths,
                               batch_first, src, in_out, training, reverse)
    x = _host_array("x", x, 3)
    dtype = x.dtype
    xl = "(B, T, I)" if batch_first else "(T, B, I)"
    if 0 in x.shape:
        raise ValueError(f"x must be {xl} with every size at least 1, got shape {x.shape}")
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    I = x.shape[2]
    w_hh = _host_array("w_hh", w_hh, 2)
    H = w_hh.shape[0] if in_out else w_hh.shape[1]
    if H < 1:
        raise ValueError(f"w_hh must have at least one hidden unit, got shape {w_hh.shape}")
    w_ih = _host_array("w_ih", w_ih, 2)
    shape_ih, shape_hh = ((I, G * H), (H, G * H)) if in_out else ((G * H, I), (G * H, H))
    other = "out_in" if in_out else "in_out"
    for nm, a, shp in (("w_hh", w_hh, shape_hh), ("w_ih", w_ih, shape_ih)):
        if a.shape != shp:
            _shape(nm, a, shp, f" (weight_layout={weight_layout!r}; this shape is "
                   f"weight_layout={other!r})" if a.shape == shp[::-1]
                   else f" (weight_layout={weight_layout!r}, G={G})")
    biases = []
    for nm, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            b = _host_array(nm, b, 1)
            _shape(nm, b, (G * H,), f" (G*H, G={G})")
        biases.append(b)
    h0, c0 = _split_state("state", state, cell, B, H)
    h_dtype = dtype if h0 is None else h0.dtype
    # the data, as the layers check it; the weights are not scanned (a NaN there
    # propagates to the outputs, as in NumPy code, and cannot index out of bounds)
    for nm, a in (("x", x), ("h0", h0), ("c0", c0)):
        if a is not None:
            _finite(nm, a)
    peep_form = None
    if cell.peephole is not None:
        peep, peep_form = _peephole(peep, cell, H, in_out, dtype)
    if lengths is not None:
        lengths = _validate.lengths(lengths, T, B)
    be = dispatch.get_backend(name)

    # into the backends' convention
    xt = x.transpose(1, 0, 2) if batch_first else x
    # private: the caller may change x or the state before backward (a backend
    # that copies x into its own saved buffers anyway reads the caller's x)
    if training and not getattr(be, "copies_input", _never)(cell, dtype, training):
        xt = np.array(xt, dtype, order="C", copy=True)
    h0 = None if h0 is None else np.array(h0, dtype, copy=training or h0.dtype != dtype)
    c0_dtype = None if c0 is None else c0.dtype
    c0 = None if c0 is None else np.array(c0, dtype, copy=training or c0.dtype != dtype)
    zero = None
    bc = []
    for b in biases:
        if b is None:
            zero = np.zeros(G * H, dtype) if zero is None else zero
            bc.append(zero)
        else:
            bc.append(_bias_to_canon(b, src, H, dtype))
    weights = Weights(_to_canon(w_ih, src, in_out, G, H, dtype),
                      _to_canon(w_hh, src, in_out, G, H, dtype), bc[0], bc[1], peep)
    y, h, c, cache = _forward_core(cell, be, xt, h0, c0, weights, lengths, reverse, training)
    if batch_first:
        y = y.transpose(1, 0, 2)
    state_n = (h, c) if cell.has_cell else h
    if not training:
        return y, state_n, None
    ctx = Context()
    ctx.cell, ctx._be, ctx._cache = cell, be, cache
    ctx._dims, ctx._batch_first, ctx._src, ctx._in_out = (T, B, I, H), batch_first, src, in_out
    ctx._w_dtypes = (w_ih.dtype, w_hh.dtype)
    ctx._bias = tuple(None if b is None else b.dtype for b in biases)
    ctx._state_dtypes = (h_dtype, c0_dtype or dtype)
    ctx._dtype = dtype
    ctx._peep_form = peep_form
    ctx._device = False
    return y, state_n, ctx


def _never(*args):
    return False


def _split_state(arg, state, cell, B, H, device=False):
    """``(h, c)`` of a state argument (either may be None), each checked ``(B, H)``."""
    if state is None:
        return None, None
    if cell.has_cell and isinstance(state, (tuple, list)):
        if len(state) != 2:
            raise ValueError(f"{arg} must be h ({B}, {H}) or a pair (h, c), got "
                             f"{len(state)} entries")
        h, c = state
    elif isinstance(state, (tuple, list)):
        raise TypeError(f"{arg} must be one array ({B}, {H}) for cell {cell.name!r} "
                        f"(it has no cell state), got a {type(state).__name__}")
    else:
        h, c = state, None
    pair = cell.has_cell and isinstance(state, (tuple, list))
    names = (f"{arg}[0] (h)", f"{arg}[1] (c)") if pair else \
        (f"{arg} (h)" if cell.has_cell else arg, None)
    out = []
    for nm, a in zip(names, (h, c)):
        if a is not None:
            if device:
                a = _device_array(nm, a)
            else:
                a = _host_array(nm, a, 2)
            _shape(nm, a, (B, H), " (B, H)")
        out.append(a)
    return tuple(out)


def _peephole(peep, cell, H, in_out, dtype):
    """The caller's peephole weights -> ``[3, H]`` or ``[3, H, H]`` (p_i, p_f, p_o) of
    ``dtype``, and how to return their gradient: ``(form, transposed, dtypes)``."""
    shp = cell.peephole_shape(H)
    if isinstance(peep, (tuple, list)):
        if len(peep) != 3:
            raise ValueError(f"peephole must be three arrays (p_i, p_f, p_o), got {len(peep)}")
        parts = []
        for k, p in enumerate(peep):
            nm = f"peephole[{k}] (p_{'ifo'[k]})"
            p = _host_array(nm, p)
            _shape(nm, p, shp, " (diagonal: (H,), full: (H, H))")
            parts.append(p)
        form, dtypes = type(peep).__name__, tuple(p.dtype for p in parts)
        p = np.stack(parts).astype(dtype, copy=False)
    else:
        p = _host_array("peephole", peep)
        _shape("peephole", p, (3,) + shp, " (p_i, p_f, p_o stacked)")
        form, dtypes = "stack", (p.dtype,) * 3
        p = p.astype(dtype, copy=False)
    transposed = in_out and len(shp) == 2
    if transposed:
        p = p.transpose(0, 2, 1)
    return p, (form, transposed, dtypes)


def _peephole_grad(g, form):
    kind, transposed, dtypes = form
    if transposed:
        g = g.transpose(0, 2, 1)
    if kind == "stack":
        return g if g.dtype == dtypes[0] else g.astype(dtypes[0])
    parts = [g[k] if g.dtype == dtypes[k] else g[k].astype(dtypes[k]) for k in range(3)]
    return tuple(parts) if kind == "tuple" else parts


def _device_array(name, a):
    if not is_device_array(a):
        raise TypeError(f"{name} must be a device array like x (backend 'cuda'), got "
                        f"{type(a).__name__}")
    return _device_ops().asarray(a)


def _forward_device(fname, cell, x, w_ih, w_hh, b_ih, b_hh, peep, state, lengths,
                    batch_first, src, in_out, training, reverse):
    """The CUDA path: PyTorch's convention only (no reordering kernels on the device)."""
    if src is not None or in_out:
        raise ValueError(f"{fname} with device arrays takes PyTorch's convention only "
                         "(weight_layout='out_in' and PyTorch's gate_order): convert the "
                         "weights on the host first")
    ops = _device_ops()
    x = _device_array("x", x)
    if len(x.shape) != 3 or 0 in x.shape:
        raise ValueError(f"x must be 3-D with every size at least 1, got shape {tuple(x.shape)}")
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    I = x.shape[2]
    w_ih, w_hh = _device_array("w_ih", w_ih), _device_array("w_hh", w_hh)
    H = w_hh.shape[1]
    G = cell.gates
    zero = ops.zeros(G * H, x.dtype) if b_ih is None or b_hh is None else None
    bias_dtypes = tuple(None if b is None else b.dtype for b in (b_ih, b_hh))
    b_ih = zero if b_ih is None else _device_array("b_ih", b_ih)
    b_hh = zero if b_hh is None else _device_array("b_hh", b_hh)
    h0, c0 = _split_state("state", state, cell, B, H, device=True)
    peep_form = None
    if cell.peephole is not None:
        if isinstance(peep, (tuple, list)):
            peep = ops.stack0([_device_array("peephole", p) for p in peep])
            peep_form = ("tuple", False, (x.dtype,) * 3)
        else:
            peep = _device_array("peephole", peep)
            peep_form = ("stack", False, (x.dtype,) * 3)
    if lengths is not None:
        lengths = _validate.lengths(lengths, T, B)
    be = dispatch.get_backend("cuda")
    xt = ops.contiguous3(x, swap=True) if batch_first else x
    weights = Weights(w_ih, w_hh, b_ih, b_hh, peep)
    y, h, c, cache = _forward_core(cell, be, xt, h0, c0, weights, lengths, reverse, training,
                                   zeros=ops.zeros)
    if batch_first:
        y = ops.contiguous3(y, swap=True)
    state_n = (h, c) if cell.has_cell else h
    if not training:
        return y, state_n, None
    ctx = Context()
    ctx.cell, ctx._be, ctx._cache = cell, be, cache
    ctx._dims, ctx._batch_first, ctx._src, ctx._in_out = (T, B, I, H), batch_first, None, False
    ctx._w_dtypes = (x.dtype, x.dtype)
    ctx._bias = bias_dtypes
    ctx._state_dtypes = (x.dtype, x.dtype)
    ctx._dtype = x.dtype
    ctx._peep_form = peep_form
    ctx._device = True
    return y, state_n, ctx


def _backward(fname, family, ctx, dy, dstate_n, retain):
    """The public backward of every cell."""
    if ctx is None:
        raise BackwardError(f"{fname}: ctx is None: the forward ran with training=False, "
                            "which keeps nothing for a backward")
    if not isinstance(ctx, Context):
        raise TypeError(f"{fname}: ctx must be the Context a forward call returned, got "
                        f"{type(ctx).__name__}")
    if family != _family_of(ctx.cell):
        raise ValueError(f"{fname} cannot run the backward of a {ctx.cell.name!r} forward")
    retain = _validate.boolean("retain", retain)
    if ctx._cache is None:
        raise BackwardError(f"{fname}: this ctx was already used by a backward; pass "
                            "retain=True to the first backward to back-propagate twice")
    T, B, I, H = ctx._dims
    cell = ctx.cell
    if ctx._device:
        ops = _device_ops()
        dy = _device_array("dy", dy)
        zeros = ops.zeros
    else:
        ops = None
        dy = _host_array("dy", dy, 3)
        zeros = np.zeros
    shape = (B, T, H) if ctx._batch_first else (T, B, H)
    _shape("dy", dy, shape, " ((B, T, H) with batch_first)" if ctx._batch_first
           else " (T, B, H)")
    dh_n, dc_n = _split_state("dstate_n", dstate_n, cell, B, H, device=ctx._device)
    if ctx._device:
        dyt = ops.contiguous3(dy, swap=True) if ctx._batch_first else dy
    else:
        for nm, a in (("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n)):
            if a is not None:
                _finite(nm, a)
        dyt = dy.transpose(1, 0, 2) if ctx._batch_first else dy
        dyt = dyt if dyt.dtype == ctx._dtype else dyt.astype(ctx._dtype)
        dh_n = None if dh_n is None else dh_n.astype(ctx._dtype, copy=False)
        dc_n = None if dc_n is None else dc_n.astype(ctx._dtype, copy=False)
    dx, dh0, dc0, gw = _backward_core(cell, ctx._be, ctx._cache, dyt, dh_n, dc_n, zeros=zeros)
    if not retain:
        ctx._cache = None           # frees the saved activations; a second use raises
    if ctx._batch_first:
        dx = ops.contiguous3(dx, swap=True) if ctx._device else dx.transpose(1, 0, 2)
    src, in_out, G = ctx._src, ctx._in_out, cell.gates
    if ctx._device:
        grads = [gw.w_ih, gw.w_hh]
    else:
        grads = [_from_canon(gw.w_ih, src, in_out, G, H, ctx._w_dtypes[0]),
                 _from_canon(gw.w_hh, src, in_out, G, H, ctx._w_dtypes[1])]
    for g, dt in zip((gw.b_ih, gw.b_hh), ctx._bias):
        grads.append(None if dt is None else
                     g if ctx._device else _bias_from_canon(g, src, H, dt))
    if cell.peephole is not None:
        grads.append(_peephole_grad(gw.peep, ctx._peep_form) if not ctx._device else
                     (gw.peep if ctx._peep_form[0] == "stack" else tuple(gw.peep[k]
                                                                          for k in range(3))))
    if not ctx._device:
        hd, cd = ctx._state_dtypes
        dh0 = dh0 if dh0.dtype == hd else dh0.astype(hd)
        if dc0 is not None and dc0.dtype != cd:
            dc0 = dc0.astype(cd)
    return dx, ((dh0, dc0) if cell.has_cell else dh0), tuple(grads)


def _family_of(cell):
    return "peephole" if cell.peephole is not None else cell.family


# ----------------------------------------------------------------------------- public
def rnn(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, *, nonlinearity="tanh",
        lengths=None, batch_first=False, weight_layout="out_in", training=True, reverse=False,
        backend="auto"):
    """Elman RNN, one layer and direction: ``h' = act(W x + b_ih + U h + b_hh)``.

    Parameters
    ----------
    x : array (T, B, I), or (B, T, I) with ``batch_first``; float32 or float64.
    w_ih : (H, I) with ``weight_layout="out_in"``, (I, H) with ``"in_out"``.
    w_hh : (H, H) (``U``, or ``U.T`` with ``"in_out"``).
    b_ih, b_hh : (H,) or None (zero; its gradient comes back as None).
    state : h0 (B, H) or None (zeros).
    nonlinearity : ``"tanh"`` or ``"relu"``.
    lengths : (B,) ints in [1, T] or None: steps ``t >= lengths[b]`` output
        zeros and leave the state alone (PyTorch's PackedSequence semantics).
    batch_first : x, y, dy and dx are (B, T, ...).
    weight_layout : ``"out_in"`` (PyTorch) or ``"in_out"`` (Keras, CS231n).
    training : keep what the backward needs (else ``ctx`` is None).
    reverse : run each sequence from its last valid step back to its first.
    backend : ``"auto"``, ``"numpy"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    y : (T, B, H) or (B, T, H); h_n : (B, H); ctx : :class:`Context` or None.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    cell = CELLS["rnn_" + nonlinearity]
    return _forward("rnn", cell, x, w_ih, w_hh, b_ih, b_hh, None, state, lengths, batch_first,
                    None, weight_layout, training, reverse, backend)


def rnn_backward(ctx, dy, dstate_n=None, *, retain=False):
    """Gradients of an :func:`rnn` call: ``dx, dh0, (dw_ih, dw_hh, db_ih, db_hh)``.

    ``dy`` is dL/dy (shaped as ``y``; entries at padded steps are ignored),
    ``dstate_n`` dL/dh_n (B, H) or None. Each gradient comes back in its
    argument's layout and dtype; a bias passed as None has gradient None.
    ``retain=True`` keeps ``ctx`` for another backward."""
    return _backward("rnn_backward", "rnn", ctx, dy, dstate_n, retain)


def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, *, lengths=None, batch_first=False,
         gate_order="ifgo", weight_layout="out_in", training=True, reverse=False,
         backend="auto"):
    """LSTM, one layer and direction: ``i,f,g,o = σ,σ,tanh,σ(W x + b_ih + U h + b_hh)``;
    ``c' = f c + i g``; ``h' = o tanh(c')``.

    Parameters
    ----------
    x : array (T, B, I), or (B, T, I) with ``batch_first``; float32 or float64.
    w_ih : (4H, I) with ``weight_layout="out_in"``, (I, 4H) with ``"in_out"``;
        gate blocks in ``gate_order``.
    w_hh : (4H, H), or (H, 4H) with ``"in_out"``.
    b_ih, b_hh : (4H,) or None (zero; its gradient comes back as None). One
        bias (Keras, CS231n): pass it as ``b_ih``.
    state : None (zeros), h0 (B, H), or (h0, c0) with either part None.
    lengths : (B,) ints in [1, T] or None (see :func:`rnn`).
    batch_first : x, y, dy and dx are (B, T, ...).
    gate_order : the caller's gate blocks: a permutation of ``"ifgo"`` (``c``
        for ``g`` accepted): PyTorch ``"ifgo"``, Keras ``"ifco"``, CS231n
        ``"ifog"``, ONNX ``"iofc"``.
    weight_layout : ``"out_in"`` (PyTorch, ONNX) or ``"in_out"`` (Keras, CS231n).
    training : keep what the backward needs (else ``ctx`` is None).
    reverse : run each sequence from its last valid step back to its first.
    backend : ``"auto"``, ``"numpy"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    y : (T, B, H) or (B, T, H) (a transposed view with ``batch_first``).
    state_n : (h_n, c_n), each (B, H), after each sequence's last valid step.
    ctx : :class:`Context` for :func:`lstm_backward`, or None without training.

    Examples
    --------
    CS231n's ``lstm_forward(x, h0, Wx, Wh, b)`` (x (N, T, D), Wx (D, 4H), gates
    i, f, o, g) and its backward, unchanged weights::

        h, _, ctx = F.lstm(x, Wx, Wh, b, h0, batch_first=True, gate_order="ifog",
                           weight_layout="in_out")
        dx, (dh0, _), (dWx, dWh, db, _) = F.lstm_backward(ctx, dh)
    """
    return _forward("lstm", CELLS["lstm"], x, w_ih, w_hh, b_ih, b_hh, None, state, lengths,
                    batch_first, gate_order, weight_layout, training, reverse, backend)


def lstm_backward(ctx, dy, dstate_n=None, *, retain=False):
    """Gradients of an :func:`lstm` call:
    ``dx, (dh0, dc0), (dw_ih, dw_hh, db_ih, db_hh)``.

    ``dy`` is dL/dy (shaped as ``y``; entries at padded steps are ignored);
    ``dstate_n`` None, dL/dh_n (B, H), or (dL/dh_n, dL/dc_n) with either part
    None (zeros). The weight gradients come back in the caller's layout, gate
    order and dtype; a bias passed as None has gradient None. ``retain=True``
    keeps ``ctx`` for another backward; otherwise a second use raises
    :class:`BackwardError`."""
    return _backward("lstm_backward", "lstm", ctx, dy, dstate_n, retain)


def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, *, reset_after=True, lengths=None,
        batch_first=False, gate_order="rzn", weight_layout="out_in", training=True,
        reverse=False, backend="auto"):
    """GRU, one layer and direction: ``r, z = σ(W x + b_i + U h + b_h)``,
    ``h' = (1-z) n + z h``; ``n = tanh(W_n x + b_in + r (U_n h + b_hn))``
    (``reset_after=True``, PyTorch, cuDNN, Keras' default) or
    ``n = tanh(W_n x + b_in + U_n (r h) + b_hn)`` (``reset_after=False``).

    Parameters are those of :func:`lstm` with 3 gates: ``w_ih`` (3H, I) /
    (I, 3H), ``w_hh`` (3H, H) / (H, 3H), biases (3H,); ``gate_order`` a
    permutation of ``"rzn"`` (``h`` for ``n`` accepted; Keras: ``"zrh"``);
    ``state`` h0 (B, H) or None.

    Returns
    -------
    y, h_n (B, H), ctx (see :func:`lstm`).
    """
    if not isinstance(reset_after, (bool, np.bool_)):
        raise TypeError(f"reset_after must be True or False, got {reset_after!r}")
    cell = CELLS["gru" if reset_after else "gru_reset_before"]
    return _forward("gru", cell, x, w_ih, w_hh, b_ih, b_hh, None, state, lengths, batch_first,
                    gate_order, weight_layout, training, reverse, backend)


def gru_backward(ctx, dy, dstate_n=None, *, retain=False):
    """Gradients of a :func:`gru` call: ``dx, dh0, (dw_ih, dw_hh, db_ih, db_hh)``
    (see :func:`lstm_backward`)."""
    return _backward("gru_backward", "gru", ctx, dy, dstate_n, retain)


def peephole_lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, *, peephole, lengths=None,
                  batch_first=False, gate_order="ifgo", weight_layout="out_in", training=True,
                  reverse=False, backend="auto"):
    """Peephole LSTM, one layer and direction: as :func:`lstm`, with
    ``i = σ(... + P_i(c))``, ``f = σ(... + P_f(c))``, ``o = σ(... + P_o(c'))``.

    Parameters
    ----------
    peephole : the three peephole weights ``(p_i, p_f, p_o)`` (a tuple or list)
        or stacked in one array: vectors (H,) (diagonal: ``P(c) = p * c``) or
        matrices (H, H) (full: ``P @ c``, or ``c @ P`` with
        ``weight_layout="in_out"``); the kind is read from their shape.
    Others as :func:`lstm`.

    Returns
    -------
    y, (h_n, c_n), ctx (see :func:`lstm`).
    """
    # the kind (diagonal/full) follows from the shape of p_i relative to H
    first = peephole[0] if isinstance(peephole, (tuple, list)) and peephole else peephole
    kind = "full" if np.ndim(first) == (2 if isinstance(peephole, (tuple, list)) else 3) \
        else "diagonal"
    cell = CELLS["peephole_" + kind]
    return _forward("peephole_lstm", cell, x, w_ih, w_hh, b_ih, b_hh, peephole, state, lengths,
                    batch_first, gate_order, weight_layout, training, reverse, backend)


def peephole_lstm_backward(ctx, dy, dstate_n=None, *, retain=False):
    """Gradients of a :func:`peephole_lstm` call:
    ``dx, (dh0, dc0), (dw_ih, dw_hh, db_ih, db_hh, dpeephole)``; ``dpeephole``
    in the form the peephole weights were passed (tuple, list or stacked array)."""
    return _backward("peephole_lstm_backward", "peephole", ctx, dy, dstate_n, retain)
