"""The length schedule of the packed kernels.

The batch is sorted by length (longest first) and, for the reverse direction,
gathered into step order, so step ``s`` works on the rows ``[0, nact[s])``
only (PyTorch's packed-sequence batch sizes): padded steps cost nothing, and
the loop stops at the longest sequence.
"""
from __future__ import annotations

import numpy as np

from fastrnn.kernels.cpu_settings import settings

__all__ = ["Schedule", "infer_chunk", "last_output"]


class Schedule:
    """Rows sorted by length (longest first), steps in processing order.

    ``order`` (None: identity) maps sorted row j to batch row ``order[j]``;
    ``tix[s, j]`` is the time index step ``s`` of sorted row j reads (None:
    ``tix[s, j] = s``); ``nact[s]`` the rows active at step s; ``n`` steps."""

    __slots__ = ("order", "tix", "valid", "nact", "n", "T", "B")

    def __init__(self, lens, T, reverse):
        B = lens.shape[0]
        self.T, self.B = T, B
        full = bool((lens == T).all())
        if full and not reverse:
            self.order = self.tix = self.valid = None
            self.n = T
            self.nact = np.full(T, B, np.int64)
            return
        order = np.argsort(-lens, kind="stable")
        Ls = lens[order]
        n = int(Ls[0]) if B else 0
        steps = np.arange(n)[:, None]
        self.valid = steps < Ls[None, :]                         # [n,B]
        self.order = None if full or (order == np.arange(B)).all() else order
        if self.order is None:
            Ls = lens
            self.valid = steps < Ls[None, :]
        tix = (Ls[None, :] - 1 - steps) if reverse else np.broadcast_to(steps, (n, B))
        self.tix = np.where(self.valid, tix, 0)
        self.n = n
        self.nact = self.valid.sum(axis=1).astype(np.int64)

    def nact_lengths(self):
        """[B] the length of each sorted row."""
        if self.valid is None:
            return np.full(self.B, self.n, np.int64)
        return self.valid.sum(axis=0).astype(np.int64)

    def rows(self):
        return np.arange(self.B) if self.order is None else self.order

    def gather_into(self, a, out, s0, s1):
        """out[:] = steps [s0, s1) of a [T,B,F] in step order (zero where inactive)."""
        if self.tix is None:
            out[...] = a[s0:s1]
        else:
            out[...] = np.where(self.valid[s0:s1, :, None],
                                a[self.tix[s0:s1], self.rows()[None, :]], 0)

    def scatter_into(self, y, a_step, s0):
        """Steps [s0, s0+m) of a_step [m,B,F] into their places in y [T,B,F]
        (y is zero where they leave nothing)."""
        m = a_step.shape[0]
        if self.tix is None:
            y[s0:s0 + m] = a_step
            return
        v = self.valid[s0:s0 + m]
        cols = np.broadcast_to(self.rows()[None, :], v.shape)
        y[self.tix[s0:s0 + m][v], cols[v]] = a_step[v]

    def gather(self, a, width=None):
        """a: [T,B,F] natural -> [n,B,width] step order (zero where inactive/padded)."""
        T, B, F = a.shape
        width = F if width is None else width
        if self.tix is None and width == F:
            return np.ascontiguousarray(a)
        out = np.zeros((self.n, B, width), a.dtype)
        if self.tix is None:
            out[:, :, :F] = a
        else:
            v = self.valid
            src = a[self.tix, self.rows()[None, :]]                  # [n,B,F]
            out[:, :, :F] = np.where(v[:, :, None], src, 0)
        return out

    def scatter(self, a_step, F, dtype):
        """[n,B,>=F] step order -> [T,B,F] natural (zero at padded steps)."""
        if self.tix is None:
            if a_step.shape[2] == F and a_step.shape[0] == self.T:
                return a_step
            out = np.zeros((self.T, self.B, F), dtype)
            out[:a_step.shape[0]] = a_step[:, :, :F]
            return out
        out = np.zeros((self.T, self.B, F), dtype)
        v = self.valid
        cols = np.broadcast_to(self.rows()[None, :], v.shape)
        out[self.tix[v], cols[v]] = a_step[:, :, :F][v]
        return out

    def sort_rows(self, a, width):
        """a: [B,F] -> [B,width] in sorted row order, zero padded (fresh, a's dtype)."""
        out = np.zeros((self.B, width), a.dtype)
        out[:, :a.shape[1]] = a if self.order is None else a[self.order]
        return out

    def unsort_rows(self, a, F):
        out = np.empty((self.B, F), a.dtype)
        if self.order is None:
            out[:] = a[:, :F]
        else:
            out[self.order] = a[:, :F]
        return out


def infer_chunk(B):
    """Steps per inference chunk: about 4096 rows, at least 16 steps, even."""
    if settings.infer_chunk_steps is not None:
        return settings.infer_chunk_steps
    m = max(16, -(-4096 // max(B, 1)))
    return m + (m % 2)


def last_output(ys, sched, B):
    """[B,Hp] the output at each sorted row's last step."""
    if sched.tix is None:
        return ys[-1]
    last = sched.valid.sum(axis=0) - 1                              # [B] per sorted row
    return ys[last, np.arange(B)]
