"""The threads' LLVM-IR primitives (Numba ``@intrinsic``, callable from
``@njit`` code only): ``atomic_add(p, v)``, ``atomic_load(p)``,
``atomic_cas(p, old, new)``, ``atomic_store(p, v)`` on int64 words at byte
address ``p``; ``cpu_pause()`` (the spin-wait hint), ``sched_yield()`` (give
the core away), ``cycles()`` (the time-stamp counter); ``f32_ptr``/``i64_ptr``
turn byte addresses back into typed pointers (``numba.carray``). What the
packed kernels' step barrier (:mod:`fastrnn.kernels.sync`) and the partner
thread's mailbox (:mod:`fastrnn.kernels.worker`) are built on.
"""
from __future__ import annotations

import ctypes

import llvmlite.binding as _ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["atomic_add", "atomic_load", "atomic_cas", "atomic_store", "f32_ptr", "i64_ptr",
           "cpu_pause", "cycles", "sched_yield"]

I64 = ir.IntType(64)


@intrinsic
def atomic_add(typingctx, p, v):
    """``*p += v`` atomically (int64); returns the old value."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], I64.as_pointer())
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")
    return sig, codegen


@intrinsic
def atomic_load(typingctx, p):
    """``*p`` with acquire ordering (int64)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], I64.as_pointer())
        return builder.load_atomic(ptr, "acquire", 8)
    return sig, codegen


@intrinsic
def atomic_cas(typingctx, p, old, new):
    """``if *p == old: *p = new`` atomically (int64); returns whether it swapped."""
    sig = types.boolean(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], I64.as_pointer())
        res = builder.cmpxchg(ptr, args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)
    return sig, codegen


@intrinsic
def atomic_store(typingctx, p, v):
    """``*p = v`` with release ordering (int64)."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], I64.as_pointer())
        builder.store_atomic(args[1], ptr, "release", 8)
        return context.get_dummy_value()
    return sig, codegen


def _make_typed_ptr(dtype):
    @intrinsic
    def typed_ptr(typingctx, addr):
        """The byte address ``addr`` as a typed pointer (for ``numba.carray``)."""
        sig = types.CPointer(dtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return sig, codegen
    return typed_ptr


#: byte addresses as float32 / int64 pointers (a partner job's arrays, rebuilt)
f32_ptr = _make_typed_ptr(types.float32)
i64_ptr = _make_typed_ptr(types.int64)


@intrinsic
def cpu_pause(typingctx):
    """The spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if "x86" in _ll.get_process_triple():
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle (time-stamp) counter: cheap timing inside a kernel."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return sig, codegen


# sched_yield from the C library, bound under a fixed name (keeps cache=True working)
_YIELD_NAME = "fastrnn_sched_yield"
try:
    _libc = ctypes.CDLL(None)
    _ll.add_symbol(_YIELD_NAME, ctypes.cast(_libc.sched_yield, ctypes.c_void_p).value)
except (OSError, AttributeError):  # pragma: no cover - no sched_yield (e.g. Windows)
    _noop = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 0)
    _ll.add_symbol(_YIELD_NAME, ctypes.cast(_noop, ctypes.c_void_p).value)
sched_yield = types.ExternalFunction(_YIELD_NAME, types.int32())
