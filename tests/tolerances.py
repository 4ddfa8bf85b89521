"""Tolerances per dtype for comparing a compiled backend with the NumPy reference.

One table, used as ``np.testing.assert_allclose(a, b, **TOL[dtype])``.

float32: the CPU kernels use a rational tanh/sigmoid accurate to ~3e-7
absolute (kernels/activations.py) and sum GEMMs in a different order than the
reference; over the small test shapes the largest differences seen are ~2e-6
absolute on O(1) values, so the bounds leave an order of magnitude of room.
float64: the kernels use libm tanh/exp (~1 ulp); differences seen are ~1e-14.
"""
import numpy as np

TOL = {
    np.float32: dict(rtol=1e-4, atol=2e-5),
    np.float64: dict(rtol=1e-9, atol=1e-11),
}


def tol(dtype):
    """The tolerance dict for ``dtype`` (a NumPy dtype or scalar type)."""
    return TOL[np.dtype(dtype).type]
