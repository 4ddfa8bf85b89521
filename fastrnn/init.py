"""Initial parameters of the recurrent layers: the ``init`` schemes and ``forget_bias``.

:func:`recurrent_params` draws every parameter of a layer stack from one
seeded generator, in PyTorch's parameter order (layer, direction, then
``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, then the peepholes),
so a seed gives the same weights on every run. The draw order is part of the
contract: ``tests/test_init.py`` pins values, and dropout masks later come
from the same generator.

Schemes, for a matrix of shape ``(fan_out, fan_in)``:

- ``None`` / ``"pytorch"``: every parameter (biases too) ``U(-k, k)``,
  ``k = 1/sqrt(H)``, as ``torch.nn.RNN/LSTM/GRU``;
- ``"xavier"``: Glorot uniform, ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``;
- ``"he"``: normal, ``std = sqrt(2 / fan_in)``;
- ``"orthogonal"``: ``weight_hh`` made of ``G`` orthogonal ``H x H`` blocks
  (one per gate), ``weight_ih`` Glorot uniform.

Every scheme but PyTorch's sets the biases to zero. The peephole weights are
always ``U(-k, k)``.
"""
from __future__ import annotations

import numpy as np

from .cells import PEEPHOLE_GATES

#: the values a layer's ``init`` accepts
INITS = (None, "pytorch", "xavier", "he", "orthogonal")


def check_init(value):
    """Return ``value`` when it names a scheme of :data:`INITS`, else raise ValueError."""
    if not isinstance(value, (str, type(None))) or value not in INITS:
        raise ValueError(f"init must be one of {INITS[1:]} or None, got {value!r}")
    return value


def _uniform_k(rng, name, shape, H, G):
    k = 1.0 / np.sqrt(H)
    return rng.uniform(-k, k, shape)


def _xavier(rng, name, shape, H, G):
    lim = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-lim, lim, shape)


def _he(rng, name, shape, H, G):
    return rng.normal(0.0, np.sqrt(2.0 / shape[1]), shape)


def _orthogonal(rng, name, shape, H, G):
    if name == "weight_ih":
        return _xavier(rng, name, shape, H, G)
    return np.concatenate([orthogonal_block(rng, H) for _ in range(G)])


#: scheme -> weight matrix initialiser ``f(rng, name, shape, H, G)``
_WEIGHTS = {None: _uniform_k, "pytorch": _uniform_k, "xavier": _xavier, "he": _he,
            "orthogonal": _orthogonal}


def orthogonal_block(rng, n):
    """An ``n x n`` orthogonal matrix, uniformly distributed (QR of a Gaussian
    matrix with the signs of ``R``'s diagonal folded into ``Q``)."""
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def recurrent_params(cell, input_size, hidden_size, num_layers, num_directions, bias,
                     rng, dtype, init=None, forget_bias=None):
    """The parameters of a recurrent layer stack, named as PyTorch names them.

    Parameters
    ----------
    cell : :class:`fastrnn.cells.CellSpec`
    input_size, hidden_size, num_layers, num_directions : int
        ``I``, ``H``, ``L``, ``D``; layers above the first read ``D*H`` features.
    bias : bool
        Whether to create ``bias_ih_l{k}`` / ``bias_hh_l{k}``.
    rng : numpy.random.Generator
        Draws every value, in the order described in the module docstring.
    dtype : numpy float dtype
        The dtype of the returned arrays (values are drawn in float64).
    init : one of :data:`INITS` (already checked)
    forget_bias : float or None
        When given (and ``bias``), the forget-gate block ``[H, 2H)`` of
        ``bias_ih`` is set to it and that of ``bias_hh`` to 0.

    Returns
    -------
    dict of str to ndarray
        ``weight_ih_l{k}`` ``(G*H, I or D*H)``, ``weight_hh_l{k}`` ``(G*H, H)``,
        biases ``(G*H,)``, peepholes ``peephole_{i,f,o}_l{k}`` (``(H,)`` or
        ``(H, H)``), with ``_reverse`` for the second direction.
    """
    G, H = cell.gates, hidden_size
    weight = _WEIGHTS[init]
    params = {}
    for layer in range(num_layers):
        n_in = input_size if layer == 0 else H * num_directions
        for d in range(num_directions):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for name, shape in (("weight_ih", (G * H, n_in)), ("weight_hh", (G * H, H))):
                params[name + sfx] = weight(rng, name, shape, H, G).astype(dtype)
            if bias:
                for name in ("bias_ih", "bias_hh"):
                    val = (_uniform_k(rng, name, (G * H,), H, G) if weight is _uniform_k
                           else np.zeros((G * H,)))
                    params[name + sfx] = val.astype(dtype)
                if forget_bias is not None:
                    params["bias_ih" + sfx][H:2 * H] = forget_bias
                    params["bias_hh" + sfx][H:2 * H] = 0
            shape = cell.peephole_shape(H)
            if shape is not None:
                for gate in PEEPHOLE_GATES:
                    params[f"peephole_{gate}{sfx}"] = _uniform_k(rng, None, shape, H, G).astype(dtype)
    return params
