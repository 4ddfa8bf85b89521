"""Keep freed array memory in the process heap instead of handing it back to the OS.

A training step allocates its large temporaries afresh (gate activations, cell
states, gate gradients: megabytes each) and frees them at its end. With glibc's
defaults, memory freed at the top of the heap beyond the trim threshold goes back
to the kernel, and the next step faults every page in again, zero-filled: one
minor fault costs microseconds, and a mid-sized LSTM training step takes a
thousand or more of them, about a tenth of the step's time.

:func:`tune` raises glibc's mmap threshold (buffers up to :data:`MMAP_THRESHOLD`
come from the heap) and trim threshold (up to :data:`TRIM_THRESHOLD` of free heap
top is kept), so a repeated step reuses the pages of the one before. It changes
the allocator of the whole process, so it runs once, when the CPU backend is
imported, and not at all when:

- ``FASTRNN_MALLOC=0`` is set (opt out),
- the user tuned malloc already (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` in the environment),
- the C library has no ``mallopt`` (not glibc: musl, macOS, Windows).

The cost: up to :data:`TRIM_THRESHOLD` of freed memory stays mapped to the
process (its resident size does not shrink below that after a large step);
buffers above :data:`MMAP_THRESHOLD` are still mapped and unmapped one by one.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: allocations up to this size come from the heap (glibc: 128 KiB, rising to 32 MiB)
MMAP_THRESHOLD = 64 << 20
#: free memory at the heap top kept for reuse (glibc: twice the mmap threshold)
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

#: what :func:`tune` did: None (not run yet), True (applied) or a reason string
status = None


def tune():
    """Apply the thresholds once per process; returns :data:`status`."""
    global status
    if status is not None:
        return status
    if os.environ.get("FASTRNN_MALLOC", "1").strip() == "0":
        status = "off: FASTRNN_MALLOC=0"
    elif any(k in os.environ for k in _USER_KEYS):
        status = "off: malloc tuned by the environment"
    elif not sys.platform.startswith("linux"):
        status = f"off: not Linux ({sys.platform})"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            mallopt.restype = ctypes.c_int
        except (OSError, AttributeError):
            status = "off: the C library has no mallopt"
        else:
            # glibc returns 1 on success; musl's mallopt is a stub returning 0
            ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                  and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
            status = True if ok else "off: mallopt refused the thresholds"
    return status
