"""LowerFunction: run passes on one function (and what it calls), leaving the module's other functions alone.

Relax passes such as ``LegalizeOps`` and ``FuseOps`` work on every function of a module. The partitioned
module holds ``main`` (kept for reference), ``backbone`` (lowered here for the Relax VM) and ``cpm``
(left in high-level Relax for the C code generator), so lowering must be confined to one function.
"""
from __future__ import annotations

import tvm

from ..errors import CompileError
from .extract_functions import ExtractFunctions
from .ffi_errors import register_errors

register_errors()  # our exceptions keep their type when they cross TVM's FFI


@tvm.transform.module_pass(opt_level=0, name="LowerFunction")
class LowerFunction:
    """Apply ``passes`` to function ``name`` alone and merge the result (with new PrimFuncs) back."""

    def __init__(self, name: str, passes):
        self.name = name
        self.passes = list(passes)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        part = ExtractFunctions([self.name])(mod)
        lowered = tvm.transform.Sequential(self.passes, name=f"Lower[{self.name}]")(part)
        result = mod.clone()
        del result[self.name]
        for gv, func in lowered.functions_items():
            if gv.name_hint in result and not result.get_global_var(gv.name_hint).same_as(gv):
                raise CompileError(f"lowering '{self.name}' produced a function '{gv.name_hint}' whose "
                                   "name another function of the module already has; rename that one")
            result[gv] = func
        return result
