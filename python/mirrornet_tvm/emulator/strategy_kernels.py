"""The kernels each strategy runs: a slice of the backbone in the normal world, its CPM in the TEE.

The backbone is lowered once per model, with every candidate tap as an output
(:func:`mirrornet_tvm.analysis.relax_with_taps`), and scheduled as ``build_backbone`` schedules it
(tuning record, else the default CPU rule); a strategy's backbone is the backward slice from the taps
it reads (and the logits, for a ``correction`` CPM), exactly what ``MirrorNetPartition`` keeps.
The CPM is built from its plan (:func:`mirrornet_tvm.mirror.plan_cpm`) the way ``protect`` exports it
(``CPM.onnx_nodes``), imported, lowered with the cached passes of :mod:`.lowering` and scheduled like
the generated C (``codegen``'s default CPU rule after any tuned record).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import tvm
from tvm import relax

from ..errors import StrategyError, UsageError
from .lowering import LoweringCache, lowering_passes
from .workloads import Kernel, make_kernel

FLOAT_BYTES = 4
_CALL_TIR = "relax.call_tir"


@dataclass(frozen=True)
class StrategyKernels:
    """What one strategy runs and moves, as the emulator needs it."""

    backbone: tuple[Kernel, ...]
    cpm: tuple[Kernel, ...]
    tee_in_bytes: int          # taps (and backbone logits) copied into the TA per inference
    tee_out_bytes: int         # what the TA answers (logits)
    backbone_out_bytes: int    # what the backbone hands back to the host per inference
    secure_memory: object      # mirrornet_tvm.strategy.SecureMemory


def _bindings(func: relax.Function) -> dict:
    table = {}
    for block in func.body.blocks:
        for b in block.bindings:
            table[b.var] = b.value
    return table


def _slice_callees(func: relax.Function, roots) -> list[str]:
    """call_tir callees (one entry per call) in the backward slice of ``roots``."""
    table = _bindings(func)
    call_tir = tvm.ir.Op.get(_CALL_TIR)
    seen, callees, stack = set(), [], list(roots)
    while stack:
        expr = stack.pop()
        if isinstance(expr, relax.Var):
            if expr in seen or expr not in table:
                continue
            seen.add(expr)
            stack.append(table[expr])
        elif isinstance(expr, relax.Call):
            if expr.op.same_as(call_tir):
                callees.append(expr.args[0].name_hint)
                stack.extend(expr.args[1].fields)
            else:
                stack.extend(expr.args)
        elif isinstance(expr, relax.Tuple):
            stack.extend(expr.fields)
        elif isinstance(expr, relax.TupleGetItem):
            stack.append(expr.tuple_value)
    return callees


def _output_fields(func: relax.Function) -> list:
    table = _bindings(func)
    out = func.body.body
    while isinstance(out, relax.Var) and out in table and isinstance(table[out], (relax.Var, relax.Tuple)):
        out = table[out]
    if isinstance(out, relax.Tuple):
        return list(out.fields)
    return [out]


def _kernels(mod: tvm.IRModule, callees, funcs=None) -> tuple[Kernel, ...]:
    counts = Counter(callees)
    out, seen = [], set()
    for name in callees:
        if name in seen:
            continue
        seen.add(name)
        func = funcs[name] if funcs is not None else mod[name]
        out.append(make_kernel(func, name=name, calls=counts[name]))
    return tuple(out)


class ModelKernels:
    """Kernels of every strategy of one model, for one target (and tuning database, if any)."""

    def __init__(self, model, target=None, database=None, cache: LoweringCache | None = None):
        from ..analysis import relax_with_taps
        from ..frontend import OUTPUT_NAMES_ATTR, load_model
        from ..mirror import strip_softmax, tap_index
        from .targets import resolve_target

        self.model = model if hasattr(model, "graph") and hasattr(model, "proto") else load_model(model)
        self.graph = strip_softmax(self.model.graph())
        self.target = resolve_target(target)
        self.database = database
        self.cache = cache or LoweringCache()
        self.taps = tap_index(self.graph)
        mod = relax_with_taps(self.model)
        names = [str(n) for n in mod["main"].attrs[OUTPUT_NAMES_ATTR]]
        passes = lowering_passes(self.cache)
        with self.target:
            mod = tvm.transform.Sequential(passes)(mod)
            if database is not None:
                from ..transform.apply_database import ApplyTuningDatabase

                mod = ApplyTuningDatabase(database)(mod)
            mod = relax.transform.RewriteDataflowReshape()(mod)
        self._lowered = mod
        # what `build_backbone` compiles: the tuned record where there is one, else its default rule
        from ..build import default_rule

        funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
        self._funcs = self.cache.schedule(funcs, self.target, None, default_rule(self.target))
        fields = _output_fields(mod["main"])
        if len(fields) != len(names):
            raise UsageError(f"the lowered model returns {len(fields)} values for {len(names)} output names")
        self._outputs = dict(zip(names, fields))
        self._logits_name = names[0]
        self._backbone: dict = {}
        self._cpm: dict = {}

    # -- backbone --------------------------------------------------------------------------------
    def backbone(self, strategy) -> tuple[Kernel, ...]:
        """The backbone kernels ``strategy`` runs (the slice that computes its taps)."""
        key = (tuple(strategy.taps), strategy.output == "correction")
        if key not in self._backbone:
            roots = []
            for tap in strategy.taps:
                name = f"tap:{tap}"
                if name not in self._outputs:
                    raise StrategyError(f"unknown tap {tap}; this model's taps are {', '.join(self.taps)}")
                roots.append(self._outputs[name])
            if strategy.output == "correction":
                roots.append(self._outputs[self._logits_name])
            self._backbone[key] = _kernels(self._lowered, _slice_callees(self._lowered["main"], roots), self._funcs)
        return self._backbone[key]

    def full_model(self) -> tuple[Kernel, ...]:
        """The unprotected model's kernels (input -> logits), for reference."""
        return _kernels(self._lowered, _slice_callees(self._lowered["main"], [self._outputs[self._logits_name]]),
                        self._funcs)

    # -- CPM ---------------------------------------------------------------------------------------
    def _cpm_module(self, plan) -> tvm.IRModule:
        import onnx
        from onnx import helper
        from tvm.relax.frontend.onnx import from_onnx

        from ..mirror import CPM

        cpm = CPM(plan, init="fresh", batchnorm=False)
        nodes, inits = cpm.onnx_nodes()
        inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))
                  for name, shape in plan.inputs]
        outputs = [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, plan.num_classes])]
        graph = helper.make_graph(nodes, "cpm", inputs, outputs, inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return from_onnx(proto, shape_dict={n: list(s) for n, s in plan.inputs}, keep_params_in_input=False)

    def cpm(self, strategy) -> tuple[tuple[Kernel, ...], object]:
        """(kernels of the CPM as the generated C runs them, the CPM plan)."""
        from ..codegen.schedule import CpmCpuSchedule
        from ..mirror import plan_cpm

        key = (tuple(strategy.taps), strategy.width_ratio, strategy.merge, strategy.output)
        if key not in self._cpm:
            plan = plan_cpm(self.graph, strategy, taps=self.taps)
            mod = self._cpm_module(plan)
            with self.target:
                mod = tvm.transform.Sequential(
                    lowering_passes(self.cache) + [relax.transform.DeadCodeElimination(["main"])])(mod)
            callees = _slice_callees(mod["main"], _output_fields(mod["main"]))
            funcs = {n: mod[n] for n in set(callees)}
            scheduled = self.cache.schedule(funcs, self.target, self.database, CpmCpuSchedule())
            self._cpm[key] = (_kernels(mod, callees, scheduled), plan)
        return self._cpm[key]

    # -- all of it ---------------------------------------------------------------------------------
    def of(self, strategy) -> StrategyKernels:
        backbone = self.backbone(strategy)
        cpm, plan = self.cpm(strategy)
        memory = plan.secure_memory()
        out_bytes = sum(math.prod(s) for _, s in plan.inputs) * FLOAT_BYTES
        return StrategyKernels(backbone=backbone, cpm=cpm, tee_in_bytes=memory.taps,
                               tee_out_bytes=memory.logits, backbone_out_bytes=out_bytes,
                               secure_memory=memory)
