"""Vector width and weight packing of the packed-weight CPU kernels.

``VW`` is the SIMD width in elements (float32: 16 with AVX-512, 8 with AVX2;
float64: 8 and 4, the same registers), ``Hp`` = ``H`` rounded up to a multiple
of ``VW``, ``P = Hp / VW`` panels. Every packed kernel is compiled per element
type from one source: the ``tag`` argument's type selects it (``make_tag``,
see :mod:`fastrnn.kernels.simd`).

Layout ("panel order"): hidden units are grouped in blocks of ``VW``; panel
``p`` holds the ``G*VW`` gate columns of its units side by side,
``[i(VW) f(VW) g(VW) o(VW)]``. Gate column ``q = p*G*VW + g*VW + u`` is the
natural row ``g*H + p*VW + u`` of the PyTorch-layout weights (:func:`pack`);
units ``>= H`` are zero padding (zero weights and bias give ``h = c = 0``
there, so they never leak into real units). ``W_ih`` and the biases are
permuted the same way (the input product runs inside the loop, as the first
``I`` rows of each panel).
"""
from __future__ import annotations

import numpy as np

from fastrnn.kernels.cpu_settings import ENV_VECTOR_WIDTH, settings

__all__ = ["host_simd", "vector_width", "set_vector_width", "make_tag", "tag_code",
           "tag_of_code", "lanes", "micro_rows", "MRMAX", "Packed", "pack", "pack_backward"]

MRMAX = 6    # micro-kernel row counts compiled: 1..6


def _host_features():
    try:
        import llvmlite.binding as ll
        return dict(ll.get_host_cpu_features())
    except Exception:  # pragma: no cover
        return {}


def _host_has_avx512():
    return bool(_host_features().get("avx512f", False))


def host_simd():
    """``"avx512"``, ``"avx2"`` or None: the widest vector unit the packed
    kernels are written for (``<16 x float>`` / ``<8 x float>`` FMAs). On a
    CPU with neither (an x86-64 without AVX2 and FMA, a non-x86 CPU) LLVM would
    split their vectors into slow scalar or SSE code: the CPU backend runs its
    BLAS-per-step loops there instead (``fastrnn info`` says which)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    f = _host_features()
    if f.get("avx512f", False):
        return "avx512"
    if f.get("avx2", False) and f.get("fma", False):
        return "avx2"
    return None


HOST_VW = 16 if _host_has_avx512() else 8


def vector_width():
    """SIMD width (float32 lanes) the packed kernels use: 16 with AVX-512, else 8
    (float64 runs the same registers with half the lanes, see :func:`lanes`).

    ``FASTRNN_VECTOR_WIDTH=8`` in the environment at import, the CPU setting
    ``vector_width`` (``cpu.configure(vector_width=8)``) or
    :func:`set_vector_width` force the AVX2 variant on an AVX-512 machine (the
    tests run both)."""
    vw = settings.vector_width
    return HOST_VW if vw is None else min(vw, HOST_VW)


def set_vector_width(vw):
    """Force the SIMD width (8 or 16, at most the host's) or ``None`` for automatic
    (``FASTRNN_VECTOR_WIDTH`` if it was set at import, else the host's)."""
    if vw is not None and vw not in (8, 16):
        raise ValueError(f"vector width must be 8, 16 or None, got {vw!r}")
    settings.vector_width = ENV_VECTOR_WIDTH if vw is None else vw


def make_tag(n, dtype=np.float32):
    """The tag argument that selects a kernel's variant: ``n`` lanes of ``dtype``
    (``(0,)*n`` for float32, ``(0.0,)*n`` for float64; see :mod:`fastrnn.kernels.simd`)."""
    return (0.0,) * n if np.dtype(dtype) == np.float64 else (0,) * n


def tag_code(tag):
    """A tag as one int64 (lanes * 16 + element bytes), for the partner's mailbox."""
    return len(tag) * 16 + (8 if isinstance(tag[0], float) else 4)


def tag_of_code(code):
    return make_tag(code // 16, np.float64 if code % 16 == 8 else np.float32)


def lanes(dtype):
    """SIMD lanes of ``dtype`` at the current vector width (16/8 floats, 8/4 doubles)."""
    vw = settings.vector_width          # vector_width(), inlined: once per kernel call
    return (HOST_VW if vw is None else min(vw, HOST_VW)) * 4 // np.dtype(dtype).itemsize


def micro_rows(vw, itemsize=4):
    """Batch rows per micro-kernel call for ``vw`` lanes of ``itemsize`` bytes: its
    MR*4 accumulators, the panel row and a broadcast must fit the register file
    (32 zmm / 16 ymm)."""
    return MRMAX if vw * itemsize == 64 else 3


# --------------------------------------------------------------------------- packing
class Packed:
    __slots__ = ("H", "Hp", "VW", "w_ih", "w_hh", "bias", "up", "ub", "nvb", "peep")


def pack(w_ih, w_hh, b_ih, b_hh, VW, G=4, backward=False, peep=None):
    """Panel-order copies of the weights (in their dtype, float32 or float64; ``VW``
    lanes of it per vector); ``peep`` [3,H] diagonal peepholes.

    With ``backward``, also ``w_ih`` [G*Hp, I], ``w_hh`` [G*Hp, Hp] and ``ub`` (``U``
    packed for ``dh = dgates U``) in PyTorch's gate order, units padded to Hp: the
    backward loops write the gate gradients in that order."""
    H = w_hh.shape[1]
    I = w_ih.shape[1]
    dt = w_ih.dtype
    Hp = -(-H // VW) * VW
    P = Hp // VW
    GV = G * VW
    pk = Packed()
    pk.H, pk.Hp, pk.VW = H, Hp, VW
    # up: [P, I+Hp, G*VW]: panel p's columns of [W_ih W_hh]ᵀ, input rows first,
    # written in one strided copy per matrix (gate g, unit p*VW+u -> column g*VW+u;
    # measured faster than a compiled loop at every size)
    up = np.empty((P, I + Hp, GV), dt)
    u4 = up.reshape(P, I + Hp, G, VW)
    bias = (b_ih + b_hh).astype(dt)
    if Hp == H:
        wi4, wh4 = w_ih.reshape(G, P, VW, I), w_hh.reshape(G, P, VW, H)
        bias = bias.reshape(G, P, VW)
    else:                                                  # padding units: zero weights
        wi4 = np.zeros((G, Hp, I), dt)
        wi4[:, :H] = w_ih.reshape(G, H, I)
        wh4 = np.zeros((G, Hp, Hp), dt)
        wh4[:, :H, :H] = w_hh.reshape(G, H, H)
        b = np.zeros((G, Hp), dt)
        b[:, :H] = bias.reshape(G, H)
        wi4, wh4, bias = wi4.reshape(G, P, VW, I), wh4.reshape(G, P, VW, Hp), b.reshape(G, P, VW)
    u4[:, :I] = wi4.transpose(1, 3, 0, 2)
    u4[:, I:] = wh4.transpose(1, 3, 0, 2)
    pk.bias = np.ascontiguousarray(bias.transpose(1, 0, 2)).reshape(-1)      # [G*Hp]
    pk.up = up
    pk.w_ih = pk.w_hh = None
    if backward:                   # PyTorch's gate order, units padded (views when Hp == H)
        pk.w_ih, pk.w_hh = wi4.reshape(G * Hp, I), wh4.reshape(G * Hp, Hp)
    pk.ub = None
    pk.nvb = 4
    pk.peep = None
    if peep is not None:                                  # [P,3,VW]: p_i, p_f, p_o per panel
        pp = np.zeros((3, Hp), dt)
        pp[:, :H] = peep
        pk.peep = np.ascontiguousarray(pp.reshape(3, P, VW).transpose(1, 0, 2))
    if backward:
        pk.ub = pack_backward(pk.w_hh, Hp, VW, pk.nvb)
    return pk


def pack_backward(wh, Hp, VW, nvb):
    """U packed by output-unit panels for dh = dgates U (see ``lstm_bwd_kernel``)."""
    GH = wh.shape[0]
    NB = nvb * VW
    Q = -(-Hp // NB)
    ub = np.empty(Q * GH * NB, wh.dtype)
    for q in range(Q):
        j0 = q * NB
        w = min(NB, Hp - j0)
        # one strided copy (reshape(-1) of a transposed view would copy twice)
        ub[q * GH * NB:q * GH * NB + GH * w].reshape(GH, w)[...] = wh[:, j0:j0 + w]
    return ub
