"""The CUDA backend's persistent kernels: the whole time loop of one layer in
one cooperative kernel (the ``"persistent"`` strategy of
:mod:`fastrnn.kernels.cuda`), their launch planning and their drivers.

One kernel factory per direction, over the cell's phases: one phase per
dependent recurrent product (``CellSpec.products``), each a product over the
block's units (:data:`_PRODUCTS`) and a point on each of them
(:data:`fastrnn.kernels.cuda_points.FORWARD_STEPS` / ``BACKWARD_STEPS``), with a grid barrier
between phases, since the next product reads every block's units. The
one-product cells keep their block's slice of ``W_hh`` in shared memory when
it fits; the second product of the two-product cells (``U_n (r ⊙ h)``,
``P_o c'``) reads its weights from global memory (rows as stored: coalesced
across a group's lanes).

In every persistent kernel a recurrent product (one output) is shared by an
aligned group of ``lanes`` threads: lane l adds k = l, l + lanes, ... (for
consecutive lanes, consecutive addresses of a weight row: coalesced, and in
shared memory conflict-free), then :func:`_lane_sum` adds the lanes' partial
sums. The loops over outputs step through ``range(0, n, groups)`` so that
every thread of the block makes the same number of shuffles. A block's
``units = (HB, j0, tid, nt, lanes)``: it owns the hidden units
``[j0, j0 + HB)``; ``tid`` and ``nt`` are its thread index and count;
``wsh`` is its dynamic shared memory (read when ``use_shared``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .cuda_base import SIMULATOR, _dummy, _work, cuda, numba, settings
from .cuda_gemm import _transpose
from .cuda_points import BACKWARD_STEPS, FORWARD_STEPS, _second_product_operands, _time


class _DoesNotFit(Exception):
    """The persistent grid cannot be co-resident on this device."""


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

    @cuda.jit(device=True)
    def _cache_rows(wsh, w, G, units):
        """wsh[r*N + k] = w[g*H + j0 + jj, k] for the block's ``G*HB`` rows
        r = g*HB + jj (zero past unit H; w [G*H, N], as stored). Ends with a
        block barrier."""
        HB, j0, tid, nt, lanes = units
        N = w.shape[1]
        H = w.shape[0] // G
        for e in range(tid, G * HB * N, nt):
            r = e // N
            k = e - r * N
            g = r // HB
            j = j0 + r - g * HB
            if j < H:
                wsh[e] = w[g * H + j, k]
            else:
                wsh[e] = 0
        cuda.syncthreads()

    @cuda.jit(device=True)
    def _own_rows(src, w, bias, use_bias, out, g_lo, g_hi, units, wsh, use_shared):
        """out[b, g*H + j] = src[b, :] · w[g*H + j, :] (+ bias) for the block's
        units j and gates g in [g_lo, g_hi). src [B,H]; w [>=g_hi*H, H]; with
        ``use_shared`` the rows come from ``wsh`` as :func:`_cache_rows` put
        them (g_lo = 0)."""
        HB, j0, tid, nt, lanes = units
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
                if use_shared:
                    for k in range(lane, H, lanes):
                        acc += src[b, k] * wsh[r * H + k]
                else:
                    for k in range(lane, H, lanes):
                        acc += src[b, k] * w[row, k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                if use_bias:
                    acc += bias[row]
                out[b, row] = acc

    @cuda.jit(device=True)
    def _own_cols(da, s, k0, K, wt, kw0, out, units, wsh, use_shared):
        """out[b, j] += da[s, b, k0:k0+K] · wt[j, kw0:kw0+K] for the block's units
        j (wt: a transposed weight, so lanes read consecutive addresses; with
        ``use_shared`` its rows come from ``wsh`` as :func:`_cache_rows` put
        them); da [T,B,*]; out [B,H]. Ends with a block barrier: the points
        that follow read out[b, j] from other threads."""
        HB, j0, tid, nt, lanes = units
        B = out.shape[0]
        H = out.shape[1]
        N = wt.shape[1]
        lane = tid % lanes
        grp = tid // lanes
        for base in range(0, B * HB, nt // lanes):
            item = base + grp
            b = item // HB
            jj = item - b * HB
            j = j0 + jj
            acc = type(out[0, 0])(0)
            if b < B and j < H:
                if use_shared:
                    for k in range(lane, K, lanes):
                        acc += da[s, b, k0 + k] * wsh[jj * N + kw0 + k]
                else:
                    for k in range(lane, K, lanes):
                        acc += da[s, b, k0 + k] * wt[j, kw0 + k]
            acc = _lane_sum(acc, lanes)
            if lane == 0 and b < B and j < H:
                out[b, j] += acc
        cuda.syncthreads()

    # --------------------------------------------------------------- the products
    # forward ``rows(state, pre, mats, units, wsh, use_shared)`` before each
    # phase's point, mats = (w_hh, b_hh, [P_i; P_f], P_o); backward ``cols(s,
    # da, carry, mats_t, units, wsh, use_shared)`` after each phase's point,
    # mats_t = (w_hhᵀ, [P_i; P_f]ᵀ, P_oᵀ)
    @cuda.jit(device=True)
    def _all_gates_rows(state, pre, mats, units, wsh, use_shared):
        # hw = h W_hhᵀ + b_hh, the rows of W_hh cached in shared memory when they fit
        h_in = state[0]
        G = mats[0].shape[0] // h_in.shape[1]
        _own_rows(h_in, mats[0], mats[1], True, pre[1], 0, G, units, wsh, use_shared)

    @cuda.jit(device=True)
    def _all_gates_cols(s, da, carry, mats_t, units, wsh, use_shared):
        # dh += da W_hh, the columns of W_hh cached in shared memory when they fit
        w_t = mats_t[0]
        _own_cols(da[1], s, 0, w_t.shape[1], w_t, 0, carry[0], units, wsh, use_shared)

    @cuda.jit(device=True)
    def _gru_reset_before_rows_gates(state, pre, mats, units, wsh, use_shared):
        # hw[:, :2H] = h U_rzᵀ + b_rz
        _own_rows(state[0], mats[0], mats[1], True, pre[1], 0, 2, units, wsh, False)

    @cuda.jit(device=True)
    def _gru_reset_before_rows_candidate(state, pre, mats, units, wsh, use_shared):
        # hw[:, 2H:] = (r ⊙ h) U_nᵀ + b_n, r ⊙ h from every block (in aux)
        _own_rows(pre[2], mats[0], mats[1], True, pre[1], 2, 3, units, wsh, False)

    @cuda.jit(device=True)
    def _gru_reset_before_cols_candidate(s, da, carry, mats_t, units, wsh, use_shared):
        # aux = dL/d(r ⊙ h) = dan U_n
        H = carry[0].shape[1]
        _own_cols(da[1], s, 2 * H, H, mats_t[0], 2 * H, carry[2], units, wsh, False)

    @cuda.jit(device=True)
    def _gru_reset_before_cols_reset(s, da, carry, mats_t, units, wsh, use_shared):
        # dh += da_rz U_rz
        H = carry[0].shape[1]
        _own_cols(da[1], s, 0, 2 * H, mats_t[0], 0, carry[0], units, wsh, False)

    @cuda.jit(device=True)
    def _peephole_full_rows_cell(state, pre, mats, units, wsh, use_shared):
        # hw = h W_hhᵀ + b_hh; aux = (P_i c, P_f c)
        _own_rows(state[0], mats[0], mats[1], True, pre[1], 0, 4, units, wsh, False)
        _own_rows(state[2], mats[2], mats[1], False, pre[2], 0, 2, units, wsh, False)

    @cuda.jit(device=True)
    def _peephole_full_rows_out(state, pre, mats, units, wsh, use_shared):
        # aux[:, :H] = P_o c', c' from every block
        _own_rows(state[3], mats[3], mats[1], False, pre[2], 0, 1, units, wsh, False)

    @cuda.jit(device=True)
    def _peephole_full_cols_out(s, da, carry, mats_t, units, wsh, use_shared):
        # aux += P_oᵀ dao
        H = carry[0].shape[1]
        _own_cols(da[1], s, 3 * H, H, mats_t[2], 0, carry[2], units, wsh, False)

    @cuda.jit(device=True)
    def _peephole_full_cols_cell(s, da, carry, mats_t, units, wsh, use_shared):
        # dc += [P_i; P_f]ᵀ (dai, daf); dh += W_hhᵀ da
        H = carry[0].shape[1]
        _own_cols(da[1], s, 0, 2 * H, mats_t[1], 0, carry[1], units, wsh, False)
        _own_cols(da[1], s, 0, 4 * H, mats_t[0], 0, carry[0], units, wsh, False)

    #: registry name -> ((forward rows before each phase), (backward cols after
    #: each phase)) of the two-product cells; the others: _all_gates_rows/cols
    TWO_PRODUCTS = {
        "gru_reset_before": ((_gru_reset_before_rows_gates, _gru_reset_before_rows_candidate),
                             (_gru_reset_before_cols_candidate, _gru_reset_before_cols_reset)),
        "peephole_full": ((_peephole_full_rows_cell, _peephole_full_rows_out),
                          (_peephole_full_cols_out, _peephole_full_cols_cell)),
    }


def step_products(cell):
    """``(rows, cols)``: the cell's products per phase, forward and backward."""
    if cell.products == 1:
        return (_all_gates_rows,), (_all_gates_cols,)
    return TWO_PRODUCTS[cell.name]


@lru_cache(maxsize=None)
def _over_own_units(point):
    """A device function that applies ``point`` to each (b, j) of the block's
    units at step ``s``: ``run(s, reverse, lengths, B, H, units, *args)``
    calls ``point(b, j, s, t, *args)`` with the point's five arguments (see
    :mod:`fastrnn.kernels.cuda_points`)."""

    @cuda.jit(device=True)
    def run(s, reverse, lengths, B, H, units, a0, a1, a2, a3, a4):
        HB, j0, tid, nt, lanes = units
        for item in range(tid, B * HB, nt):
            b = item // HB
            j = j0 + item - b * HB
            if j < H:
                point(b, j, s, _time(s, b, lengths, reverse), a0, a1, a2, a3, a4)

    return run


# --------------------------------------------------------------------------- kernels
@lru_cache(maxsize=None)
def _persistent_fwd_kernel(phases, np_dtype):
    """The whole forward time loop in one cooperative kernel; ``phases``:
    ``((rows, point),)`` or ``((rows_1, point_1), (rows_2, point_2))``, each
    phase its products, a block barrier, its point on the block's units and a
    grid barrier (the next product, or step, reads every block's units)."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    two = len(phases) == 2      # a compile-time constant: the one-phase kernel has no second
    rows_1, rows_2 = phases[0][0], phases[-1][0]
    run_1, run_2 = _over_own_units(phases[0][1]), _over_own_units(phases[-1][1])

    @cuda.jit
    def kernel(T, reverse, lengths, training, pre, mats, peep, bufs, out, HB, use_shared, lanes):
        # pre = (xw [T,B,GH], hw [B,GH] work, aux): each block only touches its
        # own units' columns of hw; mats = (w_hh [GH,H], b_hh [GH], [P_i; P_f]
        # [2H,H], P_o [H,H]); bufs = (hbuf, cbuf) [2,B,H] double buffers (the
        # state after step s is in [(s+1)%2]); out = (y, acts, hs, cs) as in
        # the per-step path
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [G*HB, H]: the block's rows of w_hh
        hbuf, cbuf = bufs
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        units = (HB, cuda.blockIdx.x * HB, cuda.threadIdx.x, cuda.blockDim.x, lanes)
        if use_shared and not two:     # only one-product kernels cache
            _cache_rows(wsh, mats[0], mats[0].shape[0] // H, units)
        for s in range(T):
            cur = s % 2
            state = (hbuf[cur], hbuf[1 - cur], cbuf[cur], cbuf[1 - cur])
            slot = s if training else 0
            rows_1(state, pre, mats, units, wsh, use_shared)
            cuda.syncthreads()
            run_1(s, reverse, lengths, B, H, units, slot, pre, state, out, peep)
            grid.sync()
            if two:
                rows_2(state, pre, mats, units, wsh, use_shared)
                cuda.syncthreads()
                run_2(s, reverse, lengths, B, H, units, slot, pre, state, out, peep)
                grid.sync()

    return kernel


@lru_cache(maxsize=None)
def _persistent_bwd_kernel(phases, np_dtype):
    """The whole backward time loop in one cooperative kernel; ``phases``:
    ``((point, cols),)`` or two such pairs, each phase its point on the
    block's units, a grid barrier (the products read every block's gate
    gradients) and its products (each ending with a block barrier)."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    two = len(phases) == 2
    cols_1, cols_2 = phases[0][1], phases[-1][1]
    run_1, run_2 = _over_own_units(phases[0][0]), _over_own_units(phases[-1][0])

    @cuda.jit
    def kernel(T, reverse, lengths, dy, mats_t, carry, saved, da, peep, HB, use_shared, lanes):
        # mats_t = (w_hhᵀ [H,GH], [P_i; P_f]ᵀ [H,2H], P_oᵀ [H,H]); carry = (dh,
        # dc, aux) [B,H]; saved = (acts, hs, cs); da = (dax, dah): dah [T,B,GH]
        # is what crosses blocks, read after the barrier
        grid = cuda.cg.this_grid()
        wsh = cuda.shared.array(0, dt)   # [HB, GH]: the block's rows of w_hhᵀ
        B = carry[0].shape[0]
        H = carry[0].shape[1]
        units = (HB, cuda.blockIdx.x * HB, cuda.threadIdx.x, cuda.blockDim.x, lanes)
        if use_shared and not two:     # only one-product kernels cache
            _cache_rows(wsh, mats_t[0], 1, units)
        for s in range(T - 1, -1, -1):
            run_1(s, reverse, lengths, B, H, units, dy, carry, saved, da, peep)
            grid.sync()
            cols_1(s, da, carry, mats_t, units, wsh, use_shared)
            if two:
                run_2(s, reverse, lengths, B, H, units, dy, carry, saved, da, peep)
                grid.sync()
                cols_2(s, da, carry, mats_t, units, wsh, use_shared)

    return kernel


# --------------------------------------------------------------------------- launch
def _persistent_lanes(threads):
    """``settings.persistent_lanes``, halved until it divides the block."""
    lanes = settings.persistent_lanes
    while lanes > 1 and threads % lanes:
        lanes //= 2
    if not SIMULATOR and threads % 32:
        raise ValueError(f"persistent_threads={threads} must be a multiple of 32 (whole "
                         "warps: the products use full-warp shuffles)")
    return lanes


def persistent_plan(H, unit_bytes, nsm, limit, units=None, shared_bytes=None):
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


def _launch_persistent(kernel, args, H, shared_per_unit, itemsize):
    """Launch ``kernel(*args, HB, use_shared, lanes)`` on a co-resident grid of
    blocks of ``HB`` units each (sized by :func:`persistent_plan`;
    ``shared_per_unit`` weights per unit). Returns ``(HB, use_shared)``."""
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
            *args, HB, use_shared, lanes)
        return HB, use_shared
    nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
    # the compiled kernel depends on the arguments' types only, not on HB
    spec = kernel.specialize(*args, 1, False, lanes)

    def limit(shmem):
        try:
            return next(iter(spec.overloads.values())).max_cooperative_grid_blocks(threads,
                                                                                  shmem)
        except Exception:   # pragma: no cover - older numba-cuda
            return nsm

    plan = persistent_plan(H, unit_bytes, nsm, limit, settings.persistent_units)
    if plan is None:
        raise _DoesNotFit(f"no co-resident persistent grid for H={H} ({threads} threads per "
                          f"block, {settings.shared_bytes} B of shared memory)")
    HB, use_shared = plan
    spec[-(-H // HB), threads, 0, HB * unit_bytes if use_shared else 0](
        *args, HB, use_shared, lanes)
    return plan


# --------------------------------------------------------------------------- drivers
def _persistent_forward(cell, T, rev, lens, xw, w, h, c, out, peep, training):
    """The forward time loop in one persistent kernel; h, c [B,H] in: h0, c0,
    out: h_n, c_n. ``out = (y, acts, hs, cs)`` as in the per-step path."""
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
    if cell.products == 1:
        dummy = _dummy((1, 1), dtype)
        pre, mats, cached = (xw, hw, hw), (w.w_hh, w.b_hh, dummy, dummy), G * H
    else:
        aux, p_if, p_o = _second_product_operands(cell, peep, B, H, dtype)
        pre, mats, cached = (xw, hw, aux), (w.w_hh, w.b_hh, p_if, p_o), 0
    kernel = _persistent_fwd_kernel(tuple(zip(step_products(cell)[0], FORWARD_STEPS[cell.name])), dtype.type)
    args = (T, rev, lens, training, pre, mats, peep, (hbuf, cbuf), out)
    _launch_persistent(kernel, args, H, cached, dtype.itemsize)
    h.copy_to_device(hbuf[T % 2])
    if cell.has_cell:
        c.copy_to_device(cbuf[T % 2])


def _persistent_backward(cell, cache, dy, dh, dc, dax, dah, peep):
    """The backward time loop in one persistent kernel; dh, dc [B,H] in: dh_n,
    dc_n, out: dh0, dc0; dax, dah [T,B,GH] filled."""
    T, B, I, H = cache.shape
    dtype = np.dtype(dh.dtype)
    cs = cache.cs if cache.cs is not None else _dummy((1, 1, 1), dtype)
    w_t = _transpose(cache.weights.w_hh, "w_t")            # [H, GH]
    dummy = _dummy((1, 1), dtype)
    if cell.products == 1:
        aux, mats_t, cached = dummy, (w_t, dummy, dummy), cell.gates * H
    else:
        aux, cached = _work("aux", (B, H), dtype), 0
        if cell.peephole == "full":
            mats_t = (w_t, _transpose(peep[:2].reshape(2 * H, H), "pif_t"),
                      _transpose(peep[2], "po_t"))
        else:
            mats_t = (w_t, dummy, dummy)
    kernel = _persistent_bwd_kernel(tuple(zip(BACKWARD_STEPS[cell.name], step_products(cell)[1])), dtype.type)
    args = (T, cache.reverse, cache.lengths, dy, mats_t, (dh, dc, aux),
            (cache.acts, cache.hs, cs), (dax, dah), peep)
    _launch_persistent(kernel, args, H, cached, dtype.itemsize)
