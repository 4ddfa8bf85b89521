"""Weight converters: PyTorch, Keras / TensorFlow, ONNX and a raw form, to and
from fastrnn layers.

fastrnn stores a recurrent layer as PyTorch does (see :mod:`fastrnn.cells`):
``weight_ih_l{k}`` ``(G*H, I)``, ``weight_hh_l{k}`` ``(G*H, H)``, two biases
``(G*H,)``, gate blocks LSTM ``i, f, g, o``, GRU ``r, z, n``; ``_reverse``
for the backward direction. The other conventions differ in three ways: the
order of the ``G`` gate blocks, whether matrices are ``(out, in)`` or
``(in, out)``, and how many biases there are.

=============  ==================  ================  ===================  ==================
convention     LSTM order          GRU order         matrices             biases
=============  ==================  ================  ===================  ==================
fastrnn/torch  i, f, g, o          r, z, n           ``(G*H, I)``         ``b_ih``, ``b_hh``
Keras / TF     i, f, c, o          z, r, h           ``(I, G*H)``         one ``(G*H,)``;
                                                                          GRU reset_after
                                                                          ``(2, 3H)``
ONNX           i, o, f, c          z, r, h           ``(D, G*H, I)``      ``B (D, 2*G*H)``
raw            ``gate_order``      ``gate_order``    ``weight_layout``    one or two
=============  ==================  ================  ===================  ==================

Every convention uses the same equations up to these layouts (``h' = (1-z) n
+ z h`` for the GRU everywhere, Keras included), so a conversion is a gate
permutation, maybe a transpose, and for one-bias conventions the sum
``b_ih + b_hh`` (exact in the other direction: the second bias is zero).
The GRU's ``b_hn`` sits inside ``r * (U_n h + b_hn)`` with ``reset_after``
and cannot be folded into one bias: Keras keeps both there (``(2, 3H)``).

Peephole weights: fastrnn ``peephole_{i,f,o}_l{k}`` ``(H,)``; ONNX LSTM's
``P (D, 3H)`` is ``[p_i, p_o, p_f]``; TensorFlow's ``PeepholeLSTMCell``
appends ``input_gate_peephole_weights``, ``forget_gate_peephole_weights``,
``output_gate_peephole_weights`` to ``kernel, recurrent_kernel, bias``.
The full-matrix peephole (``peephole="full"``) and ``GRU(reset_after=False)``
have no PyTorch module; the full peephole has no Keras or ONNX cell either.

Functions
---------
``from_raw`` / ``to_raw``
    one layer and direction of arrays in any gate order and layout <-> a
    state_dict part (``layer.load_state_dict`` takes it).
``from_keras`` / ``to_keras``
    a Keras layer (or its ``get_weights()`` list, or a list of them for a
    stack; ``Bidirectional`` included) <-> a fastrnn layer.
``from_onnx_weights`` / ``to_onnx_weights``
    the ``W, R, B, P`` inputs of ONNX ``LSTM``/``GRU``/``RNN`` nodes (one per
    stacked layer, ``num_directions`` 1 or 2) <-> a fastrnn layer;
    :func:`onnx_operator` gives the node type and attributes of a cell.
``from_torch`` / ``to_torch``
    ``torch.nn.RNN/LSTM/GRU`` <-> a fastrnn layer; ``to_torch`` also builds
    an equivalent ``torch.nn.Module`` of a fastrnn model.
"""
from __future__ import annotations

import numpy as np

from .cells import CELLS, get_cell
from .torch_models import require_torch, torch_model, torch_rnn

__all__ = ["from_raw", "to_raw", "from_keras", "to_keras", "from_onnx_weights",
           "to_onnx_weights", "onnx_operator", "from_torch", "to_torch", "gate_permutation",
           "CONVENTIONS"]

#: each convention's gate order per cell family (letters as :func:`gate_permutation` takes)
CONVENTIONS = {
    "torch": {"lstm": "ifgo", "gru": "rzn", "rnn": "h"},
    "keras": {"lstm": "ifco", "gru": "zrh", "rnn": "h"},
    "onnx": {"lstm": "iofc", "gru": "zrh", "rnn": "h"},
}

# letters accepted for each family's gates -> fastrnn's letter
_LETTERS = {"lstm": {"i": "i", "f": "f", "g": "g", "c": "g", "o": "o"},
            "gru": {"r": "r", "z": "z", "n": "n", "h": "n"},
            "rnn": {"h": "h"}}
_OWN = CONVENTIONS["torch"]


# ============================================================== gate orders
def _family(cell):
    return get_cell(cell).family


def _canonical(order, family, name="gate_order"):
    """``order`` (a string or sequence of gate letters) in fastrnn's letters."""
    own = _OWN[family]
    if order is None:
        return own
    letters = _LETTERS[family]
    try:
        out = "".join(letters[str(g).lower()] for g in order)
    except KeyError:
        out = None
    if out is None or sorted(out) != sorted(own):
        accepted = "/".join(sorted(letters))
        raise ValueError(f"{name} must name each of the {len(own)} {family.upper()} gates once "
                         f"(letters {accepted}), got {order!r}")
    return out


def gate_permutation(src, dst, hidden_size, family="lstm"):
    """Row indices ``idx`` such that ``a[idx]`` reorders ``G*H`` gate rows from
    order ``src`` to order ``dst`` (gate letters: LSTM ``i f g o``, ``c`` for
    ``g``; GRU ``r z n``, ``h`` for ``n``)."""
    src, dst = _canonical(src, family, "src"), _canonical(dst, family, "dst")
    H = int(hidden_size)
    return np.concatenate([np.arange(src.index(g) * H, (src.index(g) + 1) * H) for g in dst])


def _reorder(a, src, dst, H, family, axis=0):
    if src == dst:
        return np.array(a, copy=True)
    return np.take(a, gate_permutation(src, dst, H, family), axis=axis)


# ============================================================== raw
def _as_float(name, a, dtype=None):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if dtype is None:
        dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float32
    return a.astype(dtype, copy=False)


def _check_shape(name, a, shape, what=""):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{what}, got {tuple(a.shape)}")


def from_raw(w_ih, w_hh, b_ih=None, b_hh=None, *, cell="lstm", gate_order=None,
             weight_layout="out_in", peephole=None, suffix="_l0", dtype=None):
    """One layer and direction of weights in any gate order and layout, as
    entries of a fastrnn state_dict.

    Parameters
    ----------
    w_ih, w_hh : array
        ``(G*H, I)`` and ``(G*H, H)`` with ``weight_layout="out_in"``
        (PyTorch, ONNX), ``(I, G*H)`` and ``(H, G*H)`` with ``"in_out"``
        (Keras, TensorFlow, CS231n).
    b_ih, b_hh : array ``(G*H,)``, optional
        One bias (``b_ih``) or two; a missing one is zero.
    cell : str
        A registered cell (:data:`fastrnn.cells.CELLS`): ``"lstm"``, ``"gru"``,
        ``"gru_reset_before"``, ``"rnn_tanh"``, ``"peephole_diagonal"`` ...
    gate_order : str or sequence, optional
        The order of the caller's ``G`` gate blocks: LSTM letters ``i, f, g,
        o`` (``c`` for ``g``), GRU ``r, z, n`` (``h`` for ``n``); default
        fastrnn's (``"ifgo"``, ``"rzn"``). E.g. CS231n ``"ifog"``, Keras
        ``"ifco"``/``"zrh"``, ONNX ``"iofc"``/``"zrh"``.
    weight_layout : {"out_in", "in_out"}
    peephole : dict or sequence, optional
        Peephole weights ``{"i": p_i, "f": p_f, "o": p_o}`` or ``(p_i, p_f,
        p_o)`` (a peephole cell needs them).
    suffix : str, default ``"_l0"``
        Appended to the names: ``"_l{k}"``, ``"_l{k}_reverse"``.
    dtype : numpy float dtype, optional
        Of the returned arrays (default: that of ``w_ih``).

    Returns
    -------
    dict
        ``weight_ih{suffix}``, ``weight_hh{suffix}``, ``bias_ih{suffix}``,
        ``bias_hh{suffix}`` (and ``peephole_{i,f,o}{suffix}``), new arrays in
        fastrnn's order and layout: ``layer.load_state_dict({**layer.state_dict(),
        **from_raw(...)})``.
    """
    spec = get_cell(cell)
    fam = spec.family
    order = _canonical(gate_order, fam)
    if weight_layout not in ("out_in", "in_out"):
        raise ValueError(f"weight_layout must be 'out_in' or 'in_out', got {weight_layout!r}")
    w_ih = _as_float("w_ih", w_ih, dtype)
    dtype = w_ih.dtype
    w_hh = _as_float("w_hh", w_hh, dtype)
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(f"w_ih and w_hh must be 2-D, got shapes {w_ih.shape} and {w_hh.shape}")
    if weight_layout == "in_out":
        w_ih, w_hh = w_ih.T, w_hh.T
    GH = w_hh.shape[0]
    G = spec.gates
    if GH % G:
        raise ValueError(f"w_hh has {GH} gate rows, not a multiple of G = {G} ({spec.name})")
    H = GH // G
    lay = "" if weight_layout == "out_in" else " (in_out)"
    _check_shape("w_hh", w_hh, (G * H, H), lay)
    if w_ih.shape[0] != G * H:
        raise ValueError(f"w_ih must have {G * H} gate rows (G*H) like w_hh{lay}, "
                         f"got shape {w_ih.shape if weight_layout == 'out_in' else w_ih.T.shape}")
    own = _OWN[fam]
    out = {"weight_ih" + suffix: _reorder(w_ih, order, own, H, fam),
           "weight_hh" + suffix: _reorder(w_hh, order, own, H, fam)}
    zero = np.zeros(G * H, dtype)
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        b = zero if b is None else _as_float(name, b, dtype)
        _check_shape(name.replace("bias", "b"), b, (G * H,))
        out[name + suffix] = _reorder(b, order, own, H, fam)
    if spec.peephole is not None:
        if peephole is None:
            raise ValueError(f"cell {spec.name!r} needs peephole=(p_i, p_f, p_o)")
        ps = ([peephole[g] for g in "ifo"] if isinstance(peephole, dict) else list(peephole))
        if len(ps) != 3:
            raise ValueError(f"peephole must hold p_i, p_f, p_o, got {len(ps)} arrays")
        for g, p in zip("ifo", ps):
            p = np.array(_as_float(f"peephole {g}", p, dtype), copy=True)
            _check_shape(f"peephole {g}", p, spec.peephole_shape(H))
            out[f"peephole_{g}{suffix}"] = p
    elif peephole is not None:
        raise ValueError(f"cell {spec.name!r} has no peephole weights; got peephole=")
    return out


def to_raw(src, *, cell=None, gate_order=None, weight_layout="out_in", suffix="_l0",
           biases=2):
    """One layer and direction of a fastrnn layer (or state_dict) in any gate
    order and layout: the inverse of :func:`from_raw`.

    Parameters
    ----------
    src : fastrnn layer or dict
        A layer, or a state_dict (then ``cell`` is required).
    gate_order, weight_layout : as in :func:`from_raw`.
    suffix : str, default ``"_l0"``
        Which layer and direction: ``"_l{k}"`` or ``"_l{k}_reverse"``.
    biases : {2, 1}
        Two biases ``b_ih, b_hh``, or one, their sum (refused for the GRU
        with ``reset_after``, whose ``b_hn`` is multiplied by ``r``).

    Returns
    -------
    dict
        ``w_ih``, ``w_hh``, then ``b_ih`` and ``b_hh`` (``biases=2``) or ``b``
        (``biases=1``), and ``p_i``, ``p_f``, ``p_o`` for a peephole cell; new
        arrays. A layer without biases gives zeros.
    """
    params, spec = _params_and_cell(src, cell)
    fam = spec.family
    order = _canonical(gate_order, fam)
    if weight_layout not in ("out_in", "in_out"):
        raise ValueError(f"weight_layout must be 'out_in' or 'in_out', got {weight_layout!r}")
    if biases not in (1, 2):
        raise ValueError(f"biases must be 1 or 2, got {biases!r}")
    try:
        w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
    except KeyError:
        raise ValueError(f"no parameters with suffix {suffix!r} (have "
                         f"{sorted(k for k in params if k.startswith('weight_ih'))})") from None
    w_ih, w_hh = np.asarray(w_ih), np.asarray(w_hh)
    H = w_hh.shape[1]
    own = _OWN[fam]
    zero = np.zeros(spec.gates * H, w_hh.dtype)
    b_ih = np.asarray(params.get("bias_ih" + suffix, zero))
    b_hh = np.asarray(params.get("bias_hh" + suffix, zero))
    t = (lambda a: a.T.copy()) if weight_layout == "in_out" else (lambda a: a)
    out = {"w_ih": t(_reorder(w_ih, own, order, H, fam)),
           "w_hh": t(_reorder(w_hh, own, order, H, fam))}
    if biases == 2:
        out["b_ih"] = _reorder(b_ih, own, order, H, fam)
        out["b_hh"] = _reorder(b_hh, own, order, H, fam)
    else:
        if spec.name == "gru" and np.any(b_hh[2 * H:] != 0):
            raise ValueError("a GRU with reset_after=True has a recurrent bias b_hn inside "
                             "r * (U_n h + b_hn): it cannot be folded into one bias "
                             "(use biases=2)")
        out["b"] = _reorder(b_ih + b_hh, own, order, H, fam)
    if spec.peephole is not None:
        for g in "ifo":
            out["p_" + g] = np.array(params[f"peephole_{g}{suffix}"], copy=True)
    return out


def _params_and_cell(src, cell):
    """``(state_dict, CellSpec)`` of a layer or of a dict plus ``cell``."""
    if isinstance(src, dict):
        if cell is None:
            raise ValueError("cell= is required with a state_dict (e.g. cell='lstm')")
        return src, get_cell(cell)
    if hasattr(src, "state_dict") and hasattr(src, "cell"):
        spec = src.cell
        if cell is not None and get_cell(cell).name != spec.name:
            raise ValueError(f"cell={cell!r} but the layer's cell is {spec.name!r}")
        return src.state_dict(), spec
    raise TypeError(f"expected a fastrnn recurrent layer or a state_dict, got "
                    f"{type(src).__name__}")


def _suffix(k, d):
    return f"_l{k}" + ("_reverse" if d else "")


def _build_layer(spec, input_size, hidden_size, num_layers, bidirectional, bias, dtype,
                 state, **layer_kwargs):
    """A fastrnn layer of ``spec`` holding ``state`` (a complete state_dict)."""
    from . import layers
    cls = getattr(layers, spec.layer[0])
    kwargs = dict(spec.layer_kwargs)
    kwargs.update(layer_kwargs)
    kwargs.setdefault("seed", 0)           # the drawn weights are replaced at once
    layer = cls(int(input_size), int(hidden_size), num_layers=int(num_layers),
                bidirectional=bool(bidirectional), bias=bool(bias), dtype=dtype, **kwargs)
    if not bias:
        state = {k: v for k, v in state.items() if not k.startswith("bias_")}
    layer.load_state_dict(state)
    return layer


def _layer_shape(layer):
    return layer.num_layers, layer.num_directions, layer.hidden_size


# ============================================================== Keras
_KERAS_CLASSES = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn", "PeepholeLSTM": "peephole"}


def _keras_cell(cell, reset_after, nonlinearity):
    """The registered cell for a Keras cell name and its options."""
    name = str(cell).lower()
    if name in ("lstm",):
        return CELLS["lstm"]
    if name in ("peephole", "peephole_lstm", "peephole_diagonal", "peepholelstm"):
        return CELLS["peephole_diagonal"]
    if name == "gru":
        return CELLS["gru" if reset_after else "gru_reset_before"]
    if name in ("rnn", "simplernn", "simple_rnn", "rnn_tanh", "rnn_relu"):
        act = nonlinearity or ("relu" if name == "rnn_relu" else "tanh")
        if act not in ("tanh", "relu"):
            raise ValueError(f"SimpleRNN activation must be 'tanh' or 'relu', got {act!r}")
        return CELLS["rnn_" + act]
    raise ValueError(f"cell must be 'lstm', 'gru', 'rnn' (SimpleRNN) or 'peephole' "
                     f"(TensorFlow's PeepholeLSTMCell), got {cell!r}")


def _keras_groups(src):
    """Normalise ``from_keras``'s input to ``(per-layer weight lists, bidirectional
    flags, options read from layer objects)``."""
    def one(item):
        opts = {}
        if hasattr(item, "forward_layer") and hasattr(item, "backward_layer"):
            fw, bw = item.forward_layer, item.backward_layer
            opts = _keras_options(fw)
            return list(fw.get_weights()) + list(bw.get_weights()), True, opts
        if hasattr(item, "get_weights"):
            if getattr(item, "go_backwards", False):
                raise ValueError("a Keras layer with go_backwards=True (outside Bidirectional) "
                                 "has no fastrnn equivalent: fastrnn's reverse direction "
                                 "exists only in a bidirectional layer")
            return list(item.get_weights()), False, _keras_options(item)
        return [np.asarray(a) for a in item], None, opts

    layer_like = hasattr(src, "get_weights") or hasattr(src, "forward_layer")
    if layer_like or (isinstance(src, (list, tuple)) and src
                      and all(isinstance(a, np.ndarray) for a in src)):
        return [one(src)]
    if isinstance(src, (list, tuple)) and src:
        return [one(item) for item in src]
    raise TypeError("from_keras takes a Keras layer, its get_weights() list, or a list of "
                    f"those for a stack; got {type(src).__name__}")


def _keras_options(layer):
    opts = {}
    cls = type(layer).__name__
    if cls in _KERAS_CLASSES:
        opts["cell"] = _KERAS_CLASSES[cls]
    if hasattr(layer, "reset_after"):
        opts["reset_after"] = bool(layer.reset_after)
    act = getattr(layer, "activation", None)
    if act is not None:
        opts["activation"] = getattr(act, "__name__", act)
    rec = getattr(layer, "recurrent_activation", None)
    if rec is not None:
        opts["recurrent_activation"] = getattr(rec, "__name__", rec)
    if hasattr(layer, "use_bias"):
        opts["use_bias"] = bool(layer.use_bias)
    return opts


def from_keras(src, cell=None, *, reset_after=None, bias=None, nonlinearity=None,
               dtype=None, **layer_kwargs):
    """A fastrnn layer with the weights of Keras/TensorFlow recurrent layers.

    Parameters
    ----------
    src : Keras layer, list of arrays, or list of those
        A ``keras.layers.LSTM``/``GRU``/``SimpleRNN`` (anything with
        ``get_weights()``), a ``Bidirectional`` wrapper (its ``forward_layer``
        and ``backward_layer``), one layer's ``get_weights()`` list
        ``[kernel (I, G*H), recurrent_kernel (H, G*H), bias]`` (a
        bidirectional one: the forward direction's arrays then the
        backward's, as ``Bidirectional.get_weights()`` lists them), or a list
        of those for a stack (layer ``k + 1`` reads layer ``k``'s outputs).
    cell : {"lstm", "gru", "rnn", "peephole"}, optional
        Taken from a Keras layer's class; required with arrays. ``"rnn"`` is
        ``SimpleRNN``; ``"peephole"`` TensorFlow's ``PeepholeLSTMCell``
        (weights ``kernel, recurrent_kernel, bias`` then the input, forget
        and output gates' peephole vectors).
    reset_after : bool, optional
        GRU only: read from the bias (``(2, 3H)``: True, ``(3H,)``: False);
        needed only without a bias (default then True, Keras' default).
    bias : bool, optional
        Whether the weights hold a bias (Keras ``use_bias``, default True).
    nonlinearity : {"tanh", "relu"}, optional
        SimpleRNN's activation (default tanh).
    dtype : numpy float dtype, optional
        The layer's dtype (default: the kernel's, float32 unless float64).
    **layer_kwargs
        Further layer arguments (``backend``, ``batch_first``...).

    Keras' equations: LSTM ``z = x K + h U + b``, gates ``i, f, c, o``;
    GRU gates ``z, r, h``, ``h' = z h + (1 - z) hh`` (the same as fastrnn's),
    ``reset_after=True``: ``hh = tanh(x K_h + b_h + r (h U_h + b'_h))``;
    ``False``: ``hh = tanh(x K_h + b_h + (r h) U_h)``. The default
    ``recurrent_activation`` is the sigmoid (Keras 2.3+); layers built with
    another (``hard_sigmoid``) are refused.
    """
    groups = _keras_groups(src)
    specs, states, dims = [], {}, []
    for k, (weights, bidir, opts) in enumerate(groups):
        c = cell if cell is not None else opts.get("cell")
        if c is None:
            raise ValueError("cell= is required with weight arrays ('lstm', 'gru', 'rnn' or "
                             "'peephole')")
        for key, want in (("recurrent_activation", ("sigmoid",)),):
            if key in opts and opts[key] not in want:
                raise ValueError(f"layer {k}: Keras {key}={opts[key]!r} is not supported "
                                 "(fastrnn's gates use the sigmoid)")
        act = nonlinearity or opts.get("activation")
        if str(c).lower() in ("lstm", "gru", "peephole") and act not in (None, "tanh"):
            raise ValueError(f"layer {k}: Keras activation={act!r} is not supported "
                             "(fastrnn's LSTM and GRU use tanh)")
        use_bias = bias if bias is not None else opts.get("use_bias", True)
        peep = str(c).lower() in ("peephole", "peephole_lstm", "peephole_diagonal",
                                  "peepholelstm")
        per = 2 + bool(use_bias) + (3 if peep else 0)
        if bidir is None:
            if len(weights) not in (per, 2 * per):
                raise ValueError(f"layer {k}: expected {per} arrays (kernel, recurrent_kernel"
                                 f"{', bias' if use_bias else ''}{', 3 peepholes' if peep else ''})"
                                 f" or {2 * per} (bidirectional), got {len(weights)}")
            bidir = len(weights) == 2 * per
        elif len(weights) != per * (2 if bidir else 1):
            raise ValueError(f"layer {k}: expected {per * (2 if bidir else 1)} weight arrays, "
                             f"got {len(weights)}")
        ra = reset_after if reset_after is not None else opts.get("reset_after")
        if use_bias and str(c).lower() == "gru":
            b = np.asarray(weights[2])
            shape_ra = b.ndim == 2
            if ra is not None and bool(ra) != shape_ra:
                raise ValueError(f"layer {k}: reset_after={ra} but the GRU bias has shape "
                                 f"{b.shape} ({'(2, 3H)' if ra else '(3H,)'} expected)")
            ra = shape_ra
        spec = _keras_cell(c, True if ra is None else ra, act)
        specs.append(spec)
        D = 2 if bidir else 1
        for d in range(D):
            w = weights[d * per:(d + 1) * per]
            states.update(_keras_direction(w, spec, use_bias, _suffix(k, d), dtype, k))
        kernel = np.asarray(weights[0])
        dims.append((kernel.shape[0], np.asarray(weights[1]).shape[0], D, bool(use_bias)))
    names = {s.name for s in specs}
    if len(names) > 1:
        raise ValueError(f"a stack must use one cell, got {sorted(names)}")
    I, H, D, use_bias = dims[0]
    for k, (i, h, d, b) in enumerate(dims[1:], 1):
        if (h, d, b) != (H, D, use_bias) or i != D * H:
            raise ValueError(f"layer {k} (input {i}, hidden {h}, directions {d}) does not stack "
                             f"on layer 0 (hidden {H}, directions {D}: input {D * H} expected)")
    dt = next(iter(states.values())).dtype
    return _build_layer(specs[0], I, H, len(groups), D == 2, use_bias, dt, states,
                        **layer_kwargs)


def _keras_direction(w, spec, use_bias, suffix, dtype, k):
    fam = spec.family
    kernel = _as_float(f"layer {k} kernel", w[0], dtype)
    rec = _as_float(f"layer {k} recurrent_kernel", w[1], kernel.dtype)
    if kernel.ndim != 2 or rec.ndim != 2 or rec.shape[1] != kernel.shape[1]:
        raise ValueError(f"layer {k}: kernel (I, G*H) and recurrent_kernel (H, G*H) expected, "
                         f"got {kernel.shape} and {rec.shape}")
    H = rec.shape[0]
    G = spec.gates
    _check_shape(f"layer {k} recurrent_kernel", rec, (H, G * H))
    b_ih = b_hh = None
    if use_bias:
        b = _as_float(f"layer {k} bias", w[2], kernel.dtype)
        if spec.name == "gru":
            _check_shape(f"layer {k} bias", b, (2, G * H), " (GRU reset_after=True)")
            b_ih, b_hh = b[0], b[1]
        else:
            _check_shape(f"layer {k} bias", b, (G * H,))
            b_ih = b
    peep = None
    if spec.peephole is not None:
        peep = w[2 + bool(use_bias):]
    return from_raw(kernel, rec, b_ih, b_hh, cell=spec, gate_order=CONVENTIONS["keras"][fam],
                    weight_layout="in_out", peephole=peep, suffix=suffix, dtype=kernel.dtype)


def to_keras(layer):
    """The Keras weights of a fastrnn layer: one list per stacked layer, ready
    for ``keras_layer.set_weights(w)`` (a bidirectional layer's list is
    ``Bidirectional.set_weights``'s: forward arrays, then backward).

    Per direction: ``kernel (I, G*H)``, ``recurrent_kernel (H, G*H)``, and
    with biases ``bias``: ``(G*H,)`` = ``b_ih + b_hh`` (LSTM, SimpleRNN, GRU
    ``reset_after=False``, whose ``b_hn`` adds outside the reset gate), or
    ``(2, 3H)`` = ``[b_ih, b_hh]`` (GRU ``reset_after=True``); a peephole
    LSTM (diagonal) appends ``p_i, p_f, p_o``. Keras builds the layers with
    ``use_bias`` as the fastrnn layer's ``bias``, ``reset_after`` as the GRU's
    and ``activation`` as the RNN's ``nonlinearity``.
    """
    spec = layer.cell
    if spec.peephole == "full":
        raise ValueError("Keras/TensorFlow has no full-matrix peephole LSTM (peephole='full')")
    fam = spec.family
    L, D, _ = _layer_shape(layer)
    params = layer.state_dict()
    out = []
    for k in range(L):
        ws = []
        for d in range(D):
            raw = to_raw(params, cell=spec, gate_order=CONVENTIONS["keras"][fam],
                         weight_layout="in_out", suffix=_suffix(k, d))
            ws += [raw["w_ih"], raw["w_hh"]]
            if layer.bias:
                if spec.name == "gru":
                    ws.append(np.stack([raw["b_ih"], raw["b_hh"]]))
                else:
                    ws.append(raw["b_ih"] + raw["b_hh"])
            if spec.peephole is not None:
                ws += [raw["p_i"], raw["p_f"], raw["p_o"]]
        out.append(ws)
    return out


# ============================================================== ONNX
def onnx_operator(cell):
    """``(op_type, attributes)`` of the ONNX node computing ``cell``, or a
    ValueError for a cell without one (the full-matrix peephole)."""
    spec = get_cell(cell)
    if spec.peephole == "full":
        raise ValueError("ONNX has no node for the full-matrix peephole LSTM (peephole='full')")
    if spec.family == "lstm":
        return "LSTM", {}
    if spec.family == "gru":
        return "GRU", {"linear_before_reset": 1 if spec.name == "gru" else 0}
    return "RNN", {"activations": ["Tanh" if spec.name == "rnn_tanh" else "Relu"]}


def to_onnx_weights(layer, dtype=None):
    """The initializers of the ONNX nodes of a fastrnn layer: one dict per
    stacked layer with ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)``
    (absent for a layer without biases) and, for the diagonal peephole,
    ``P (D, 3H)`` = ``[p_i, p_o, p_f]``. Gate order LSTM ``i, o, f, c``, GRU
    ``z, r, h``; direction 0 forward, 1 reverse (``direction="bidirectional"``).
    :func:`onnx_operator` gives the node type and attributes."""
    spec = layer.cell
    op, _ = onnx_operator(spec)
    fam = spec.family
    L, D, _ = _layer_shape(layer)
    params = layer.state_dict()
    out = []
    for k in range(L):
        parts = [to_raw(params, cell=spec, gate_order=CONVENTIONS["onnx"][fam],
                        suffix=_suffix(k, d)) for d in range(D)]
        cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
        w = {"W": cast(np.stack([p["w_ih"] for p in parts])),
             "R": cast(np.stack([p["w_hh"] for p in parts]))}
        if layer.bias:
            w["B"] = cast(np.stack([np.concatenate([p["b_ih"], p["b_hh"]]) for p in parts]))
        if spec.peephole is not None:
            w["P"] = cast(np.stack([np.concatenate([p["p_i"], p["p_o"], p["p_f"]])
                                    for p in parts]))
        out.append(w)
    return out


def from_onnx_weights(W, R, B=None, P=None, *, cell, dtype=None, **layer_kwargs):
    """A fastrnn layer from the ``W, R, B, P`` inputs of ONNX recurrent nodes.

    Parameters
    ----------
    W, R, B, P : array, or list of arrays (one per stacked layer)
        ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` (optional:
        zeros), ``P (D, 3H)`` (LSTM peepholes ``[p_i, p_o, p_f]``, optional:
        a plain LSTM); ``D = 2`` for ``direction="bidirectional"``. Gate
        order LSTM ``i, o, f, c``, GRU ``z, r, h``.
    cell : str
        ``"lstm"`` (``"peephole_diagonal"`` with ``P``), ``"gru"``
        (``linear_before_reset=1``), ``"gru_reset_before"``
        (``linear_before_reset=0``, ONNX's default), ``"rnn_tanh"``,
        ``"rnn_relu"``.
    """
    stacked = isinstance(W, (list, tuple))
    Ws = list(W) if stacked else [W]
    L = len(Ws)

    def per_layer(a, name):
        if a is None:
            return [None] * L
        a = list(a) if stacked else [a]
        if len(a) != L:
            raise ValueError(f"{name}: {len(a)} arrays for {L} layers")
        return a

    Rs, Bs, Ps = per_layer(R, "R"), per_layer(B, "B"), per_layer(P, "P")
    spec = get_cell(cell)
    if spec.family == "lstm" and any(p is not None for p in Ps) and spec.peephole is None:
        spec = CELLS["peephole_diagonal"]
    if spec.peephole == "full":
        raise ValueError("ONNX has no full-matrix peephole LSTM")
    if spec.peephole is not None and any(p is None for p in Ps):
        raise ValueError(f"cell {spec.name!r} needs P (the peepholes) for every layer")
    fam = spec.family
    order = CONVENTIONS["onnx"][fam]
    G = spec.gates
    states, dims = {}, []
    has_bias = Bs[0] is not None
    if any((b is not None) != has_bias for b in Bs):
        raise ValueError("B must be given for every layer or for none")
    for k in range(L):
        w = _as_float(f"W[{k}]", Ws[k], dtype)
        r = _as_float(f"R[{k}]", Rs[k], w.dtype)
        if w.ndim != 3 or r.ndim != 3:
            raise ValueError(f"layer {k}: W (D, G*H, I) and R (D, G*H, H) expected, got "
                             f"{w.shape} and {r.shape}")
        D, GH, H = r.shape
        if D not in (1, 2) or GH != G * H:
            raise ValueError(f"layer {k}: R must be (D, {G}*H, H) with D 1 or 2, got {r.shape}")
        if w.shape[:2] != (D, GH):
            raise ValueError(f"layer {k}: W must be ({D}, {GH}, I), got {w.shape}")
        b = None if Bs[k] is None else _as_float(f"B[{k}]", Bs[k], w.dtype)
        if b is not None:
            _check_shape(f"B[{k}]", b, (D, 2 * GH))
        p = None if Ps[k] is None else _as_float(f"P[{k}]", Ps[k], w.dtype)
        if p is not None:
            _check_shape(f"P[{k}]", p, (D, 3 * H))
        for d in range(D):
            peep = None if p is None else (p[d, :H], p[d, 2 * H:], p[d, H:2 * H])
            states.update(from_raw(w[d], r[d], None if b is None else b[d, :GH],
                                   None if b is None else b[d, GH:], cell=spec,
                                   gate_order=order, peephole=peep, suffix=_suffix(k, d),
                                   dtype=w.dtype))
        dims.append((w.shape[2], H, D))
    I, H, D = dims[0]
    for k, (i, h, d) in enumerate(dims[1:], 1):
        if (h, d) != (H, D) or i != D * H:
            raise ValueError(f"layer {k} (input {i}, hidden {h}, directions {d}) does not "
                             f"stack on layer 0 (input {D * H} expected)")
    dt = states["weight_ih_l0"].dtype
    return _build_layer(spec, I, H, L, D == 2, has_bias, dt, states, **layer_kwargs)


# ============================================================== PyTorch
# (the torch import and the layer / model twins: fastrnn.torch_models)
def from_torch(module, **layer_kwargs):
    """A fastrnn layer with the configuration and weights of a
    ``torch.nn.RNN``/``LSTM``/``GRU`` (``proj_size`` is not supported)."""
    torch = require_torch()
    kinds = {torch.nn.LSTM: "lstm", torch.nn.GRU: "gru"}
    name = kinds.get(type(module))
    if name is None and isinstance(module, torch.nn.RNN):
        name = "rnn_" + module.nonlinearity
    if name is None:
        raise TypeError(f"expected torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError("torch.nn.LSTM with proj_size has no fastrnn equivalent")
    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    dt = sd["weight_ih_l0"].dtype
    if dt not in (np.float32, np.float64):
        raise TypeError(f"the module's dtype must be float32 or float64, got {dt}")
    layer_kwargs.setdefault("batch_first", module.batch_first)
    layer_kwargs.setdefault("dropout", float(module.dropout))
    return _build_layer(CELLS[name], module.input_size, module.hidden_size, module.num_layers,
                        module.bidirectional, module.bias, dt, sd, **layer_kwargs)


def to_torch(obj):
    """An equivalent ``torch.nn.Module`` of a fastrnn layer or model.

    A layer gives ``torch.nn.RNN``/``LSTM``/``GRU`` (same configuration and
    weights). A model gives a module whose ``forward`` takes the inputs of
    the model's ``forward`` and returns its outputs (see
    :func:`fastrnn.torch_models.torch_model`); the cells without a ``torch.nn``
    equivalent (peephole LSTMs, ``GRU(reset_after=False)``) are refused.
    """
    if hasattr(obj, "cell") and hasattr(obj, "num_directions"):
        return torch_rnn(obj)
    return torch_model(obj)
