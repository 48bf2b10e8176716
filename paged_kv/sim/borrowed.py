"""`borrowed`: an array's view that Numba does not reference-count, for compiled loops.

Inside an ``@njit`` function every array variable that another one aliases (an argument
passed to an inlined helper, say) costs an atomic increment and decrement of the
array's reference count, which Numba's pruning does not always remove from a loop. In
the compiled replay engine they were a fifth of a tiered sweep's profile samples.
`borrowed(a)` returns the same array without its memory-info pointer, so those updates
are no-ops: use it on arrays the caller keeps alive for the whole call (the function's
own arguments), never on one it creates or returns.
"""

from __future__ import annotations

from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, array):
    """`array` as a view without reference counting (compiled code only)."""

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


__all__ = ["borrowed"]
