"""Thread planning for the packed kernels: how many threads a call uses, how
it splits (panels or rows), the back-off when the partner is late, and the
tasks the caller and the partner claim one at a time.

"rows": when the packed weights fit one core's L2 (:func:`row_split_bytes`),
the caller and the partner each run the whole loop on their own batch rows
(rows never interact): no per-step synchronisation, and a partner that does not
come leaves its rows to the caller.
"panels": otherwise both run the same step loop and each panel of each step
is claimed with one compare-and-swap on its counter (it holds the last step
it was claimed for), thread 0 from the first panel up, thread 1 from the last
down, so on a quiet machine each thread keeps its half of ``U`` hot in its own
L2, and when one thread is late (its core is busy) the other claims the rest:
a step never waits for a thread that has not started it. A thread waits only
for a panel the other has claimed and not finished: it spins briefly
(``pause``), then yields its core (``sched_yield``).
Calls under ``settings.row_split_flops`` (ten times that with fewer than 8
rows) run on one thread. A call in which the caller spent more than half its
time waiting for the partner makes the following calls run on one thread for
50 ms (doubling while it happens again, reset by one good call), so a busy
machine costs little more than one thread's time.
Every split depends on the shape only: results are bitwise the same on one
thread or two.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from fastrnn.kernels.cpu_settings import settings
from fastrnn.kernels.worker import JOB_KINDS, K_PY, encode, partner

__all__ = ["nthreads", "note", "backoff", "l2_bytes", "row_split_bytes", "Plan", "pair", "Tasks"]

backoff = {"until": 0.0, "span": 0.05}
_backoff_lock = threading.Lock()


def nthreads(max_threads, step_flops, panels):
    if max_threads < 2 or panels < 2 or step_flops < settings.two_thread_step_flops:
        return 1
    if time.monotonic() < backoff["until"]:
        return 1
    return 2


def note(nthr, waited):
    """After a two-thread call: back off to one thread if the caller spent more
    than ``settings.late_wait`` of it waiting for the partner."""
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


class Plan:
    """How one kernel call uses the threads: ``mode`` "one", "panels" (both threads
    share every step, claiming panels) or "rows" (rows [0, cut) and [cut, B) run as
    two independent tasks)."""

    __slots__ = ("mode", "cut", "B")

    def __init__(self, max_threads, B, step_flops, total_flops, panels, wbytes, lens_sorted):
        self.B, self.cut, self.mode = B, B, "one"
        if nthreads(max_threads, settings.two_thread_step_flops, 2) < 2:   # capped, or backing off
            return
        few = B < 2 * settings.row_split_min_rows
        enough = total_flops >= settings.row_split_flops * (10 if few else 1)
        if wbytes <= row_split_bytes() and B >= 2 and enough:
            work = np.cumsum(lens_sorted)                  # rows are sorted, longest first
            self.cut = int(min(B - 1, max(1, np.searchsorted(work, work[-1] / 2) + 1)))
            self.mode = "rows"
        elif panels >= 2 and step_flops >= settings.two_thread_step_flops and enough:
            self.mode = "panels"

    def launch(self, kernel, args_of):
        """``kernel(*args_of(tid, nthr, r0, r1))`` as planned."""
        if self.mode == "one":
            kernel(*args_of(0, 1, 0, self.B))
        elif self.mode == "panels":
            # the caller's kernel returns once every panel of every step is done: a
            # partner that never claimed its job has nothing left to do
            note(2, pair(kernel, args_of(1, 2, 0, self.B),
                           lambda: kernel(*args_of(0, 2, 0, self.B)), None))
        else:
            c, B = self.cut, self.B
            note(2, pair(kernel, args_of(0, 1, c, B), lambda: kernel(*args_of(0, 1, 0, c)),
                           lambda: kernel(*args_of(0, 1, c, B))))


def pair(kernel, partner_args, own, take_back):
    """``own()`` here while the partner thread runs ``kernel(*partner_args)``; if
    the partner has not claimed that job when ``own`` returns, the caller takes
    it back and runs ``take_back()`` (None: nothing left to do). Returns the
    fraction of the call the caller waited (for the back-off)."""
    mate = partner()
    t0 = time.perf_counter()
    kind = JOB_KINDS.get(kernel)
    if kind is not None:
        seq = mate.post(kind, encode(partner_args), keep=partner_args, tag=partner_args[0])
    else:
        seq = mate.post(K_PY, fn=lambda: kernel(*partner_args))
    if not seq:                          # the partner serves another call right now
        own()
        if take_back is not None:
            take_back()
        return 0.0
    try:
        r = own()
    finally:
        taken, waited = mate.finish(seq)
    if taken and take_back is not None:
        take_back()
    inner = r if isinstance(r, float) else 0.0      # the panel kernels' own waits
    return inner + waited / max(time.perf_counter() - t0, 1e-9)


class Tasks:
    """Independent tasks run by the caller and (when it comes) the partner thread.

    Tasks are claimed one at a time (``next`` on a shared iterator, atomic
    under the GIL; each task releases the GIL in BLAS), so a partner that is
    late never holds up work it has not started; the caller waits only for a
    task the partner is running."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.it = iter(range(len(tasks)))

    def work(self):
        for i in self.it:
            self.tasks[i]()

    def run(self, nthr):
        """Run every task; returns the fraction of the time the caller waited."""
        t0 = time.perf_counter()
        seq = 0
        if nthr > 1 and len(self.tasks) > 1:
            seq = partner().post(K_PY, fn=self.work)
        waited = 0.0
        try:
            self.work()
        finally:
            if seq:
                waited = partner().finish(seq)[1]
        return waited / max(time.perf_counter() - t0, 1e-9)
