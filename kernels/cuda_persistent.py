"""The CUDA backend's persistent kernels: the whole time loop of one layer in
one cooperative kernel (see :mod:`fastrnn.kernels.cuda` for the strategy), their
launch planning and their drivers.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .cuda_base import SIMULATOR, _dummy, _work, cuda, numba, settings
from .cuda_gemm import _transpose
from .cuda_points import TWO_PHASE_CELLS, _BWD, _FWD, _grub_bwd_n, _grub_bwd_r, \
    _grub_fwd_gates, _grub_fwd_step, _peep_full_bwd_cell, _peep_full_bwd_out, \
    _peep_full_fwd_cell, _peep_full_fwd_out, _time

if cuda is not None:
    @cuda.jit(device=True)
    def _lane_sum(v, lanes):
        """The sum of ``v`` over each aligned group of ``lanes`` threads (a power
        of two <= 32), valid in the group's first lane. Every thread of the
        warp must call it (full-mask shuffles): callers keep their loops
        uniform across the block."""
        off = lanes // 2
        while off > 0:
            v += cuda.shfl_down_sync(0xFFFFFFFF, v, off)
            off //= 2
        return v


# --------------------------------------------------------------------------- persistent
class _DoesNotFit(Exception):
    """The persistent grid cannot be co-resident on this device."""


# In every persistent kernel a recurrent product (one output) is shared by an
# aligned group of ``lanes`` threads: lane l adds k = l, l + lanes, ... (for
# consecutive lanes, consecutive addresses of a weight row: coalesced, and in
# shared memory conflict-free), then _lane_sum adds the lanes' partial sums.
# The loops over outputs step through ``range(0, n, groups)`` so that every
# thread of the block makes the same number of shuffles.


@lru_cache(maxsize=None)
def _persistent_fwd_kernel(point, G, np_dtype):
    """The whole forward time loop of a single-product cell in one cooperative kernel."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def kernel(T, reverse, lengths, xw, w_hh, b_hh, hbuf, cbuf, y, acts, training, hs, cs,
               peep, hw, HB, use_shared, lanes):
        # xw [T,B,GH]; w_hh [GH,H]; b_hh [GH]; hbuf, cbuf [2,B,H] double buffers
        # (the state after step s is in [(s+1)%2]); y [T,B,H]; acts, hs, cs as in
        # the per-step path; hw [B,GH] work (each block only touches its own
        # units' columns)
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [R, H]: wsh[r*H + k] = w_hh[g*H + j0 + jj, k]
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        R = G * HB                       # rows of w_hh owned: r = g*HB + jj
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % lanes
        grp = tid // lanes
        ngrp = nt // lanes
        if use_shared:
            for e in range(tid, R * H, nt):
                r = e // H
                k = e - r * H
                g = r // HB
                j = j0 + r - g * HB
                if j < H:
                    wsh[e] = w_hh[g * H + j, k]
                else:
                    wsh[e] = zero
            cuda.syncthreads()
        for s in range(T):
            cur = s % 2
            h_in = hbuf[cur]
            h_out = hbuf[1 - cur]
            c_in = cbuf[cur]
            c_out = cbuf[1 - cur]
            # recurrent products of the owned rows, for every batch entry
            for base in range(0, B * R, ngrp):
                item = base + grp
                b = item // R
                r = item - b * R
                g = r // HB
                j = j0 + r - g * HB
                row = g * H + j
                acc = zero
                if b < B and j < H:
                    if use_shared:
                        for k in range(lane, H, lanes):
                            acc += wsh[r * H + k] * h_in[b, k]
                    else:
                        for k in range(lane, H, lanes):
                            acc += w_hh[row, k] * h_in[b, k]
                acc = _lane_sum(acc, lanes)
                if lane == 0 and b < B and j < H:
                    hw[b, row] = acc + b_hh[row]
            cuda.syncthreads()
            slot = s if training else 0
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    point(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y, acts, slot, hs,
                          cs, peep, hw)
            # every block must have written h_out before anyone reads it as h_in
            grid.sync()

    return kernel


@lru_cache(maxsize=None)
def _persistent_bwd_kernel(point, G, np_dtype):
    """The whole backward time loop of a single-product cell in one cooperative kernel."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def kernel(T, reverse, lengths, dy, w_t, dh, dc, acts, hs, cs, dax, dah, peep, aux, HB,
               use_shared, lanes):
        # w_t [H,GH] = w_hhᵀ; dh, dc [B,H]; dah [T,B,GH] is what crosses blocks,
        # read after the barrier
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [HB, GH]: wsh[jj*GH + k] = w_hh[k, j0 + jj]
        B = dh.shape[0]
        H = dh.shape[1]
        GH = G * H
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % lanes
        grp = tid // lanes
        ngrp = nt // lanes
        if use_shared:
            for e in range(tid, HB * GH, nt):
                jj = e // GH
                k = e - jj * GH
                if j0 + jj < H:
                    wsh[e] = w_t[j0 + jj, k]
                else:
                    wsh[e] = zero
            cuda.syncthreads()
        for s in range(T - 1, -1, -1):
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    point(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep, aux)
            grid.sync()
            # dh[b, j] += sum_k dah[s, b, k] w_hh[k, j] for the owned units
            for base in range(0, B * HB, ngrp):
                item = base + grp
                b = item // HB
                jj = item - b * HB
                j = j0 + jj
                acc = zero
                if b < B and j < H:
                    if use_shared:
                        for k in range(lane, GH, lanes):
                            acc += dah[s, b, k] * wsh[jj * GH + k]
                    else:
                        for k in range(lane, GH, lanes):
                            acc += dah[s, b, k] * w_t[j, k]
                acc = _lane_sum(acc, lanes)
                if lane == 0 and b < B and j < H:
                    dh[b, j] += acc
            # the next step's points read dh[b, j] from other threads of this block
            cuda.syncthreads()

    return kernel


if cuda is not None:
    @cuda.jit(device=True)
    def _own_rows(src, w, bias, use_bias, out, g_lo, g_hi, HB, j0, tid, nt, lanes):
        """out[b, g*H + j] = src[b, :] · w[g*H + j, :] (+ bias) for the block's
        units j and gates g in [g_lo, g_hi). src [B,H]; w [>=g_hi*H, H]."""
        B = src.shape[0]
        H = src.shape[1]
        R = (g_hi - g_lo) * HB
        lane = tid % lanes
        grp = tid // lanes
        for base in range(0, B * R, nt // lanes):
            item = base + grp
            b = item // R
            r = item - b * R
            g = g_lo + r // HB
            j = j0 + r % HB
            row = g * H + j
            acc = type(src[0, 0])(0)    # the arrays' type (a bare 0.0 would be float64)
            if b < B and j < H:
                for k in range(lane, H, lanes):
                    acc += src[b, k] * w[row, k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                if use_bias:
                    acc += bias[row]
                out[b, row] = acc

    @cuda.jit(device=True)
    def _own_cols(da, s, k0, K, wt, kw0, out, HB, j0, tid, nt, lanes):
        """out[b, j] += da[s, b, k0:k0+K] · wt[j, kw0:kw0+K] for the block's units
        j (wt: a transposed weight, so lanes read consecutive addresses);
        da [T,B,*]; out [B,H]. Ends with a block barrier: the points that
        follow read out[b, j] from other threads."""
        B = out.shape[0]
        H = out.shape[1]
        lane = tid % lanes
        grp = tid // lanes
        for base in range(0, B * HB, nt // lanes):
            item = base + grp
            b = item // HB
            j = j0 + item - b * HB
            acc = type(out[0, 0])(0)
            if b < B and j < H:
                for k in range(lane, K, lanes):
                    acc += da[s, b, k0 + k] * wt[j, kw0 + k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                out[b, j] += acc
        cuda.syncthreads()


@lru_cache(maxsize=None)
def _persistent_two_phase_fwd_kernel(name):
    """Forward time loop of the cells with a second product inside the step:
    ``gru_reset_before`` (``U_n (r ⊙ h)``) and ``peephole_full`` (``P_o c'``).
    Two grid barriers per step; weights are read from global memory (rows of
    the weights as stored: coalesced across a group's lanes), not cached in
    shared memory."""
    grub = name == "gru_reset_before"

    @cuda.jit
    def kernel(T, reverse, lengths, xw, w_hh, b_hh, hbuf, cbuf, y, acts, training, hs, cs,
               peep, hw, aux, p_if, p_o, HB, lanes):
        # w_hh [GH,H]; p_if [2H,H] = [P_i; P_f]; p_o [H,H] = P_o;
        # aux: [B,H] r ⊙ h (GRU) or [B,2H] (P_i c, P_f c) then P_o c' (peephole)
        grid = cuda.cg.this_grid()
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for s in range(T):
            cur = s % 2
            h_in = hbuf[cur]
            h_out = hbuf[1 - cur]
            c_in = cbuf[cur]
            c_out = cbuf[1 - cur]
            slot = s if training else 0
            if grub:
                _own_rows(h_in, w_hh, b_hh, True, hw, 0, 2, HB, j0, tid, nt, lanes)
            else:
                _own_rows(h_in, w_hh, b_hh, True, hw, 0, 4, HB, j0, tid, nt, lanes)
                _own_rows(c_in, p_if, b_hh, False, aux, 0, 2, HB, j0, tid, nt, lanes)
            cuda.syncthreads()
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_fwd_gates(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y,
                                        acts, slot, hs, cs, peep, aux)
                    else:
                        _peep_full_fwd_cell(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out,
                                            y, acts, slot, hs, cs, peep, aux)
            grid.sync()     # r ⊙ h, or c', of every unit is needed next
            if grub:
                _own_rows(aux, w_hh, b_hh, True, hw, 2, 3, HB, j0, tid, nt, lanes)
            else:
                _own_rows(c_out, p_o, b_hh, False, aux, 0, 1, HB, j0, tid, nt, lanes)
            cuda.syncthreads()
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_fwd_step(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out, y,
                                       acts, slot, hs, cs, peep, aux)
                    else:
                        _peep_full_fwd_out(b, j, s, t, H, xw, hw, h_in, h_out, c_in, c_out,
                                           y, acts, slot, hs, cs, peep, aux)
            grid.sync()

    return kernel


@lru_cache(maxsize=None)
def _persistent_two_phase_bwd_kernel(name):
    """Backward time loop of ``gru_reset_before`` / ``peephole_full``: two grid
    barriers per step, each followed by products over the block's columns."""
    grub = name == "gru_reset_before"

    @cuda.jit
    def kernel(T, reverse, lengths, dy, w_t, dh, dc, acts, hs, cs, dax, dah, peep, aux,
               pif_t, po_t, HB, lanes):
        # w_t [H,GH] = w_hhᵀ; pif_t [H,2H] = [P_i; P_f]ᵀ; po_t [H,H] = P_oᵀ; aux [B,H]
        grid = cuda.cg.this_grid()
        B = dh.shape[0]
        H = dh.shape[1]
        j0 = cuda.blockIdx.x * HB
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for s in range(T - 1, -1, -1):
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_bwd_n(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep,
                                    aux)
                    else:
                        _peep_full_bwd_out(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah,
                                           peep, aux)
            grid.sync()
            if grub:
                # aux = dL/d(r ⊙ h) = dan · U_n
                _own_cols(dah, s, 2 * H, H, w_t, 2 * H, aux, HB, j0, tid, nt, lanes)
            else:
                # aux += P_oᵀ dao
                _own_cols(dah, s, 3 * H, H, po_t, 0, aux, HB, j0, tid, nt, lanes)
            for item in range(tid, B * HB, nt):
                b = item // HB
                j = j0 + item - b * HB
                if j < H:
                    t = _time(s, b, lengths, reverse)
                    if grub:
                        _grub_bwd_r(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah, peep,
                                    aux)
                    else:
                        _peep_full_bwd_cell(b, j, s, t, H, dy, dh, dc, acts, hs, cs, dax, dah,
                                            peep, aux)
            grid.sync()
            if grub:
                _own_cols(dah, s, 0, 2 * H, w_t, 0, dh, HB, j0, tid, nt, lanes)
            else:
                _own_cols(dah, s, 0, 2 * H, pif_t, 0, dc, HB, j0, tid, nt, lanes)
                _own_cols(dah, s, 0, 4 * H, w_t, 0, dh, HB, j0, tid, nt, lanes)

    return kernel


def _persistent_lanes(threads):
    """``settings.persistent_lanes``, halved until it divides the block."""
    lanes = settings.persistent_lanes
    while lanes > 1 and threads % lanes:
        lanes //= 2
    if not SIMULATOR and threads % 32:
        raise ValueError(f"persistent_threads={threads} must be a multiple of 32 (whole "
                         "warps: the products use full-warp shuffles)")
    return lanes


def _persistent_plan(H, unit_bytes, nsm, limit, units=None, shared_bytes=None):
    """``(HB, use_shared)`` for a co-resident persistent grid, or None.

    ``unit_bytes``: bytes of weights one unit's slice holds in shared memory
    (0: the kernel keeps none); ``nsm``: multiprocessors; ``limit(shmem)``:
    how many blocks with ``shmem`` bytes of dynamic shared memory can be
    co-resident. ``HB`` starts at about one block per multiprocessor; with
    the weights in shared memory it is shrunk until the slice fits
    ``shared_bytes`` (more, smaller blocks), as long as that many blocks can
    be co-resident; otherwise the weights are read from global memory (L2).
    ``units`` fixes HB.
    """
    shared_bytes = settings.shared_bytes if shared_bytes is None else shared_bytes
    fit = shared_bytes // unit_bytes if unit_bytes else 0
    if units:
        use_shared = units <= fit
        return (units, use_shared) if -(-H // units) <= limit(units * unit_bytes
                                                             if use_shared else 0) else None
    per_sm = -(-H // nsm)
    plans = ([(min(per_sm, fit), True)] if fit else []) + [(per_sm, False)]
    for HB, use_shared in plans:
        for _ in range(3):
            most = limit(HB * unit_bytes if use_shared else 0)
            if 0 < -(-H // HB) <= most:
                return HB, use_shared
            if most <= 0:
                break
            HB = -(-H // most)              # fewer, fuller blocks
            if use_shared and HB > fit:     # the slice no longer fits: next plan
                break
    return None


def _launch_persistent(kernel, args_for, H, shared_per_unit, itemsize):
    """Launch ``kernel`` on a co-resident grid of blocks of ``HB`` units each
    (sized by :func:`_persistent_plan`; ``shared_per_unit`` weights per unit).
    ``args_for(HB, use_shared, lanes)`` builds the arguments. Returns
    ``(HB, use_shared)``."""
    threads = settings.persistent_threads
    lanes = _persistent_lanes(threads)
    unit_bytes = shared_per_unit * itemsize
    if SIMULATOR:
        HB = settings.persistent_units or H
        if HB < H:
            raise ValueError(
                "the CUDA simulator's grid sync only synchronises within one block: "
                f"persistent_units={HB} < H={H} would give wrong results")
        use_shared = 0 < unit_bytes and HB * unit_bytes <= settings.shared_bytes
        kernel[1, threads, 0, HB * unit_bytes if use_shared else 0](
            *args_for(HB, use_shared, lanes))
        return HB, use_shared
    nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
    # the compiled kernel depends on the arguments' types only, not on HB
    spec = kernel.specialize(*args_for(1, False, lanes))

    def limit(shmem):
        try:
            return next(iter(spec.overloads.values())).max_cooperative_grid_blocks(threads,
                                                                                  shmem)
        except Exception:   # pragma: no cover - older numba-cuda
            return nsm

    plan = _persistent_plan(H, unit_bytes, nsm, limit, settings.persistent_units)
    if plan is None:
        raise _DoesNotFit(f"no co-resident persistent grid for H={H} ({threads} threads per "
                          f"block, {settings.shared_bytes} B of shared memory)")
    HB, use_shared = plan
    spec[-(-H // HB), threads, 0, HB * unit_bytes if use_shared else 0](
        *args_for(HB, use_shared, lanes))
    return plan


def _persistent_forward(cell, T, rev, lens, xw, w, h, c, y, acts, hs, cs, peep, training):
    B, H = h.shape
    G = cell.gates
    dtype = np.dtype(h.dtype)
    hbuf = _work("hbuf", (2, B, H), dtype)
    hbuf[0].copy_to_device(h)
    if cell.has_cell:
        cbuf = _work("cbuf", (2, B, H), dtype)
        cbuf[0].copy_to_device(c)
    else:
        cbuf = _dummy((2, 1, 1), dtype)
    hw = _work("hw", (B, G * H), dtype)
    if cell.name in TWO_PHASE_CELLS:
        kernel = _persistent_two_phase_fwd_kernel(cell.name)
        if cell.name == "peephole_full":
            aux = _work("aux2", (B, 2 * H), dtype)
            p_if, p_o = peep[:2].reshape(2 * H, H), peep[2]
        else:
            aux = _work("aux", (B, H), dtype)
            p_if = p_o = _dummy((1, 1), dtype)

        def args_for2(HB, use_shared, lanes):
            return (T, rev, lens, xw, w.w_hh, w.b_hh, hbuf, cbuf, y, acts, training, hs, cs,
                    peep, hw, aux, p_if, p_o, HB, lanes)

        _launch_persistent(kernel, args_for2, H, 0, dtype.itemsize)
    else:
        kernel = _persistent_fwd_kernel(_FWD[cell.name], G, dtype.type)

        def args_for(HB, use_shared, lanes):
            return (T, rev, lens, xw, w.w_hh, w.b_hh, hbuf, cbuf, y, acts, training, hs, cs,
                    peep, hw, HB, use_shared, lanes)

        _launch_persistent(kernel, args_for, H, G * H, dtype.itemsize)
    h.copy_to_device(hbuf[T % 2])
    if cell.has_cell:
        c.copy_to_device(cbuf[T % 2])


def _persistent_backward(cell, cache, dy, dh, dc, dax, dah, peep):
    T, B, I, H = cache.shape
    G = cell.gates
    dtype = np.dtype(dh.dtype)
    cs = cache.cs if cache.cs is not None else _dummy((1, 1, 1), dtype)
    w_t = _transpose(cache.weights.w_hh, "w_t")            # [H, GH]
    if cell.name in TWO_PHASE_CELLS:
        kernel = _persistent_two_phase_bwd_kernel(cell.name)
        aux = _work("aux", (B, H), dtype)
        if cell.name == "peephole_full":
            pif_t = _transpose(peep[:2].reshape(2 * H, H), "pif_t")
            po_t = _transpose(peep[2], "po_t")
        else:
            pif_t = po_t = _dummy((1, 1), dtype)

        def args_for2(HB, use_shared, lanes):
            return (T, cache.reverse, cache.lengths, dy, w_t, dh, dc, cache.acts, cache.hs,
                    cs, dax, dah, peep, aux, pif_t, po_t, HB, lanes)

        _launch_persistent(kernel, args_for2, H, 0, dtype.itemsize)
        return
    kernel = _persistent_bwd_kernel(_BWD[cell.name], G, dtype.type)
    aux = _dummy((1, 1), dtype)

    def args_for(HB, use_shared, lanes):
        return (T, cache.reverse, cache.lengths, dy, w_t, dh, dc, cache.acts, cache.hs, cs,
                dax, dah, peep, aux, HB, use_shared, lanes)

    _launch_persistent(kernel, args_for, H, G * H, dtype.itemsize)
