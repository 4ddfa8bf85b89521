"""The worker pool: the threads that share a packed-kernel call with its caller.

Each worker (historically "the partner": with two threads there is one) has
its own mailbox and thread, created when a call first needs it; a call with
``n`` threads posts its jobs to up to ``n - 1`` free workers (:func:`team`),
and a worker that another call holds is skipped, never waited for. A worker
waits for jobs in compiled code, without the GIL: a posted job is claimed
within a microsecond while it spins (for up to ``SPIN_S`` after its last job,
pausing, then yielding its core), and a packed-kernel job runs right there,
its arrays rebuilt from the addresses and shapes in the mailbox, never
touching the interpreter; other jobs (BLAS tasks, the GRU/RNN kernels) are
Python callables it returns to run. After ``SPIN_S`` without a job it sleeps on a
condition that the next post notifies. The caller takes a job back (one
compare-and-swap) when the partner has not claimed it by the time the caller's
own share is done, so a partner whose core is busy never holds up a call;
the caller waits only for a job the partner is running.

Why not a pool thread (``concurrent.futures``): each submit costs tens of
microseconds and a GIL hand-off before the partner can start, so on the
millisecond-scale calls the kernels split the partner would start far behind
the caller; a spinning partner that takes its job with one atomic claim starts
at once (the measurements are in this file's git history).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
from numba import njit

from fastrnn.kernels.packed_lstm import (lstm_bwd_kernel, lstm_fwd_kernel, run_bwd_job,
                                         run_fwd_job)
from fastrnn.kernels.atomics import (atomic_cas, atomic_load, atomic_store, cpu_pause, cycles,
                                     sched_yield)
from fastrnn.kernels.simd import esize
from fastrnn.kernels.sync import A, CLAIM, DONE, KIND, POST, SLEEP, SPIN, VWF, field3, wait
from fastrnn.kernels.vector import make_tag, tag_code, tag_of_code, vector_width

__all__ = ["Partner", "partner", "partners", "team", "encode", "JOB_KINDS", "K_PY",
           "K_LSTM_FWD", "K_LSTM_BWD", "SPIN_S"]

SPIN_S = 0.002
K_PY, K_LSTM_FWD, K_LSTM_BWD = 1, 2, 3


def encode(args):
    """A kernel's arguments after ``tag`` as int64 words: an array as its address
    and shape, None as four zeros (the peepholes' place), numbers as themselves."""
    out = []
    for a in args[1:]:
        if isinstance(a, np.ndarray):
            out.append(a.ctypes.data)
            out.extend(a.shape)
        elif a is None:
            out.extend((0, 0, 0, 0))
        else:
            out.append(int(a))
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def _partner_loop(tag, mb, spin):
    """The partner's wait-and-run loop. Returns 1 with a Python job claimed, 2 when
    a job needs another tag (vector width or dtype, see :func:`tag_code`), 0
    after ``spin`` cycles without a job."""
    base = mb.ctypes.data
    idle = cycles()
    pauses = 0
    while True:
        post = atomic_load(base + 8 * POST)
        claim = atomic_load(base + 8 * CLAIM)
        if post > claim:
            kind = mb[KIND]
            if kind != K_PY and mb[VWF] != len(tag) * 16 + esize(tag):
                return 2
            if not atomic_cas(base + 8 * CLAIM, claim, post):
                continue                             # the caller took it back
            if kind == K_PY:
                return 1
            if kind == K_LSTM_FWD:
                if mb[A + 20] == 0:
                    run_fwd_job(tag, mb, None)
                else:
                    run_fwd_job(tag, mb, field3(tag, mb, A + 20))
            else:
                if mb[A + 11] == 0:
                    run_bwd_job(tag, mb, None)
                else:
                    run_bwd_job(tag, mb, field3(tag, mb, A + 11))
            atomic_store(base + 8 * DONE, post)
            idle = cycles()
            pauses = 0
        elif cycles() - idle > spin:
            return 0
        elif pauses < SPIN:
            cpu_pause()
            pauses += 1
        else:
            sched_yield()


@njit(nogil=True, cache=True)
def _settle(mb, seq):
    """After the caller's share: take job ``seq`` back if it is unclaimed (True),
    else wait until the partner has done it (False)."""
    base = mb.ctypes.data
    if atomic_cas(base + 8 * CLAIM, seq - 1, seq):
        return True
    wait(base + 8 * DONE, seq)
    return False


@njit(nogil=True, cache=True)
def _publish(mb, i, v):
    atomic_store(mb.ctypes.data + 8 * i, v)


def _cycles_per_second():
    c0, t0 = _now_cycles(), time.perf_counter()
    time.sleep(0.005)
    return (_now_cycles() - c0) / (time.perf_counter() - t0)


@njit(cache=True)
def _now_cycles():
    return cycles()


class Partner:
    """The partner thread and its mailbox (see the module doc)."""

    def __init__(self, index=0):
        self.index = index
        self.mb = np.zeros(64, np.int64)
        self.lock = threading.Lock()          # one call at a time uses the partner
        self.cv = threading.Condition()
        self.fn = self.keep = self.error = None
        self.thread = None
        self.spin = 0

    def _ensure(self):
        if self.thread is None or not self.thread.is_alive():
            if not self.spin:
                self.spin = int(SPIN_S * _cycles_per_second())
            self.thread = threading.Thread(target=self._loop, daemon=True,
                                           name=f"fastrnn-worker-{self.index}")
            self.thread.start()

    def _loop(self):
        mb = self.mb
        tag = make_tag(vector_width())
        while True:
            r = _partner_loop(tag, mb, self.spin)
            if r == 1:
                seq = int(mb[CLAIM])
                try:
                    self.fn()
                except BaseException as e:     # handed to the caller by finish()
                    self.error = e
                finally:
                    _publish(mb, DONE, seq)
            elif r == 2:
                tag = tag_of_code(int(mb[VWF]))
            else:
                with self.cv:
                    mb[SLEEP] = 1
                    if mb[POST] == mb[CLAIM]:
                        self.cv.wait(1.0)
                    mb[SLEEP] = 0

    def post(self, kind, fields=(), fn=None, keep=None, tag=None):
        """Post a job (its sequence number), or 0 when another call holds the partner.
        ``tag``: the kernel's (a packed-kernel job; None for a Python job)."""
        if not self.lock.acquire(blocking=False):
            return 0
        try:
            self._ensure()
            mb = self.mb
            mb[A:A + len(fields)] = fields
            mb[KIND] = kind
            mb[VWF] = 0 if tag is None else tag_code(tag)
            self.fn, self.keep = fn, keep            # keep: the job's arrays stay alive
            seq = int(mb[POST]) + 1
            _publish(mb, POST, seq)
            if mb[SLEEP]:
                with self.cv:
                    self.cv.notify()
            return seq
        except BaseException:
            self.lock.release()
            raise

    def finish(self, seq):
        """``(taken_back, seconds waited)`` for job ``seq`` (see :func:`_settle`); ends
        the call's use of the partner and raises what a Python job raised."""
        t0 = time.perf_counter()
        try:
            taken = bool(_settle(self.mb, seq))
            err, self.error = self.error, None
        finally:
            self.fn = self.keep = None
            self.lock.release()
        if err is not None:
            raise err
        return taken, time.perf_counter() - t0


JOB_KINDS = {lstm_fwd_kernel: K_LSTM_FWD, lstm_bwd_kernel: K_LSTM_BWD}
#: the pool's workers, created on demand (worker i serves thread i + 1 of a call)
partners = []
_partners_lock = threading.Lock()


def _forget_partner():
    """After ``fork``: the child has none of the parent's worker threads and must
    not run a job its parent posted; it starts a fresh pool with empty mailboxes."""
    global _partners_lock
    partners.clear()
    _partners_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_partner)


def team(k):
    """The first ``k`` workers of the pool (created as needed)."""
    pool = partners
    if len(pool) < k:
        with _partners_lock:
            while len(pool) < k:
                pool.append(Partner(len(pool)))
    return pool[:k]


def partner():
    """The first worker (the only one a two-thread call uses)."""
    return team(1)[0]
