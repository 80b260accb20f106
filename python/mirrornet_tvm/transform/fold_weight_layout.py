"""FoldWeightLayout: fold the transposes and reshapes of weights that the ONNX importer writes, in numpy.

``from_onnx`` turns each Gemm weight into ``permute_dims(W)`` and each Conv bias into ``reshape(b)``.
Relax's ``FoldConstant`` folds them too, but compiles and runs every such call with the VM first
(over 4 s for a small VGG on a loaded 2-core machine); these two layout ops need no compiler.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="FoldWeightLayout")
class FoldWeightLayout:
    """Replace ``permute_dims(const)`` and ``reshape(const, shape)`` by the folded constant."""

    def __init__(self):
        self.weight = is_const()
        self.permute = is_op("relax.permute_dims")(self.weight)
        self.reshape = is_op("relax.reshape")(self.weight, wildcard())
        self.pattern = self.permute | self.reshape

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {gv: rewrite_call(self.pattern, self._rewrite, func)
                   for gv, func in mod.functions_items() if isinstance(func, relax.Function)}
        if not updates:
            return mod
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    def _rewrite(self, call: relax.Call, matches) -> relax.Expr:
        value = matches[self.weight].value.numpy()
        shape = [int(d) for d in call.ty.shape] if getattr(call.ty, "shape", None) is not None else None
        if shape is None:
            return call  # not a static shape: leave it to the compiler
        if call.op.name == "relax.permute_dims":
            axes = call.attrs.axes
            folded = np.transpose(value, None if axes is None else [int(a) for a in axes])
        else:
            folded = value.reshape(shape)
        if list(folded.shape) != shape:
            return call
        return relax.const(np.ascontiguousarray(folded), str(value.dtype))
