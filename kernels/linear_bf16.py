"""The bfloat16 compute mode of :class:`fastrnn.blocks.Linear` (the language
model's head in that mode): its three products with bf16 operands summed in
float32, on AMX tiles where the CPU has them.

- forward ``y = round(x) round(W)ᵀ + b``;
- backward ``dx = round(dy) round(W)``, ``dW += round(dy)ᵀ round(x)``, and
  ``db += Σ dy`` in float32 (unrounded), as the recurrent layers' mode
  (``round`` = :func:`fastrnn.bf16.round_bf16`).

:func:`route` picks ``"amx"``: the operands rounded and tile-packed in one pass
each (:func:`pack_rows`, :func:`pack_cols`, :func:`pack_cols_t`; the output
gradient's two A operands and the bias gradient in one pass, :func:`pack_dy`)
and multiplied by :func:`fastrnn.kernels.amx_gemm.gemm`; ``"native"``
(AVX512-BF16 without AMX, or ``settings.bf16_amx`` off): the same B operands
and row-major bf16 A rows multiplied by the ``vdpbf16ps`` micro-kernel of
:mod:`fastrnn.kernels.bf16_simd` (:func:`simd_gemm`; slower than the emulated route where ``vdpbf16ps``
runs at half the float32 FMA rate, as on Sapphire Rapids-class Xeons: meant for
CPUs where it runs at twice that rate, AMD Zen 4); or ``"emulated"`` (no AVX512-BF16, ``settings.bf16_native`` off, or
fewer than :data:`MIN_ROWS` rows): the operands rounded in one vectorized pass
and multiplied in float32 by the caller's matmul. The products run in two
tasks, for the caller and a worker (halves of the rows forward, ``dx`` and
``dW`` backward). All compute the same numbers up to the order of the float32
sums: a product of two bf16 values is exact in float32.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from fastrnn.bf16 import has_avx512_bf16
from fastrnn.kernels.bf16_simd import NATIVE, uk_bf16_gemm
from fastrnn.kernels.cpu_settings import JIT_OPTIONS, settings
from fastrnn.kernels.packed_bf16 import aligned

__all__ = ["route", "LinearBF16", "pack_rows", "pack_cols", "pack_cols_t", "pack_dy"]

#: below this many rows (``x``'s leading axes) the products run emulated: the
#: packing's fixed costs outweigh a small product
MIN_ROWS = 64


def route(rows=None):
    """``"amx"``, ``"native"`` or ``"emulated"``: which code runs a bf16 Linear
    here (for ``rows`` rows of input when given)."""
    if rows is not None and rows < MIN_ROWS:
        return "emulated"
    if not (settings.bf16_native and has_avx512_bf16()):
        return "emulated"
    if not settings.bf16_amx:
        return "native"
    try:
        from fastrnn.kernels import amx_bf16
    except Exception:  # pragma: no cover - an LLVM without the AMX intrinsics
        return "native"
    return "amx" if amx_bf16.available() else "native"


def _up(n, m):
    return -(-n // m) * m


# --------------------------------------------------------------------------- packing
@njit(inline="always")
def _rb(v):
    """The bf16 bits of the float32 whose bits are ``v`` (uint32), as uint32:
    :func:`fastrnn.bf16.round_bf16`'s rounding (nearest even, denormal -> signed
    zero, infinities kept, NaN quieted), written with selects, not branches,
    so that the packing loops vectorize."""
    e = v & np.uint32(0x7F800000)
    r = (v + np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    z = (v >> np.uint32(16)) & np.uint32(0x8000)
    nan = ((v | np.uint32(0x00400000)) >> np.uint32(16)) & np.uint32(0xFFFF)
    special = nan if (v & np.uint32(0x007FFFFF)) != 0 else v >> np.uint32(16)
    r = z if e == 0 else r
    return special if e == np.uint32(0x7F800000) else r


# Tile layouts of amx_gemm.gemm: A [M/16, K/32, 16, 32] (a[m, k] at [m>>4, k>>5,
# m&15, k&31]); B [N/16, K/2, 16, 2] (b[k, n] at [n>>4, k>>1, n&15, k&1]), here
# as uint32 words [N/16, K/2, 16] (the pair's k even in the low half). The
# sources are float32 bits (uint32 views); padding stays zero (never written).
# The inner loops run over a row of one tile (a slice) with range indices:
# flat computed indices are several times slower (the wraparound of a signed
# index the compiler cannot prove non-negative blocks vectorizing).
@njit(cache=True, nogil=True)
def pack_rows(u, out):
    """A from ``a = u`` ([M, K], rows in order: 32 consecutive k per tile row)."""
    M, K = u.shape
    K32 = K >> 5
    for r in range(M):
        rb, ri = r >> 4, r & 15
        row = u[r]
        for cb in range(K32):
            o = out[rb, cb, ri]
            src = row[cb * 32:cb * 32 + 32]
            for cc in range(32):
                o[cc] = _rb(src[cc])
        for c in range(K32 * 32, K):
            out[rb, c >> 5, ri, c & 31] = _rb(row[c])


@njit(cache=True, nogil=True)
def pack_cols(u, out):
    """B (words) from ``b = u`` ([K, N]): rows 2kk and 2kk+1 interleaved."""
    K, N = u.shape
    N16 = N >> 4
    for kk in range(K >> 1):
        r0 = u[2 * kk]
        r1 = u[2 * kk + 1]
        for nb in range(N16):
            o = out[nb, kk]
            a0 = r0[nb * 16:nb * 16 + 16]
            a1 = r1[nb * 16:nb * 16 + 16]
            for ni in range(16):
                o[ni] = _rb(a0[ni]) | (_rb(a1[ni]) << np.uint32(16))
        for n in range(N16 * 16, N):
            out[n >> 4, kk, n & 15] = _rb(r0[n]) | (_rb(r1[n]) << np.uint32(16))
    if K & 1:
        for n in range(N):
            out[n >> 4, K >> 1, n & 15] = _rb(u[K - 1, n])


@njit(cache=True, nogil=True)
def pack_cols_t(u, out):
    """B (words) from ``b = uᵀ`` (``u`` [N, K]): each row of ``u`` one tile
    column's pairs."""
    N, K = u.shape
    for n in range(N):
        nb, ni = n >> 4, n & 15
        row = u[n]
        for kk in range(K >> 1):
            out[nb, kk, ni] = _rb(row[2 * kk]) | (_rb(row[2 * kk + 1]) << np.uint32(16))
        if K & 1:
            out[nb, K >> 1, ni] = _rb(row[K - 1])


@njit(cache=True, nogil=True)
def pack_dy(u, a, at, db):
    """:func:`pack_rows` ``(u, a)`` and the A of ``uᵀ`` (``at``: [K/16, M/32, 16,
    32]) in one pass over ``u`` [M, K] (the output gradient's bits), 32 rows at a
    time rounded into a scratch block first (the transposed tiles gather from
    it, in L1: gathering from ``u`` itself is several times slower); ``db[k] += Σ_m u[m, k]`` as
    float32 values (the bias gradient, unrounded)."""
    M, K = u.shape
    K32 = K >> 5
    uf = u.view(np.float32)
    tmp = np.empty((32, K), np.uint16)
    for mb in range((M + 31) >> 5):
        mn = min(32, M - mb * 32)
        for i in range(mn):
            row = u[mb * 32 + i]
            frow = uf[mb * 32 + i]
            t = tmp[i]
            for c in range(K):
                t[c] = _rb(row[c])
                db[c] += frow[c]
            r = mb * 32 + i
            rb, ri = r >> 4, r & 15
            for cb in range(K32):
                o = a[rb, cb, ri]
                s_ = t[cb * 32:cb * 32 + 32]
                for cc in range(32):
                    o[cc] = s_[cc]
            for c in range(K32 * 32, K):
                a[rb, c >> 5, ri, c & 31] = t[c]
        # the transposed tiles: at[k >> 4, mb, k & 15, i] = tmp[i, k]
        for k in range(K):
            o = at[k >> 4, mb, k & 15]
            for i in range(mn):
                o[i] = tmp[i, k]


@njit(cache=True, nogil=True)
def _round_rows(u, out):
    """``out`` (uint32 [M, K]) = the bits of ``u``'s values rounded to bf16, as
    float32 bits: :func:`fastrnn.bf16.round_bf16` in one vectorized pass."""
    M, K = u.shape
    for r in range(M):
        row = u[r]
        o = out[r]
        for c in range(K):
            o[c] = _rb(row[c]) << np.uint32(16)


def _rounded(a, out):
    """float32 ``a`` (2-D) rounded to bf16 values, in ``out`` (uint32, a's shape)
    viewed as float32."""
    _round_rows(_bits32(a), out)
    return out.view(np.float32)


@njit(cache=True, nogil=True)
def _epilogue(c, b, y):
    """``y = c[:N, :O] + b`` (``y`` [N, O], ``c`` the padded product)."""
    N, O = y.shape
    for n in range(N):
        cr = c[n]
        yr = y[n]
        for o in range(O):
            yr[o] = cr[o] + b[o]


# --------------------------------------------------------------------------- vdpbf16ps
# The "native" route (AVX512-BF16 without AMX: AMD Zen 4): the micro-kernel of
# fastrnn.kernels.bf16_simd (6 rows x one 16-column panel of k pairs, the B words
# of the AMX route) over row-major bf16 rows of A (``a`` uint16 [M, K2], K2 even).
_g1, _g2, _g3, _g4, _g5, _g6 = uk_bf16_gemm[1:7]


@njit(**JIT_OPTIONS)
def simd_gemm(tag, a, bw, c, r0, r1):
    """``c[r, :] = a[r] @ b`` for rows ``r0 <= r < r1``: ``b`` as words ``bw``
    [N/16, K2/2, 16], ``c`` float32 [M, N/16*16]."""
    K2 = a.shape[1]
    KK = bw.shape[1]
    ldc = c.shape[1]
    nt = (0,)
    for r in range(r0, r1, 6):
        m = min(6, r1 - r)
        ar = a.ctypes.data + 2 * r * K2
        cr = c.ctypes.data + 4 * r * ldc
        for nb in range(bw.shape[0]):
            w = bw.ctypes.data + 64 * nb * KK
            o = cr + 64 * nb
            if m == 6:
                _g6(tag, nt, ar, K2, w, KK, o, ldc)
            elif m == 5:
                _g5(tag, nt, ar, K2, w, KK, o, ldc)
            elif m == 4:
                _g4(tag, nt, ar, K2, w, KK, o, ldc)
            elif m == 3:
                _g3(tag, nt, ar, K2, w, KK, o, ldc)
            elif m == 2:
                _g2(tag, nt, ar, K2, w, KK, o, ldc)
            else:
                _g1(tag, nt, ar, K2, w, KK, o, ldc)


@njit(cache=True, nogil=True)
def bits_rows(u, out):
    """``out[r, c]`` (uint16 [M, >= K]) = the bf16 bits of ``u[r, c]``."""
    M, K = u.shape
    for r in range(M):
        row = u[r]
        o = out[r]
        for c in range(K):
            o[c] = _rb(row[c])


@njit(cache=True, nogil=True)
def bits_dy(u, a, at, db):
    """:func:`bits_rows` ``(u, a)`` and ``at[k, m]`` = the bits of ``u[m, k]``
    (uint16 [K, >= M]) in one pass over ``u`` [M, K], 32 rows at a time through a
    scratch block (as :func:`pack_dy`); ``db[k] += Σ_m u[m, k]`` (float32 values)."""
    M, K = u.shape
    uf = u.view(np.float32)
    tmp = np.empty((32, K), np.uint16)
    for mb in range((M + 31) >> 5):
        m0 = mb * 32
        mn = min(32, M - m0)
        for i in range(mn):
            row = u[m0 + i]
            frow = uf[m0 + i]
            t = tmp[i]
            o = a[m0 + i]
            for c in range(K):
                t[c] = _rb(row[c])
                db[c] += frow[c]
            for c in range(K):
                o[c] = t[c]
        for k in range(K):
            o = at[k, m0:m0 + mn]
            for i in range(mn):
                o[i] = tmp[i, k]


def _pairs(words):
    """A B operand's uint32 words as gemm's uint16 [N/16, K/2, 16, 2] (a view)."""
    return words.view(np.uint16).reshape(words.shape + (2,))


def _bits32(a):
    """float32 ``a`` (2-D) as its uint32 bits, C-contiguous (a copy only if needed)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --------------------------------------------------------------------------- the layer
class LinearBF16:
    """The products of one Linear layer in the bf16 mode, with its packing
    buffers (reused while the shapes stay; their padding stays zero). Calls from
    several Python threads take turns (the buffers are the layer's, one set)."""

    def __init__(self):
        self._buf = {}
        self._lock = threading.Lock()

    def __getstate__(self):          # the buffers are a cache: not pickled, not copied
        return {}

    def __setstate__(self, state):
        self.__init__()

    def _zeros(self, key, dims, shape, dtype=np.uint16):
        """The buffer ``key`` for operands of sizes ``dims``: zeros when new;
        kept while ``dims`` stay (what a pack leaves unwritten, the padding,
        stays zero: a smaller operand in the same padded shape would not)."""
        got = self._buf.get(key)
        if got is None or got[0] != dims:
            got = self._buf[key] = (dims, aligned(shape, dtype))
        return got[1]

    def _round(self, key, a):
        """``a`` rounded to bf16 values (float32) in the buffer ``"r" + key``
        (the emulated route's operands: buffers, not fresh pages per call)."""
        return _rounded(a, self._zeros("r" + key, a.shape, a.shape, np.uint32))

    def forward(self, x2, w, b, matmul):
        """``round(x2) round(w)ᵀ (+ b)`` for ``x2`` [N, F] float32, ``w`` [O, F]."""
        with self._lock:
            return self._forward(x2, w, b, matmul)

    def backward(self, x2, dy2, w, gw, gb, matmul):
        """``dx = round(dy2) round(w)``; ``gw += round(dy2)ᵀ round(x2)``,
        ``gb += Σ dy2`` (float32, unrounded). Returns ``dx`` [N, F]."""
        with self._lock:
            return self._backward(x2, dy2, w, gw, gb, matmul)

    def _forward(self, x2, w, b, matmul):
        N, F = x2.shape
        O = w.shape[0]
        r = route(N)
        if r == "native":
            return self._forward_native(x2, w, b)
        if r != "amx":
            y = matmul(self._round("x", x2), self._round("w", w).T)
            if b is not None:
                y += b
            return y
        from fastrnn.kernels import amx_gemm
        Np, Fp, Op = _up(N, 32), _up(F, 32), _up(O, 32)
        a = self._zeros("x", (N, F), (Np // 16, Fp // 32, 16, 32))
        bw = self._zeros("wt", (O, F), (Op // 16, Fp // 2, 16), np.uint32)
        pack_cols_t(_bits32(w), bw)
        ub = _bits32(x2)
        c = aligned((Np, Op), np.float32, zero=False)
        y = np.empty((N, O), np.float32)
        bias = np.zeros(O, np.float32) if b is None else b

        def rows(r0, r1):            # rows [r0, r1) of y (r0 a multiple of 32)
            p1 = Np if r1 == N else r1
            pack_rows(ub[r0:r1], a[r0 // 16:p1 // 16])
            amx_gemm.gemm(a[r0 // 16:p1 // 16], _pairs(bw), c[r0:p1], 0, Op)
            _epilogue(c[r0:r1], bias, y[r0:r1])
        mid = min(N, _up(N // 2, 32))
        _run([lambda: rows(0, mid), lambda: rows(mid, N)] if 0 < mid < N
             else [lambda: rows(0, N)], 2.0 * N * F * O)
        return y

    def _backward(self, x2, dy2, w, gw, gb, matmul):
        N, F = x2.shape
        O = w.shape[0]
        r = route(N)
        if r == "native":
            return self._backward_native(x2, dy2, w, gw, gb)
        if r != "amx":
            if gb is not None:
                gb += dy2.sum(axis=0)
            dyr = self._round("dy", dy2)
            gw += matmul(dyr.T, self._round("x", x2))
            return matmul(dyr, self._round("w", w))
        from fastrnn.kernels import amx_gemm
        Np, Fp, Op = _up(N, 32), _up(F, 32), _up(O, 32)
        # dy's two A operands: rows (dx) and transposed (dW), and the bias gradient
        a = self._zeros("dy", (N, O), (Np // 16, Op // 32, 16, 32))
        at = self._zeros("dyt", (N, O), (Op // 16, Np // 32, 16, 32))
        pack_dy(_bits32(dy2), a, at, np.zeros(O, np.float32) if gb is None else gb)
        bw = self._zeros("w", (O, F), (Fp // 16, Op // 2, 16), np.uint32)
        bx = self._zeros("xb", (N, F), (Fp // 16, Np // 2, 16), np.uint32)
        cw = self._zeros("dw", (O, F), (Op, Fp), np.float32)
        c = aligned((Np, Fp), np.float32, zero=False)

        def dx():                    # dx [N, F] = dy [N, O] w [O, F]
            pack_cols(_bits32(w), bw)
            amx_gemm.gemm(a, _pairs(bw), c, 0, Fp)

        def dw():                    # dW [O, F] = dyᵀ [O, N] x [N, F]
            pack_cols(_bits32(x2), bx)
            amx_gemm.gemm(at, _pairs(bx), cw, 0, Fp)
        _run([dx, dw], 4.0 * N * F * O)
        gw += cw[:O, :F]
        return c[:N, :F]


    def _forward_native(self, x2, w, b):
        N, F = x2.shape
        O = w.shape[0]
        K2, O16 = F + (F & 1), _up(O, 16)
        a = self._zeros("nx", (N, F), (N, K2))
        bw = self._zeros("nwt", (O, F), (O16 // 16, K2 // 2, 16), np.uint32)
        pack_cols_t(_bits32(w), bw)
        ub = _bits32(x2)
        c = np.empty((N, O16), np.float32)
        y = np.empty((N, O), np.float32)
        bias = np.zeros(O, np.float32) if b is None else b

        def rows(r0, r1):
            bits_rows(ub[r0:r1], a[r0:r1])
            simd_gemm(NATIVE, a, bw, c, r0, r1)
            _epilogue(c[r0:r1], bias, y[r0:r1])
        mid = N // 2
        _run([lambda: rows(0, mid), lambda: rows(mid, N)], 2.0 * N * F * O)
        return y

    def _backward_native(self, x2, dy2, w, gw, gb):
        N, F = x2.shape
        O = w.shape[0]
        O2, N2, F16 = O + (O & 1), N + (N & 1), _up(F, 16)
        a = self._zeros("ndy", (N, O), (N, O2))
        at = self._zeros("ndyt", (N, O), (O, N2))
        bits_dy(_bits32(dy2), a, at, np.zeros(O, np.float32) if gb is None else gb)
        bw = self._zeros("nw", (O, F), (F16 // 16, O2 // 2, 16), np.uint32)
        bx = self._zeros("nxb", (N, F), (F16 // 16, N2 // 2, 16), np.uint32)
        cw = self._zeros("ndw", (O, F), (O, F16), np.float32)
        c = np.empty((N, F16), np.float32)

        def dx():                    # dx [N, F] = dy [N, O] w [O, F]
            pack_cols(_bits32(w), bw)
            simd_gemm(NATIVE, a, bw, c, 0, N)

        def dw():                    # dW [O, F] = dyᵀ [O, N] x [N, F]
            pack_cols(_bits32(x2), bx)
            simd_gemm(NATIVE, at, bx, cw, 0, O)
        _run([dx, dw], 4.0 * N * F * O)
        gw += cw[:, :F]
        return c[:, :F]


def _run(tasks, flops):
    """The tasks on the caller and a worker (:class:`fastrnn.kernels.plan.Tasks`),
    as the float32 Linear's products are (:func:`fastrnn.kernels.task_gemm.gemm`:
    its thresholds); each writes its own outputs, so the results do not depend
    on the threads."""
    from fastrnn.kernels.blas import get_num_threads
    from fastrnn.kernels.plan import Tasks, nthreads
    nthr = 1
    if len(tasks) > 1 and flops >= settings.split_gemm_flops:
        nthr = nthreads(get_num_threads(), settings.two_thread_step_flops, len(tasks))
    if nthr < 2:
        for t in tasks:
            t()
    else:
        Tasks(tasks).run(nthr)
