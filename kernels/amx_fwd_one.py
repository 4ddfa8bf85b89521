"""The bf16 LSTM forward on the AMX route in one compiled call, where it runs on
one thread with every row active at every step (the small shapes).

:func:`lstm_forward` is :func:`fastrnn.kernels.packed_bf16.lstm_forward` with
``amx=True`` (same arguments, the same kernels on the same operands: the same
numbers, bit for bit). Where the forward's time loop runs on one thread (fewer
than ``2 * AMX_ROWS`` rows and packed weights that split rows, not panels: see
:class:`fastrnn.kernels.plan.Plan`), no sequence is shorter than ``T`` and the
direction is forward, everything around the time loop runs inside one compiled
call (:func:`_forward`): packing the weights (inference), the operand rows'
buffer and its zero padding, ``h0``'s bits, the states, ``x``'s rounding, the
time loop's chunks and the outputs. Elsewhere it hands the call to
``packed_bf16.lstm_forward``.

Why: at the small shapes the loop takes about a tenth of a millisecond, and the
Python around it (some sixty NumPy calls and small objects) costs as much on a
warm call and more on a call that finds the interpreter's code and data out of
the caches (after a pause or another library's work: the usual case in a
training loop or a server), which no compiled work pays.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastrnn.kernels.amx_fwd import lstm_fwd_tiles_kernel
from fastrnn.kernels.bf16_simd import NATIVE
from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.amx_pack import pack_tiles, x_bits
from fastrnn.kernels.packed_bf16 import (AMX_ROWS, PACK_SPLIT, BF16Cache, _bits,
                                         lstm_forward as _lstm_forward_general, pack_bf16)
from fastrnn.kernels.plan import Plan, nthreads, row_split_bytes
from fastrnn.kernels.schedule import Schedule, infer_chunk

__all__ = ["lstm_forward", "one_call"]


@njit(inline="always")
def _aligned(nbytes):
    """``nbytes`` uint8 starting on a 64-byte boundary (:func:`packed_bf16.aligned`)."""
    raw = np.empty(nbytes + 64, np.uint8)
    a = (-raw.ctypes.data) % 64
    return raw[a:a + nbytes]


@njit(inline="always")
def _loop(xh, ld, Ip, Kh, Hp, B, n, C, bias, up, pp, cs, ring, training, act, ys, x):
    # packed_bf16.lstm_forward's chunk loop, one thread
    P = Hp // 16
    nact = np.full(n, B, np.int64)
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        if s0:
            xh[0, :, Ip:] = xh[C, :, Ip:]                     # h after the last chunk
        x_bits(x, s0, xh, Ip, 0, s1 - s0)
        ctl = np.zeros(P + 1, np.int64)
        lstm_fwd_tiles_kernel(xh, ld, Ip, s1 - s0, Ip // 32, Kh // 32, Hp, bias, up, pp, cs,
                              ring, nact[s0:s1], training, act, ys[s0:s1], ctl, 0, 1, 0, B)


@njit(cache=True, nogil=True)
def _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, up, pack, training, C):
    """(y, h_n, c_n, xh, act, cs) of packed_bf16.lstm_forward (amx, one thread, no
    padded step, forward); ``up``: the packed weights (``pack_bf16(tiles=True)``),
    packed here instead when ``pack``; ``C``: steps per chunk (``n`` in training)."""
    n, B, I = x.shape
    H = w_hh.shape[1]
    Hp = (H + 15) // 16 * 16
    P = Hp // 16
    Ip = (I + 31) // 32 * 32
    Kh = (Hp + 31) // 32 * 32
    ld = Ip + Kh
    if pack:          # every word written
        up = _aligned(P * ld * 128).view(np.uint32).reshape(P, ld // 32, 4, 16, 16)
        pack_tiles(w_ih, w_hh, H, Ip // 32, up, 0, P)
    bias = np.zeros(4 * Hp, np.float32)                   # panel order: [P][4 gates][16]
    for g in range(4):
        for j in range(H):
            bias[j // 16 * 64 + g * 16 + j % 16] = b_ih[g * H + j] + b_hh[g * H + j]
    # the operand rows as packed_bf16.lstm_forward lays them out and zeroes them
    Bx = (B + AMX_ROWS - 1) // AMX_ROWS * AMX_ROWS
    nx = (C + 1) * Bx * ld
    xbuf = _aligned(2 * (nx + 32 * ld)).view(np.uint16)
    xh = xbuf[:nx].reshape(C + 1, Bx, ld)
    xbuf[nx:] = 0
    xh[:, B:] = 0
    xh[:, :B, Ip + Hp:] = 0
    xh[C, :B, :Ip] = 0
    h0u = h0.view(np.uint32)
    for b in range(B):
        for j in range(H):
            xh[0, b, Ip + j] = _bits(h0u[b, j])
        xh[0, b, Ip + H:Ip + Hp] = 0
    if training:        # aligned: the loop may store the gates non-temporal
        act = _aligned(n * B * 16 * Hp).view(np.float32).reshape(n, B, 4 * Hp)
    else:
        act = np.empty((1, 1, 1), np.float32)
    ring = n + 1 if training else 2
    cs = np.empty((ring, B, Hp), np.float32)
    cs[0, :, :H] = c0
    cs[0, :, H:] = 0
    ys = np.empty((n, B, Hp), np.float32)
    if peep is None:
        _loop(xh, ld, Ip, Kh, Hp, B, n, C, bias, up, None, cs, ring, training, act, ys, x)
    else:
        pp = np.zeros((P, 3, 16), np.float32)             # [P][p_i, p_f, p_o][16]
        for k in range(3):
            for j in range(H):
                pp[j // 16, k, j % 16] = peep[k, j]
        _loop(xh, ld, Ip, Kh, Hp, B, n, C, bias, up, pp, cs, ring, training, act, ys, x)
    h_n = ys[n - 1, :, :H].copy()
    c_n = cs[n % ring, :, :H].copy()
    y = ys if Hp == H else ys[:, :, :H].copy()
    return y, h_n, c_n, xh, act, cs


def one_call(B, I, H, T, lens, reverse):
    """Whether :func:`lstm_forward` runs the call in one compiled call (see the
    module doc): the forward's loop on one thread, no padded step."""
    if reverse or B >= 2 * AMX_ROWS or B < 1 or T < 1:
        return False
    Hp = -(-H // 16) * 16
    wbytes = Hp // 16 * (-(-I // 32) * 32 + -(-Hp // 32) * 32) * 128     # pack_bf16's up
    if wbytes > row_split_bytes():      # Plan could share the steps' panels: threads
        return False
    if B < 2 and 8.0 * H * (H + I) >= settings.two_thread_step_flops:
        return False                    # one row: Plan could share the panels too
    return lens is None or min(lens.tolist()) >= T        # B < 32: cheaper than lens.min()


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, reverse, training, max_threads,
                 peep=None):
    """:func:`fastrnn.kernels.packed_bf16.lstm_forward` with ``amx=True`` (the caller
    checked that the tiles may be used; every array argument float32 and
    C-contiguous, as :func:`fastrnn.kernels.cpu.forward` passes them); ``lens`` None:
    every sequence is ``T`` long."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    if not one_call(B, I, H, T, lens, reverse):
        if lens is None:
            lens = np.full(B, T, np.int64)
        return _lstm_forward_general(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, reverse,
                                     training, max_threads, peep, True, True)
    pthreads = 1
    if training or w_ih.size + w_hh.size >= PACK_SPLIT:
        pthreads = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    pk = None
    if training or pthreads > 1:    # the backward's panels, or packing on several threads
        pk = pack_bf16(w_ih, w_hh, b_ih, b_hh, training, peep, 32, pthreads, tiles=True)
        up = pk.up.view(np.uint32).reshape(pk.Hp // 16, (pk.Ip + pk.Kh) // 32, 4, 16, 16)
    else:
        up = _NO_PANELS
    C = T if training else max(1, min(T, infer_chunk(B)))
    C += C % 2 if not training else 0
    y, h_n, c_n, xh, act, cs = _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, up, pk is None,
                                        training, C)
    if not training:
        return y, h_n, c_n, None
    if lens is None:
        lens = np.full(B, T, np.int64)
    cache = BF16Cache()
    cache.sched, cache.pk, cache.act, cache.cs = Schedule(lens, T, False), pk, act, cs
    cache.xh = xh[:, :B]
    cache.flops = 8.0 * B * H * H
    # the backward's loop on one thread too (packed_bf16.lstm_forward's reason)
    cache.plan = Plan(1, B, 0, 0, 1, 0, None)
    cache.tag, cache.amx = NATIVE, True
    return y, h_n, c_n, cache


_NO_PANELS = np.zeros((0, 0, 4, 16, 16), np.uint32)
