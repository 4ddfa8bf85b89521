"""Thread planning for the packed kernels: how many threads a call uses, how
it splits (panels or rows), the back-off when the workers are late, and the
tasks the caller and the workers claim one at a time.

A call uses at most ``get_num_threads()`` threads, and (unless
``settings.oversubscribe``) no more than the cores the process may run on
(:func:`usable_cores`): the caller plus up to that many minus one workers of
the pool (:mod:`fastrnn.kernels.worker`).

"rows": when the packed weights fit one core's L2 (:func:`row_split_bytes`),
the batch rows are cut into one range per thread of about equal work (rows
never interact): each thread runs the whole loop on its rows, no per-step
synchronisation; a range whose worker does not come (busy with another call,
or not yet claimed when the caller is done with its own) is run by the caller.
"panels": otherwise all threads run the same step loop and each panel of each
step is claimed with one compare-and-swap on its counter (it holds the last
step it was claimed for): with two threads thread 0 from the first panel up,
thread 1 from the last down; with more, thread t from panel ``t*P/n`` up (and
round), skipping claimed panels; so on a quiet machine each thread keeps its
part of ``U`` hot in its own L2, and when one thread is late (its core is
busy) the others claim the rest: a step never waits for a thread that has not
started it. A thread waits only for a panel another has claimed and not
finished: it spins briefly (``pause``), then yields its core (``sched_yield``).
Calls under ``settings.row_split_flops`` (ten times that with fewer than 8
rows) run on one thread; a step's panels are shared by at most one thread per
``settings.two_thread_step_flops / 2`` FLOPs of the step. A call in which the
caller spent more than ``settings.late_wait`` of its time waiting for the
workers makes the following calls run on one thread for 50 ms (doubling while
it happens again, reset by one good call), so a busy machine costs little more
than one thread's time.
Every split depends on the shape only (the row ranges hold the same rows'
arithmetic whatever their cut): results are bitwise the same on any number of
threads.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from fastrnn.kernels.blas import usable_cores
from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.worker import JOB_KINDS, K_PY, encode, team

__all__ = ["nthreads", "usable_cores", "note", "backoff", "l2_bytes", "row_split_bytes", "Plan", "pair", "Tasks"]

backoff = {"until": 0.0, "span": 0.05}
_backoff_lock = threading.Lock()


def _fresh_lock():
    """After ``fork``: the lock may have been held by a thread the child lacks."""
    global _backoff_lock
    _backoff_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)


def nthreads(max_threads, step_flops, panels):
    """Threads for a call: 1 below ``settings.two_thread_step_flops`` per step, with
    fewer than 2 panels, or while backing off; else ``max_threads``, capped by the
    usable cores (unless ``settings.oversubscribe``) and by ``panels``."""
    if max_threads < 2 or panels < 2 or step_flops < settings.two_thread_step_flops:
        return 1
    if time.monotonic() < backoff["until"]:
        return 1
    n = int(max_threads) if settings.oversubscribe else min(int(max_threads), usable_cores())
    return max(1, min(n, panels))


def note(nthr, waited):
    """After a call on several threads: back off to one thread if the caller spent
    more than ``settings.late_wait`` of it waiting for the workers."""
    if nthr < 2:
        return
    with _backoff_lock:
        if waited > settings.late_wait:
            backoff["until"] = time.monotonic() + backoff["span"]
            backoff["span"] = min(backoff["span"] * 2, 2.0)
        else:        # one good call ends the doubling: a single hiccup costs 50 ms
            backoff["span"] = 0.05


def l2_bytes(default=1 << 20):
    """One core's L2 cache in bytes (Linux sysfs), ``default`` where unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            with open(os.path.join(base, d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(base, d, "size")) as f:
                txt = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(txt[-1:], 1)
            return int(txt.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return default


#: packed weights up to this size fit one core's L2 with room to spare (90% of
#: it, 0.5-4 MiB; 1 MiB where the L2 size is unknown): two threads then split the
#: batch rows (each runs the whole loop on its rows, no per-step synchronisation)
#: instead of each step's panels (``settings.row_split_bytes`` overrides it)
ROW_SPLIT_BYTES = int(min(4 << 20, max(512 << 10, 0.9 * l2_bytes())))


def row_split_bytes():
    """Packed weights up to this many bytes split the rows, not the panels."""
    rb = settings.row_split_bytes
    return ROW_SPLIT_BYTES if rb is None else rb


def row_cuts(lens_sorted, k):
    """``k + 1`` increasing row bounds from 0 to B cutting rows sorted longest
    first into ``k`` ranges of about equal work (steps), none empty."""
    B = len(lens_sorted)
    work = np.cumsum(lens_sorted)
    cuts = [0]
    for j in range(1, k):
        c = int(np.searchsorted(work, work[-1] * j / k) + 1)
        cuts.append(min(max(c, cuts[-1] + 1), B - (k - j)))
    cuts.append(B)
    return cuts


class Plan:
    """How one kernel call uses the threads: ``mode`` "one", "panels" (``nthr``
    threads share every step, claiming panels) or "rows" (the row ranges
    ``cuts[i]:cuts[i+1]`` run as independent tasks)."""

    __slots__ = ("mode", "cuts", "B", "nthr")

    def __init__(self, max_threads, B, step_flops, total_flops, panels, wbytes, lens_sorted):
        self.B, self.cuts, self.mode, self.nthr = B, [0, B], "one", 1
        few = B < 2 * settings.row_split_min_rows
        enough = total_flops >= settings.row_split_flops * (10 if few else 1)
        if not enough or max_threads < 2:                 # one thread, without asking more
            return
        cap = nthreads(max_threads, settings.two_thread_step_flops, 1 << 30)
        if cap < 2:                                       # capped, or backing off
            return
        if wbytes <= row_split_bytes() and B >= 2 and enough:
            # each range keeps row_split_min_rows rows (two ranges at least)
            k = min(cap, B, max(2, B // max(1, settings.row_split_min_rows)))
            self.cuts = row_cuts(lens_sorted, k)
            self.mode, self.nthr = "rows", k
        elif panels >= 2 and step_flops >= settings.two_thread_step_flops and enough:
            # one thread per half the two-thread threshold of a step's work
            per = max(2, int(2 * step_flops / max(settings.two_thread_step_flops, 1.0)))
            self.mode, self.nthr = "panels", min(cap, panels, per)

    @property
    def cut(self):
        """The first range's end (two-range plans)."""
        return self.cuts[1]

    def launch(self, kernel, args_of):
        """``kernel(*args_of(tid, nthr, r0, r1))`` as planned."""
        if self.mode == "one":
            kernel(*args_of(0, 1, 0, self.B))
        elif self.mode == "panels":
            # the caller's kernel returns once every panel of every step is done: a
            # worker that never claimed its job has nothing left to do
            k = self.nthr
            note(k, run_team(kernel, [args_of(t, k, 0, self.B) for t in range(1, k)],
                             lambda: kernel(*args_of(0, k, 0, self.B)), None))
        else:
            c = self.cuts
            rng = list(zip(c[:-1], c[1:]))
            note(self.nthr, run_team(
                kernel, [args_of(0, 1, r0, r1) for r0, r1 in rng[1:]],
                lambda: kernel(*args_of(0, 1, *rng[0])),
                [(lambda r0=r0, r1=r1: kernel(*args_of(0, 1, r0, r1))) for r0, r1 in rng[1:]]))


def run_team(kernel, worker_args, own, take_backs):
    """``own()`` here while worker i runs ``kernel(*worker_args[i])``; a job that a
    worker has not claimed when ``own`` returns (or that no free worker took:
    another call holds it) is taken back by the caller, which runs
    ``take_backs[i]()`` (None: nothing left to do). Returns the fraction of the
    call the caller waited (for the back-off)."""
    t0 = time.perf_counter()
    kind = JOB_KINDS.get(kernel)
    posted = []                                    # (index, worker, seq)
    for i, (mate, args) in enumerate(zip(team(len(worker_args)), worker_args)):
        if kind is not None:
            seq = mate.post(kind, encode(args), keep=args, tag=args[0])
        else:
            seq = mate.post(K_PY, fn=lambda args=args: kernel(*args))
        if seq:
            posted.append((i, mate, seq))
    done = {i for i, _, _ in posted}
    waited = 0.0
    r = None
    try:
        r = own()
    finally:
        errors = []
        for i, mate, seq in posted:
            try:
                taken, w = mate.finish(seq)
            except BaseException as e:           # every worker is released first
                errors.append(e)
                continue
            waited += w
            if taken:
                done.discard(i)
        if errors:
            raise errors[0]
    if take_backs is not None:
        for i, fn in enumerate(take_backs):
            if i not in done:
                fn()
    inner = r if isinstance(r, float) else 0.0      # the panel kernels' own waits
    return inner + waited / max(time.perf_counter() - t0, 1e-9)


def pair(kernel, partner_args, own, take_back):
    """:func:`run_team` with one worker (two threads)."""
    return run_team(kernel, [partner_args], own, None if take_back is None else [take_back])


class Tasks:
    """Independent tasks run by the caller and (when they come) the workers.

    Tasks are claimed one at a time (``next`` on a shared iterator, atomic
    under the GIL; each task releases the GIL in BLAS), so a worker that is
    late never holds up work it has not started; the caller waits only for
    tasks the workers are running."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.it = iter(range(len(tasks)))

    def work(self):
        for i in self.it:
            self.tasks[i]()

    def run(self, nthr):
        """Run every task on up to ``nthr`` threads; returns the fraction of the
        time the caller waited."""
        t0 = time.perf_counter()
        posted = []
        k = min(nthr, len(self.tasks)) - 1
        if k > 0:
            for mate in team(k):
                seq = mate.post(K_PY, fn=self.work)
                if seq:
                    posted.append((mate, seq))
        waited = 0.0
        try:
            self.work()
        finally:
            errors = []
            for mate, seq in posted:
                try:
                    waited += mate.finish(seq)[1]
                except BaseException as e:
                    errors.append(e)
            if errors:
                raise errors[0]
        return waited / max(time.perf_counter() - t0, 1e-9)
