"""The one CUDA kernel of :mod:`fastrnn.distributed`: scaling a flat
gradient buffer in device memory (for a CUDA-aware MPI library, which
reduces device buffers without staging them through the host).

Kept in its own module, imported only when device gradients are reduced:
``numba.cuda`` is imported at module level so that the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) can run the kernel too.
"""
from numba import cuda


@cuda.jit
def _scale_kernel(x, f):
    # x: [n]; x *= f
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] *= f


def scale(buf, factor):
    """``buf *= factor`` for a 1-D device array ``buf``."""
    n = buf.shape[0]
    if n:
        _scale_kernel[(n + 255) // 256, 256](buf, buf.dtype.type(factor))
