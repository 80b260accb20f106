"""TIR pass: give ``local`` temporaries the ``global`` storage scope.

Schedules (ours and MetaSchedule's) keep register tiles in ``local`` buffers. On a CPU both scopes
are plain memory, but TVM's C code generator prints only ``global`` allocations, so each ``local``
allocation is re-declared as a ``global`` one and every use is re-pointed at it. The allocation
is annotated ``mirrornet.register_tile`` so that :class:`.lift_workspace.LiftWorkspace` leaves small
ones on the stack (as registers) instead of moving them to the arena.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

REGISTER_TILE = "mirrornet.register_tile"


def _to_global(stmt, mutator):
    buffer = stmt.buffer
    if buffer.ty.storage_scope != "local":
        return mutator.default_mutate(stmt)
    new = tirx.decl_buffer(buffer.ty.shape, buffer.dtype, buffer.name, scope="global")
    mutator.var_remap_set(buffer, new)  # later loads/stores of the old buffer now name the new one
    annotations = dict(getattr(stmt, "annotations", None) or {})
    annotations[REGISTER_TILE] = 1
    return tirx.AllocBuffer(new, annotations)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mirrornet.GlobalScopeBuffers")
class GlobalScopeBuffers:
    """Re-declare every ``local`` allocation as ``global`` (plain C arrays)."""

    def transform_function(self, func, mod, ctx):  # noqa: ARG002 - pass protocol
        return tvm_ffi.structural_mutate(func, [(tirx.AllocBuffer, _to_global)])
