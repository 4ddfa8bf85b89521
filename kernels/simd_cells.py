"""LLVM-IR micro-kernels for the packed GRU and tanh/ReLU RNN (:mod:`fastrnn.kernels.packed_cells`).

The same building blocks as :mod:`fastrnn.kernels.simd` (register-blocked
product over K segments with ``<VW x float>`` accumulators, the vector
tanh/sigmoid of :mod:`fastrnn.kernels.activations`), with each cell's step
and its derivative fused behind the product. ``VW`` (and ``NV`` where the
panel width varies) are read off the types of the tag arguments
(``UniTuple(int64, VW)``), so both vector widths keep ``cache=True`` valid; a
``UniTuple(float64, VW)`` tag compiles the float64 variant.
Pointers are byte addresses as int64.

``uk_gru_fwd[MR]``, ``uk_gru_bwd[MR]``, ``uk_rnn_fwd[MR]``, ``uk_rnn_bwd[MR]``
for ``MR = 1..MAX_MR`` batch rows per call (``[0]`` unused).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from fastrnn.kernels.simd import (I64, MAX_MR, VMath, gemm_accs, gru_cell, gru_cell_back, ptrs,
                                  rnn_act, rnn_act_back, row_off, vector_type, vload, vstore)

__all__ = ["uk_gru_fwd", "uk_gru_bwd", "uk_rnn_fwd", "uk_rnn_bwd", "gru_fwd_rows",
           "gru_bwd_rows", "rnn_fwd_rows", "rnn_bwd_rows"]


# ------------------------------------------------- the epilogues (float32, float64, bf16)
# Each emits a cell's step (or its derivative) on the accumulators of MR rows and
# stores the float results; ``put(o, val)`` (or ``put(which, o, val)``), when given,
# also receives every stored value with its element offset: the bf16 kernels
# (:mod:`fastrnn.kernels.bf16_simd_cells`) round it there into their bf16 copy.

def gru_fwd_rows(m, accs, bv, hin, y, ldy, act, ldact, training, put=None):
    """GRU steps of the rows' accumulators ``(a_r, a_z, a_xn, a_hn)``: y (row stride
    ``ldy``, ``hin`` the same), and (r, z, n, nh) to ``act`` in training."""
    b, vty = m.b, m.vty
    for r, acc in enumerate(accs):
        ro = row_off(b, r, ldy)
        gr, gz, gn, nh, hn = gru_cell(m, *acc, bv, vload(b, vty, hin, ro))
        vstore(b, hn, vty, y, ro)
        if put is not None:
            put(r, hn)
        with b.if_then(training):
            for g, val in enumerate((gr, gz, gn, nh)):
                vstore(b, val, vty, act, row_off(b, r, ldact, g * vty.count))


def gru_bwd_rows(m, accs, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg, dgg, put=None):
    """Back through the GRU steps: dh = acc + dy + dd, then dgh = (dr, dz, dn r),
    dgx = (dr, dz, dn) (``put("h"|"x", o, val)``) and dd = z dh in place."""
    b, vty = m.b, m.vty
    VW = vty.count
    for r, row in enumerate(accs):
        for v, acc in enumerate(row):
            ho = row_off(b, r, ldh, v * VW)
            dh = m.add(m.add(acc, vload(b, vty, dy, ho)), vload(b, vty, dd, ho))
            gates = [vload(b, vty, act, row_off(b, r, ldact, v * 4 * VW + g * VW))
                     for g in range(4)]
            dr, dz, dn = gru_cell_back(m, dh, gates, vload(b, vty, hp, ho))
            gr, gz = gates[:2]
            go = [b.add(row_off(b, r, ldg, v * VW), b.mul(ir.Constant(I64, g), dgg))
                  for g in range(3)]
            for which, dst, vals in (("h", dgh, (dr, dz, m.mul(dn, gr))),
                                     ("x", dgx, (dr, dz, dn))):
                for o, val in zip(go, vals):
                    vstore(b, val, vty, dst, o)
                    if put is not None:
                        put(which, o, val)
            vstore(b, m.mul(dh, gz), vty, dd, ho)


def _relu_branches(b, relu, emit):
    with b.if_else(relu) as (then, otherwise):
        with then:
            emit(True)
        with otherwise:
            emit(False)


def rnn_fwd_rows(m, accs, bv, y, ldy, relu, put=None):
    """y = act(acc + bias) (ReLU where ``relu`` holds at run time, else tanh)."""
    b, vty = m.b, m.vty

    def emit(is_relu):
        for r, row in enumerate(accs):
            for v, acc in enumerate(row):
                val = rnn_act(m, m.add(acc, bv[v]), is_relu)
                o = row_off(b, r, ldy, v * vty.count)
                vstore(b, val, vty, y, o)
                if put is not None:
                    put(r, v, val)
    _relu_branches(b, relu, emit)


def rnn_bwd_rows(m, accs, dhx, lddhx, dy, ldh, hn, dg, relu, put=None):
    """dh = acc + dy + dhx, dg = dh act'(from the saved output ``hn``)."""
    b, vty = m.b, m.vty
    VW = vty.count
    dhs = []
    for r, row in enumerate(accs):
        for v, acc in enumerate(row):
            ho = row_off(b, r, ldh, v * VW)
            dh = m.add(m.add(acc, vload(b, vty, dy, ho)),
                       vload(b, vty, dhx, row_off(b, r, lddhx, v * VW)))
            dhs.append((ho, dh, vload(b, vty, hn, ho)))

    def emit(is_relu):
        for ho, dh, h in dhs:
            val = rnn_act_back(m, dh, h, is_relu)
            vstore(b, val, vty, dg, ho)
            if put is not None:
                put(ho, val)
    _relu_branches(b, relu, emit)


# --------------------------------------------------------------------------- GRU
def _make_gru_fwd(MR):
    @intrinsic
    def uk_gru_fwd(typingctx, tag, x, ldx, h, ldh, w, I, H, bias, hin, y, act, ldact, training):
        """One panel (VW units), MR rows. ``w``: [I+H][r z n](VW each), the panel's
        W_ihᵀ rows then its W_hhᵀ rows; ``bias``: [b_ir+b_hr, b_iz+b_hz, b_in, b_hn] (VW
        each). a_x = x @ w[:I], a_h = h @ w[I:] (n kept apart), then
        r = σ(a_x,r + a_h,r + b_r), z likewise, nh = a_h,n + b_hn,
        n = tanh(a_x,n + b_in + r nh), y = n + z (hin - n); act = (r, z, n, nh) if
        training. ``hin``, ``y`` are at the panel's units, row stride ``ldh``."""
        if not isinstance(tag, types.UniTuple):
            return None
        VW = tag.count
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean)

        def codegen(context, builder, signature, args):
            _, x, ldx, h, ldh, w, I, H, bias, hin, y, act, ldact, training = args
            vty = vector_type(tag)
            x, h, w, bias, hin, y, act = ptrs(builder, vty, x, h, w, bias, hin, y, act)
            wh = builder.gep(w, [builder.mul(I, ir.Constant(I64, 3 * VW))])
            accs = gemm_accs(builder, vty, MR, 4,
                                  [(x, ldx, w, I, (0, 1, 2)), (h, ldh, wh, H, (0, 1, 3))])
            m = VMath(builder, vty)
            bv = [vload(builder, vty, bias, ir.Constant(I64, g * VW)) for g in range(4)]
            gru_fwd_rows(m, accs, bv, hin, y, ldh, act, ldact, training)
            return context.get_dummy_value()
        return sig, codegen
    return uk_gru_fwd


def _make_gru_bwd(MR):
    @intrinsic
    def uk_gru_bwd(typingctx, tag, ntag, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh, dgx,
                   ldg, dgg):
        """NV output vectors (NV forward panels of VW units), MR rows:
        dh = a @ w + dy + dd (``dd``: the carried part of dL/dh that does not pass
        through U, updated in place to z dh), then back through the GRU step from
        the saved (r, z, n, nh) (``act``: [NV][4][VW], row stride ldact) and h_prev
        (``hp``): writes dgh = (dr, dz, dn r) and dgx = (dr, dz, dn) in PyTorch's
        gate order (vector v of gate g at v*VW + g*dgg, dgg the padded H; row stride
        ldg). ``dy``, ``hp``, ``dd`` have row stride ldh."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg, dgg = args
            vty = vector_type(tag)
            a, w, dy, act, hp, dd, dgh, dgx = ptrs(builder, vty, a, w, dy, act, hp, dd, dgh, dgx)
            accs = gemm_accs(builder, vty, MR, NV, [(a, lda, w, K)])
            gru_bwd_rows(VMath(builder, vty), accs, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg,
                         dgg)
            return context.get_dummy_value()
        return sig, codegen
    return uk_gru_bwd


# --------------------------------------------------------------------------- RNN
def _make_rnn_fwd(MR):
    @intrinsic
    def uk_rnn_fwd(typingctx, tag, ntag, x, ldx, h, ldh, w, I, H, bias, y, relu):
        """One panel of NV*VW units, MR rows: ``w`` [I+H][NV*VW] (W_ihᵀ rows then
        W_hhᵀ rows of the panel's units), y = act(x @ w[:I] + h @ w[I:] + bias),
        act = ReLU if ``relu`` else tanh; ``y`` at the panel's units, row stride ldh."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        VW, NV = tag.count, ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean)

        def codegen(context, builder, signature, args):
            _, _, x, ldx, h, ldh, w, I, H, bias, y, relu = args
            vty = vector_type(tag)
            x, h, w, bias, y = ptrs(builder, vty, x, h, w, bias, y)
            wh = builder.gep(w, [builder.mul(I, ir.Constant(I64, NV * VW))])
            accs = gemm_accs(builder, vty, MR, NV, [(x, ldx, w, I), (h, ldh, wh, H)])
            m = VMath(builder, vty)
            bv = [vload(builder, vty, bias, ir.Constant(I64, v * VW)) for v in range(NV)]
            rnn_fwd_rows(m, accs, bv, y, ldh, relu)
            return context.get_dummy_value()
        return sig, codegen
    return uk_rnn_fwd


def _make_rnn_bwd(MR):
    @intrinsic
    def uk_rnn_bwd(typingctx, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, hn, dg, relu):
        """NV output vectors, MR rows: dh = a @ w + dy + dhx (``lddhx`` 0 for a
        broadcast zero row), dg = dh (1 - h'^2) (tanh) or dh [h' > 0] (ReLU) from the
        saved output ``hn``; ``dy``, ``hn``, ``dg`` have row stride ldh."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        NV = ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, K, dhx, lddhx, dy, ldh, hn, dg, relu = args
            vty = vector_type(tag)
            a, w, dhx, dy, hn, dg = ptrs(builder, vty, a, w, dhx, dy, hn, dg)
            accs = gemm_accs(builder, vty, MR, NV, [(a, lda, w, K)])
            rnn_bwd_rows(VMath(builder, vty), accs, dhx, lddhx, dy, ldh, hn, dg, relu)
            return context.get_dummy_value()
        return sig, codegen
    return uk_rnn_bwd


uk_gru_fwd = [None] + [_make_gru_fwd(m) for m in range(1, MAX_MR + 1)]
uk_gru_bwd = [None] + [_make_gru_bwd(m) for m in range(1, MAX_MR + 1)]
uk_rnn_fwd = [None] + [_make_rnn_fwd(m) for m in range(1, MAX_MR + 1)]
uk_rnn_bwd = [None] + [_make_rnn_bwd(m) for m in range(1, MAX_MR + 1)]
