"""Memory intrinsics for numba ``njit`` code: sequentially consistent int64 atomics, prefetch.

numba has no CPU atomics (numba issue 2988), so these are ``numba.extending.intrinsic``s that
emit LLVM ``load atomic`` / ``atomicrmw add`` / ``store atomic`` on a pointer into an int64 array.
They are correct across processes when the array lives in shared memory, because the hardware
instruction (``lock xadd`` on x86-64, ``ldaddal`` or an LL/SC loop on arm64) is what synchronises,
not anything process-local.  ``prefetch`` emits ``llvm.prefetch`` (a hint, no semantic effect):
the worker loops use it to fetch the next rows of a shuffled pass before they are needed.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["atomic_load", "atomic_fetch_add", "atomic_store", "prefetch"]

_ORDERING = "seq_cst"
_INT64_ALIGN = 8


def _check_int64_array(arr, idx):
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        raise TypeError(f"atomics need a 1-d int64 array, got {arr}")
    if not isinstance(idx, types.Integer):
        raise TypeError(f"atomics need an integer index, got {idx}")


def _element_pointer(context, builder, arrty, arr, idxty, idx):
    array = context.make_array(arrty)(context, builder, arr)
    index = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, arrty, array, [index], wraparound=False)


@intrinsic
def atomic_load(typingctx, arr, idx):
    """Return ``arr[idx]`` read with one atomic load (int64)."""
    _check_int64_array(arr, idx)

    def codegen(context, builder, signature, args):
        arrty, idxty = signature.args
        ptr = _element_pointer(context, builder, arrty, args[0], idxty, args[1])
        return builder.load_atomic(ptr, _ORDERING, _INT64_ALIGN)

    return types.int64(arr, idx), codegen


@intrinsic
def atomic_fetch_add(typingctx, arr, idx, value):
    """Add ``value`` to ``arr[idx]`` atomically and return the value it held before (int64)."""
    _check_int64_array(arr, idx)
    if not isinstance(value, types.Integer):
        raise TypeError(f"atomic_fetch_add needs an integer value, got {value}")

    def codegen(context, builder, signature, args):
        arrty, idxty, valty = signature.args
        ptr = _element_pointer(context, builder, arrty, args[0], idxty, args[1])
        increment = context.cast(builder, args[2], valty, types.int64)
        return builder.atomic_rmw("add", ptr, increment, _ORDERING)

    return types.int64(arr, idx, value), codegen


@intrinsic
def atomic_store(typingctx, arr, idx, value):
    """Write ``value`` to ``arr[idx]`` with one atomic store (int64)."""
    _check_int64_array(arr, idx)
    if not isinstance(value, types.Integer):
        raise TypeError(f"atomic_store needs an integer value, got {value}")

    def codegen(context, builder, signature, args):
        arrty, idxty, valty = signature.args
        ptr = _element_pointer(context, builder, arrty, args[0], idxty, args[1])
        stored = context.cast(builder, args[2], valty, types.int64)
        builder.store_atomic(stored, ptr, _ORDERING, _INT64_ALIGN)
        return context.get_dummy_value()

    return types.none(arr, idx, value), codegen


_I32 = ir.IntType(32)
_PREFETCH_READ = 0
_PREFETCH_KEEP_IN_ALL_CACHES = 3
_PREFETCH_DATA_CACHE = 1


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to load the cache line holding ``arr[idx]`` (1-d array, any dtype)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(idx, types.Integer)):
        raise TypeError(f"prefetch needs a 1-d array and an integer index, got {arr}, {idx}")

    def codegen(context, builder, signature, args):
        arrty, idxty = signature.args
        ptr = _element_pointer(context, builder, arrty, args[0], idxty, args[1])
        byte_ptr_type = ir.IntType(8).as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [byte_ptr_type, _I32, _I32, _I32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        builder.call(function, [builder.bitcast(ptr, byte_ptr_type), ir.Constant(_I32, _PREFETCH_READ),
                                ir.Constant(_I32, _PREFETCH_KEEP_IN_ALL_CACHES),
                                ir.Constant(_I32, _PREFETCH_DATA_CACHE)])
        return context.get_dummy_value()

    return types.none(arr, idx), codegen
