"""TIR pass: move kernel temporaries off the stack into caller-provided workspace.

After lowering, a kernel's temporaries (the padded input of a convolution, a reduction's
accumulator, a tuned schedule's cache buffers) are ``AllocBuffer`` statements, which the C code
generator prints as local arrays: kilobytes of stack, while an OP-TEE TA has a few KiB. Each
temporary at or above ``min_bytes`` becomes an extra pointer parameter instead, and the entry point
passes a slice of the statically planned arena (see ``memory_plan``). Register tiles (``local``
buffers of a schedule, marked by :class:`.global_scope.GlobalScopeBuffers`) up to
``max_local_bytes`` stay where they are: the C compiler keeps them in registers. The byte size of each lifted
buffer is recorded, in parameter order, in the function attribute ``mirrornet.workspace_bytes``.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from ..errors import CompileError
from .global_scope import REGISTER_TILE

WORKSPACE_ATTR = "mirrornet.workspace_bytes"
_LIFTABLE_SCOPES = ("", "global", "local")


def _buffer_bytes(buffer) -> int | None:
    count = 1
    for dim in buffer.ty.shape:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        count *= int(dim)
    dtype = tvm.runtime.DataType(str(buffer.dtype))
    return count * dtype.bits * dtype.lanes // 8


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mirrornet.LiftWorkspace")
class LiftWorkspace:
    """Turn every temporary of ``min_bytes`` or more (except small register tiles) into a pointer parameter."""

    def __init__(self, min_bytes: int = 64, max_local_bytes: int = 128):
        self.min_bytes = int(min_bytes)
        self.max_local_bytes = int(max_local_bytes)

    def transform_function(self, func, mod, ctx):  # noqa: ARG002 - pass protocol
        lifted = []  # (pointer var, bytes)

        def lift(stmt):
            buffer = stmt.buffer
            size = _buffer_bytes(buffer)
            if size is None:
                raise CompileError(
                    f"CPM kernel temporary '{buffer.name}' has a size only known at run time; the "
                    "CPM needs static shapes so that its arena can be planned at compile time."
                )
            scope = buffer.ty.storage_scope
            tile = REGISTER_TILE in (getattr(stmt, "annotations", None) or {})
            small = size < self.min_bytes or (tile and size <= self.max_local_bytes)
            if small or scope not in _LIFTABLE_SCOPES:
                return stmt
            pointer = tirx.Var(f"{buffer.name}_ws", tirx.buffer_data_pointer_type(buffer))
            lifted.append((pointer, size))
            return tirx.DeclBuffer(buffer, data=pointer)

        body = tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, lift)])
        if not lifted:
            return func.with_attr(WORKSPACE_ATTR, [])
        params = [*func.params, *(pointer for pointer, _ in lifted)]
        new = tirx.PrimFunc(params, body, func.ret_type, func.attrs)
        return new.with_attr(WORKSPACE_ATTR, [size for _, size in lifted])
