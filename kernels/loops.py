"""The time-loop skeletons of the BLAS-per-step CPU loops, and their per-cell
compilation (:data:`LOOPS`).

Two skeletons, each a forward and a backward loop, written once:

- one recurrent product per step (RNN, LSTM, GRU, diagonal peephole):
  ``a = h Uᵀ + bias`` for all rows, then each active row's cell function;
- two dependent products per step (GRU reset-before: ``U_n (r ⊙ h)``; full
  peephole: ``P_o c'``): a first row function forms the second product's
  input ``q``, the product runs over all rows, a second row function ends
  the step.

The cell-specific work is done by row functions (:mod:`fastrnn.kernels.rows`),
one call per active (step, batch row), that the skeletons call by role (FWD,
FWD2, BWD, BWD2, CARRY, PRE, POST); :func:`compile_loop` compiles a skeleton
for one cell with those names bound to the cell's functions, so each cell gets
its own machine code with its row functions inlined.

Every kernel reads the schedule the same way: at step s, batch entry b is
active while s < lengths[b] and reads time t = s (forward) or
t = lengths[b]-1-s (reverse). Inactive entries keep their state; the
recurrent GEMM still runs over all B rows (rows are independent, so a stale
row cannot leak into an active one), and their results are unused. Saved
arrays are indexed by time t, zero at padded steps, so the weight gradients
after the loop are plain GEMMs over all T*B rows.

Every kernel works on the batch rows [b0, b1) only: rows never interact in
the recurrence, so forward and backward can run as independent time loops on
two halves of the batch, one per core, without any per-step synchronisation
(see ``loops_driver.run_rows``).

Shared shapes: xg [T,B,G*H] = x W_ihᵀ; state (h,) or (h, c), [B,H] each,
updated in place; y [T,B,H]; saved: the cell's arrays for backward,
[T,B,.] in training (index ts = t); in inference one step's scratch
[1,B,.] (ts = 0) that the rows write only where a later phase reads it;
cellw: the cell's extra weights and workspaces; backward's carry: (dh,)
plus the cell's other carried gradients, [B,H] each, in place; grads,
dbias: the gate-gradient arrays [T,B,G*H] (zero where padded) and their
float64 column sums.
"""
from __future__ import annotations

import types as _pytypes

import numpy as np
from numba import njit

from fastrnn.cells import CELLS
from fastrnn.kernels import rows as _rows
from fastrnn.kernels.blas import mm
from fastrnn.kernels.cpu_settings import JIT_OPTIONS
from fastrnn.kernels.rows import LAYOUTS, fill_rows

__all__ = ["LOOPS", "compile_loop"]

# the roles, bound per cell in each compiled copy of a skeleton (see compile_loop)
FWD = FWD2 = BWD = BWD2 = CARRY = PRE = POST = None


@njit(inline="always")
def _time(L, s, reverse):
    """The time step row b works on at loop step s (-1: padded, skip)."""
    if s >= L:
        return -1
    return L - 1 - s if reverse else s


def fwd1(xg, state, w_hhT, bias, cellw, lengths, reverse, training, y, saved, b0, b1):
    h = state[0]
    T, B, G = xg.shape
    a = np.empty((B, G), xg.dtype)                  # a: [B,G*H] = h Uᵀ + bias
    for s in range(T):
        fill_rows(a[b0:b1], bias)
        mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                FWD(xg[t, b], a[b], a[b], state, cellw, saved, y[t, b],
                    t if training else 0, b, training)


def fwd2(xg, state, w_hhT, bias, w2T, bias2, cellw, lengths, reverse, training, y, saved,
         b0, b1):
    h = state[0]
    T, B, _ = xg.shape
    a = np.empty((B, w_hhT.shape[1]), xg.dtype)     # a: first product + bias
    q = np.zeros((B, w2T.shape[0]), xg.dtype)       # q: the second product's input
    a2 = np.empty((B, w2T.shape[1]), xg.dtype)      # a2: = q w2ᵀ + bias2
    for s in range(T):
        fill_rows(a[b0:b1], bias)
        mm(h[b0:b1], w_hhT, a[b0:b1], False, 1.0)
        PRE(state, cellw, b0, b1)
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                FWD(xg[t, b], a[b], q[b], state, cellw, saved, y[t, b],
                    t if training else 0, b, training)
        fill_rows(a2[b0:b1], bias2)
        mm(q[b0:b1], w2T, a2[b0:b1], False, 1.0)
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                FWD2(xg[t, b], a[b], a2[b], q[b], state, cellw, saved, y[t, b],
                     t if training else 0, b, training)


def bwd1(saved, w_hh, cellw, lengths, reverse, dy, carry, grads, dbias, b0, b1):
    T, B, H = dy.shape
    g = np.zeros((B, w_hh.shape[0]), dy.dtype)      # g: [B,G*H] this step's gate grads
    u = np.empty((B, H), dy.dtype)                  # u: [B,H] = g U
    for s in range(T - 1, -1, -1):
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                BWD(saved, cellw, dy[t, b], g[b], g[b], carry, grads, dbias, t, b)
        mm(g[b0:b1], w_hh, u[b0:b1], False, 0.0)
        CARRY(u, carry, lengths, s, b0, b1)


def bwd2(saved, w_hh, w2, lo2, cellw, lengths, reverse, dy, carry, grads, dbias, b0, b1):
    # the second product's gradient: q2 = g[:, lo2:lo2+H] w2, before the first
    # product's (g[:, :w_hh.shape[0]] U)
    T, B, H = dy.shape
    G = grads[0].shape[2]
    g = np.zeros((B, G), dy.dtype)
    q2 = np.empty((B, w2.shape[1]), dy.dtype)
    u = np.empty((B, H), dy.dtype)
    n1 = w_hh.shape[0]
    for s in range(T - 1, -1, -1):
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                BWD(saved, cellw, dy[t, b], g[b], g[b], carry, grads, dbias, t, b)
        mm(g[b0:b1, lo2:lo2 + w2.shape[0]], w2, q2[b0:b1], False, 0.0)
        for b in range(b0, b1):
            t = _time(lengths[b], s, reverse)
            if t >= 0:
                BWD2(saved, cellw, dy[t, b], q2[b], g[b], carry, grads, dbias, t, b)
        POST(g, cellw, carry, lengths, s, b0, b1)
        mm(g[b0:b1, :n1], w_hh, u[b0:b1], False, 0.0)
        CARRY(u, carry, lengths, s, b0, b1)


def compile_loop(skeleton, cell):
    """``skeleton`` compiled for ``cell`` (a registry name): a copy of the
    function whose role names (FWD, BWD, ...) are globals bound to the cell's
    row functions, under its own name, so Numba's on-disk cache keeps one file
    per cell. (A closure over the row functions would recompile in every new
    process: numba issue 6264; dispatching on the cell name through @overload
    cost ~1.4 s more compile per cell.)

    The copy's code object names rows.py as its file: Numba files a cache entry
    under the function's source file, stamped with that file's contents, and
    keys it by the function's own bytecode, so a change to a row function
    (rows.py) or to a skeleton (its bytecode) each invalidate the cached loops.
    (A change to the cell equations of pointwise.py does not: clear the cache.)"""
    code = skeleton.__code__.replace(co_filename=_rows.__file__)
    fn = _pytypes.FunctionType(code, {**skeleton.__globals__, **LAYOUTS[cell].rows},
                               f"{skeleton.__name__}_{cell}")
    fn.__qualname__ = fn.__name__
    return njit(**JIT_OPTIONS)(fn)


#: cell -> (forward loop, backward loop): the one- or two-product skeleton
#: (the registry's ``products``) compiled for the cell, on first use
LOOPS = {name: ((compile_loop(fwd1, name), compile_loop(bwd1, name))
                if CELLS[name].products == 1
                else (compile_loop(fwd2, name), compile_loop(bwd2, name)))
         for name in LAYOUTS}
