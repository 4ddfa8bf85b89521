"""The CUDA backend's dense linear algebra: tiled GEMMs (with cuBLAS through
CuPy when it is there), bias fills, transposes and deterministic column sums.

All take C-contiguous device arrays (or views with unit stride along the last
axis) and run on the default stream, like every kernel of the backend.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .cuda_base import SIMULATOR, _device_key, _empty, _work, cuda, numba, settings

if cuda is not None:
    @cuda.jit
    def _transpose_kernel(a, out):
        # a: [M, N]  out: [N, M]
        m, n = cuda.grid(2)
        if m < a.shape[0] and n < a.shape[1]:
            out[n, m] = a[m, n]

    @cuda.jit
    def _bias_kernel(C, bias, use_bias, accumulate):
        # C: [M,N] = (C if accumulate else 0) + (bias if use_bias else 0); bias: [N]
        # (a grid-stride loop over a 1-D grid: no 65,535-block limit on M)
        M = C.shape[0]
        N = C.shape[1]
        for i in range(cuda.grid(1), M * N, cuda.gridsize(1)):
            m = i // N
            n = i - m * N
            if accumulate:
                if use_bias:
                    C[m, n] += bias[n]
            elif use_bias:
                C[m, n] = bias[n]
            else:
                C[m, n] = 0

    @cuda.jit(device=True)
    def _at(a, i, j, I, J, zero):
        """a[i, j] inside [I, J], else zero (a GEMM operand's edge tiles)."""
        if i < I and j < J:
            return a[i, j]
        return zero

    @cuda.jit(device=True)
    def _put(C, m, n, v, bias, use_bias, accumulate):
        """C[m, n] = v (+ bias[n]) (+ C[m, n]): a GEMM's output element."""
        if use_bias:
            v += bias[n]
        if accumulate:
            v += C[m, n]
        C[m, n] = v

    @cuda.jit(device=True)
    def _stage(dst, src, k_major, o0, O, k0, K, tid, nthr):
        """dst[kk, r] = op(src)[o0 + r, k0 + kk], zero past [O, K]: one slice of a
        GEMM operand into shared memory (dst [bk, bo]), where op(src) = srcᵀ
        when ``k_major`` (src [K, O]), else src [O, K]. Consecutive threads walk
        src's contiguous axis (coalesced)."""
        bk = dst.shape[0]
        bo = dst.shape[1]
        for e in range(tid, bk * bo, nthr):
            if k_major:
                kk = e // bo
                r = e - kk * bo
            else:
                r = e // bk
                kk = e - r * bk
            if o0 + r < O and k0 + kk < K:
                if k_major:
                    dst[kk, r] = src[k0 + kk, o0 + r]
                else:
                    dst[kk, r] = src[o0 + r, k0 + kk]
            else:
                dst[kk, r] = 0


@lru_cache(maxsize=None)
def _gemm_kernel(tile, np_dtype, trans_a, trans_b):
    """``C (+)= op(A) @ op(B) (+ bias)``, ``op(X) = Xᵀ`` when ``trans_x``.

    Square ``tile`` x ``tile`` thread blocks, one output element per thread;
    each operand is staged through shared memory with the thread index running
    along the operand's contiguous axis (coalesced loads for either layout).
    """
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)
    ts = tile
    ts1 = tile + 1      # padded rows: no shared-memory bank conflicts on the column reads

    @cuda.jit
    def gemm_kernel(A, B, C, bias, use_bias, accumulate):
        # A: [M,K] or [K,M]; B: [K,N] or [N,K]; C: [M,N]; bias: [N]
        sa = cuda.shared.array((ts, ts1), dt)   # sa[r, k] = op(A)[m0+r, k0+k]
        sb = cuda.shared.array((ts, ts1), dt)   # sb[k, c] = op(B)[k0+k, n0+c]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m0 = cuda.blockIdx.x * ts      # M on grid x (2**31 - 1 blocks), N on y
        n0 = cuda.blockIdx.y * ts
        M, N = C.shape
        K = A.shape[0] if trans_a else A.shape[1]
        acc = zero
        for k0 in range(0, K, ts):
            if trans_a:
                sa[tx, ty] = _at(A, k0 + ty, m0 + tx, K, M, zero)
            else:
                sa[ty, tx] = _at(A, m0 + ty, k0 + tx, M, K, zero)
            if trans_b:
                sb[tx, ty] = _at(B, n0 + ty, k0 + tx, N, K, zero)
            else:
                sb[ty, tx] = _at(B, k0 + ty, n0 + tx, K, N, zero)
            cuda.syncthreads()
            for kk in range(ts):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        m = m0 + ty
        n = n0 + tx
        if m < M and n < N:
            _put(C, m, n, acc, bias, use_bias, accumulate)

    return gemm_kernel


@lru_cache(maxsize=None)
def _gemm_blocked_kernel(bm, bn, bk, tm, tn, np_dtype, trans_a, trans_b):
    """``C (+)= op(A) @ op(B) (+ bias)`` with register blocking.

    A block of ``(bn/tn) x (bm/tm)`` threads computes a ``bm x bn`` tile of C,
    each thread ``tm x tn`` outputs held in registers, stepping through K in
    slices of ``bk`` staged in shared memory: one shared load feeds ``tn``
    (resp. ``tm``) multiply-adds instead of one, which is what bounds the
    simple one-output-per-thread kernel. Thread (tx, ty) owns rows
    ``ty + i*(bm/tm)`` and columns ``tx + j*(bn/tn)`` (interleaved, so a warp's
    shared reads are consecutive and its stores to C coalesced).
    """
    if bm % tm or bn % tn:
        raise ValueError(f"gemm_blocking: {bm}/{tm} and {bn}/{tn} must divide")
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)
    ny = bm // tm
    nx = bn // tn
    nthr = nx * ny
    sa_shape = (bk, bm)
    sb_shape = (bk, bn)
    acc_shape = (tm, tn)

    @cuda.jit
    def gemm_blocked_kernel(A, B, C, bias, use_bias, accumulate):
        # A: [M,K] or [K,M]; B: [K,N] or [N,K]; C: [M,N]; bias: [N]
        sa = cuda.shared.array(sa_shape, dt)    # sa[k, r] = op(A)[m0+r, k0+k]
        sb = cuda.shared.array(sb_shape, dt)    # sb[k, c] = op(B)[k0+k, n0+c]
        acc = cuda.local.array(acc_shape, dt)
        ra = cuda.local.array(tm, dt)
        rb = cuda.local.array(tn, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * nx + tx
        m0 = cuda.blockIdx.x * bm      # M on grid x (2**31 - 1 blocks), N on y
        n0 = cuda.blockIdx.y * bn
        M, N = C.shape
        K = A.shape[0] if trans_a else A.shape[1]
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = zero
        for k0 in range(0, K, bk):
            _stage(sa, A, trans_a, m0, M, k0, K, tid, nthr)
            _stage(sb, B, not trans_b, n0, N, k0, K, tid, nthr)
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    ra[i] = sa[kk, ty + i * ny]
                for j in range(tn):
                    rb[j] = sb[kk, tx + j * nx]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(tm):
            m = m0 + ty + i * ny
            if m < M:
                for j in range(tn):
                    n = n0 + tx + j * nx
                    if n < N:
                        _put(C, m, n, acc[i, j], bias, use_bias, accumulate)

    return gemm_blocked_kernel


_NO_BIAS = {}
#: most blocks along grid y (CUDA's limit); the GEMMs put M on x and loop over N
MAX_GRID_Y = 65535
_cupy_module = None


def cupy_module():
    global _cupy_module
    if SIMULATOR or not settings.use_cupy:
        return None
    if _cupy_module is None:
        _cupy_module = False
        try:
            import cupy
        except Exception:
            return None
        try:
            # a CuPy built for another CUDA major (cupy-cuda12x beside a CUDA 13
            # driver, or two CuPy wheels installed together) imports but fails
            # here: then the tiled kernels do every product
            cupy.cuda.Device().id
            cupy.cuda.get_cublas_handle()
            _cupy_module = cupy
        except Exception as exc:
            import warnings
            warnings.warn(f"fastrnn: CuPy is installed but does not work here ({exc}); the "
                          "CUDA backend uses its own GEMM kernels", RuntimeWarning, stacklevel=3)
    return _cupy_module or None


def as_cupy(cp, a):
    """A CuPy view of device array ``a`` built from its pointer.

    ``cp.asarray`` would read ``__cuda_array_interface__``, and when that
    names a stream CuPy synchronises on it on every call; the kernels here all
    run on the default stream, so no synchronisation is needed."""
    cai = a.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    strides = cai.get("strides")
    if strides is None:             # C-contiguous
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    extent = 0
    if all(shape):
        extent = dtype.itemsize + sum((n - 1) * st for n, st in zip(shape, strides))
    mem = cp.cuda.UnownedMemory(cai["data"][0], extent, a, cp.cuda.Device().id)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0), strides=strides)


def _bias(C, bias, accumulate):
    """``C = (C if accumulate else 0) + bias`` (bias None: zero), in place."""
    M, N = C.shape
    tpb = settings.threads
    blocks = max(1, min((M * N + tpb - 1) // tpb, 4096))
    _bias_kernel[blocks, tpb](C, bias if bias is not None else _no_bias(C.dtype),
                              bias is not None, bool(accumulate))


def _no_bias(dtype):
    dtype = np.dtype(dtype)
    key = (_device_key(), dtype.str)
    bias = _NO_BIAS.get(key)
    if bias is None:
        bias = _NO_BIAS[key] = cuda.to_device(np.zeros(1, dtype))
    return bias


def device_gemm(A, B, C, bias=None, accumulate=False, trans_a=False, trans_b=False, big=False):
    """``C (+)= op(A) @ op(B) (+ bias)`` on device arrays (C: [M, N]).

    ``big`` marks the time-parallel products, which go to cuBLAS when CuPy is
    there; per-step products do when they have ``settings.cupy_min_rows`` rows.
    An empty inner dimension (K = 0) gives ``C (+)= bias``.
    """
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    if M == 0 or N == 0:
        return C
    if K == 0:
        _bias(C, bias, accumulate)
        return C
    cp = cupy_module() if (big or M >= settings.cupy_min_rows) else None
    if cp is not None:
        if bias is not None:            # C = bias (+ C), then C = op(A) op(B) + 1 * C
            _bias(C, bias, accumulate)
        beta = 1.0 if (bias is not None or accumulate) else 0.0
        a, b, c = as_cupy(cp, A), as_cupy(cp, B), as_cupy(cp, C)
        gemm = getattr(getattr(cp, "cublas", None), "gemm", None)
        if gemm is not None:
            gemm("T" if trans_a else "N", "T" if trans_b else "N", a, b, out=c, alpha=1.0,
                 beta=beta)
        else:   # pragma: no cover - CuPy without cupy.cublas (before v9)
            prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
            if beta:
                c += prod
            else:
                c[...] = prod
        return C
    dtype = np.dtype(C.dtype)
    use_bias = bias is not None
    if not use_bias:
        bias = _no_bias(dtype)
    if M >= settings.blocked_min_rows:
        bm, bn, bk, tm, tn = settings.gemm_blocking
        kernel = _gemm_blocked_kernel(bm, bn, bk, tm, tn, dtype.type, bool(trans_a),
                                      bool(trans_b))
        block = (bn // tn, bm // tm)
    else:
        ts = settings.tile
        kernel = _gemm_kernel(ts, dtype.type, bool(trans_a), bool(trans_b))
        bm = bn = ts
        block = (ts, ts)
    step = MAX_GRID_Y * bn         # columns per launch
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        if n0 or n1 < N:
            Bs = B[n0:n1] if trans_b else B[:, n0:n1]
            Cs = C[:, n0:n1]
            bs = bias[n0:n1] if use_bias else bias
        else:
            Bs, Cs, bs = B, C, bias
        grid = ((M + bm - 1) // bm, (n1 - n0 + bn - 1) // bn)
        kernel[grid, block](A, Bs, Cs, bs, use_bias, bool(accumulate))
    return C


def _transpose(a, tag=None):
    """``aᵀ`` (a: [M, N]) as a C-contiguous array: a workspace when ``tag``."""
    M, N = a.shape
    dtype = np.dtype(a.dtype)
    out = _work(tag, (N, M), dtype) if tag else _empty((N, M), dtype)
    if M and N:
        _transpose_kernel[((M + 15) // 16, (N + 15) // 16), (16, 16)](a, out)
    return out


@lru_cache(maxsize=None)
def _colsum_kernels(bx, by, np_dtype):
    """Column sums in two deterministic passes (see :func:`column_sums`)."""
    dt = numba.from_dtype(np.dtype(np_dtype))
    zero = np.dtype(np_dtype).type(0)

    @cuda.jit
    def partial(a, b, use_b, part, chunk):
        # a, b: [M,N] (b multiplies a elementwise when use_b); part: [P,N], the
        # sum of rows [p*chunk, (p+1)*chunk) for p = blockIdx.y
        sh = cuda.shared.array((by, bx), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n = cuda.blockIdx.x * bx + tx
        p = cuda.blockIdx.y
        M = a.shape[0]
        r1 = min(M, (p + 1) * chunk)
        acc = zero
        if n < a.shape[1]:
            # consecutive threads read consecutive columns of a row: coalesced
            for r in range(p * chunk + ty, r1, by):
                if use_b:
                    acc += a[r, n] * b[r, n]
                else:
                    acc += a[r, n]
        sh[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and n < a.shape[1]:
            for i in range(1, by):
                acc += sh[i, tx]
            part[p, n] = acc

    @cuda.jit
    def final(part, out, accumulate):
        # part: [P,N]; out: [N] (+)= sum over p, in order
        n = cuda.grid(1)
        if n < out.shape[0]:
            acc = part[0, n]
            for p in range(1, part.shape[0]):
                acc += part[p, n]
            if accumulate:
                acc += out[n]
            out[n] = acc

    return partial, final


def column_sums(a, out, b=None, accumulate=False):
    """``out[n] (+)= sum_m a[m, n] (* b[m, n])`` (a, b: [M, N]; out: [N]).

    One thread per column adding ``M = T*B`` rows in a row would take
    milliseconds at large batch; instead blocks of ``colsum_block`` threads
    reduce chunks of ``colsum_rows`` rows of a tile of columns in shared
    memory, and a second pass adds the (at most 1024) chunks per column, in a
    fixed order: the result does not depend on scheduling.
    """
    M, N = a.shape
    if N == 0:
        return out
    if M == 0:
        if not accumulate:
            _bias(out.reshape(1, N), None, False)
        return out
    bx, by = settings.colsum_block
    P = min(1024, -(-M // max(1, settings.colsum_rows)))
    chunk = -(-M // P)
    P = -(-M // chunk)
    partial, final = _colsum_kernels(bx, by, np.dtype(a.dtype).type)
    direct = P == 1 and not accumulate
    part = out.reshape(1, N) if direct else _work("colsum", (P, N), a.dtype)
    partial[((N + bx - 1) // bx, P), (bx, by)](a, b if b is not None else a, b is not None,
                                                part, chunk)
    if not direct:
        tpb = settings.threads
        final[(N + tpb - 1) // tpb, tpb](part, out, bool(accumulate))
    return out

