"""LLVM-IR building blocks for the packed CPU kernels (:mod:`fastrnn.kernels.packed_lstm`).

Numba ``@intrinsic`` functions, callable from ``@njit`` code only.

The micro-kernels (``gemm_accs``): a register-blocked small-M matrix product
against one pre-packed weight panel, over one or more K segments::

    acc[r][v] = sum over segments (a, lda, w, K) of
                sum_k a[r*lda + k] * w[k*NV*VW + VW*v : +VW]      (r < MR, v < NV)

  ``w`` is one panel: ``K`` rows of ``NV*VW`` contiguous elements. The ``MR*NV``
  accumulators are ``<VW x float>`` (or ``<VW x double>``) values that LLVM keeps
  in vector registers (float32: zmm for VW=16, ymm for VW=8); each ``k`` loads the panel's row once and
  broadcasts one ``a`` per batch row. Pointers are byte addresses as int64
  (Numba types ``uint64 + int64`` as float64, so pointer arithmetic stays int64).
  A cell's epilogue then works on the accumulators while they are still in
  registers: ``uk_lstm_fwd[MR]`` (pre-activations -> gates -> c', h', saved
  activations) and ``uk_lstm_bwd[MR]`` (dh -> gate gradients, dc carry). The
  activations are :class:`VMath`: in float32 the same rational tanh as
  :mod:`fastrnn.kernels.activations`, on vectors; in float64 accurate ones.

  The vector width ``VW`` and the vector count ``NV`` are read off the *types*
  of tag arguments (``UniTuple(int64, VW)``, ``UniTuple(int64, NV)``), so each
  width is its own Numba specialisation and its own entry in the on-disk
  cache: a process that picks the AVX2 (8-wide) variant never loads AVX-512
  code compiled by another, and ``cache=True`` keeps working. The element
  type is read off the tag too: a ``UniTuple(float64, VW)`` tag compiles the
  same kernels on ``<VW x double>`` (``VW`` = 8 on AVX-512, 4 on AVX2) with the
  accurate float64 activations of :class:`VMath`; any other tag means float32.

``fptr`` turns a partner job's addresses back into arrays of the tag's element
type; ``esize(tag)`` is the element size the tag asks for. The atomics, the
spin-wait hint and the cycle counter of the threads are in
:mod:`fastrnn.kernels.atomics`.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["lstm_cell", "lstm_cell_back", "gru_cell", "gru_cell_back", "gru_h", "gru_back_nz",
           "rnn_act", "rnn_act_back", "rows_switch", "uk_lstm_fwd", "uk_lstm_bwd", "uk_peep_fwd",
           "uk_peep_bwd", "uk_lstm_fwd2", "uk_peep_fwd2", "PAIR_MR", "fptr", "esize", "MAX_MR",
           "vtanh", "vsigmoid"]

_f32 = ir.FloatType()
_f64 = ir.DoubleType()
I64 = ir.IntType(64)
_i32 = ir.IntType(32)

#: the most batch rows one micro-kernel call handles (MR variants 1..MAX_MR exist)
MAX_MR = 8

#: how far ahead (bytes) the micro-kernels prefetch their weight panel into L1. The
#: hardware prefetchers do not bring a panel from L2 to L1 fast enough for 4
#: vector loads per 24 FMAs: measured on the 2-core AVX-512 Xeon, LSTM inference on
#: one thread 5-10% faster at 2-6 KiB than without (one ``prefetcht0`` per 64-byte
#: line of the panel row 4 KiB ahead). The LSTM kernels also pull the *next*
#: panel from L3 into L2 while they compute (``l2next`` of :func:`gemm_accs`):
#: when a thread's share of the weights exceeds its L2 (H=512: 6.3 MB), that made
#: one-thread inference 8-12% and training 7-12% faster.
PREFETCH_BYTES = 4096
#: the fewest rows per micro-kernel call that prefetch: with one or two rows a
#: k-iteration has 4-8 FMAs beside 4 prefetches, which then crowd the load ports
#: (small-batch LSTM inference is faster without them; from 3 rows on they pay)
PREFETCH_MIN_MR = 3


def _splat(builder, vty, s):
    n = vty.count
    t = builder.insert_element(ir.Constant(vty, ir.Undefined), s, ir.Constant(_i32, 0))
    return builder.shuffle_vector(t, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_i32, n), [0] * n))


def _esize(vty):
    """Bytes per element of a float or double vector type."""
    return 8 if isinstance(vty.element, ir.DoubleType) else 4


def _sfx(vty):
    """The LLVM intrinsic suffix of a vector type (``v16f32``, ``v8f64``...)."""
    return f"v{vty.count}f{8 * _esize(vty)}"


def _is_f64(tag):
    """Whether a kernel's tag type asks for the float64 variant (see the module doc)."""
    return isinstance(tag, types.UniTuple) and tag.dtype == types.float64


def vector_type(tag):
    """The vector type a tag asks for: ``<VW x double>`` or ``<VW x float>``."""
    return ir.VectorType(_f64 if _is_f64(tag) else _f32, tag.count)


def vload(builder, vty, base, off):
    p = builder.gep(base, [off])
    return builder.load(builder.bitcast(p, vty.as_pointer()), align=_esize(vty))


def vstore(builder, val, vty, base, off):
    p = builder.gep(base, [off])
    builder.store(val, builder.bitcast(p, vty.as_pointer()), align=_esize(vty))


# --------------------------------------------------------------------------- vector math
def _vconst(vty, v):
    return ir.Constant(vty, [float(v)] * vty.count)


#: flags for the float64 activations' instructions: any flag at all keeps Numba's
#: fastmath pass (which adds ``fast`` only to flagless instructions) off them, so
#: LLVM may not reassociate the exponential's range reduction or replace a
#: division by a reciprocal; ``nsz`` alone changes nothing here
_PRECISE = ("nsz",)
#: float64 exp: ln 2 split in two (Cephes: ``C1`` has few bits, so ``n C1`` is
#: exact for the ``|n| <= 1022`` used), e^r by its Taylor polynomial of degree 13
#: on ``|r| <= ln(2)/2`` (truncation below 1e-17 relative)
_LOG2E = 1.4426950408889634
_LN2_C1 = 6.93145751953125e-1
_LN2_C2 = 1.42860682030941723212e-6
_EXP_TAYLOR = [1.0 / math.factorial(k) for k in range(14)]
_EXP_ARG_MAX = 708.0            # 2^n stays a normal double
#: float64 tanh: Cephes' rational x + x z P(z)/Q(z), z = x², for |x| < 0.625 and
#: (e - 1)/(e + 1), e = exp(2|x|), above; exactly ±1 from |x| = 20 on
_TANH64_SMALL = 0.625
_TANH64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
_TANH64_SAT = 20.0
_MAGIC = 6755399441055744.0     # 1.5 * 2^52: n + _MAGIC holds the integer n in its low bits


class VMath:
    """IR for the activations on vectors, by element type.

    float: the float32 activations of :mod:`fastrnn.kernels.activations`: the
    same rational tanh (same constants, read from that module, same clamp and
    saturation to exactly ±1), Horner steps as ``llvm.fma``; sigmoid is
    ``0.5 + 0.5 tanh(x/2)`` as there.

    double: accurate float64 functions (within 2 ulp of the exact values,
    tests/test_packed_f64.py pins the bound): ``tanh`` as Cephes (a rational
    below 0.625, ``(e-1)/(e+1)`` with ``e = exp(2|x|)`` above), ``sigmoid =
    1 / (1 + exp(-x))``, with a vector ``exp`` (range reduction by ln 2 in two
    FMAs, Taylor polynomial of degree 13, the power of two built in the
    exponent bits). Its instructions carry their own flags (``_PRECISE``), so
    the kernels' ``fastmath`` does not loosen them."""

    def __init__(self, builder, vty):
        self.b, self.vty = builder, vty
        self.f64 = isinstance(vty.element, ir.DoubleType)
        mod = builder.module
        sfx = _sfx(vty)

        def fn(name, nargs):
            return cgutils.get_or_insert_function(
                mod, ir.FunctionType(vty, [vty] * nargs), f"llvm.{name}.{sfx}")
        self.fma_fn = fn("fma", 3)
        self.min_fn = fn("minnum", 2)
        self.max_fn = fn("maxnum", 2)
        c = lambda v: _vconst(vty, float(v))   # noqa: E731
        self.one, self.mone, self.half = c(1.0), c(-1.0), c(0.5)
        if self.f64:
            self.fabs_fn, self.copysign_fn, self.round_fn = (
                fn("fabs", 1), fn("copysign", 2), fn("roundeven", 1))
            self.c = c
            return
        from fastrnn.kernels import activations as A
        self.sat, self.nsat = c(A._SAT), c(-A._SAT)
        self.num = [c(v) for v in (A._A13, A._A11, A._A9, A._A7, A._A5, A._A3, A._A1)]
        self.den = [c(v) for v in (A._B6, A._B4, A._B2, A._B0)]

    def fma(self, a, b, c):
        return self.b.call(self.fma_fn, [a, b, c])

    def mul(self, a, b):
        return self.b.fmul(a, b)

    def add(self, a, b):
        return self.b.fadd(a, b)

    def sub(self, a, b):
        return self.b.fsub(a, b)

    def clamp(self, x, lo, hi):
        return self.b.call(self.min_fn, [self.b.call(self.max_fn, [x, lo]), hi])

    def tanh(self, x):
        if self.f64:
            return self._tanh64(x)
        x = self.clamp(x, self.nsat, self.sat)
        x2 = self.mul(x, x)
        p = self.fma(x2, self.num[0], self.num[1])
        for k in self.num[2:]:
            p = self.fma(x2, p, k)
        p = self.mul(x, p)
        q = self.fma(x2, self.den[0], self.den[1])
        for k in self.den[2:]:
            q = self.fma(x2, q, k)
        return self.clamp(self.b.fdiv(p, q), self.mone, self.one)

    def sigmoid(self, x):
        if self.f64:
            return self._sigmoid64(x)
        return self.fma(self.half, self.tanh(self.mul(self.half, x)), self.half)

    # ---------------------------------------------------------------- float64
    def _exp64(self, x):
        """e^x for ``|x| <= _EXP_ARG_MAX`` (the callers clamp)."""
        b, c = self.b, self.c
        n = b.call(self.round_fn, [b.fmul(x, c(_LOG2E), flags=_PRECISE)])
        r = self.fma(n, c(-_LN2_C1), x)
        r = self.fma(n, c(-_LN2_C2), r)
        p = c(_EXP_TAYLOR[13])
        for k in range(12, -1, -1):
            p = self.fma(p, r, c(_EXP_TAYLOR[k]))
        ity = ir.VectorType(I64, self.vty.count)
        magic = b.bitcast(c(_MAGIC), ity)
        ni = b.sub(b.bitcast(b.fadd(n, c(_MAGIC), flags=_PRECISE), ity), magic)
        bits = b.shl(b.add(ni, ir.Constant(ity, [1023] * self.vty.count)),
                     ir.Constant(ity, [52] * self.vty.count))
        return b.fmul(p, b.bitcast(bits, self.vty), flags=_PRECISE)

    def _tanh64(self, x):
        b, c, P = self.b, self.c, _PRECISE
        ax = b.call(self.min_fn, [b.call(self.fabs_fn, [x]), c(_TANH64_SAT)])
        z = b.fmul(ax, ax, flags=P)
        pz = self.fma(self.fma(z, c(_TANH64_P[0]), c(_TANH64_P[1])), z, c(_TANH64_P[2]))
        qz = b.fadd(z, c(_TANH64_Q[0]), flags=P)
        qz = self.fma(self.fma(qz, z, c(_TANH64_Q[1])), z, c(_TANH64_Q[2]))
        e = self._exp64(b.fadd(ax, ax, flags=P))
        small = b.fcmp_ordered("<", ax, c(_TANH64_SMALL), flags=P)
        num = b.select(small, b.fmul(z, pz, flags=P), b.fsub(e, self.one, flags=P))
        den = b.select(small, qz, b.fadd(e, self.one, flags=P))
        q = b.fdiv(num, den, flags=P)
        return b.call(self.copysign_fn, [b.select(small, self.fma(ax, q, ax), q), x])

    def _sigmoid64(self, x):
        b, c, P = self.b, self.c, _PRECISE
        t = self.clamp(b.fsub(c(0.0), x, flags=P), c(-_EXP_ARG_MAX), c(_EXP_ARG_MAX))
        return b.fdiv(self.one, b.fadd(self.one, self._exp64(t), flags=P), flags=P)


def lstm_cell(m, pre, cp, pv=None):
    """One LSTM step on vectors (the diagonal peephole LSTM when ``pv`` holds
    ``(p_i, p_f, p_o)``): the pre-activations ``pre`` (i, f, g, o, biases added)
    and ``c_{t-1}`` -> ``(i, f, g, o, c_t, h_t)``. The one definition every
    kernel's epilogue (float, bf16, AMX) emits."""
    if pv is not None:
        pre = [m.fma(pv[0], cp, pre[0]), m.fma(pv[1], cp, pre[1]), pre[2], pre[3]]
    gi, gf, gg = m.sigmoid(pre[0]), m.sigmoid(pre[1]), m.tanh(pre[2])
    cn = m.fma(gf, cp, m.mul(gi, gg))
    go = m.sigmoid(pre[3] if pv is None else m.fma(pv[2], cn, pre[3]))
    return gi, gf, gg, go, cn, m.mul(go, m.tanh(cn))


def lstm_cell_back(m, dh, gates, cn, cp, dc, pv=None):
    """Back through :func:`lstm_cell`: ``dh`` (the step's whole h gradient), the
    saved gates ``(i, f, g, o)``, ``c_t``, ``c_{t-1}`` and the carried ``dc`` ->
    the gate gradients ``(di, df, dg, do)`` and ``dc_{t-1}``."""
    gi, gf, gg, go = gates
    one = m.one
    tc = m.tanh(cn)
    do = m.mul(m.mul(dh, tc), m.mul(go, m.sub(one, go)))
    dcc = m.fma(m.mul(dh, go), m.sub(one, m.mul(tc, tc)), dc)
    if pv is not None:
        dcc = m.fma(do, pv[2], dcc)
    di = m.mul(m.mul(dcc, gg), m.mul(gi, m.sub(one, gi)))
    df = m.mul(m.mul(dcc, cp), m.mul(gf, m.sub(one, gf)))
    dgc = m.mul(m.mul(dcc, gi), m.sub(one, m.mul(gg, gg)))
    dcp = m.mul(dcc, gf)
    if pv is not None:
        dcp = m.fma(di, pv[0], m.fma(df, pv[1], dcp))
    return (di, df, dgc, do), dcp


def gru_cell(m, ar, az, anx, anh, bv, hp):
    """One reset-after GRU step on vectors: the r and z gates' products ``ar``,
    ``az`` (input and hidden parts summed), the n gate's input and hidden products
    ``anx``, ``anh`` (apart), the biases ``bv`` = (b_r, b_z, b_in, b_hn) and
    ``h_{t-1}`` -> ``(r, z, n, nh, h_t)`` (``nh = anh + b_hn``). The one definition
    every GRU epilogue (float, bf16, AMX) emits."""
    gr = m.sigmoid(m.add(ar, bv[0]))
    gz = m.sigmoid(m.add(az, bv[1]))
    nh = m.add(anh, bv[3])
    gn = m.tanh(m.fma(gr, nh, m.add(anx, bv[2])))
    return gr, gz, gn, nh, gru_h(m, gz, gn, hp)


def gru_h(m, gz, gn, hp):
    """The GRU's new state ``h_t = n + z (h_{t-1} - n)`` (both forms)."""
    return m.fma(gz, m.sub(hp, gn), gn)


def gru_back_nz(m, dh, gz, gn, hp):
    """Back through :func:`gru_h` and n's tanh (both forms): ``dh`` (the step's whole
    h gradient), the saved z, n and ``h_{t-1}`` -> ``(dn, dz)``, the gradients of
    n's and z's pre-activations."""
    one = m.one
    dn = m.mul(m.mul(dh, m.sub(one, gz)), m.sub(one, m.mul(gn, gn)))
    dz = m.mul(m.mul(dh, m.sub(hp, gn)), m.mul(gz, m.sub(one, gz)))
    return dn, dz


def gru_cell_back(m, dh, gates, hp):
    """Back through :func:`gru_cell`: ``dh``, the saved ``(r, z, n, nh)`` and
    ``h_{t-1}`` -> ``(dr, dz, dn)`` (the hidden product's n gradient is ``dn r``)."""
    gr, gz, gn, nh = gates
    dn, dz = gru_back_nz(m, dh, gz, gn, hp)
    dr = m.mul(m.mul(dn, nh), m.mul(gr, m.sub(m.one, gr)))
    return dr, dz, dn


def rnn_act(m, pre, relu):
    """The RNN's activation of a pre-activation vector: ReLU (``relu`` true) or tanh."""
    if relu:
        return m.b.call(m.max_fn, [pre, ir.Constant(m.vty, [0.0] * m.vty.count)])
    return m.tanh(pre)


def rnn_act_back(m, dh, h, relu):
    """Back through :func:`rnn_act` from its output ``h``: ``dh [h > 0]`` (ReLU) or
    ``dh (1 - h^2)`` (tanh)."""
    if relu:
        zero = ir.Constant(m.vty, [0.0] * m.vty.count)
        return m.b.select(m.b.fcmp_ordered(">", h, zero), dh, zero)
    return m.mul(dh, m.sub(m.one, m.mul(h, h)))


def rows_switch(kernels):
    """One intrinsic ``uk(mr, args)`` over a family of micro-kernels made per row
    count (``kernels``: a ``uk_*`` list, ``kernels[m]`` for ``m`` rows, item 0
    unused): ``kernels[mr](*args)``, the last member for any larger ``mr``. The
    members are emitted in the caller as the cases of one switch on ``mr``: the
    same code the drivers' if/elif over the members gave, written once."""
    members = kernels[1:]

    @intrinsic
    def uk(typingctx, mr, args):
        if not isinstance(mr, types.Integer) or not isinstance(args, types.BaseTuple):
            return None
        made = [k.__wrapped__(typingctx, *args.types) for k in members]
        if any(m is None for m in made):
            return None

        def codegen(context, builder, signature, a):
            m, tup = a
            vals = [builder.extract_value(tup, i) for i in range(len(args))]
            end = builder.append_basic_block("rows.end")
            cases = [builder.append_basic_block(f"rows.{r}") for r in range(1, len(made) + 1)]
            sw = builder.switch(m, cases[-1])
            for r, bb in enumerate(cases[:-1], 1):
                sw.add_case(ir.Constant(m.type, r), bb)
            for (ksig, kgen), bb in zip(made, cases):
                builder.position_at_end(bb)
                kgen(context, builder, ksig, [context.cast(builder, v, t, kt) for v, t, kt in
                                              zip(vals, args.types, ksig.args)])
                builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()
        return types.void(mr, args), codegen
    return uk


def ptrs(builder, vty, *vals):
    """Byte addresses as pointers to the element type of ``vty``."""
    return [builder.inttoptr(v, vty.element.as_pointer()) for v in vals]


def row_off(builder, r, ld, extra=0):
    return builder.add(builder.mul(ir.Constant(I64, r), ld), ir.Constant(I64, extra))


def gemm_accs(builder, vty, MR, NV, segments, l2next=None):
    """The register-blocked product over K segments, one panel, ``NV`` accumulators
    per row: a segment ``(a, lda, w, K)`` adds
    ``sum_k a[r*lda+k] w[k*NV*VW + v*VW]`` into accumulator ``v``; a segment
    ``(a, lda, w, K, amap)`` reads panel rows of ``len(amap)*VW`` floats and adds
    vector ``v`` of each into accumulator ``amap[v]`` (the GRU's x and h segments
    share r and z but keep the n parts apart).

    A segment's ``w`` may also be a list of panel pointers: each gives
    ``NV // len(w)`` accumulators (panel ``j``'s vector ``v`` into accumulator
    ``j * NV // len(w) + v``), the same broadcast of ``a`` feeding them all: with
    one or two rows, two panels in one call keep twice the independent FMA
    chains in flight (a lone panel's chain is latency-bound).

    ``l2next`` (a float pointer, or None): each ``k`` (counted across the
    segments) also prefetches the line ``l2next + 64 k`` bytes into L2: the
    caller points it at the part of the panel it will read next that this call
    should bring in from L3 while it computes."""
    VW = vty.count
    ES = _esize(vty)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.{_sfx(vty)}")
    i8p = ir.IntType(8).as_pointer()
    pf = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, _i32, _i32, _i32]),
        "llvm.prefetch.p0i8")
    accs = [[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)]
    zero = ir.Constant(vty, [0.0] * VW)
    for r in range(MR):
        for v in range(NV):
            builder.store(zero, accs[r][v])
    kbase = ir.Constant(I64, 0)
    l2 = None if l2next is None else builder.bitcast(l2next, i8p)
    for seg in segments:
        a, lda, w, K = seg[:4]
        ws = w if isinstance(w, list) else [w]
        amap = seg[4] if len(seg) > 4 else range(NV // len(ws))
        W = len(amap) * VW
        pfd = (max(8, PREFETCH_BYTES // (ES * W))
               if PREFETCH_BYTES and MR >= PREFETCH_MIN_MR else 0)   # rows ahead
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            wrow = builder.mul(k, ir.Constant(I64, W))
            wv = [vload(builder, vty, wb, builder.add(wrow, ir.Constant(I64, v * VW)))
                  for wb in ws for v in range(len(amap))]
            for line in range(0, W if pfd else 0, 64 // ES):   # read, keep in L1, data
                for wb in ws:
                    pp = builder.gep(wb, [builder.add(wrow, ir.Constant(I64, pfd * W + line))])
                    builder.call(pf, [builder.bitcast(pp, i8p), ir.Constant(_i32, 0),
                                      ir.Constant(_i32, 3), ir.Constant(_i32, 1)])
            if l2 is not None:    # read, keep in L2 (prefetcht1)
                pp = builder.gep(l2, [builder.mul(builder.add(kbase, k), ir.Constant(I64, 64))])
                builder.call(pf, [pp, ir.Constant(_i32, 0), ir.Constant(_i32, 2),
                                  ir.Constant(_i32, 1)])
            for r in range(MR):
                aoff = builder.add(builder.mul(ir.Constant(I64, r), lda), k)
                s = _splat(builder, vty, builder.load(builder.gep(a, [aoff]), align=ES))
                for j in range(len(ws)):
                    for v, t in enumerate(amap):
                        t += j * len(amap)
                        acc = builder.load(accs[r][t])
                        wvec = wv[j * len(amap) + v]
                        builder.store(builder.call(fma, [s, wvec, acc]), accs[r][t])
        kbase = builder.add(kbase, K)
    return [[builder.load(accs[r][v]) for v in range(NV)] for r in range(MR)]


def _make_lstm_fwd(MR, peephole, NP=1):
    @intrinsic
    def uk_lstm(typingctx, tag, x, ldx, h, ldh, w, I, H, bias, peep, cin, cout, ldc, y, act,
                ldact, training, wn):
        """One panel, MR rows: pre = bias + x @ w[:I] + h @ w[I:I+H] ([i f g o] x VW,
        the panel's input and recurrent weights stacked), then the LSTM cell:
        cout = f cin + i g, y = o tanh(cout), and act = (i, f, g, o) if training.
        cin, cout have row stride ldc, y the same as h (ldh). The peephole variant
        adds p_i cin, p_f cin to the i, f pre-activations and p_o cout to o's
        (peep: the panel's [p_i p_f p_o] x VW); the other ignores peep.
        NP = 2: two neighbouring panels in one call (each argument points at the
        first; the second's weights follow at (I+H)*4*VW floats, its bias and
        act columns at 4*VW, its peepholes at 3*VW, its units at VW)."""
        if not isinstance(tag, types.UniTuple):
            return None
        VW = tag.count
        i8 = types.int64
        sig = types.void(tag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         types.boolean, i8)

        def codegen(context, builder, signature, args):
            _, x, ldx, h, ldh, w, I, H, bias, peep, cin, cout, ldc, y, act, ldact, training, wn = args
            vty = vector_type(tag)
            x, h, w, bias, peep, cin, cout, y, act, wn = ptrs(builder, vty, x, h, w, bias, peep,
                                                               cin, cout, y, act, wn)
            kw = builder.mul(builder.add(I, H), ir.Constant(I64, 4 * VW))   # one panel
            wp = [builder.gep(w, [builder.mul(kw, ir.Constant(I64, j))]) for j in range(NP)]
            wh = [builder.gep(wj, [builder.mul(I, ir.Constant(I64, 4 * VW))]) for wj in wp]
            accs = gemm_accs(builder, vty, MR, 4 * NP, [(x, ldx, wp, I), (h, ldh, wh, H)], wn)
            m = VMath(builder, vty)
            for j in range(NP):
                bv = [vload(builder, vty, bias, ir.Constant(I64, (4 * j + g) * VW))
                      for g in range(4)]
                if peephole:
                    pv = [vload(builder, vty, peep, ir.Constant(I64, (3 * j + k) * VW))
                          for k in range(3)]
                for r in range(MR):
                    pre = [m.add(accs[r][4 * j + g], bv[g]) for g in range(4)]
                    ro = row_off(builder, r, ldc, j * VW)
                    cp = vload(builder, vty, cin, ro)
                    gi, gf, gg, go, cn, hn = lstm_cell(m, pre, cp, pv if peephole else None)
                    vstore(builder, cn, vty, cout, ro)
                    vstore(builder, hn, vty, y, row_off(builder, r, ldh, j * VW))
                    with builder.if_then(training):
                        for g, val in enumerate((gi, gf, gg, go)):
                            vstore(builder, val, vty, act,
                                    row_off(builder, r, ldact, (4 * j + g) * VW))
            return context.get_dummy_value()
        return sig, codegen
    return uk_lstm


def _make_lstm_bwd(MR, peephole):
    @intrinsic
    def uk_lstm_bwd(typingctx, tag, ntag, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact,
                    peep, cp, cn, dc, dg, dgv, dgg, wn):
        """NV output vectors (NV forward panels of VW units), MR rows:
        dh = a @ w + dy + dhx, then back through the LSTM cell from the saved
        activations (act, [NV panels][i f g o][VW], row stride ldact): writes dg
        (row stride ldact, vector v of gate g at v*dgv + g*dgg: dgv = 4*VW,
        dgg = VW is act's panel order, dgv = VW, dgg = the padded H the natural
        gate order) and updates the carried dc in place. cp, cn (the cell
        before and after the step), dy, dhx, dc are [rows][>= NV*VW] with row
        stride ldh (dhx: lddhx, 0 for a broadcast zero row). The peephole
        variant adds the peephole paths (peep: [NV panels][p_i p_f p_o][VW])."""
        if not (isinstance(tag, types.UniTuple) and isinstance(ntag, types.UniTuple)):
            return None
        VW, NV = tag.count, ntag.count
        i8 = types.int64
        sig = types.void(tag, ntag, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8,
                         i8, i8, i8, i8)

        def codegen(context, builder, signature, args):
            (_, _, a, lda, w, K, dhx, lddhx, dy, ldh, act, ldact, peep, cp, cn, dc, dg, dgv,
             dgg, wn) = args
            vty = vector_type(tag)
            a, w, dhx, dy, act, peep, cp, cn, dc, dg, wn = ptrs(
                builder, vty, a, w, dhx, dy, act, peep, cp, cn, dc, dg, wn)
            accs = gemm_accs(builder, vty, MR, NV, [(a, lda, w, K)], wn)
            m = VMath(builder, vty)
            if peephole:
                pv = [[vload(builder, vty, peep, ir.Constant(I64, (3 * v + k) * VW))
                       for k in range(3)] for v in range(NV)]
            for r in range(MR):
                for v in range(NV):
                    ho = row_off(builder, r, ldh, v * VW)
                    dh = m.add(m.add(accs[r][v], vload(builder, vty, dy, ho)),
                               vload(builder, vty, dhx, row_off(builder, r, lddhx, v * VW)))
                    ao = [row_off(builder, r, ldact, v * 4 * VW + g * VW) for g in range(4)]
                    gates = [vload(builder, vty, act, o) for o in ao]
                    dgs, dcp = lstm_cell_back(
                        m, dh, gates, vload(builder, vty, cn, ho), vload(builder, vty, cp, ho),
                        vload(builder, vty, dc, ho), pv[v] if peephole else None)
                    for g, val in enumerate(dgs):
                        go_ = builder.add(builder.mul(ir.Constant(I64, v), dgv),
                                          builder.mul(ir.Constant(I64, g), dgg))
                        vstore(builder, val, vty, dg,
                                builder.add(row_off(builder, r, ldact), go_))
                    vstore(builder, dcp, vty, dc, ho)
            return context.get_dummy_value()
        return sig, codegen
    return uk_lstm_bwd


#: uk_lstm_fwd[MR], uk_lstm_bwd[MR] for MR = 1..MAX_MR ([0] unused); uk_peep_*: the
#: diagonal peephole LSTM
uk_lstm_fwd = [None] + [_make_lstm_fwd(m, False) for m in range(1, MAX_MR + 1)]
uk_lstm_bwd = [None] + [_make_lstm_bwd(m, False) for m in range(1, MAX_MR + 1)]
uk_peep_fwd = [None] + [_make_lstm_fwd(m, True) for m in range(1, MAX_MR + 1)]
uk_peep_bwd = [None] + [_make_lstm_bwd(m, True) for m in range(1, MAX_MR + 1)]
#: two panels per call, MR = 1, 2 ([0] unused): for calls of one or two rows
PAIR_MR = 2
uk_lstm_fwd2 = [None] + [_make_lstm_fwd(m, False, 2) for m in range(1, PAIR_MR + 1)]
uk_peep_fwd2 = [None] + [_make_lstm_fwd(m, True, 2) for m in range(1, PAIR_MR + 1)]


def _make_vact(kind):
    @intrinsic
    def vact(typingctx, tag, src, dst):
        """``dst[:VW] = f(src[:VW])`` with the kernels' vector code for the tag's type
        (byte addresses; for the tests of the activations' accuracy)."""
        if not isinstance(tag, types.UniTuple):
            return None
        sig = types.void(tag, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            vty = vector_type(tag)
            src, dst = ptrs(builder, vty, args[1], args[2])
            m = VMath(builder, vty)
            v = vload(builder, vty, src, ir.Constant(I64, 0))
            vstore(builder, m.tanh(v) if kind == "tanh" else m.sigmoid(v), vty, dst,
                    ir.Constant(I64, 0))
            return context.get_dummy_value()
        return sig, codegen
    return vact


#: vector tanh / sigmoid of :class:`VMath` on one vector (tests)
vtanh, vsigmoid = _make_vact("tanh"), _make_vact("sigmoid")


@intrinsic
def fptr(typingctx, tag, addr):
    """The byte address ``addr`` as a pointer to the kernel's element type (float64
    for a float64 tag, else float32; see the module doc)."""
    dt = types.float64 if _is_f64(tag) else types.float32
    sig = types.CPointer(dt)(tag, types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[1], context.get_value_type(signature.return_type))
    return sig, codegen


@intrinsic
def esize(typingctx, tag):
    """Bytes per element of the kernel's element type (a compile-time constant)."""
    sig = types.int64(tag)

    def codegen(context, builder, signature, args):
        return ir.Constant(I64, 8 if _is_f64(tag) else 4)
    return sig, codegen
