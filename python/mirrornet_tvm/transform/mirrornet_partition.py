"""MirrorNetPartition: split the combined model's ``main`` into ``backbone`` and ``cpm``.

The combined Relax module (imported from ``combined.onnx``) returns, in this order, ``logits`` (rectified),
``backbone_logits`` and one ``tap:<name>`` per tap the CPM reads; its ``main`` carries the attribute
``mirrornet.output_names`` naming those outputs (see ``AttachMirrorNetMetadata``). The pass adds:

- ``backbone(input) -> (tap_0, ..., tap_{k-1}[, backbone_logits])``: the backward slice of ``main`` from
  the taps (and ``backbone_logits`` when the strategy's output is ``correction``);
- ``cpm(tap_0, ..., tap_{k-1}[, backbone_logits]) -> logits``: the backward slice from ``logits`` that
  stops at the tapped values, which become its parameters.

``main`` is kept unchanged. On any error the pass raises and the module it was given is left as it was.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import tvm
from tvm import relax

from ..errors import ModelError, StrategyError
from .ffi_errors import register_errors

register_errors()  # our exceptions keep their type when they cross TVM's FFI

OUTPUT_NAMES_ATTR = "mirrornet.output_names"
STRATEGY_ATTR = "mirrornet.strategy"
TAP_PREFIX = "tap:"
# Strategy fields that fix the CPM's structure; a module recorded with other values is another model.
_STRUCTURAL_FIELDS = ("taps", "output", "merge", "width_ratio")


@dataclass(frozen=True)
class PartitionSpec:
    """What the partition needs from a strategy: the taps in order and the output mode."""

    taps: tuple[str, ...]
    output: str  # "logits" | "correction"
    fields: tuple[tuple[str, object], ...] = ()  # every structural field given, for metadata checks

    @property
    def backbone_outputs(self) -> tuple[str, ...]:
        extra = ("backbone_logits",) if self.output == "correction" else ()
        return tuple(TAP_PREFIX + t for t in self.taps) + extra

    @property
    def cpm_params(self) -> tuple[str, ...]:
        return self.taps + (("backbone_logits",) if self.output == "correction" else ())


def partition_spec(strategy) -> PartitionSpec:
    """Read a strategy (a ``Strategy``, a mapping, or its JSON text) into a ``PartitionSpec``."""
    if isinstance(strategy, PartitionSpec):
        return strategy
    if isinstance(strategy, (str, bytes)):
        try:
            strategy = json.loads(strategy)
        except ValueError as err:
            raise StrategyError(f"the strategy is not valid JSON ({err}); pass a Strategy, a dict or "
                                "the text of strategy.json") from None
    if isinstance(strategy, Mapping):
        get = strategy.get
    else:
        def get(key, default=None):
            return getattr(strategy, key, default)
    taps = get("taps")
    output = get("output", "logits")
    if isinstance(taps, str) or not isinstance(taps, (list, tuple)) or not taps \
            or not all(isinstance(t, str) and t for t in taps):
        raise StrategyError(f"the strategy's 'taps' must be a non-empty list of tap names, got {taps!r}")
    if len(set(taps)) != len(taps):
        raise StrategyError(f"the strategy lists a tap twice: {list(taps)}; each tap may appear once")
    if output not in ("logits", "correction"):
        raise StrategyError(f"the strategy's 'output' must be 'logits' or 'correction', got {output!r}")
    fields = []
    for key in _STRUCTURAL_FIELDS:
        value = get(key)
        if value is not None:
            fields.append((key, tuple(value) if key == "taps" else value))
    return PartitionSpec(tuple(taps), output, tuple(fields))


@tvm.transform.module_pass(opt_level=0, name="MirrorNetPartition")
class MirrorNetPartition:
    """Split the combined ``main`` into ``backbone`` (normal world) and ``cpm`` (secure world)."""

    def __init__(self, strategy):
        self.spec = partition_spec(strategy)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        main = _main_function(mod)
        outputs = _named_outputs(main)
        _check_recorded_strategy(main, self.spec)
        _check_taps(outputs, self.spec)
        graph = _Graph(main)
        backbone_out = [outputs[name] for name in self.spec.backbone_outputs]
        cpm_in = [outputs[TAP_PREFIX + t] for t in self.spec.taps]
        if self.spec.output == "correction":
            cpm_in.append(outputs["backbone_logits"])
        backbone = graph.extract("backbone", inputs=list(main.params), input_names=None,
                                 outputs=backbone_out, as_tuple=True)
        cpm = graph.extract("cpm", inputs=cpm_in, input_names=list(self.spec.cpm_params),
                            outputs=[outputs["logits"]], as_tuple=False)
        functions = {gv: func for gv, func in mod.functions_items()
                     if gv.name_hint not in ("backbone", "cpm")}
        functions[tvm.ir.GlobalVar("backbone")] = backbone
        functions[tvm.ir.GlobalVar("cpm")] = cpm
        result = tvm.IRModule(functions, attrs=_module_attrs(mod), global_infos=dict(mod.global_infos))
        return relax.transform.Normalize()(result)


# ---- reading the combined module ---------------------------------------------------------------------

def _module_attrs(mod):
    attrs = mod.attrs
    return None if attrs is None else {k: attrs[k] for k in attrs.keys()}


def _main_function(mod):
    if "main" not in mod:
        names = [gv.name_hint for gv in mod.get_global_vars()]
        raise ModelError(f"the module has no 'main' function (functions: {names}); partition the "
                         "combined model as imported from combined.onnx")
    main = mod["main"]
    if not isinstance(main, relax.Function):
        raise ModelError("the module's 'main' is not a Relax function; import the combined model with "
                         "tvm.relax.frontend.onnx.from_onnx or mirrornet_tvm.frontend")
    return main


def _named_outputs(main) -> dict[str, relax.Expr]:
    """Map each of main's output names to the expression main returns for it."""
    attrs = main.attrs
    if attrs is None or OUTPUT_NAMES_ATTR not in attrs.keys():
        raise StrategyError(f"'main' has no '{OUTPUT_NAMES_ATTR}' attribute, so its outputs cannot be "
                            "matched to the strategy's taps; import with mirrornet_tvm.frontend or apply "
                            "mirrornet_tvm.transform.AttachMirrorNetMetadata(output_names) first")
    names = [str(n) for n in attrs[OUTPUT_NAMES_ATTR]]
    fields = _returned_fields(main)
    if len(fields) != len(names):
        raise StrategyError(f"'main' returns {len(fields)} value(s) but '{OUTPUT_NAMES_ATTR}' names "
                            f"{len(names)} ({names}); the metadata does not describe this module")
    if len(set(names)) != len(names):
        raise StrategyError(f"'{OUTPUT_NAMES_ATTR}' names an output twice: {names}")
    for required in ("logits", "backbone_logits"):
        if required not in names:
            raise StrategyError(f"the combined model has no '{required}' output (outputs: {names}); "
                                "partition a combined model written by `mirrornet protect`")
    return dict(zip(names, fields))


def _returned_fields(main) -> list[relax.Expr]:
    body = main.body
    result = body.body if isinstance(body, relax.SeqExpr) else body
    if isinstance(result, relax.Var) and isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            for binding in block.bindings:
                if binding.var.same_as(result) and isinstance(binding, relax.VarBinding):
                    result = binding.value
    if isinstance(result, relax.Tuple):
        return list(result.fields)
    return [result]


def _check_recorded_strategy(main, spec: PartitionSpec) -> None:
    attrs = main.attrs
    if attrs is None or STRATEGY_ATTR not in attrs.keys():
        return
    try:
        recorded = json.loads(str(attrs[STRATEGY_ATTR]))
    except ValueError:
        raise StrategyError(f"'main' carries a '{STRATEGY_ATTR}' attribute that is not JSON; re-import "
                            "the combined model") from None
    for key, value in spec.fields:
        if key in recorded:
            have = tuple(recorded[key]) if key == "taps" else recorded[key]
            if have != value:
                raise StrategyError(f"the strategy does not match the model: {key} is {value!r} in the "
                                    f"strategy but {have!r} in the model's metadata; use the "
                                    "strategy.json that belongs to this combined model")


def _check_taps(outputs: Mapping[str, relax.Expr], spec: PartitionSpec) -> None:
    available = [n[len(TAP_PREFIX):] for n in outputs if n.startswith(TAP_PREFIX)]
    missing = [t for t in spec.taps if t not in available]
    if missing:
        raise StrategyError(f"strategy tap(s) {missing} are not outputs of the model; available taps: "
                            f"{available or 'none'}")
    for name in spec.backbone_outputs:
        if not isinstance(outputs[name], relax.Var):
            raise StrategyError(f"output '{name}' is a constant, not a feature map of the backbone")


# ---- slicing and rebuilding ----------------------------------------------------------------------------

@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Replace variables by other expressions (used to turn tapped values into parameters)."""

    def __init__(self, remap):
        super().__init__()
        self.remap = remap

    def visit_var_(self, op):
        return self.remap.get(op, op)

    def visit_dataflow_var_(self, op):
        return self.remap.get(op, op)


class _Graph:
    """The bindings of a function, in order, with backward slicing and extraction of sub-functions."""

    def __init__(self, func: relax.Function):
        self.func = func
        body = func.body
        blocks = list(body.blocks) if isinstance(body, relax.SeqExpr) else []
        self.bindings = [b for block in blocks for b in block.bindings]
        self.pure_dataflow = all(isinstance(block, relax.DataflowBlock) for block in blocks)
        self.defining = {b.var: b for b in self.bindings}
        self.params = set(func.params)

    def backward_slice(self, roots, stops) -> set:
        """Variables needed to compute ``roots``, not looking past ``stops``; raise if a parameter is hit."""
        stops = set(stops)
        needed, parent = set(), {}
        stack = [(r, None) for r in roots if isinstance(r, relax.Var)]
        while stack:
            var, child = stack.pop()
            if var in stops or var in needed:
                continue
            parent.setdefault(var, child)
            if var in self.params:
                raise _ReachedParam(var, _chain(var, parent))
            binding = self.defining.get(var)
            if binding is None:
                continue
            needed.add(var)
            for free in relax.analysis.free_vars(binding.value):
                stack.append((free, var))
        return needed

    def extract(self, name, inputs, input_names, outputs, as_tuple) -> relax.Function:
        try:
            needed = self.backward_slice(outputs, stops=inputs)
        except _ReachedParam as hit:
            raise StrategyError(
                f"the {name} slice reaches the model input '{hit.param.name}' through "
                f"{_describe(hit.chain, self.defining)}: the CPM "
                "would need a value that is not a tap. Add the backbone value the CPM reads to the "
                "strategy's taps (and to the combined model's outputs), or rebuild the combined model"
            ) from None
        names = input_names or [p.name for p in inputs]
        params = [relax.Var(n, v.ty) for n, v in zip(names, inputs)]
        remap = dict(zip(inputs, params))
        bb = relax.BlockBuilder()
        with bb.function(name, params, attrs={"num_input": len(params)}, pure=self.func.is_pure):
            frame = bb.dataflow() if self.pure_dataflow else _NoFrame()
            with frame:
                for binding in self.bindings:
                    if binding.var not in needed:
                        continue
                    value = _Substitute(remap).visit_expr(binding.value)
                    if isinstance(binding, relax.MatchCast):
                        new = bb.match_cast(value, binding.ty, name_hint=binding.var.name)
                    else:
                        new = bb.emit(value, name_hint=binding.var.name)
                    remap[binding.var] = new
                result = [remap.get(o, o) for o in outputs]
                result = relax.Tuple(result) if as_tuple else result[0]
                if self.pure_dataflow:
                    result = bb.emit_output(result, name_hint="gv")
            bb.emit_func_output(result)
        return bb.get()[name]


class _NoFrame:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _ReachedParam(Exception):
    def __init__(self, param, chain):
        super().__init__(param.name)
        self.param, self.chain = param, chain


def _chain(var, parent) -> list:
    """The path from a root down to ``var``, following the recorded readers (root first)."""
    path = [var]
    while parent.get(path[-1]) is not None:
        path.append(parent[path[-1]])
    return path[::-1]


def _describe(chain, defining) -> str:
    """'add(lv26) <- matmul(lv24) <- ... <- input' for an error message, at most eight steps."""
    steps = []
    for var in chain:
        binding = defining.get(var)
        op = getattr(getattr(getattr(binding, "value", None), "op", None), "name", None)
        steps.append(f"{op.removeprefix('relax.')}({var.name})" if op else var.name)
    if len(steps) > 8:
        steps = steps[:4] + ["..."] + steps[-3:]
    return " <- ".join(steps)


tvm.relax.transform.MirrorNetPartition = MirrorNetPartition  # so scripts can say relax.transform.X
