"""bfloat16 compute mode: its name, its rounding, and what the CPU offers for it.

In the bfloat16 compute mode (``compute_dtype="bfloat16"`` on a float32 layer)
the *operands of the matrix products* are rounded to bfloat16 and their
products summed in float32; everything else stays float32: parameters,
gradients and optimizer state (master weights), biases, the cell state, the
gate math, and the arrays saved for backward. Which operands are rounded:

- forward: the weights ``W_ih``, ``W_hh``, the input ``x_t`` and the previous
  hidden state ``h_{t-1}`` as it enters the recurrent product (the state itself
  and the outputs stay float32);
- backward: the gate gradients as they enter ``dx = dgates W_ih`` and
  ``dh = dgates W_hh``, and both operands of the weight-gradient sums
  ``dW_ih = sum dgates^T x``, ``dW_hh = sum dgates^T h_{t-1}``; the bias
  gradients sum unrounded float32 gate gradients.

A product of two bfloat16 numbers is exact in float32 (8 + 8 significant bits),
so two implementations of the mode differ only in the order of their float32
sums, as two float32 implementations do, *given the same rounded operands*.

:func:`round_bf16` is the rounding every implementation uses, the one of the
x86 instruction ``VCVTNEPS2BF16``: round to nearest even, a float32 denormal
becomes a zero of its sign, infinities stay, a NaN stays a (quiet) NaN.

Pure NumPy: the reference imports it where nothing compiles.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["BFLOAT16", "COMPUTE_DTYPES", "check_compute_dtype", "round_bf16",
           "cpu_flags", "has_avx512_bf16", "has_amx_bf16"]

#: the name of the mode, as ``compute_dtype`` takes it (torch's spelling)
BFLOAT16 = "bfloat16"
#: what ``compute_dtype`` accepts: None (the layer's own dtype) or bfloat16
COMPUTE_DTYPES = (None, BFLOAT16)

_EXP_MASK = np.uint32(0x7F800000)
_MAN_MASK = np.uint32(0x007FFFFF)
_SIGN = np.uint32(0x80000000)
_HIGH = np.uint32(0xFFFF0000)
_QUIET = np.uint32(0x00400000)


def check_compute_dtype(value, name="compute_dtype", dtype=None):
    """``value`` as the mode's canonical name: None for the layer's own dtype
    (None, and ``"float32"``/``np.float32`` for a float32 layer), ``"bfloat16"``
    for the bfloat16 mode (``"bf16"`` accepted). Anything else is a ValueError
    naming the argument, float32 included when ``dtype`` (the layer's) is
    another: a float64 layer does not compute in float32."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("bfloat16", "bf16"):
            return BFLOAT16
        if v in ("float32", "fp32", "f32"):
            return _float32(value, name, dtype)
    else:
        try:
            if np.dtype(value) == np.float32:
                return _float32(value, name, dtype)
        except TypeError:
            pass
        if getattr(value, "__name__", None) == "bfloat16" or str(value).endswith("bfloat16"):
            return BFLOAT16
    raise ValueError(f"{name} must be None or 'bfloat16' (products of bfloat16 operands "
                     f"summed in float32), got {value!r}")


def _float32(value, name, dtype):
    if dtype is not None and np.dtype(dtype) != np.float32:
        raise ValueError(f"{name}={value!r} on a {np.dtype(dtype).name} layer: a layer "
                         f"computes in its own dtype (None) or, if float32, in 'bfloat16'")
    return None


def round_bf16(a, out=None):
    """``a`` (float32) rounded to the nearest bfloat16, as float32 values.

    Round to nearest, ties to even, as ``VCVTNEPS2BF16`` does: a float32
    denormal becomes a signed zero, a value that rounds past the largest
    bfloat16 becomes infinity, infinities stay, a NaN stays NaN (quieted).
    ``a`` is not modified unless it is passed as ``out``."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"round_bf16: a must be a float32 array, got {a.dtype}")
    u = a.view(np.uint32)
    exp = u & _EXP_MASK
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & _HIGH
    is_nan = (exp == _EXP_MASK) & ((u & _MAN_MASK) != 0)
    r = np.where(exp == 0, u & _SIGN,
                 np.where(exp == _EXP_MASK, np.where(is_nan, (u | _QUIET) & _HIGH, u), rounded))
    r = r.astype(np.uint32, copy=False).view(np.float32)
    if out is None:
        return r.reshape(a.shape)
    out[...] = r.reshape(a.shape)
    return out


@functools.lru_cache(maxsize=1)
def cpu_flags():
    """The CPU's feature flags (lower case, Linux's ``/proc/cpuinfo`` names:
    ``avx512_bf16``, ``amx_bf16``...); read from LLVM's host features where
    there is no ``/proc/cpuinfo`` and llvmlite imports; empty if neither."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        from llvmlite import binding
        feats = binding.get_host_cpu_features()
        names = {"avx512bf16": "avx512_bf16", "amx-bf16": "amx_bf16", "avx512f": "avx512f",
                 "avx2": "avx2", "amx-tile": "amx_tile"}
        return frozenset(n for k, n in names.items() if feats.get(k))
    except Exception:  # pragma: no cover - no llvmlite, or an LLVM without the query
        return frozenset()


def has_avx512_bf16():
    """Whether the CPU has ``VDPBF16PS`` (AVX512-BF16): bfloat16 pairs summed
    into float32 at twice the float32 FMA rate."""
    return "avx512_bf16" in cpu_flags()


def has_amx_bf16():
    """Whether the CPU has AMX tiles with bfloat16 products (AMX-BF16)."""
    return "amx_bf16" in cpu_flags() and "amx_tile" in cpu_flags()
