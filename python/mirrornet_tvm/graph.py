"""GraphNet: the trainable PyTorch form of a supported ONNX graph.

An ONNX graph becomes a list of frozen :class:`Node` records in topological order (name, op, activation
inputs, outputs, attributes) plus one torch submodule per weighted node (``Conv2d``, ``BatchNorm2d``,
``Linear``, a bias ``Parameter`` for a constant ``Add``), so ``parameters()``, ``state_dict``, optimisers
and ``torch.onnx.export`` work as on any module. Constants (initializers, ``Constant`` nodes) are folded
into the records and modules, so a record's ``inputs`` name activation tensors only.

Supported ops (:data:`SUPPORTED_OPS`): Conv (2-D), BatchNormalization, Relu, LeakyRelu, Clip, MaxPool,
AveragePool, GlobalAveragePool, Add, Concat, Flatten, Reshape (constant shape), Gemm and MatMul with a
constant weight, Softmax as the final node, Identity and Constant.

``GraphNet.export_onnx`` writes the records back node for node (names kept). ``torch.onnx.export`` of a
GraphNet also gives a supported graph, except where ONNX semantics have no single torch op: asymmetric
pads (exported as ``Pad``) and ceil-mode pools whose last window starts in the end padding (``Slice``).

Static shapes for batch 1 are recorded per tensor (:attr:`GraphNet.tensor_shapes`) by running the
network once on zeros while it is converted. The network runs with any batch size afterwards.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from .errors import ModelError, UnsupportedOpError

SUPPORTED_OPS = (
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "LRN", "Add",
    "Sum", "Sub", "Mul", "Div", "Concat", "Flatten", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Pad",
    "Gemm", "MatMul", "Softmax", "Dropout", "Identity", "Constant",
)
# Integer constant operands an op may take (input index -> what it is); every other constant is a weight.
INTEGER_OPERANDS = {"Reshape": {1: "shape"}, "Unsqueeze": {1: "axes"}, "Squeeze": {1: "axes"},
                    "Pad": {1: "pads"}, "ReduceMean": {1: "axes"}, "Dropout": {2: "training_mode"}}
EXPORT_OPSET = 17


@dataclass(frozen=True)
class Node:
    """One operation of a GraphNet, in ONNX terms.

    ``inputs`` are the activation tensors it reads (constants are folded into ``attrs`` or into the
    node's module); ``attrs`` holds the ONNX attributes with their defaults filled in, plus the folded
    constants of ``Clip`` (``min``, ``max``) and ``Reshape`` (``shape``); keys starting with ``_`` are
    derived helpers of the torch form (e.g. ``_fpad``, an explicit ``F.pad`` for asymmetric pads), not
    ONNX attributes. ``module`` is the key of the node's torch submodule in ``GraphNet.layers`` (None
    for weightless ops). Gemm/MatMul/Add weights live in that module with alpha/beta/transB folded in.
    """

    name: str
    op: str
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict, hash=False)
    module: str | None = None

    @property
    def output(self) -> str:
        return self.outputs[0]


def supported_ops_text() -> str:
    return ", ".join(op for op in SUPPORTED_OPS)


# ---------------------------------------------------------------------------------------------------
# Reading ONNX: constants and per-node checks shared with frontend.check_onnx
# ---------------------------------------------------------------------------------------------------

def onnx_constants(graph: onnx.GraphProto) -> dict:
    """Tensor name -> numpy array for every initializer, Constant node and Identity of a constant."""
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(node)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _constant_value(node) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise UnsupportedOpError(
        f"Constant node '{node.name}' has no tensor, float or int value (sparse or string constants are "
        "not supported); re-export the model with plain tensor constants")


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def node_problem(node, consts: dict, graph_outputs: set) -> str | None:
    """Why ``node`` (a supported op type) cannot be handled, or None."""
    op, a = node.op_type, _attrs(node)
    ins = [i for i in node.input]
    if op == "Conv":
        if ins[1] not in consts or (len(ins) > 2 and ins[2] and ins[2] not in consts):
            return "its weight and bias must be constants (initializers)"
        if consts[ins[1]].ndim != 4:
            return "only 2-D convolutions (NCHW) are supported"
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            return "auto_pad SAME_* is not supported; export with explicit pads"
    elif op == "BatchNormalization":
        if any(i not in consts for i in ins[1:5]):
            return "its scale, bias, mean and variance must be constants"
        if len([o for o in node.output if o]) > 1 or a.get("training_mode", 0):
            return "training-mode BatchNormalization (extra outputs) is not supported; export in eval mode"
    elif op in ("MaxPool", "AveragePool"):
        if len(a.get("kernel_shape", ())) != 2:
            return "only 2-D pooling is supported"
        if len([o for o in node.output if o]) > 1:
            return "MaxPool with an indices output is not supported"
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            return "auto_pad SAME_* is not supported; export with explicit pads"
        if op == "AveragePool" and any(d != 1 for d in a.get("dilations", ())):
            return "dilated AveragePool is not supported"
    elif op == "Clip":
        if any(i and i not in consts for i in ins[1:]):
            return "its min/max must be constants"
    elif op == "Add":
        if all(i in consts for i in ins):
            return "both operands are constants (fold them before export)"
    elif op == "Reshape":
        if a.get("allowzero", 0):
            return "allowzero=1 is not supported; export with allowzero=0 (the default)"
        if ins[1] not in consts:
            return ("its target shape is computed at run time (Shape/Gather/Concat); export with static "
                    "shapes and constant folding (torch.onnx.export(..., do_constant_folding=True)) or use "
                    "torch.flatten")
    elif op == "Gemm":
        if ins[1] not in consts or (len(ins) > 2 and ins[2] and ins[2] not in consts):
            return "its B and C operands must be constants (a weight and a bias)"
        if ins[0] in consts:
            return "its A operand must be the activation"
    elif op == "MatMul":
        if ins[1] not in consts or consts[ins[1]].ndim != 2 or ins[0] in consts:
            return "only activation @ constant 2-D weight is supported"
    elif op == "Softmax":
        # final node: its output is a graph output (a combined model may also read it, e.g. backbone_logits)
        if node.output[0] not in graph_outputs:
            return "Softmax is supported only as the final node (its output must be a graph output)"
    elif op == "Concat":
        if any(i in consts for i in ins):
            return "concatenating constants is not supported"
    elif op in ("Sum", "Sub", "Mul", "Div"):
        if all(i in consts for i in ins if i):
            return "all operands are constants (fold them before export)"
    elif op in ("Unsqueeze", "Squeeze", "ReduceMean"):
        if len(ins) > 1 and ins[1] and ins[1] not in consts:
            return "its axes must be constants"
    elif op == "Pad":
        if len(ins) > 1 and ins[1] and ins[1] not in consts:
            return "its pads must be constants"
        if len(ins) > 2 and ins[2] and ins[2] not in consts:
            return "its constant value must be a constant"
        if len(ins) > 3 and ins[3]:
            return "the axes operand (opset 18) is not supported; pad every axis"
        mode = a.get("mode", b"constant")
        if mode not in (b"constant", b"reflect", b"edge"):
            return f"mode {mode.decode()} is not supported (constant, reflect, edge)"
    elif op == "Dropout":
        if len(ins) > 2 and ins[2] and (ins[2] not in consts or bool(consts[ins[2]])):
            return "training_mode must be a constant false (export in eval mode)"
    elif op == "LRN":
        if "size" not in a:
            return "its size attribute is missing"
    return None


# ---------------------------------------------------------------------------------------------------
# Torch building blocks
# ---------------------------------------------------------------------------------------------------

class _BatchNorm(torch.nn.BatchNorm2d):
    """BatchNormalization over dim 1 for any input rank >= 2 (ONNX allows N x C as well as N x C x H x W)."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"BatchNormalization expects at least 2-D input, got {input.dim()}-D")


class _Bias(torch.nn.Module):
    """A trainable constant operand of an ``Add`` (e.g. the bias after a ``MatMul``)."""

    def __init__(self, value: np.ndarray):
        super().__init__()
        self.value = torch.nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32)))

    def forward(self, x):
        return x + self.value


def _pads_split(pads):
    """ONNX pads [top, left, bottom, right] -> (symmetric (ph, pw) or None, F.pad list)."""
    t, l, b, r = pads
    sym = (t, l) if (t == b and l == r) else None
    return sym, [l, r, t, b]


def _sanitize(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_")
    return s or "node"


class GraphNet(torch.nn.Module):
    """The trainable PyTorch form of a supported single-input ONNX graph (see the module docstring)."""

    def __init__(self, nodes, layers: dict, input_name: str, output_name: str, input_shape):
        super().__init__()
        self.nodes = list(nodes)
        self.layers = torch.nn.ModuleDict(layers)
        self.input_name = input_name
        self.output_name = output_name
        self.input_shape = tuple(int(d) for d in input_shape)
        self.tensor_shapes: dict = {}
        self._check_order()
        self._refresh_indices()
        self.tensor_shapes = self._trace_shapes()

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, proto, output: str | None = None) -> "GraphNet":
        """Convert a checked ONNX model (see ``frontend.check_onnx``) to a GraphNet.

        ``output`` selects the graph output to keep (default: the first); only the nodes it depends on
        are converted, so e.g. ``output="backbone_logits"`` of a combined model gives the backbone.
        """
        from .frontend import check_onnx  # frontend imports this module

        proto = check_onnx(proto)
        g = proto.graph
        outputs = [o.name for o in g.output]
        output = output or outputs[0]
        if output not in outputs:
            raise ModelError(f"the model has no output '{output}'; its outputs are {outputs}")
        consts = onnx_constants(g)
        inits = {t.name for t in g.initializer}
        inp = [i for i in g.input if i.name not in inits][0]
        input_shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), EXPORT_OPSET)

        # keep only the cone of `output`
        onodes = list(g.node)
        producer = {o: i for i, n in enumerate(onodes) for o in n.output}
        needed, stack = set(), [output]
        while stack:
            i = producer.get(stack.pop())
            if i is None or i in needed:
                continue
            needed.add(i)
            stack.extend(t for t in onodes[i].input if t)

        nodes, layers, used_names, used_keys = [], {}, set(), set()
        for index, n in enumerate(onodes):
            if index not in needed or n.op_type == "Constant" or n.output[0] in consts:
                continue
            name = n.name or f"{n.op_type}_{index}"
            while name in used_names:
                name = f"{name}_{index}"
            used_names.add(name)
            key = _sanitize(name)
            while key in used_keys:
                key = f"{key}_"
            node, module = _convert(n, name, consts, opset)
            if module is not None:
                used_keys.add(key)
                layers[key] = module
                node = Node(node.name, node.op, node.inputs, node.outputs, node.attrs, key)
            nodes.append(node)
        if not nodes:
            raise ModelError("the model has no operations between its input and output")
        return cls(nodes, layers, inp.name, output, input_shape)

    def _check_order(self):
        """Every node reads the input or earlier outputs, and the output is produced."""
        known = {self.input_name}
        for n in self.nodes:
            missing = [t for t in n.inputs if t not in known]
            if missing:
                raise ModelError(f"node '{n.name}' reads {missing}, which no earlier node produces; "
                                 "give the nodes in topological order")
            if n.module is not None and n.module not in self.layers:
                raise ModelError(f"node '{n.name}' refers to module '{n.module}', which is not in layers")
            known.update(n.outputs)
        if self.output_name not in known:
            raise ModelError(f"no node produces the output '{self.output_name}'")

    def _refresh_indices(self):
        self._producer = {o: i for i, n in enumerate(self.nodes) for o in n.outputs}
        self._consumers: dict = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                self._consumers.setdefault(t, []).append(i)
        last = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                last[t] = i
        self._last_use = last

    @torch.no_grad()
    def _trace_shapes(self) -> dict:
        """Run once on zeros: record every tensor's shape, and which pools need cropping to ONNX's size."""
        was_training = self.training
        self.eval()
        self._crops, self._trace_crops = None, {}
        try:
            x = torch.zeros(self.input_shape)
            _, tensors = self._run(x, keep_all=True)
        finally:
            self.train(was_training)
            self._crops = self._trace_crops
        return {name: tuple(t.shape) for name, t in tensors.items()}

    # -- queries --------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(np.prod(self.tensor_shapes[self.output_name][1:]))

    def producer(self, tensor: str) -> Node | None:
        """The node producing ``tensor`` (None for the graph input)."""
        self._check_tensor(tensor)
        i = self._producer.get(tensor)
        return None if i is None else self.nodes[i]

    def node_index(self, tensor: str) -> int:
        """Index in :attr:`nodes` of the node producing ``tensor`` (-1 for the graph input)."""
        self._check_tensor(tensor)
        return self._producer.get(tensor, -1)

    def consumers(self, tensor: str) -> list:
        self._check_tensor(tensor)
        return [self.nodes[i] for i in self._consumers.get(tensor, [])]

    def channels(self, tensor: str) -> int:
        """Channel count (dim 1) of a tensor."""
        self._check_tensor(tensor)
        return int(self.tensor_shapes[tensor][1])

    def module_of(self, node: Node):
        """The torch submodule holding ``node``'s weights, or None."""
        return None if node.module is None else self.layers[node.module]

    def subgraph(self, start_tensor: str, end_tensor: str) -> list:
        """Nodes (in order) that depend on ``start_tensor`` and that ``end_tensor`` depends on.

        ``start_tensor`` may be the graph input. Raises ModelError if ``end_tensor`` does not depend on
        ``start_tensor``.
        """
        self._check_tensor(start_tensor)
        self._check_tensor(end_tensor)
        ancestors = self._ancestors(end_tensor)
        reach = {start_tensor}
        out = []
        for i, n in enumerate(self.nodes):
            if any(t in reach for t in n.inputs):
                reach.update(n.outputs)
                if i in ancestors:
                    out.append(n)
        if end_tensor != start_tensor and not any(end_tensor in n.outputs for n in out):
            raise ModelError(f"tensor '{end_tensor}' does not depend on '{start_tensor}'")
        return out

    def _ancestors(self, tensor: str) -> set:
        """Indices of the nodes ``tensor`` depends on (including its producer)."""
        seen, stack = set(), [tensor]
        while stack:
            i = self._producer.get(stack.pop())
            if i is None or i in seen:
                continue
            seen.add(i)
            stack.extend(self.nodes[i].inputs)
        return seen

    def _check_tensor(self, tensor: str):
        if tensor not in self.tensor_shapes:
            sample = ", ".join(list(self.tensor_shapes)[:8])
            raise ModelError(f"no tensor named '{tensor}' in this graph (tensors include: {sample}, ...)")

    # -- running --------------------------------------------------------------------------------------
    def forward(self, x, return_tensors=()):
        """Run the network. With ``return_tensors`` (names), return ``(output, {name: tensor})``."""
        names = tuple(return_tensors)
        for t in names:
            self._check_tensor(t)
        out, tensors = self._run(x, keep=set(names))
        if not names:
            return out
        return out, {t: tensors[t] for t in names}

    def _run(self, x, keep=frozenset(), keep_all=False):
        env = {self.input_name: x}
        for i, n in enumerate(self.nodes):
            args = [env[t] for t in n.inputs]
            y = self._apply(n, args)
            env[n.outputs[0]] = y
            if not keep_all:
                for t in n.inputs:
                    if self._last_use.get(t) == i and t not in keep and t != self.output_name:
                        env.pop(t, None)
        return env[self.output_name], env

    def _apply(self, n: Node, args):
        op, a = n.op, n.attrs
        x = args[0]
        if op == "Conv":
            m = self.layers[n.module]
            if a["_fpad"] is not None:
                x = F.pad(x, a["_fpad"])
            return m(x)
        if op in ("BatchNormalization", "Gemm", "MatMul") or (op == "Add" and n.module):
            if op == "Gemm" and a.get("transA"):
                x = x.transpose(0, 1)
            return self.layers[n.module](x)
        if op == "Relu":
            return F.relu(x)
        if op == "LeakyRelu":
            return F.leaky_relu(x, a["alpha"])
        if op == "Clip":
            return torch.clamp(x, a["min"], a["max"])
        if op in ("MaxPool", "AveragePool"):
            if self._crops is None:  # shape tracing: find the pools whose torch size differs from ONNX's
                size = _onnx_pool_size(x, a)
            if op == "MaxPool":
                if a["_fpad"] is not None:
                    x = F.pad(x, a["_fpad"], value=float("-inf"))
                y = F.max_pool2d(x, a["kernel_shape"], a["strides"], a["_tpad"], a["dilations"],
                                 ceil_mode=bool(a["ceil_mode"]))
            else:
                y = _avg_pool(x, a)
            if self._crops is None:
                if tuple(y.shape[2:]) != size:
                    self._trace_crops[n.name] = size
            else:
                size = self._crops.get(n.name)
            return y if size is None or tuple(y.shape[2:]) == size else y[:, :, : size[0], : size[1]]
        if op == "GlobalAveragePool":  # adaptive pooling exports back as GlobalAveragePool
            if x.dim() == 4:
                return F.adaptive_avg_pool2d(x, 1)
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        if op == "Add":
            return args[0] + args[1]
        if op == "Concat":
            return torch.cat(args, dim=a["axis"])
        if op == "Flatten":
            axis = a["axis"] % x.dim() if x.dim() else 0
            if axis == 1:
                return torch.flatten(x, 1)
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op == "Reshape":
            return _reshape(x, a)
        if op == "Softmax":
            return torch.softmax(x, dim=a["axis"])
        if op == "Identity":
            return x
        raise UnsupportedOpError(f"GraphNet cannot run op {op} (node '{n.name}')")

    # -- writing ONNX ---------------------------------------------------------------------------------
    def export_onnx(self, path=None, extra_outputs=None, output_name: str | None = None,
                    input_name: str | None = None) -> onnx.ModelProto:
        """Write the network (current weights) as ONNX, batch 1, opset 17.

        ``extra_outputs`` maps an ONNX output name to an internal tensor name (e.g. taps). The graph
        input is named ``input`` unless ``input_name`` is given; the output keeps its name unless
        ``output_name`` is given. Node and tensor names are preserved, so analyses name taps alike.
        Written atomically when ``path`` is given; returns the model either way.
        """
        from .util import atomic_path

        extra_outputs = dict(extra_outputs or {})
        for t in extra_outputs.values():
            self._check_tensor(t)
        in_name = input_name or "input"
        out_name = output_name or self.output_name
        rename = {self.input_name: in_name, self.output_name: out_name}
        r = lambda t: rename.get(t, t)  # noqa: E731
        onodes, inits = [], []

        def const(name, value, dtype=np.float32):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
            return name

        for n in self.nodes:
            ins = [r(t) for t in n.inputs]
            outs = [r(t) for t in n.outputs]
            attrs = {k: v for k, v in n.attrs.items() if not k.startswith("_")}
            m = self.module_of(n)
            key = n.module or _sanitize(n.name)
            op = n.op
            if op == "Conv":
                ins.append(const(f"{key}.weight", _np(m.weight)))
                if m.bias is not None:
                    ins.append(const(f"{key}.bias", _np(m.bias)))
            elif op == "BatchNormalization":
                ins += [const(f"{key}.weight", _np(m.weight)), const(f"{key}.bias", _np(m.bias)),
                        const(f"{key}.running_mean", _np(m.running_mean)),
                        const(f"{key}.running_var", _np(m.running_var))]
            elif op == "Gemm":
                ins.append(const(f"{key}.weight", _np(m.weight)))
                if m.bias is not None:
                    ins.append(const(f"{key}.bias", _np(m.bias)))
                attrs = {"transA": attrs.get("transA", 0), "transB": 1, "alpha": 1.0, "beta": 1.0}
            elif op == "MatMul":
                ins.append(const(f"{key}.weight", _np(m.weight).T))
            elif op == "Add" and m is not None:
                ins.append(const(f"{key}.value", _np(m.value)))
            elif op == "Clip":
                lo, hi = attrs.pop("min"), attrs.pop("max")
                ins.append(const(f"{key}.min", lo) if lo is not None else "")
                ins.append(const(f"{key}.max", hi) if hi is not None else "")
                while ins and ins[-1] == "":
                    ins.pop()
            elif op == "Reshape":
                ins.append(const(f"{key}.shape", attrs.pop("shape"), np.int64))
            onodes.append(helper.make_node(op, ins, outs, name=n.name, **attrs))

        outputs = [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT,
                                                 self.tensor_shapes[self.output_name])]
        for oname, t in extra_outputs.items():
            src = r(t)
            if oname != src:
                onodes.append(helper.make_node("Identity", [src], [oname], name=f"output:{oname}"))
            outputs.append(helper.make_tensor_value_info(oname, onnx.TensorProto.FLOAT, self.tensor_shapes[t]))
        graph = helper.make_graph(
            onodes, "mirrornet_graphnet",
            [helper.make_tensor_value_info(in_name, onnx.TensorProto.FLOAT, self.input_shape)],
            outputs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
                                  producer_name="mirrornet-tvm GraphNet.export_onnx")
        model.ir_version = 8
        onnx.checker.check_model(model)
        if path is not None:
            with atomic_path(path) as tmp:
                onnx.save(model, str(tmp))
        return model


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# ONNX node -> (Node, torch module)
# ---------------------------------------------------------------------------------------------------

def _convert(n, name: str, consts: dict, opset: int):
    op = n.op_type
    a = _attrs(n)
    acts = tuple(i for i in n.input if i and i not in consts)
    outs = tuple(o for o in n.output if o)
    module = None

    def record(attrs):
        return Node(name, op, acts, outs[:1], attrs)

    if op == "Conv":
        w = consts[n.input[1]]
        b = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else None
        k = tuple(a.get("kernel_shape", w.shape[2:]))
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        sym, fpad = _pads_split(pads)
        attrs = {"kernel_shape": k, "strides": tuple(a.get("strides", (1, 1))), "pads": pads,
                 "dilations": tuple(a.get("dilations", (1, 1))), "group": int(a.get("group", 1)),
                 "_fpad": None if sym else fpad}
        group = attrs["group"]
        module = torch.nn.Conv2d(w.shape[1] * group, w.shape[0], k, attrs["strides"], sym or 0,
                                 attrs["dilations"], group, bias=b is not None)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if b is not None:
                module.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        return record(attrs), module
    if op == "BatchNormalization":
        scale, bias, mean, var = (consts[i].astype(np.float32) for i in n.input[1:5])
        eps, mom = float(a.get("epsilon", 1e-5)), float(a.get("momentum", 0.9))
        module = _BatchNorm(scale.shape[0], eps=eps, momentum=1.0 - mom)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(scale))
            module.bias.copy_(torch.from_numpy(bias))
            module.running_mean.copy_(torch.from_numpy(mean))
            module.running_var.copy_(torch.from_numpy(var))
        return record({"epsilon": eps, "momentum": mom}), module
    if op == "Relu" or op == "Identity" or op == "GlobalAveragePool":
        return record({}), None
    if op == "LeakyRelu":
        return record({"alpha": float(a.get("alpha", 0.01))}), None
    if op == "Clip":
        lo = a.get("min") if opset < 11 else None
        hi = a.get("max") if opset < 11 else None
        if len(n.input) > 1 and n.input[1]:
            lo = float(consts[n.input[1]])
        if len(n.input) > 2 and n.input[2]:
            hi = float(consts[n.input[2]])
        return record({"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}), None
    if op in ("MaxPool", "AveragePool"):
        k = tuple(a["kernel_shape"])
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        sym, fpad = _pads_split(pads)
        # torch pools accept padding up to half the kernel; otherwise pad explicitly
        if sym and any(p > kk // 2 for p, kk in zip(sym, k)):
            sym = None
        attrs = {"kernel_shape": k, "strides": tuple(a.get("strides", (1, 1))), "pads": pads,
                 "ceil_mode": int(a.get("ceil_mode", 0)), "_tpad": sym or (0, 0),
                 "_fpad": None if sym else fpad}
        if op == "MaxPool":
            attrs["dilations"] = tuple(a.get("dilations", (1, 1)))
        else:
            attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        return record(attrs), None
    if op == "Add":
        const_in = [i for i in n.input if i in consts]
        if const_in:
            module = _Bias(consts[const_in[0]])
        return record({}), module
    if op == "Concat":
        return record({"axis": int(a["axis"])}), None
    if op == "Flatten":
        return record({"axis": int(a.get("axis", 1))}), None
    if op == "Reshape":
        return record({"shape": tuple(int(s) for s in consts[n.input[1]])}), None
    if op == "Gemm":
        w = consts[n.input[1]].astype(np.float32)
        c = consts[n.input[2]].astype(np.float32) if len(n.input) > 2 and n.input[2] else None
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        wt = w if a.get("transB", 0) else w.T          # (out, in)
        module = torch.nn.Linear(wt.shape[1], wt.shape[0], bias=c is not None)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(alpha * wt))
            if c is not None:
                module.bias.copy_(torch.from_numpy(np.broadcast_to(beta * c, (1, wt.shape[0])).reshape(-1).copy()))
        return record({"transA": int(a.get("transA", 0))}), module
    if op == "MatMul":
        w = consts[n.input[1]].astype(np.float32)      # (in, out)
        module = torch.nn.Linear(w.shape[0], w.shape[1], bias=False)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(w.T.copy()))
        return record({}), module
    if op == "Softmax":
        return record({"axis": int(a.get("axis", -1 if opset >= 13 else 1))}), None
    raise UnsupportedOpError(
        f"node '{name}' uses op {op}, which is not supported; supported ops: {supported_ops_text()}")


def _onnx_pool_size(x, a) -> tuple:
    """Output (H, W) of an ONNX pool: with ceil_mode, a last window starting in the end padding is dropped.

    torch keeps such a window when the end padding is explicit (F.pad), so those pools are cropped.
    """
    out = []
    for i, (n, k, s, d) in enumerate(zip(x.shape[2:], a["kernel_shape"], a["strides"], a.get("dilations", (1, 1)))):
        head, tail = a["pads"][i], a["pads"][i + 2]
        span = n + head + tail - ((k - 1) * d + 1)
        size = (-(-span // s) if a["ceil_mode"] else span // s) + 1
        if a["ceil_mode"] and (size - 1) * s >= n + head:
            size -= 1
        out.append(int(size))
    return tuple(out)


def _avg_pool(x, a):
    k, s, ceil = a["kernel_shape"], a["strides"], bool(a["ceil_mode"])
    include = bool(a["count_include_pad"])
    if a["_fpad"] is None:
        return F.avg_pool2d(x, k, s, a["_tpad"], ceil_mode=ceil, count_include_pad=include)
    if include:
        return F.avg_pool2d(F.pad(x, a["_fpad"]), k, s, 0, ceil_mode=ceil)
    # asymmetric padding that must not be counted: average of the padded input over the padded ones
    ones = torch.ones_like(x[:1, :1])
    num = F.avg_pool2d(F.pad(x, a["_fpad"]), k, s, 0, ceil_mode=ceil)
    den = F.avg_pool2d(F.pad(ones, a["_fpad"]), k, s, 0, ceil_mode=ceil)
    return num / den


def _reshape(x, a):
    shape = list(a["shape"])
    if len(shape) == 2 and shape[1] == -1 and shape[0] in (0, 1, -1) or shape == [x.shape[0], -1]:
        return torch.flatten(x, 1) if x.dim() > 1 else x.reshape(1, -1)
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    # keep the batch dimension free when the target preserves it, so training batches work
    if shape and shape[0] == 1 and -1 not in shape[1:]:
        shape[0] = -1
    return x.reshape(shape)
