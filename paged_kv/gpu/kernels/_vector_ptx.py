"""Vector loads and stores for real GPUs: two array elements in one PTX instruction.

``load2(array, i)`` emits ``ld.global.v2.u<bits>`` and ``store2(array, i, pair)`` emits
``st.global.v2.u<bits>`` for elements ``i`` and ``i + 1`` of a 1-D unsigned integer
array; with uint64 elements each thread moves 16 bytes per instruction. The address
must be aligned to twice the element size: `paged_kv.gpu.kernels._units.plan_units` only
chooses the vector path when every run start is. Numba has no 128-bit load of its own
(a two-field record compiles to byte loads), hence the inline PTX, written the way
numba-cuda's own ``cache_hints`` (``ldcs``, ``stcs``) are.

Only imported on a GPU (including the compile check); the simulator uses the Python
twins in `paged_kv.gpu.kernels._units`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types

try:  # numba-cuda's own extension API (0.2x+), else the one built into numba
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic
except ImportError:  # pragma: no cover - older numba-cuda
    from numba.core import cgutils
    from numba.extending import intrinsic

#: PTX register constraint per element bit width.
_CONSTRAINT = {16: "h", 32: "r", 64: "l"}


def _vectorizable(array: types.Type, index: types.Type) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == 1
        and isinstance(array.dtype, types.Integer)
        and array.dtype.bitwidth in _CONSTRAINT
        and isinstance(index, types.Integer)
    )


def _operands(context, builder, sig, args):
    """``(element pointer, LLVM element type, bit width, register constraint)``."""
    array_type = sig.args[0]
    ary = context.make_array(array_type)(context, builder, value=args[0])
    ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [args[1]])
    bits = array_type.dtype.bitwidth
    return ptr, context.get_value_type(array_type.dtype), bits, _CONSTRAINT[bits]


@intrinsic
def load2(typingctx, array, index):
    """``(array[i], array[i + 1])`` through one ``ld.global.v2`` instruction."""
    if not _vectorizable(array, index):
        return None
    elem = array.dtype
    signature = types.UniTuple(elem, 2)(array, index)

    def codegen(context, builder, sig, args):
        ptr, value_type, bits, c = _operands(context, builder, sig, args)
        fn_type = ir.FunctionType(ir.LiteralStructType([value_type, value_type]),
                                  [value_type.as_pointer()])
        asm = ir.InlineAsm(fn_type, f"ld.global.v2.u{bits} {{$0, $1}}, [$2];",
                           f"={c},={c},l")
        pair = builder.call(asm, [ptr])
        items = [builder.extract_value(pair, 0), builder.extract_value(pair, 1)]
        return context.make_tuple(builder, sig.return_type, items)

    return signature, codegen


@intrinsic
def store2(typingctx, array, index, pair):
    """``array[i], array[i + 1] = pair`` through one ``st.global.v2`` instruction."""
    if not _vectorizable(array, index):
        return None
    if not (isinstance(pair, types.UniTuple) and pair.count == 2 and pair.dtype == array.dtype):
        return None
    signature = types.void(array, index, pair)

    def codegen(context, builder, sig, args):
        ptr, value_type, bits, c = _operands(context, builder, sig, args)
        fn_type = ir.FunctionType(ir.VoidType(),
                                  [value_type.as_pointer(), value_type, value_type])
        asm = ir.InlineAsm(fn_type, f"st.global.v2.u{bits} [$0], {{$1, $2}};",
                           f"l,{c},{c},~{{memory}}")
        builder.call(asm, [ptr, builder.extract_value(args[2], 0),
                           builder.extract_value(args[2], 1)])
        return context.get_dummy_value()

    return signature, codegen
