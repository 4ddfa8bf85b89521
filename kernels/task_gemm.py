"""The task-split GEMM: large products around the loops (the weight gradients,
the training blocks' Linear layers, the optimizers' products) run on one BLAS
thread per task, split in tasks that the caller and the workers claim
one at a time (:class:`fastrnn.kernels.plan.Tasks`), so a late worker never
holds up work it has not started. Splits depend on the shape only: results are
bitwise the same on any number of threads.
"""
from __future__ import annotations

import numpy as np

from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.plan import Tasks, nthreads

__all__ = ["gemm", "splits", "DW_TASKS"]

#: tasks (row ranges) of a weight-gradient GEMM ``dgᵀ [x h]`` when it is split: its
#: long reduction over every step's rows runs 7-8% slower per extra task in
#: OpenBLAS (one thread, (3200x512)ᵀ(3200x192): 3.51 ms whole, 3.81 in two, 4.27
#: in four), so one task per thread
DW_TASKS = 2


def splits(n, k):
    """k contiguous ranges covering [0, n)."""
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def gemm(a, b, out, max_threads):
    """``out[...] = a @ b`` for 2-D float arrays on NumPy's BLAS, one BLAS thread per
    task (the caller sets that), split in tasks for the caller and the workers
    when large: by rows of ``a``, or by columns of ``b`` when ``a`` has few rows."""
    M, K = a.shape
    N = b.shape[1]
    nthr = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
    if 2.0 * M * K * N < settings.split_gemm_flops:     # the split depends on the shape only:
        np.matmul(a, b, out=out)                 # results do not depend on the threads
        return out
    if M >= 128:
        Tasks([(lambda r0=r0, r1=r1: np.matmul(a[r0:r1], b, out=out[r0:r1]))
                for r0, r1 in splits(M, min(8, M // 64))]).run(nthr)
        return out

    def cols(c0, c1):
        out[:, c0:c1] = a @ b[:, c0:c1]
    Tasks([(lambda c0=c0, c1=c1: cols(c0, c1)) for c0, c1 in splits(N, 2)]).run(nthr)
    return out
