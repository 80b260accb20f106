"""AttachMirrorNetMetadata: record the combined model's output names (and strategy) on ``main``."""
from __future__ import annotations

import json

import tvm
from tvm import relax

from ..errors import ModelError
from .mirrornet_partition import OUTPUT_NAMES_ATTR, STRATEGY_ATTR, partition_spec
from .ffi_errors import register_errors

register_errors()  # our exceptions keep their type when they cross TVM's FFI


@tvm.transform.module_pass(opt_level=0, name="AttachMirrorNetMetadata")
class AttachMirrorNetMetadata:
    """Attach ``mirrornet.output_names`` (and optionally ``mirrornet.strategy``) to a function."""

    def __init__(self, output_names, strategy=None, func_name: str = "main"):
        self.output_names = [str(n) for n in output_names]
        if strategy is not None and not isinstance(strategy, str):
            partition_spec(strategy)  # validates before anything is attached
            if hasattr(strategy, "to_dict"):
                strategy = strategy.to_dict()
            strategy = json.dumps(dict(strategy) if hasattr(strategy, "keys") else vars(strategy),
                                  default=list)
        self.strategy = strategy
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if self.func_name not in mod or not isinstance(mod[self.func_name], relax.Function):
            raise ModelError(f"the module has no Relax function '{self.func_name}' to annotate")
        func = mod[self.func_name].with_attr(OUTPUT_NAMES_ATTR, self.output_names)
        if self.strategy is not None:
            func = func.with_attr(STRATEGY_ATTR, self.strategy)
        mod = mod.clone()
        mod[self.func_name] = func
        return mod
