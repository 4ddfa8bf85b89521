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

__all__ = ["uk_gru_fwd", "uk_gru_bwd", "uk_rnn_fwd", "uk_rnn_bwd"]


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
            for r in range(MR):
                ro = row_off(builder, r, ldh)
                gr, gz, gn, nh, hn = gru_cell(m, *accs[r], bv, vload(builder, vty, hin, ro))
                vstore(builder, hn, vty, y, ro)
                with builder.if_then(training):
                    for g, val in enumerate((gr, gz, gn, nh)):
                        vstore(builder, val, vty, act, row_off(builder, r, ldact, g * VW))
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
        VW, NV = tag.count, ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, K, dy, ldh, act, ldact, hp, dd, dgh, dgx, ldg, dgg = args
            vty = vector_type(tag)
            a, w, dy, act, hp, dd, dgh, dgx = ptrs(builder, vty, a, w, dy, act, hp, dd, dgh, dgx)
            accs = gemm_accs(builder, vty, MR, NV, [(a, lda, w, K)])
            m = VMath(builder, vty)
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    dh = m.add(m.add(accs[r][v], vload(builder, vty, dy, ho)),
                               vload(builder, vty, dd, ho))
                    gates = [vload(builder, vty, act,
                                   row_off(builder, r, ldact, v * 4 * VW + g * VW))
                             for g in range(4)]
                    dr, dz, dn = gru_cell_back(m, dh, gates, vload(builder, vty, hp, ho))
                    gr, gz = gates[:2]
                    go = [builder.add(row_off(builder, r, ldg, v * VW),
                                      builder.mul(ir.Constant(I64, g), dgg)) for g in range(3)]
                    for o, val in zip(go, (dr, dz, m.mul(dn, gr))):
                        vstore(builder, val, vty, dgh, o)
                    for o, val in zip(go, (dr, dz, dn)):
                        vstore(builder, val, vty, dgx, o)
                    vstore(builder, m.mul(dh, gz), vty, dd, ho)
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

            def epilogue(is_relu):
                for r in range(MR):
                    for v in range(NV):
                        vstore(builder, rnn_act(m, m.add(accs[r][v], bv[v]), is_relu), vty, y,
                               row_off(builder, r, ldh, v * VW))

            with builder.if_else(relu) as (then, otherwise):
                with then:
                    epilogue(True)
                with otherwise:
                    epilogue(False)
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
        VW, NV = tag.count, ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, types.boolean)

        def codegen(context, builder, signature, args):
            _, _, a, lda, w, K, dhx, lddhx, dy, ldh, hn, dg, relu = args
            vty = vector_type(tag)
            a, w, dhx, dy, hn, dg = ptrs(builder, vty, a, w, dhx, dy, hn, dg)
            accs = gemm_accs(builder, vty, MR, NV, [(a, lda, w, K)])
            m = VMath(builder, vty)
            dhs = []
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    dh = m.add(m.add(accs[r][v], vload(builder, vty, dy, ho)),
                               vload(builder, vty, dhx, row_off(builder, r, lddhx, v * VW)))
                    dhs.append((ho, dh, vload(builder, vty, hn, ho)))

            with builder.if_else(relu) as (then, otherwise):
                for branch, is_relu in ((then, True), (otherwise, False)):
                    with branch:
                        for ho, dh, h in dhs:
                            vstore(builder, rnn_act_back(m, dh, h, is_relu), vty, dg, ho)
            return context.get_dummy_value()
        return sig, codegen
    return uk_rnn_bwd


uk_gru_fwd = [None] + [_make_gru_fwd(m) for m in range(1, MAX_MR + 1)]
uk_gru_bwd = [None] + [_make_gru_bwd(m) for m in range(1, MAX_MR + 1)]
uk_rnn_fwd = [None] + [_make_rnn_fwd(m) for m in range(1, MAX_MR + 1)]
uk_rnn_bwd = [None] + [_make_rnn_bwd(m) for m in range(1, MAX_MR + 1)]
