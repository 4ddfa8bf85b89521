"""The CPU backend's settings: one object that the routing, the thread planning
and the packed kernels read at each call, and that tests set (like
:mod:`fastrnn.kernels.cuda_base`'s ``settings``/``configure``).

The two environment variables the CPU backend honours are read here, once, at
import: ``FASTRNN_NUM_THREADS`` (the thread cap, see
:func:`fastrnn.kernels.blas.set_num_threads`) and ``FASTRNN_VECTOR_WIDTH``
(8 forces the AVX2 variant of the packed kernels on an AVX-512 machine).

>>> from fastrnn.kernels import cpu
>>> with cpu.configure(use_packed=False):      # the BLAS-per-step loops only
...     ...
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def _threads_from_env():
    """``FASTRNN_NUM_THREADS``: the thread cap, or None (unset or invalid: warned)."""
    raw = os.environ.get("FASTRNN_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        warnings.warn(f"FASTRNN_NUM_THREADS={raw!r} is not a whole number >= 1: ignored",
                      RuntimeWarning, stacklevel=3)
        return None
    return n


def _vector_width_from_env():
    """``FASTRNN_VECTOR_WIDTH``: 8 or 16, or None (automatic)."""
    raw = os.environ.get("FASTRNN_VECTOR_WIDTH")
    return int(raw) if raw in ("8", "16") else None


#: the options every compiled CPU time loop is built with: cached on disk,
#: fastmath, NumPy's error model (no division checks), and without the GIL
JIT_OPTIONS = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)

#: the values at import (``FASTRNN_*`` environment), to which ``None`` resets
ENV_NUM_THREADS = _threads_from_env()
ENV_VECTOR_WIDTH = _vector_width_from_env()


@dataclass
class Settings:
    """What the CPU backend runs, and how it splits work between threads.

    Routing (:mod:`fastrnn.kernels.cpu`)

    use_packed : run the packed-weight kernels where they exist (the LSTM and
        diagonal peephole LSTM, the GRU with reset_after, the tanh/ReLU RNN);
        False runs the BLAS-per-step loops for every cell. Off at import on a
        CPU without AVX2/AVX-512 (``vector.host_simd()``), where the packed
        kernels' wide vectors would be split into slow narrow code.
    packed_dtypes : the dtypes routed to the packed kernels; a dtype left out
        runs the loops.
    packed_cells : the ``(family, training)`` pairs of the GRU and RNN routed
        to the packed kernels (where they measured faster than the loops).

    Threads

    num_threads : the most threads a call uses (None: the cores the process may
        run on, ``os.sched_getaffinity``, or ``FASTRNN_NUM_THREADS``); see
        ``blas.set_num_threads``.
    vector_width : force the packed kernels' SIMD width in float32 lanes (8 or
        16, capped by the host's), None for the widest the host has.
    split_min_flops : the loops' batch split: from this many recurrent FLOPs
        per call, two independent time loops run on the two halves of the batch
        (``inf``: never; see ``loops_driver``).
    chunk_rows, chunk_min_steps : the loops' inference computes the input
        product in chunks of about ``chunk_rows`` rows of ``x`` and at least
        ``chunk_min_steps`` steps.
    infer_chunk_steps : the packed kernels' inference chunk in steps (None:
        about 4096 rows, at least 16 steps; see ``schedule.infer_chunk``).
    two_thread_step_flops : per-step FLOPs from which the packed kernels' two
        threads share each step's panels.
    row_split_flops : a call's FLOPs from which two threads pay at all (ten
        times that with fewer than ``2 * row_split_min_rows`` rows).
    row_split_bytes : packed weights up to this size split the batch rows
        between the threads instead of the panels (None: 90% of one core's L2,
        0.5-4 MiB).
    split_gemm_flops : GEMMs around the loops are split in tasks from this size.
    late_wait : the fraction of a call on several threads the caller may wait
        for the workers before the following calls back off to one thread.
    oversubscribe : let a call use up to ``num_threads`` threads even where that
        is more than the cores the process may run on (False: capped by them;
        for tests and for measuring an oversubscribed pool).

    bfloat16 compute mode (``compute_dtype="bfloat16"``)

    bf16_native : True (default): the bf16 kernels' ``vdpbf16ps`` products where
        the CPU has AVX512-BF16 (their emulated products elsewhere); False: the
        emulated products everywhere (same numbers up to the order of the
        float32 sums; the tests run both paths on a CPU that has the
        instruction).
    bf16_amx : run the bf16 LSTM's time-loop products on AMX tiles where the CPU
        has AMX-BF16 and Linux grants the process the tiles (with
        ``bf16_native`` on); False: ``vdpbf16ps`` only.
    """

    use_packed: bool = True
    packed_dtypes: frozenset = field(
        default_factory=lambda: frozenset({np.dtype(np.float32), np.dtype(np.float64)}))
    packed_cells: frozenset = field(default_factory=lambda: frozenset(
        {("gru", True), ("gru", False), ("rnn", True), ("rnn", False)}))
    num_threads: Optional[int] = ENV_NUM_THREADS
    vector_width: Optional[int] = ENV_VECTOR_WIDTH
    # Batch split of the loops (off): instead of two BLAS threads meeting inside
    # every step's GEMM, two independent time loops on the two halves of the
    # batch. Measured on the 2-core machine, LSTM, float32, quiet: slower than one
    # loop at every grid shape with B >= 8 (e.g. (100,32,64,128) inference 15.3 vs
    # 10.9 ms; (50,64,256,512) 155 vs 87 ms). Kept, and tested
    # (tests/test_cpu_kernels.py::test_batch_split), for machines with more cores
    # per memory channel.
    split_min_flops: float = float("inf")
    # enough rows for the input GEMM to run near its rate; O(max(B, 32) G H)
    # workspace, independent of T (the contract's "inference keeps O(B*H)")
    chunk_rows: int = 512
    chunk_min_steps: int = 16
    infer_chunk_steps: Optional[int] = None
    two_thread_step_flops: float = 1.5e6
    # 2e7 when each thread gets at least row_split_min_rows rows, else ten times
    # that: splitting the rows pays from mid-sized steps on (B = 8 and up) once
    # each thread has a few rows; with one or two rows per thread (B = 2 or 4)
    # two threads train slower than one
    row_split_flops: float = 2e7
    row_split_min_rows: int = 4
    # Measured on a 2 MiB-L2 Xeon: LSTM (64,32,64,256) (1.3 MB of packed
    # weights) trains 7% faster on rows than on panels
    row_split_bytes: Optional[int] = None
    split_gemm_flops: float = 8e6
    # from half on, one thread would have been as fast
    late_wait: float = 0.5
    oversubscribe: bool = False
    bf16_native: bool = True
    bf16_amx: bool = True


settings = Settings()


class configure:
    """Set fields of :data:`settings`; usable as a context manager that restores them.

    >>> with configure(use_packed=False, num_threads=2):
    ...     ...
    """

    def __init__(self, **kw):
        for k in kw:
            if not hasattr(settings, k):
                raise ValueError(f"unknown CPU setting {k!r}")
        vw = kw.get("vector_width")
        if vw is not None and vw not in (8, 16):
            raise ValueError(f"vector_width must be 8, 16 or None, got {vw!r}")
        n = kw.get("num_threads")
        if n is not None and (int(n) != n or n < 1):
            raise ValueError(f"num_threads must be a whole number >= 1, got {n!r}")
        for k in ("packed_dtypes", "packed_cells"):
            if k in kw:
                kw[k] = frozenset(np.dtype(d) for d in kw[k]) if k == "packed_dtypes" \
                    else frozenset(kw[k])
        self._old = {k: getattr(settings, k) for k in kw}
        for k, v in kw.items():
            setattr(settings, k, v)

    def __enter__(self):
        return settings

    def __exit__(self, *exc):
        for k, v in self._old.items():
            setattr(settings, k, v)
        return False
