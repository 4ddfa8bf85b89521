"""The packed kernels' step loop and what its threads synchronise with: panel
claims (one compare-and-swap), spin-then-yield waits, and the layout of the
partner thread's mailbox (:mod:`fastrnn.kernels.worker`) with the readers that
rebuild a job's arrays from it.

Every split depends on the shape only: results are bitwise the same on any
number of threads.
"""
from __future__ import annotations

from numba import carray, njit

from fastrnn.kernels.atomics import (atomic_add, atomic_cas, atomic_load, cpu_pause, cycles,
                                     i64_ptr, sched_yield)
from fastrnn.kernels.simd import fptr

__all__ = ["SPIN", "wait", "claim", "panel_steps", "POST", "CLAIM", "DONE", "SLEEP", "KIND",
           "VWF", "A", "field1", "field2", "field3", "ifield1"]

#: spins (``pause``, ~40 ns each) before a waiting thread starts yielding its core
SPIN = 2000


@njit(inline="always")
def wait(p, target):
    """Wait until the int64 at ``p`` reaches ``target``; returns the cycles it waited."""
    if atomic_load(p) >= target:
        return 0
    t0 = cycles()
    spins = 0
    while atomic_load(p) < target:
        if spins < SPIN:
            cpu_pause()
            spins += 1
        else:
            sched_yield()
    return cycles() - t0


@njit(inline="always")
def claim(flags, p, s, nthr):
    """Claim panel ``p`` for step ``s`` (always granted with one thread). With more
    than two threads a claimed panel is seen by a plain load first (no write to
    a line the others are reading)."""
    if nthr == 1:
        return True
    if nthr > 2 and atomic_load(flags + 8 * p) != s:
        return False
    return atomic_cas(flags + 8 * p, s, s + 1)


@njit(inline="always")
def panel_steps(n, P, backward, ctl, tid, nthr, panel, args, opt):
    """The time loop of every packed kernel: ``n`` steps (last to first when
    ``backward``), each over ``P`` panels that the threads claim (two threads:
    thread 0 from the first panel up, thread 1 from the last down, each stopping
    at the first panel the other has; more: thread t from panel ``t*P//nthr`` up
    and round, skipping the panels others have), then a step barrier;
    ``panel(s, p, tid, P, args, opt)`` does the cell's work for step ``s`` and
    panel ``p`` (``opt``: a compile-time option such as the peephole vectors or
    None, passed apart from ``args`` so that branches on it are pruned).
    ctl: [P+1] int64 claim counters, then the done counter. Returns the
    fraction of the call's cycles spent waiting for the other threads."""
    flags = ctl.ctypes.data
    done = flags + 8 * P
    t0 = cycles()
    waited = 0
    for k in range(n):
        s = n - 1 - k if backward else k
        if nthr > 1 and k > 0:
            waited += wait(done, P * k)
        cnt = 0
        start = tid * P // nthr
        for i in range(P):
            if nthr <= 2:
                p = i if tid == 0 else P - 1 - i
            else:
                p = start + i
                if p >= P:
                    p -= P
            if not claim(flags, p, k, nthr):
                if nthr <= 2:
                    break
                continue
            cnt += 1
            panel(s, p, tid, P, args, opt)
        if nthr > 1:
            atomic_add(done, cnt)
    if nthr > 1 and tid == 0:
        waited += wait(done, P * n)
    return waited / max(1, cycles() - t0)


# mailbox words: posted, claimed and done sequence numbers, sleeping flag, job
# kind, the job's tag (vector.tag_code), then the job's fields
POST, CLAIM, DONE, SLEEP, KIND, VWF, A = 0, 1, 2, 3, 4, 5, 8


@njit(inline="always")
def field1(tag, mb, i):
    """The 1-d array (of ``tag``'s element type) at mailbox words i (address), i+1 (shape)."""
    return carray(fptr(tag, mb[i]), (mb[i + 1],))


@njit(inline="always")
def field2(tag, mb, i):
    """The 2-d array at mailbox words i, i+1.. (see :func:`field1`)."""
    return carray(fptr(tag, mb[i]), (mb[i + 1], mb[i + 2]))


@njit(inline="always")
def field3(tag, mb, i):
    """The 3-d array at mailbox words i, i+1.. (see :func:`field1`)."""
    return carray(fptr(tag, mb[i]), (mb[i + 1], mb[i + 2], mb[i + 3]))


@njit(inline="always")
def ifield1(mb, i):
    """The 1-d int64 array at mailbox words i, i+1."""
    return carray(i64_ptr(mb[i]), (mb[i + 1],))
