"""The NumPy reference: the oracle every compiled kernel is tested against.

Plain, vectorised-over-the-batch NumPy, written for clarity rather than speed.
It implements the backend contract of :mod:`fastrnn.contract` (one layer, one
direction, a whole sequence) and imports nothing from ``fastrnn.kernels``.

Cells (σ = logistic sigmoid, ⊙ = elementwise, rows are batch entries so
``W x`` is written ``x @ W.T``):

- RNN:   h' = act(W x + b_ih + U h + b_hh),  act ∈ {tanh, relu}
- LSTM:  i,f,g,o = σ,σ,tanh,σ(W x + b_ih + U h + b_hh);
         c' = f ⊙ c + i ⊙ g;  h' = o ⊙ tanh(c')
- GRU (reset_after=True):  r = σ(W_r x + b_ir + U_r h + b_hr),
         z = σ(W_z x + b_iz + U_z h + b_hz),
         n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn)),  h' = (1-z) ⊙ n + z ⊙ h
- GRU (reset_after=False): n = tanh(W_n x + b_in + U_n (r ⊙ h) + b_hn)
- Peephole LSTM: as LSTM, with i += P_i(c), f += P_f(c), o += P_o(c') before
         the sigmoids; P(c) = p ⊙ c ("diagonal") or P c ("full").

Variable lengths: at step ``s`` the batch entry ``b`` reads time index
``t = s`` (forward) or ``t = lengths[b]-1-s`` (reverse) while ``s < lengths[b]``;
later steps leave its state untouched and write zeros to ``y``.

bfloat16 compute mode (``compute_dtype="bfloat16"``, float32 only; see
:mod:`fastrnn.bf16`): the operands of every matrix product are rounded with
:func:`fastrnn.bf16.round_bf16` and the products summed in float32. Forward:
``W_ih``, ``W_hh``, ``x_t``, ``h_{t-1}`` as it enters ``U h`` (and ``r ⊙ h`` as
it enters ``U_n`` in the reset-before GRU). Backward: the gate gradients as
they enter ``· W_hh`` and ``· W_ih``, and both operands of the weight-gradient
sums. Biases, peephole weights and their products, the states, the gate math,
the bias and peephole gradients and everything saved for backward stay
float32, unrounded. The code is the float32 code with a rounding function
``rd`` applied to each product's operands (the identity without the mode), so
both modes share every line.
"""
from __future__ import annotations

import numpy as np

from .bf16 import check_compute_dtype, round_bf16
from .contract import Weights, check_forward


def available():
    return True, ""


def sigmoid(a):
    """Numerically stable logistic function."""
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _schedule(T, B, lengths, reverse):
    """Time index read at each step and whether it is valid: two ``[T, B]`` arrays."""
    lens = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    s = np.arange(T)[:, None]
    valid = s < lens[None, :]
    t_idx = (lens[None, :] - 1 - s) if reverse else np.broadcast_to(s, (T, B))
    return np.where(valid, t_idx, 0), valid


def _split(a, n):
    return np.split(a, n, axis=-1)


def _same(a):
    """The operand rounding of the float32/float64 modes: none."""
    return a


def _rounding(compute_dtype):
    """The function applied to each matrix product's operands."""
    return _same if compute_dtype is None else round_bf16


def _operands(w, rd):
    """``w`` with the matrix products' weights rounded by ``rd`` (the biases and
    peephole weights are not product operands of the mode: they stay)."""
    return w if rd is _same else w._replace(w_ih=rd(w.w_ih), w_hh=rd(w.w_hh))


# --------------------------------------------------------------------------- steps
# Each step takes the input projection ``xw = x W^T + b_ih`` [B, G*H], the state,
# the weights (``w_hh`` already rounded by ``rd``) and the operand rounding
# ``rd``; it returns the new state and a record for backward (unrounded). Each
# backward step takes that record and dL/d(new state) and returns dL/dxw,
# dL/d(old state) and the recurrent weight gradients' pieces.

def _step(cell, xw, h, c, w, rd=_same):
    name = cell.name
    if name in ("rnn_tanh", "rnn_relu"):
        a = xw + rd(h) @ w.w_hh.T + w.b_hh
        h2 = np.tanh(a) if name == "rnn_tanh" else np.maximum(a, 0)
        return h2, None, (h, h2)
    if name == "lstm":
        a = xw + rd(h) @ w.w_hh.T + w.b_hh
        ai, af, ag, ao = _split(a, 4)
        i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)
        c2 = f * c + i * g
        tc = np.tanh(c2)
        return o * tc, c2, (h, c, i, f, g, o, tc)
    if name == "gru":
        hu = rd(h) @ w.w_hh.T + w.b_hh
        xr, xz, xn = _split(xw, 3)
        hr, hz, hn = _split(hu, 3)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None, (h, r, z, n, hn)
    if name == "gru_reset_before":
        H = h.shape[1]
        xr, xz, xn = _split(xw, 3)
        u_rz, u_n = w.w_hh[: 2 * H], w.w_hh[2 * H:]
        hr, hz = _split(rd(h) @ u_rz.T + w.b_hh[: 2 * H], 2)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        rh = r * h
        n = np.tanh(xn + rd(rh) @ u_n.T + w.b_hh[2 * H:])
        return (1 - z) * n + z * h, None, (h, r, z, n, rh)
    if cell.peephole is not None:
        a = xw + rd(h) @ w.w_hh.T + w.b_hh
        ai, af, ag, ao = _split(a, 4)
        pi, pf, po = w.peep
        i = sigmoid(ai + _peep(cell, pi, c))
        f = sigmoid(af + _peep(cell, pf, c))
        g = np.tanh(ag)
        c2 = f * c + i * g
        o = sigmoid(ao + _peep(cell, po, c2))
        tc = np.tanh(c2)
        return o * tc, c2, (h, c, i, f, g, o, tc, c2)
    raise ValueError(f"unknown cell {name!r}")


def _peep(cell, p, c):
    """P(c): ``p ⊙ c`` (diagonal, p [H]) or ``P c`` (full, P [H, H])."""
    return p * c if cell.peephole == "diagonal" else c @ p.T


def _peep_back(cell, p, c, da):
    """Gradients of ``P(c)`` given dL/dP(c) = da: returns (dc, dp)."""
    if cell.peephole == "diagonal":
        return p * da, (da * c).sum(0)
    return da @ p, da.T @ c


def _step_back(cell, rec, dh, dc, w, rd=_same):
    """Returns (dxw [B, G*H], dh_prev, dc_prev, dU [G*H, H], db_hh [G*H], dpeep).

    ``w.w_hh`` is already rounded by ``rd``; the gate gradients are rounded as
    they enter the products, the bias sums take them unrounded."""
    name = cell.name
    if name in ("rnn_tanh", "rnn_relu"):
        h, h2 = rec
        da = dh * (1 - h2 * h2) if name == "rnn_tanh" else dh * (h2 > 0)
        rda = rd(da)
        return da, rda @ w.w_hh, None, rda.T @ rd(h), da.sum(0), None
    if name == "lstm":
        h, c, i, f, g, o, tc = rec
        dc = dc + dh * o * (1 - tc * tc)
        da = np.concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f),
                             dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
        rda = rd(da)
        return da, rda @ w.w_hh, dc * f, rda.T @ rd(h), da.sum(0), None
    if name == "gru":
        h, r, z, n, hn = rec
        dn = dh * (1 - z) * (1 - n * n)
        dr = dn * hn * r * (1 - r)
        dz = dh * (h - n) * z * (1 - z)
        dxw = np.concatenate([dr, dz, dn], axis=1)
        dhu = np.concatenate([dr, dz, dn * r], axis=1)
        rdhu = rd(dhu)
        return dxw, dh * z + rdhu @ w.w_hh, None, rdhu.T @ rd(h), dhu.sum(0), None
    if name == "gru_reset_before":
        h, r, z, n, rh = rec
        H = h.shape[1]
        u_rz, u_n = w.w_hh[: 2 * H], w.w_hh[2 * H:]
        dn = dh * (1 - z) * (1 - n * n)
        rdn = rd(dn)
        drh = rdn @ u_n
        dr = drh * h * r * (1 - r)
        dz = dh * (h - n) * z * (1 - z)
        drz = np.concatenate([dr, dz], axis=1)
        rdrz = rd(drz)
        dh_prev = dh * z + drh * r + rdrz @ u_rz
        dU = np.concatenate([rdrz.T @ rd(h), rdn.T @ rd(rh)], axis=0)
        dxw = np.concatenate([dr, dz, dn], axis=1)
        return dxw, dh_prev, None, dU, dxw.sum(0), None
    if cell.peephole is not None:
        h, c, i, f, g, o, tc, c2 = rec
        pi, pf, po = w.peep
        dao = dh * tc * o * (1 - o)
        dc_o, dpo = _peep_back(cell, po, c2, dao)
        dc = dc + dh * o * (1 - tc * tc) + dc_o
        dai = dc * g * i * (1 - i)
        daf = dc * c * f * (1 - f)
        dag = dc * i * (1 - g * g)
        dc_i, dpi = _peep_back(cell, pi, c, dai)
        dc_f, dpf = _peep_back(cell, pf, c, daf)
        da = np.concatenate([dai, daf, dag, dao], axis=1)
        dpeep = np.stack([dpi, dpf, dpo])
        rda = rd(da)
        return da, rda @ w.w_hh, dc * f + dc_i + dc_f, rda.T @ rd(h), da.sum(0), dpeep
    raise ValueError(f"unknown cell {name!r}")


# --------------------------------------------------------------------------- contract

class _Cache:
    """What backward needs: the schedule, the inputs, one record per step and
    the compute mode (None, or ``"bfloat16"``: backward rounds as forward did)."""

    def __init__(self, x, w, t_idx, valid, records, compute_dtype=None):
        self.x, self.w, self.t_idx, self.valid, self.records = x, w, t_idx, valid, records
        self.compute_dtype = compute_dtype


def _bf16_arrays(cell, x, h0, c0, weights):
    """The mode's arguments as float32 (the mode is for float32 layers)."""
    if np.dtype(x.dtype) != np.float32:
        raise ValueError(f"compute_dtype='bfloat16' needs float32 arrays (float32 "
                         f"parameters, bfloat16 products); x is {np.dtype(x.dtype)}")
    f32 = lambda a: None if a is None else np.asarray(a, dtype=np.float32)  # noqa: E731
    w = Weights(*(f32(a) for a in weights))
    return x, f32(h0), (f32(c0) if cell.has_cell else c0), w


def forward(cell, x, h0, c0, weights, lengths=None, reverse=False, training=True,
            compute_dtype=None):
    """Run one layer in one direction over ``x`` [T, B, I].

    ``compute_dtype="bfloat16"`` (float32 arrays only) rounds the operands of
    the matrix products to bfloat16 and sums their products in float32 (see
    the module's docstring); None computes in ``x``'s dtype.

    Returns ``(y [T, B, H], h_n [B, H], c_n [B, H] or None, cache)``.
    """
    compute_dtype = check_compute_dtype(compute_dtype)
    lengths = check_forward(cell, x, h0, c0, weights, lengths)
    if compute_dtype is not None:
        x, h0, c0, weights = _bf16_arrays(cell, x, h0, c0, weights)
    T, B, _ = x.shape
    rd = _rounding(compute_dtype)
    w = _operands(weights, rd)
    t_idx, valid = _schedule(T, B, lengths, reverse)
    cols = np.arange(B)
    xw = rd(x) @ w.w_ih.T + w.b_ih                  # [T, B, G*H], one GEMM
    h = h0.copy()
    c = c0.copy() if cell.has_cell else None
    y = np.zeros((T, B, h0.shape[1]), dtype=x.dtype)
    records = []
    for s in range(T):
        m = valid[s][:, None]
        h2, c2, rec = _step(cell, xw[t_idx[s], cols], h, c, w, rd)
        h = np.where(m, h2, h)
        if c is not None:
            c = np.where(m, c2, c)
        y[t_idx[s], cols] = np.where(m, h2, y[t_idx[s], cols])
        if training:
            records.append(rec)
    cache = _Cache(x, weights, t_idx, valid, records, compute_dtype) if training else None
    return y, h, c, cache


def backward(cell, cache, dy, dh_n, dc_n=None):
    """Back-propagate through the sequence of the matching :func:`forward`.

    Returns ``(dx [T, B, I], dh0 [B, H], dc0 or None, Weights of gradients)``.
    """
    x, t_idx, valid = cache.x, cache.t_idx, cache.valid
    rd = _rounding(getattr(cache, "compute_dtype", None))
    w = _operands(cache.w, rd)
    if rd is not _same:     # the mode's gradients are float32 (round_bf16 takes float32)
        dy = np.asarray(dy, dtype=np.float32)
    T, B, _ = x.shape
    cols = np.arange(B)
    dh = np.array(dh_n, dtype=x.dtype, copy=True)
    dc = None
    if cell.has_cell:
        dc = np.zeros_like(dh) if dc_n is None else np.array(dc_n, dtype=x.dtype, copy=True)
    dxw = np.zeros(x.shape[:2] + (w.w_ih.shape[0],), dtype=x.dtype)   # [T, B, G*H]
    dU = np.zeros_like(w.w_hh)
    db_hh = np.zeros_like(w.b_hh)
    dpeep = None if w.peep is None else np.zeros_like(w.peep)
    for s in range(T - 1, -1, -1):
        m = valid[s][:, None]
        # padded steps contribute nothing: their output gradient is dropped
        # and their state gradient passes through unchanged
        dh_in = dh + np.where(m, dy[t_idx[s], cols], 0)
        dh_in = np.where(m, dh_in, 0)
        dc_in = None if dc is None else np.where(m, dc, 0)
        da, dh_prev, dc_prev, dU_s, db_s, dp_s = _step_back(cell, cache.records[s], dh_in, dc_in,
                                                            w, rd)
        dxw[t_idx[s], cols] += np.where(m, da, 0)
        dU += dU_s
        db_hh += db_s
        if dpeep is not None:
            dpeep += dp_s
        dh = np.where(m, dh_prev, dh)
        if dc is not None:
            dc = np.where(m, dc_prev, dc)
    rdxw = rd(dxw)
    dx = rdxw @ w.w_ih                              # [T, B, I]
    dW = np.einsum("tbg,tbi->gi", rdxw, rd(x))
    grads = Weights(dW, dU, dxw.sum((0, 1)), db_hh, dpeep)
    return dx, dh, dc, grads
