"""Read the lowered CPM function as a straight-line program of kernel calls.

After :func:`.lower.lower_cpm`, the CPM function is a sequence of ``call_tir`` bindings. This module
turns it into plain data: every tensor value (tap, weight constant, intermediate) and every kernel
call with the values it reads and writes, in execution order. The memory planner and the C emitter
work from this description only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from ..errors import CompileError


@dataclass(frozen=True)
class Value:
    """A float32 tensor of the CPM program."""

    name: str
    kind: str  # "tap" | "weight" | "temp"
    shape: tuple[int, ...]
    index: int = -1  # tap position, or weight number

    @property
    def floats(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return 4 * self.floats


@dataclass(frozen=True)
class KernelCall:
    """One ``call_tir``: ``kernel(*inputs, *outputs)`` in destination-passing style."""

    kernel: str  # the PrimFunc's name in the lowered module
    inputs: tuple[str, ...]  # value names
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class CpmProgram:
    values: tuple[Value, ...]
    calls: tuple[KernelCall, ...]
    weights: tuple[np.ndarray, ...]  # by Value.index of the weight values
    result: str  # the value the function returns (the logits)

    def value(self, name: str) -> Value:
        for v in self.values:
            if v.name == name:
                return v
        raise KeyError(name)


def _tensor_shape(ty, what: str) -> tuple[int, ...]:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise CompileError(f"{what} is not a tensor of known shape ({ty}).")
    if str(ty.dtype) != "float32":
        raise CompileError(f"{what} has dtype {ty.dtype}; the CPM C code supports float32 tensors only.")
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tirx.IntImm):
            raise CompileError(f"{what} has a symbolic shape {ty.shape}; the CPM needs static shapes.")
        dims.append(int(dim))
    return tuple(dims)


def _bindings(body):
    if not isinstance(body, relax.SeqExpr):
        raise CompileError("the lowered CPM function has no binding blocks; nothing to generate.")
    for block in body.blocks:
        yield from block.bindings


def read_program(lowered: tvm.IRModule, func_name: str) -> CpmProgram:
    """The kernel-call program of ``lowered[func_name]`` (see :func:`.lower.lower_cpm`)."""
    func = lowered[func_name]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    values: dict[str, Value] = {}
    weights: list[np.ndarray] = []
    weight_of: dict[int, str] = {}  # one array per Relax constant: equal values stay separate arrays,
    # so the weights are exactly the CPM's parameters (what the secure-memory estimate counts)
    calls: list[KernelCall] = []
    names: dict[int, str] = {}  # id of Relax var/const handle -> value name

    def key(expr):
        return expr.__chandle__() if hasattr(expr, "__chandle__") else id(expr)

    for i, param in enumerate(func.params):
        shape = _tensor_shape(param.ty, f"CPM input '{param.name}'")
        name = f"tap{i}"
        values[name] = Value(name, "tap", shape, i)
        names[key(param)] = name

    def resolve(expr, what: str) -> str:
        if isinstance(expr, tvm.ir.GenericConst):
            if key(expr) not in weight_of:
                array = np.ascontiguousarray(expr.value.numpy())
                if array.dtype != np.float32:
                    raise CompileError(f"{what} is a {array.dtype} constant; the CPM supports float32 weights only.")
                name = f"w{len(weights)}"
                weights.append(array)
                values[name] = Value(name, "weight", tuple(int(d) for d in array.shape), len(weights) - 1)
                weight_of[key(expr)] = name
            return weight_of[key(expr)]
        if isinstance(expr, relax.Var) and key(expr) in names:
            return names[key(expr)]
        raise CompileError(f"{what} is a {type(expr).__name__} the CPM C emitter does not handle ({expr}).")

    for binding in _bindings(func.body):
        var, expr = binding.var, binding.value
        if isinstance(expr, relax.Var) or isinstance(expr, tvm.ir.GenericConst):
            names[key(var)] = resolve(expr, f"binding '{var.name}'")
            continue
        if not isinstance(expr, relax.Call) or not expr.op.same_as(call_tir):
            op = getattr(getattr(expr, "op", None), "name", type(expr).__name__)
            raise CompileError(
                f"binding '{var.name}' of the lowered CPM is '{op}', not a TIR kernel call; the "
                "CPM C emitter handles only operators that TVM legalizes to TIR."
            )
        kernel = expr.args[0].name_hint
        if len(expr.args) > 2:
            raise CompileError(f"kernel '{kernel}' takes symbolic shape arguments; the CPM needs static shapes.")
        inputs = tuple(resolve(arg, f"argument {k} of kernel '{kernel}'") for k, arg in enumerate(expr.args[1].fields))
        if isinstance(var.ty, relax.TupleType):
            raise CompileError(f"kernel '{kernel}' returns a tuple; the CPM C emitter expects one tensor per kernel.")
        shape = _tensor_shape(var.ty, f"the result of kernel '{kernel}'")
        name = f"t{len(calls)}"
        values[name] = Value(name, "temp", shape)
        names[key(var)] = name
        calls.append(KernelCall(kernel, inputs, (name,)))

    result = func.body.body
    if not isinstance(result, (relax.Var, tvm.ir.GenericConst)):
        raise CompileError(f"the CPM returns a {type(result).__name__}; it must return one tensor (the logits).")
    result_name = resolve(result, "the CPM result")
    return CpmProgram(tuple(values.values()), tuple(calls), tuple(weights), result_name)
