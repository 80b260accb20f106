"""Scheduled TIR kernels -> plain C functions, through TVM's own C code generator.

The CPU lowering of ``tvm.tirx.build`` minus its packed-API steps (``MakePackedAPI``,
``LowerTVMBuiltin``, ``SplitHostDevice``), plus passes of ours, one per file:
:class:`.plain_c.PlainCParams` (raw pointer parameters), :class:`.serial_loops.SerialLoops`
(no thread pool), :class:`.global_scope.GlobalScopeBuffers` (register tiles the C printer
accepts), :class:`.lift_workspace.LiftWorkspace` (temporaries to the arena) and
:class:`.exact_floats.ExactFloatLiterals` (bit-exact constants). The C text of ``target.build.c``
is then taken apart strictly: its runtime includes, FFI globals and extern declarations are
dropped, each kernel becomes a ``static`` function over ``restrict`` pointers (``const`` for its
inputs), and anything unexpected is an error rather than silently dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from ..errors import CompileError, MirrorNetError
from .exact_floats import BITS_FUNCTION, ExactFloatLiterals
from .global_scope import GlobalScopeBuffers
from .lift_workspace import WORKSPACE_ATTR, LiftWorkspace
from .plain_c import PlainCParams
from .serial_loops import SerialLoops

STACK_ARRAY_LIMIT = 256  # bytes of local arrays a kernel may keep on the stack
LIFT_MIN_BYTES = 1  # every temporary goes to the arena (real memory: its stores seed gcc's SLP) ...
MAX_REGISTER_TILE_BYTES = 128  # ... except register tiles (local scope) up to this size

# Functions the generated kernels may call: provided by the CPM's own math.h.
MATH_FUNCTIONS = frozenset({
    "fabsf", "copysignf", "fmaxf", "fminf", "truncf", "floorf", "ceilf", "roundf", "nearbyintf",
    "sqrtf", "expf", "logf", "tanhf", "erff", "powf", BITS_FUNCTION,
})

_C_TYPES = {"float": 4, "double": 8, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2,
            "int32_t": 4, "uint32_t": 4, "int64_t": 8, "uint64_t": 8, "bool": 1}
_LOCAL_ARRAY = re.compile(r"^\s*(" + "|".join(_C_TYPES) + r")\s+(\w+)\[(\d+)\];")
_DEFINITION = re.compile(r"^TVM_DLL void (\w+)\((.*)\) \{$")
_DECLARATION = re.compile(r"^TVM_DLL [\w\s\*]+?\b(\w+)\((.*)\);$")
_POINTER_PARAM = re.compile(r"^(\w+)\* (\w+)$")
_IGNORED = (
    re.compile(r"^$"),
    re.compile(r"^// "),
    re.compile(r"^#define TVM_EXPORTS$"),
    re.compile(r"^#include [<\"][\w/\.]+[>\"]$"),
    re.compile(r"^#ifdef __cplusplus$"),
    re.compile(r'^extern "C"$'),
    re.compile(r"^#endif$"),
    re.compile(r"^void\* __tvm_ffi__library_ctx = NULL;$"),
)


@dataclass(frozen=True)
class KernelSource:
    """One kernel as C: ``c_name(*inputs, *outputs, *workspaces)``."""

    name: str  # the PrimFunc's name in the lowered module
    c_name: str
    definition: str  # complete C definition, ``static void c_name(...) { ... }``
    num_params: int  # buffer parameters (inputs + outputs), before the workspaces
    workspace_bytes: tuple[int, ...]
    stack_array_bytes: int  # bytes of local arrays left on the stack (small register tiles)


def c_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "c"})


def lowering_passes() -> list:
    """TVM's CPU lowering without the packed API, with the CPM passes in place."""
    return [
        PlainCParams(),
        SerialLoops(),
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        # no NarrowDataType(32): 64-bit indices let gcc see adjacent accesses (no sign extension)
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(False),  # C has no portable vectors: let gcc vectorize loops
        tirx.transform.StorageRewrite(),
        s_tir.transform.HoistIfThenElse(),
        tirx.transform.UnrollLoop(),
        s_tir.transform.RenormalizeSplitPattern(),
        tirx.transform.StmtSimplify(),
        tirx.transform.RemoveNoOp(),
        s_tir.transform.RewriteUnsafeSelect(),
        tirx.transform.CommonSubexprElim(),
        GlobalScopeBuffers(),
        LiftWorkspace(LIFT_MIN_BYTES, MAX_REGISTER_TILE_BYTES),
        ExactFloatLiterals(),
        tirx.transform.LowerIntrin(),
    ]


def _definitions(source: str) -> tuple[dict[str, list[str]], set[str]]:
    """Split TVM's C output into kernel definitions and the names of extern functions it declares."""
    definitions: dict[str, list[str]] = {}
    externs: set[str] = set()
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DEFINITION.match(line)
        if match:
            body = [line]
            depth = line.count("{") - line.count("}")
            i += 1
            while depth > 0 and i < len(lines):
                body.append(lines[i])
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
            if depth != 0:
                raise CompileError(f"TVM's C output for '{match.group(1)}' is truncated (unbalanced braces).")
            definitions[match.group(1)] = body
            continue
        match = _DECLARATION.match(line)
        if match:
            externs.add(match.group(1))
        elif not any(p.match(line) for p in _IGNORED):
            raise CompileError(f"unexpected line in TVM's C output: {line!r}; the CPM emitter does not "
                               "know what to do with it (TVM version mismatch?).")
        i += 1
    return definitions, externs


def _rewrite_signature(line: str, c_name: str, num_inputs: int) -> tuple[str, int]:
    """``static void name(const float *restrict in..., float *restrict out...)``."""
    match = _DEFINITION.match(line)
    params = [p.strip() for p in match.group(2).split(",")] if match.group(2).strip() else []
    out = []
    for k, param in enumerate(params):
        pointer = _POINTER_PARAM.match(param)
        if not pointer:
            raise CompileError(f"kernel '{c_name}' has a non-pointer parameter '{param}' in TVM's C output.")
        const = "const " if k < num_inputs else ""
        out.append(f"{const}{pointer.group(1)} *restrict {pointer.group(2)}")
    return f"static void {c_name}({', '.join(out) if out else 'void'})\n{{", len(out)


def _stack_arrays(c_name: str, body: list[str]) -> int:
    total = 0
    for line in body:
        match = _LOCAL_ARRAY.match(line)
        if match:
            size = _C_TYPES[match.group(1)] * int(match.group(3))
            total += size
    if total > STACK_ARRAY_LIMIT:
        raise CompileError(
            f"kernel '{c_name}' keeps {total} bytes of local arrays on the stack (limit "
            f"{STACK_ARRAY_LIMIT}); a trusted application's stack is a few KiB. The arrays should "
            "have been moved to the arena (LiftWorkspace)."
        )
    return total


def kernels_to_c(lowered: tvm.IRModule, kernel_inputs: dict[str, int], prefix: str = "cpm_") -> dict[str, KernelSource]:
    """C definitions of the PrimFuncs of ``lowered`` named in ``kernel_inputs`` (kernel -> number of
    input tensors, which become ``const`` pointers); CompileError on anything non-plain."""
    target = c_target()
    funcs = {}
    c_names = {}
    for name in kernel_inputs:
        func = lowered[name]
        if not isinstance(func, tirx.PrimFunc):
            raise CompileError(f"'{name}' is not a TIR kernel.")
        c_name = prefix + re.sub(r"\W", "_", name)
        c_names[name] = c_name
        funcs[tvm.ir.GlobalVar(c_name)] = (
            func.with_attr("global_symbol", c_name).with_attr("target", target)
        )
    prim_mod = tvm.IRModule(funcs)
    try:
        with tvm.transform.PassContext(opt_level=3):
            prim_mod = tvm.transform.Sequential(lowering_passes(), name="mirrornet.LowerCpmKernels")(prim_mod)
        source = tvm.get_global_func("target.build.c")(prim_mod, target).inspect_source()
    except MirrorNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises RuntimeError, ValueError, ... subclasses
        raise CompileError(f"TVM could not lower the CPM kernels to C: {exc}") from exc
    definitions, externs = _definitions(source)
    unknown = sorted(externs - set(c_names.values()) - MATH_FUNCTIONS)
    if unknown:
        raise CompileError(
            f"the CPM kernels call {', '.join(unknown)}, which the CPM's math.h does not provide "
            f"(it has: {', '.join(sorted(MATH_FUNCTIONS))}). Remove the operator from the CPM or "
            "add the function to mirrornet_tvm/codegen/runtime/math.h."
        )
    result = {}
    for name, c_name in c_names.items():
        if c_name not in definitions:
            raise CompileError(f"TVM's C output has no definition for kernel '{c_name}'.")
        body = definitions[c_name]
        header, num_params = _rewrite_signature(body[0], c_name, kernel_inputs[name])
        stack = _stack_arrays(c_name, body[1:])
        workspaces = tuple(int(x) for x in prim_mod[c_name].attrs.get(WORKSPACE_ATTR, []))
        result[name] = KernelSource(
            name=name,
            c_name=c_name,
            definition="\n".join([header, *body[1:]]),
            num_params=num_params - len(workspaces),
            workspace_bytes=workspaces,
            stack_array_bytes=stack,
        )
    return result
