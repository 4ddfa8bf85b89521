"""Central finite differences, shared by every gradient check."""
import numpy as np


def numgrad(f, x, eps=1e-6):
    """dF/dx of the scalar ``f()`` for every entry of ``x`` (perturbed in place, restored)."""
    g = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    assert np.shares_memory(flat, x), "numgrad needs a contiguous array to perturb in place"
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return g
