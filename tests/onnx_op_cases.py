"""Small ONNX models, one per op and opset form of the supported op set of classification CNNs.

Each case builds a single-op graph (or a tiny pattern: channel shuffle, squeeze-and-excitation gating,
input normalisation) with ``onnx.helper``: one float32 input ``x`` of shape [1, C, H, W], one output
``y``, constant weights drawn from a seed derived from the case id (the same bytes on every build),
and the default-domain opset ``case.opset``. Every op form is covered at the lowest and the highest
opset of that form within 7..21 (e.g. Unsqueeze with the axes attribute at 7 and 11, with the axes
input at 13 and 21).

    from onnx_op_cases import CASES, ort_run
    for case in CASES:
        model = case.build()
        y = ort_run(model, case.random_input())

``final_only`` marks ops that are supported only as the graph's final node (Softmax); ``ops`` lists
the op types the case is about (a pattern may list several).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT, OUTPUT = "x", "y"
SHAPE = (1, 8, 7, 7)


@dataclass(frozen=True)
class Case:
    id: str
    opset: int
    ops: tuple[str, ...]
    make: Callable  # (Graph) -> None: adds nodes from INPUT to OUTPUT
    shape: tuple[int, ...] = SHAPE
    final_only: bool = False

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    def build(self) -> onnx.ModelProto:
        g = Graph(self.opset, np.random.default_rng(self.seed))
        self.make(g)
        opsets = [helper.make_opsetid("", self.opset)]
        ir_version = helper.find_min_ir_version_for(opsets)
        inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, self.shape)]
        if ir_version < 4:  # before IR 4 every initializer is also a graph input (old exporters)
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in g.inits]
        outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)]
        graph = helper.make_graph(g.nodes, self.id, inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx_op_cases", ir_version=ir_version)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model

    def random_input(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.shape).astype(np.float32)


class Graph:
    """Node and initializer lists of a case under construction."""

    def __init__(self, opset: int, rng: np.random.Generator):
        self.opset, self.rng, self.nodes, self.inits = opset, rng, [], []

    def const(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape, scale: float = 0.5) -> str:
        return self.const(self.rng.standard_normal(shape) * scale)

    def ints(self, values) -> str:
        return self.const(values, np.int64)

    def op(self, op_type: str, inputs, output: str | None = None, **attrs) -> str:
        output = output or f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=f"n{len(self.nodes)}", **attrs))
        return output


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's (single) output on ``x`` under onnxruntime, CPU, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


# ---- the cases -----------------------------------------------------------------------------------------

CASES: list[Case] = []


def case(id_: str, opset: int, ops, make, **kw) -> None:
    CASES.append(Case(id_, opset, tuple(ops.split()), make, **kw))


def _dropout(g: Graph, with_inputs: bool):
    if g.opset < 12:
        d = g.op("Dropout", [INPUT], ratio=0.3)
    elif with_inputs == "ratio":
        d = g.op("Dropout", [INPUT, g.const(0.5)])
    elif with_inputs:
        d = g.op("Dropout", [INPUT, g.const(0.3), g.const(False, np.bool_)])
    else:
        d = g.op("Dropout", [INPUT])
    g.op("Relu", [d], OUTPUT)


for o in (7, 11):
    case(f"Dropout-{o}-ratio_attr", o, "Dropout", lambda g: _dropout(g, False))
for o in (12, 21):
    case(f"Dropout-{o}-inputs", o, "Dropout", lambda g: _dropout(g, True))
    case(f"Dropout-{o}-no_inputs", o, "Dropout", lambda g: _dropout(g, False))
    case(f"Dropout-{o}-ratio_only", o, "Dropout", lambda g: _dropout(g, "ratio"))

# Sum: no broadcasting before opset 8
case("Sum-7", 7, "Sum", lambda g: g.op("Sum", [INPUT, g.op("Relu", [INPUT]), g.weight(*SHAPE)], OUTPUT))
for o in (8, 21):
    case(f"Sum-{o}-broadcast", o, "Sum",
         lambda g: g.op("Sum", [INPUT, g.op("Relu", [INPUT]), g.weight(8, 1, 1)], OUTPUT))
for o in (7, 21):
    case(f"Sum-{o}-one", o, "Sum Relu", lambda g: g.op("Sum", [g.op("Relu", [INPUT])], OUTPUT))
    case(f"Sum-{o}-four", o, "Sum Relu Sigmoid Tanh", lambda g: g.op(
        "Sum", [INPUT, g.op("Relu", [INPUT]), g.op("Sigmoid", [INPUT]), g.op("Tanh", [INPUT])], OUTPUT))
for o in (7, 21):
    case(f"Add-{o}-const_broadcast", o, "Add", lambda g: g.op("Add", [INPUT, g.weight(1, 8, 1, 1)], OUTPUT))
    case(f"Add-{o}-const_left_scalar", o, "Add", lambda g: g.op("Add", [g.const(0.25), INPUT], OUTPUT))
    case(f"Add-{o}-tensor_broadcast", o, "Add GlobalAveragePool",
         lambda g: g.op("Add", [INPUT, g.op("GlobalAveragePool", [INPUT])], OUTPUT))
    case(f"Mul-{o}-scalar", o, "Mul", lambda g: g.op("Mul", [INPUT, g.const(0.125)], OUTPUT))
    case(f"Mul-{o}-channel", o, "Mul", lambda g: g.op("Mul", [g.weight(8, 1, 1), INPUT], OUTPUT))
    case(f"Sub-{o}-const_left", o, "Sub", lambda g: g.op("Sub", [g.weight(1, 8, 1, 1), INPUT], OUTPUT))
    case(f"Sub-{o}-tensor", o, "Sub Relu", lambda g: g.op("Sub", [INPUT, g.op("Relu", [INPUT])], OUTPUT))
    case(f"Div-{o}-scalar", o, "Div", lambda g: g.op("Div", [INPUT, g.const(255.0)], OUTPUT))
    case(f"Div-{o}-tensor", o, "Div Add Relu",
         lambda g: g.op("Div", [INPUT, g.op("Add", [g.op("Relu", [INPUT]), g.const(1.0)])], OUTPUT))
    case(f"Normalize-{o}", o, "Sub Div",  # (x - mean) / std, as an input normalisation
         lambda g: g.op("Div", [g.op("Sub", [INPUT, g.const(g.rng.uniform(-0.5, 0.5, (1, 8, 1, 1)))]),
                                g.const(g.rng.uniform(0.2, 0.3, (1, 8, 1, 1)))], OUTPUT))


def _se(g: Graph, gate: str):
    """Squeeze-and-excitation: x * gate(W2 relu(W1 gap(x))), [1,C,H,W] x [1,C,1,1]."""
    s = g.op("GlobalAveragePool", [INPUT])
    s = g.op("Relu", [g.op("Conv", [s, g.weight(4, 8, 1, 1), g.weight(4)])])
    s = g.op("Conv", [s, g.weight(8, 4, 1, 1), g.weight(8)])
    s = g.op(gate, [s], **({"alpha": 0.2, "beta": 0.5} if gate == "HardSigmoid" else {}))
    g.op("Mul", [INPUT, s], OUTPUT)


for o in (7, 21):
    case(f"SE-{o}-Sigmoid", o, "Mul Sigmoid GlobalAveragePool Conv", lambda g: _se(g, "Sigmoid"))
    case(f"SE-{o}-HardSigmoid", o, "Mul HardSigmoid GlobalAveragePool Conv", lambda g: _se(g, "HardSigmoid"))
    case(f"Sigmoid-{o}", o, "Sigmoid", lambda g: g.op("Sigmoid", [g.op("Mul", [INPUT, g.const(4.0)])], OUTPUT))
    case(f"Tanh-{o}", o, "Tanh", lambda g: g.op("Tanh", [g.op("Mul", [INPUT, g.const(2.0)])], OUTPUT))
    case(f"Sigmoid-{o}-saturated", o, "Sigmoid",
         lambda g: g.op("Sigmoid", [g.op("Mul", [INPUT, g.const(60.0)])], OUTPUT))
    case(f"Tanh-{o}-saturated", o, "Tanh", lambda g: g.op("Tanh", [g.op("Mul", [INPUT, g.const(60.0)])], OUTPUT))
    case(f"HardSigmoid-{o}", o, "HardSigmoid",
         lambda g: g.op("HardSigmoid", [INPUT], OUTPUT, alpha=0.3, beta=0.4))
    case(f"HardSigmoid-{o}-default", o, "HardSigmoid",
         lambda g: g.op("HardSigmoid", [g.op("Mul", [INPUT, g.const(3.0)])], OUTPUT))
for o in (14, 21):
    case(f"HardSwish-{o}", o, "HardSwish", lambda g: g.op("HardSwish", [g.op("Mul", [INPUT, g.const(4.0)])], OUTPUT))


def _axes(g: Graph, op: str, inp: str, axes, **attrs):
    """Unsqueeze/Squeeze/ReduceMean with ``axes`` as attribute (older opsets) or input (newer)."""
    as_input = g.opset >= (18 if op == "ReduceMean" else 13)
    if axes is None:
        return g.op(op, [inp], OUTPUT, **attrs)
    if as_input:
        return g.op(op, [inp, g.ints(axes)], OUTPUT, **attrs)
    return g.op(op, [inp], OUTPUT, axes=list(axes), **attrs)


for o in (7, 11, 13, 21):
    form = "attr" if o < 13 else "input"
    case(f"Unsqueeze-{o}-{form}", o, "Unsqueeze", lambda g: _axes(g, "Unsqueeze", INPUT, [2]))
    case(f"Squeeze-{o}-{form}", o, "Squeeze", lambda g: _axes(g, "Squeeze", INPUT, [0]))
    case(f"Squeeze-{o}-{form}-gap", o, "Squeeze GlobalAveragePool",
         lambda g: _axes(g, "Squeeze", g.op("GlobalAveragePool", [INPUT]), [2, 3] if g.opset < 11 else [-1, -2]))
    if o >= 11:  # negative axes from opset 11
        case(f"Unsqueeze-{o}-{form}-negative", o, "Unsqueeze",
             lambda g: _axes(g, "Unsqueeze", g.op("Reshape", [INPUT, g.ints([1, 8, 49])]), [-1, 1]))
    if o in (7, 21):
        case(f"Squeeze-{o}-{form}-all", o, "Squeeze GlobalMaxPool",
             lambda g: _axes(g, "Squeeze", g.op("GlobalMaxPool", [INPUT]), None))


def _shuffle(g: Graph, groups: int):
    n, c, h, w = SHAPE
    t = g.op("Reshape", [INPUT, g.ints([n, groups, c // groups, h, w])])
    t = g.op("Transpose", [t], perm=[0, 2, 1, 3, 4])
    g.op("Reshape", [t, g.ints([n, c, h, w] if g.opset < 13 else [0, -1, h, w])], OUTPUT)


for o in (7, 21):
    case(f"Transpose-{o}-nhwc", o, "Transpose", lambda g: g.op("Transpose", [INPUT], OUTPUT, perm=[0, 2, 3, 1]))
    case(f"Transpose-{o}-hw", o, "Transpose", lambda g: g.op("Transpose", [INPUT], OUTPUT, perm=[0, 1, 3, 2]))
    case(f"Transpose-{o}-default_perm", o, "Transpose", lambda g: g.op("Transpose", [INPUT], OUTPUT))
    case(f"ChannelShuffle-{o}-g2", o, "Reshape Transpose", lambda g: _shuffle(g, 2))
    case(f"ChannelShuffle-{o}-g4", o, "Reshape Transpose", lambda g: _shuffle(g, 4))


def _pad(g: Graph, mode: str):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]  # asymmetric, spatial only
    value = {"value": 0.5} if mode == "constant" else {}
    if g.opset < 11:
        return g.op("Pad", [INPUT], OUTPUT, mode=mode, pads=pads, **value)
    inputs = [INPUT, g.ints(pads)] + ([g.const(0.5)] if mode == "constant" else [])
    return g.op("Pad", inputs, OUTPUT, mode=mode)


for o in (7, 10, 11, 21):
    for mode in ("constant", "reflect", "edge"):
        case(f"Pad-{o}-{mode}", o, "Pad", lambda g, m=mode: _pad(g, m))
for o in (11, 21):
    case(f"Pad-{o}-zero_default", o, "Pad", lambda g: g.op("Pad", [INPUT, g.ints([0, 0, 1, 1, 0, 0, 1, 1])], OUTPUT))

for o in (7, 21):
    case(f"LRN-{o}", o, "LRN", lambda g: g.op("LRN", [INPUT], OUTPUT, size=5, alpha=0.02, beta=0.75, bias=2.0))
    case(f"LRN-{o}-size3_defaults", o, "LRN", lambda g: g.op("LRN", [INPUT], OUTPUT, size=3))
    case(f"Conv-{o}-grouped", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(8, 4, 3, 3), g.weight(8)], OUTPUT, group=2, pads=[1, 1, 1, 1]))
    case(f"Conv-{o}-depthwise", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(8, 1, 3, 3), g.weight(8)], OUTPUT, group=8, pads=[1, 1, 1, 1]))
    case(f"Conv-{o}-depthwise_stride2", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(8, 1, 3, 3)], OUTPUT, group=8, strides=[2, 2], pads=[1, 1, 1, 1]),
         shape=(1, 8, 9, 9))
    case(f"Conv-{o}-depthwise_multiplier2", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(16, 1, 3, 3), g.weight(16)], OUTPUT, group=8), shape=(1, 8, 6, 6))
    case(f"Conv-{o}-depthwise_asymmetric_pads", o, "Conv",  # as converted from TensorFlow (SAME, stride 2)
         lambda g: g.op("Conv", [INPUT, g.weight(8, 1, 3, 3), g.weight(8)], OUTPUT, group=8, strides=[2, 2],
                        pads=[0, 0, 1, 1]), shape=(1, 8, 8, 8))
    case(f"Conv-{o}-grouped_dilated", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(8, 4, 3, 3)], OUTPUT, group=2, dilations=[2, 2], pads=[2, 2, 2, 2]))
    case(f"Conv-{o}-depthwise_5x5_wide", o, "Conv",  # a row wider than one register tile
         lambda g: g.op("Conv", [INPUT, g.weight(8, 1, 5, 5), g.weight(8)], OUTPUT, group=8, pads=[2, 2, 2, 2]),
         shape=(1, 8, 20, 20))
    case(f"Conv-{o}-grouped4_pointwise", o, "Conv",
         lambda g: g.op("Conv", [INPUT, g.weight(8, 2, 1, 1), g.weight(8)], OUTPUT, group=4))
    case(f"GlobalMaxPool-{o}", o, "GlobalMaxPool", lambda g: g.op("GlobalMaxPool", [INPUT], OUTPUT))
    case(f"Flatten-{o}", o, "Flatten", lambda g: g.op("Flatten", [INPUT], OUTPUT))
    case(f"Flatten-{o}-axis0", o, "Flatten", lambda g: g.op("Flatten", [INPUT], OUTPUT, axis=0))
    case(f"Flatten-{o}-axis2", o, "Flatten", lambda g: g.op("Flatten", [INPUT], OUTPUT, axis=2))
    case(f"Flatten-{o}-gap", o, "Flatten GlobalAveragePool",
         lambda g: g.op("Flatten", [g.op("GlobalAveragePool", [INPUT])], OUTPUT, axis=1))
    case(f"Reshape-{o}", o, "Reshape", lambda g: g.op("Reshape", [INPUT, g.ints([1, -1])], OUTPUT))
    case(f"Reshape-{o}-rows", o, "Reshape", lambda g: g.op("Reshape", [INPUT, g.ints([1, 8, 49])], OUTPUT))
    # Softmax: before opset 13 the input is coerced to 2-D at `axis` (default 1); from 13 one axis (default -1)
    case(f"Softmax-{o}", o, "Softmax", lambda g: g.op("Softmax", [g.op("Mul", [INPUT, g.const(2.0)])], OUTPUT),
         final_only=True)
    case(f"Softmax-{o}-axis1", o, "Softmax", lambda g: g.op("Softmax", [INPUT], OUTPUT, axis=1), final_only=True)
    case(f"Softmax-{o}-logits", o, "Softmax Flatten GlobalAveragePool Gemm",
         lambda g: g.op("Softmax", [g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [INPUT])]),
                                                   g.weight(10, 8, scale=2.0), g.weight(10)], transB=1)], OUTPUT),
         final_only=True)
    case(f"Softmax-{o}-last_axis", o, "Softmax", lambda g: g.op("Softmax", [INPUT], OUTPUT, axis=-1),
         final_only=True)
for o in (7, 12, 13, 21):  # opset 12 is the last of the old Softmax semantics, 13 the first of the new
    case(f"Softmax-{o}-axis2", o, "Softmax", lambda g: g.op("Softmax", [INPUT], OUTPUT, axis=2), final_only=True)

for o in (7, 17, 18, 21):
    form = "attr" if o < 18 else "input"
    for keep in (1, 0):
        case(f"ReduceMean-{o}-{form}-keepdims{keep}", o, "ReduceMean",
             lambda g, k=keep: _axes(g, "ReduceMean", INPUT, [2, 3], keepdims=k))
    if o >= 11:  # negative axes from opset 11
        case(f"ReduceMean-{o}-{form}-negative_axes", o, "ReduceMean",
             lambda g: _axes(g, "ReduceMean", INPUT, [-2, -1], keepdims=1), shape=(1, 8, 6, 6))

for o in (7, 10):
    case(f"Clip-{o}-attrs", o, "Clip", lambda g: g.op("Clip", [INPUT], OUTPUT, min=-0.5, max=0.75))
    case(f"Clip-{o}-relu6", o, "Clip",
         lambda g: g.op("Clip", [g.op("Mul", [INPUT, g.const(4.0)])], OUTPUT, min=0.0, max=6.0))
for o in (11, 21):
    case(f"Clip-{o}-inputs", o, "Clip", lambda g: g.op("Clip", [INPUT, g.const(-0.5), g.const(0.75)], OUTPUT))
    case(f"Clip-{o}-min_only", o, "Clip", lambda g: g.op("Clip", [INPUT, g.const(0.0)], OUTPUT))
    case(f"Clip-{o}-max_only", o, "Clip", lambda g: g.op("Clip", [INPUT, "", g.const(0.5)], OUTPUT))


def _constant_node(g: Graph, value) -> str:
    return g.op("Constant", [], value=numpy_helper.from_array(np.asarray(value)))


# operands as Constant nodes rather than initializers, as torch.onnx.export writes them
for o in (13, 21):
    case(f"Clip-{o}-constant_nodes", o, "Clip Constant", lambda g: g.op(
        "Clip", [INPUT, _constant_node(g, np.float32(-0.5)), _constant_node(g, np.float32(0.5))], OUTPUT))
    case(f"Unsqueeze-{o}-constant_node", o, "Unsqueeze Constant",
         lambda g: g.op("Unsqueeze", [INPUT, _constant_node(g, np.array([0], np.int64))], OUTPUT))
    case(f"Pad-{o}-constant_node", o, "Pad Constant", lambda g: g.op(
        "Pad", [INPUT, _constant_node(g, np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], OUTPUT, mode="reflect"))

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
BY_ID = {c.id: c for c in CASES}
