"""Kernels: the TIR workloads a Relax function runs, as the normal-world build would lower them.

A Relax module is lowered with the same legalization and fusion passes as the CPU build
(``LegalizeOps``, ``AnnotateTIROpPattern``, ``FoldConstant``, ``FuseOps``, ``FuseTIR``), optionally
with the schedules of a MetaSchedule database applied, and reshapes rewritten into views (they cost
no kernel at run time). Each ``call_tir`` callee becomes a :class:`Kernel`; identical kernels share
a key, so measurements and predictions are reused across functions, models and strategies.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir.meta_schedule.arg_info import ArgInfo

from ..errors import ModelError, UsageError


@dataclass(frozen=True)
class Kernel:
    """One TIR kernel of a Relax function: what it is, how often the function calls it, its size."""

    name: str
    key: str
    calls: int
    flops: float
    arg_bytes: int
    func: tvm.tirx.PrimFunc = field(compare=False, repr=False)

    @property
    def script(self) -> str:
        return self.func.script()

    def module(self) -> tvm.IRModule:
        """The kernel alone, as an IRModule whose entry is ``main`` (what is built and timed)."""
        return tvm.IRModule({"main": self.func})

    def random_args(self, seed: int = 0) -> list[np.ndarray]:
        """Random inputs (and output buffers) matching the kernel's buffer parameters."""
        rng = np.random.default_rng(seed)
        out = []
        for info in ArgInfo.from_prim_func(self.func):
            shape = [int(d) for d in info.shape]
            dtype = str(info.dtype)
            if dtype.startswith("float"):
                out.append(rng.standard_normal(shape).astype(dtype))
            elif dtype == "bool":
                out.append(rng.integers(0, 2, shape).astype(dtype))
            else:
                out.append(rng.integers(0, 4, shape).astype(dtype))
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "key": self.key, "calls": self.calls, "flops": self.flops,
                "arg_bytes": self.arg_bytes, "tir": self.script}

    @classmethod
    def from_json(cls, data: dict) -> "Kernel":
        return kernel_from_script(data["tir"], name=data.get("name", "main"),
                                  calls=int(data.get("calls", 1)))


_NOT_STRUCTURAL = ("mirrornet.schedule",)  # bookkeeping tags that do not change the code


def _normalized(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    for attr in _NOT_STRUCTURAL:
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    return func.with_attr("global_symbol", "main")


def _flops(func: tvm.tirx.PrimFunc) -> float:
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # loops with data-dependent extents: unknown, not fatal
        return float("nan")


def _arg_bytes(func: tvm.tirx.PrimFunc) -> int:
    total = 0
    for info in ArgInfo.from_prim_func(func):
        n = int(np.prod([int(d) for d in info.shape])) if len(info.shape) else 1
        total += n * tvm.runtime.DataType(str(info.dtype)).bits // 8
    return total


_SIZES: dict[str, tuple[float, int]] = {}


def make_kernel(func: tvm.tirx.PrimFunc, name: str = "main", calls: int = 1) -> Kernel:
    """Wrap a PrimFunc as a :class:`Kernel`.

    Its key is TVM's structural hash of the function (names of buffers and variables do not count),
    which is the same in every process, so records made by one run are found by the next.
    """
    if not isinstance(func, tvm.tirx.PrimFunc):
        raise UsageError(f"expected a tvm.tirx.PrimFunc, got {type(func).__name__}")
    func = _normalized(func)
    key = f"{int(tvm_ffi.structural_hash(func)) & 0xFFFFFFFFFFFFFFFF:016x}"
    sizes = _SIZES.get(key)
    if sizes is None:
        sizes = _SIZES[key] = (_flops(func), _arg_bytes(func))
    return Kernel(name=name, key=key, calls=calls, flops=sizes[0], arg_bytes=sizes[1], func=func)


def kernel_from_script(script: str, name: str = "main", calls: int = 1) -> Kernel:
    """Rebuild a :class:`Kernel` from the TVMScript stored in a measurement record."""
    parsed = tvm.script.from_source(script)
    if isinstance(parsed, tvm.IRModule):
        funcs = [f for f in parsed.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        if len(funcs) != 1:
            raise UsageError(f"record for {name!r} holds {len(funcs)} PrimFuncs, expected 1")
        parsed = funcs[0]
    return make_kernel(parsed, name=name, calls=calls)


def lower(mod: tvm.IRModule, target=None, database=None) -> tvm.IRModule:
    """Lower a Relax module to fused TIR kernels the way the CPU build does.

    With a MetaSchedule ``database`` (and its ``target``), tuned schedules replace the default loops.
    """
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    try:
        mod = tvm.transform.Sequential(passes)(mod)
        if database is not None:
            if target is None:
                raise UsageError("applying a tuning database needs the target it was tuned for")
            from .targets import resolve_target

            with resolve_target(target), database:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return relax.transform.RewriteDataflowReshape()(mod)
    except UsageError:
        raise
    except Exception as err:
        raise ModelError(f"lowering the Relax module to TIR failed: {err}") from err


def _call_tir_callees(func: relax.Function) -> list[str]:
    order: list[str] = []
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            order.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(func.body, visit)
    return order


def kernels_of(mod: tvm.IRModule, function: str = "main", target=None, database=None,
               lowered: bool = False) -> list[Kernel]:
    """The kernels ``function`` runs, in first-call order, each with its number of calls."""
    if not isinstance(mod, tvm.IRModule):
        raise UsageError(f"expected a tvm.IRModule, got {type(mod).__name__}")
    names = [gv.name_hint for gv in mod.get_global_vars()]
    if function not in names:
        raise UsageError(f"the module has no function {function!r} (it has: {', '.join(sorted(names))})")
    if not lowered:
        mod = lower(mod, target=target, database=database)
    func = mod[function]
    if isinstance(func, tvm.tirx.PrimFunc):
        return [make_kernel(func, name=function)]
    callees = _call_tir_callees(func)
    counts = Counter(callees)
    seen: dict[str, Kernel] = {}
    for name in callees:
        if name not in seen:
            seen[name] = make_kernel(mod[name], name=name, calls=counts[name])
    return list(seen.values())


def as_kernels(obj, function: str = "main", target=None, database=None) -> list[Kernel]:
    """Kernels from a Relax IRModule, a PrimFunc, a list of PrimFuncs/Kernels, or an ONNX file."""
    if isinstance(obj, Kernel):
        return [obj]
    if isinstance(obj, tvm.tirx.PrimFunc):
        return [make_kernel(obj)]
    if isinstance(obj, (str, Path)):
        obj = load_onnx_as_relax(obj)
    if isinstance(obj, tvm.IRModule):
        return kernels_of(obj, function=function, target=target, database=database)
    if isinstance(obj, (list, tuple)):
        out: list[Kernel] = []
        for item in obj:
            out.extend(as_kernels(item, function=function, target=target, database=database))
        return out
    raise UsageError(
        f"cannot take kernels from a {type(obj).__name__}: pass a Relax IRModule, PrimFuncs or an ONNX path"
    )


def merge_kernels(kernels) -> list[Kernel]:
    """Merge kernels with the same key, adding their call counts."""
    merged: dict[str, Kernel] = {}
    for k in kernels:
        if k.key in merged:
            old = merged[k.key]
            merged[k.key] = Kernel(old.name, old.key, old.calls + k.calls, old.flops, old.arg_bytes, old.func)
        else:
            merged[k.key] = k
    return list(merged.values())


def load_onnx_as_relax(path, input_shape=None) -> tvm.IRModule:
    """Import an ONNX model into Relax (static shapes, weights as constants) with the project's front end."""
    from .. import frontend

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist")
    return frontend.load_model(str(path), input_shape=input_shape).relax()
