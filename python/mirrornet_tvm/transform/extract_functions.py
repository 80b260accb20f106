"""ExtractFunctions: keep the named functions of a module and everything they call."""
from __future__ import annotations

import tvm
from tvm import relax

from ..errors import CompileError
from .ffi_errors import register_errors

register_errors()  # our exceptions keep their type when they cross TVM's FFI


@tvm.transform.module_pass(opt_level=0, name="ExtractFunctions")
class ExtractFunctions:
    """Keep ``names`` and the functions they reach; drop every other function of the module."""

    def __init__(self, names):
        self.names = [names] if isinstance(names, str) else list(names)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        present = {gv.name_hint: gv for gv in mod.get_global_vars()}
        missing = [n for n in self.names if n not in present]
        if missing:
            raise CompileError(f"the module has no function(s) {missing} (functions: {sorted(present)}); "
                               "run MirrorNetPartition first")
        keep, stack = {}, [present[n] for n in self.names]
        while stack:
            gv = stack.pop()
            if gv.name_hint in keep:
                continue
            func = mod[gv]
            keep[gv.name_hint] = (gv, func)
            if isinstance(func, relax.Function):
                stack.extend(g for g in relax.analysis.all_global_vars(func) if g.name_hint in present)
        attrs = mod.attrs
        attrs = None if attrs is None else {k: attrs[k] for k in attrs.keys()}
        return tvm.IRModule({gv: func for gv, func in keep.values()}, attrs=attrs,
                            global_infos=dict(mod.global_infos))
