"""Lower the CPM's Relax function to scheduled TIR kernels.

The result is an IRModule holding the CPM function (now a sequence of ``call_tir`` bindings over
tap tensors, weight constants and intermediates) and one scheduled PrimFunc per fused kernel. The
C emitter turns it into plain C; the benchmark compiles the very same module with ``tvm.compile``
to compare against TVM's own code with identical schedules.

Schedules come from a MetaSchedule database where it has a record for a kernel and the target,
else from the default CPU rule (:mod:`.schedule`); ``default_schedules=False`` leaves the rest as
TVM's naive loop nests (the untuned baseline).
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.s_tir import dlight

from ..errors import CompileError, MirrorNetError
from .schedule import CpmCpuSchedule

SCHEDULE_ATTR = "mirrornet.schedule"  # "tuned" | "default" on scheduled kernels


def default_target() -> tvm.target.Target:
    """A generic LLVM CPU target: it only keys tuning records; the default schedules are plain loops."""
    return tvm.target.Target({"kind": "llvm"})


def _as_target(target) -> tvm.target.Target:
    if target is None:
        return default_target()
    if isinstance(target, tvm.target.Target):
        return target
    try:
        return tvm.target.Target(target)
    except Exception as exc:  # noqa: BLE001 - TVM raises several types for bad targets
        raise CompileError(
            f"invalid CPM target {target!r}: {exc}. Give a TVM target dict such as "
            "{'kind': 'llvm', 'mtriple': 'aarch64-linux-gnu', 'mcpu': 'cortex-a53'}."
        ) from None


def _static_shape(ty, what: str) -> tuple[int, ...]:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise CompileError(f"{what} is {ty}, not a tensor with a known shape; the CPM takes and "
                           "returns float32 tensors of static shape.")
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tirx.IntImm):
            raise CompileError(f"{what} has a symbolic shape {ty.shape}; export the model with "
                               "static shapes (batch 1).")
        dims.append(int(dim))
    if str(ty.dtype) != "float32":
        raise CompileError(f"{what} has dtype {ty.dtype}; the CPM C code supports float32 only.")
    return tuple(dims)


def check_cpm_signature(func, func_name: str) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Shapes of the tap parameters and of the result; CompileError when unsupported."""
    if not isinstance(func, relax.Function):
        raise CompileError(f"'{func_name}' is a {type(func).__name__}, not a Relax function.")
    if not func.params:
        raise CompileError(f"'{func_name}' takes no inputs; the CPM reads at least one tap.")
    taps = [_static_shape(p.ty, f"input '{p.name}' of '{func_name}'") for p in func.params]
    out = _static_shape(func.ret_ty, f"the result of '{func_name}'")
    return taps, out


def extract_function(mod: tvm.IRModule, func_name: str) -> tvm.IRModule:
    """A module holding ``func_name`` and every function it references, nothing else."""
    names = [gv.name_hint for gv in mod.get_global_vars()]
    if func_name not in names:
        raise CompileError(f"the module has no function '{func_name}' (it has: {', '.join(sorted(names))}). "
                           "Run MirrorNetPartition first, or pass func_name=.")
    keep = {}
    todo = [func_name]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        gv = mod.get_global_var(name)
        keep[name] = (gv, mod[gv])
        found = []
        tvm_ffi.structural_walk(mod[gv], [(tvm.ir.GlobalVar, found.append)])
        todo.extend(g.name_hint for g in found if g.name_hint in names)
    return tvm.IRModule({gv: func for gv, func in keep.values()}, attrs=mod.attrs)


def lower_cpm(mod: tvm.IRModule, func_name: str = "cpm", target=None, database=None,
              default_schedules: bool = True) -> tvm.IRModule:
    """Relax CPM function -> module of ``call_tir`` bindings plus scheduled PrimFuncs."""
    if not isinstance(mod, tvm.IRModule):
        raise CompileError(f"expected a tvm.IRModule, got {type(mod).__name__}.")
    sub = extract_function(mod, func_name)
    check_cpm_signature(sub[func_name], func_name)
    target = _as_target(target)
    legalize = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination([func_name]),
    ], name="mirrornet.LowerCpm")
    try:
        with target:
            lowered = legalize(sub)
            if database is not None:
                before = _kernels(lowered)
                with database:
                    lowered = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
                lowered = _tag_changed(before, lowered, "tuned")
            if default_schedules:
                before = _kernels(lowered)
                lowered = dlight.ApplyDefaultSchedule(CpmCpuSchedule())(lowered)
                lowered = _tag_changed(before, lowered, "default")
    except MirrorNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises RuntimeError, ValueError, ... subclasses
        raise CompileError(f"lowering the CPM function '{func_name}' failed: {exc}") from exc
    return lowered


def _kernels(mod: tvm.IRModule) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def _tag_changed(before: dict, after: tvm.IRModule, how: str) -> tvm.IRModule:
    """Record in ``mirrornet.schedule`` which kernels a scheduling step replaced.

    (``before`` is a snapshot of the kernels: the scheduling passes update the module in place.)
    """
    changed = {}
    for gv, func in after.functions_items():
        if not isinstance(func, tirx.PrimFunc) or SCHEDULE_ATTR in func.attrs:
            continue
        old = before.get(gv.name_hint)
        if old is None or not old.same_as(func):
            changed[gv] = func.with_attr(SCHEDULE_ATTR, how)
    for gv, func in changed.items():
        after[gv] = func
    return after


def schedule_report(lowered: tvm.IRModule) -> dict[str, str]:
    """For each kernel: 'tuned' (database record), 'default' (CpmCpuSchedule) or 'naive'."""
    return {
        gv.name_hint: str(func.attrs[SCHEDULE_ATTR]) if SCHEDULE_ATTR in func.attrs else "naive"
        for gv, func in lowered.functions_items()
        if isinstance(func, tirx.PrimFunc)
    }
