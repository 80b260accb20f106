"""GraphNet: the trainable PyTorch form of a supported ONNX graph.

An ONNX graph becomes a list of frozen :class:`Node` records in topological order (name, op, activation
inputs, outputs, attributes) plus one torch submodule per weighted node (``Conv2d``, ``BatchNorm2d``,
``Linear``, a trainable constant operand of an elementwise op), so ``parameters()``, ``state_dict``,
optimisers and ``torch.onnx.export`` work as on any module. Constants (initializers, ``Constant`` nodes)
are folded into the records and modules, so a record's ``inputs`` name activation tensors only.

Every op is defined once, in the op table (:mod:`mirrornet_tvm.ops`): its check, its record and module,
its torch form and its ONNX form. Dropout becomes an Identity record (identity at inference).

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
from onnx import helper, numpy_helper

from .errors import ModelError, UnsupportedOpError
from .ops import (EXPORT_OPSET, INTEGER_OPERANDS, OPS, SUPPORTED_OPS, attributes, node_problem,  # noqa: F401
                  onnx_constants, onnx_pool_size, supported_ops_text)


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
    def from_onnx(cls, proto, output: str | None = None, checked: bool = False) -> "GraphNet":
        """Convert an ONNX model to a GraphNet (checked by ``frontend.check_onnx`` first, unless ``checked``
        says the proto is what ``check_onnx`` returned).

        ``output`` selects the graph output to keep (default: the first); only the nodes it depends on
        are converted, so e.g. ``output="backbone_logits"`` of a combined model gives the backbone.
        """
        from .frontend import check_onnx  # frontend imports this module

        proto = proto if checked else check_onnx(proto)
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
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        for i, n in enumerate(self.nodes):  # a Softmax of opset < 13: say whether it spans several axes
            if n.op == "Softmax" and n.attrs.get("_flat") is True:
                rank = len(shapes[n.inputs[0]])
                spans = rank > 2 and n.attrs["axis"] % rank != rank - 1
                self.nodes[i] = Node(n.name, n.op, n.inputs, n.outputs,
                                     dict(n.attrs, _flat=(-1,) + shapes[n.inputs[0]][1:] if spans else False),
                                     n.module)
        return shapes

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
        y = OPS[n.op].forward(args, n.attrs, self.module_of(n))
        if n.op not in ("MaxPool", "AveragePool"):
            return y
        if self._crops is None:  # shape tracing: find the pools whose torch size differs from ONNX's
            size = onnx_pool_size(args[0], n.attrs)
            if tuple(y.shape[2:]) != size:
                self._trace_crops[n.name] = size
        else:
            size = self._crops.get(n.name)
        return y if size is None or tuple(y.shape[2:]) == size else y[:, :, : size[0], : size[1]]

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
            key = n.module or _sanitize(n.name)
            table = OPS[n.op]
            params = table.params(self.module_of(n)) if n.module else {}
            onodes += table.emit(n.name, [r(t) for t in n.inputs], [r(t) for t in n.outputs], n.attrs, params,
                                 lambda suffix, value, dtype=np.float32, key=key: const(f"{key}.{suffix}", value, dtype))

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


def _convert(n, name: str, consts: dict, opset: int):
    """One ONNX node -> (Node record, torch module or None), through the op table."""
    if n.op_type not in OPS:
        raise UnsupportedOpError(
            f"node '{name}' uses op {n.op_type}, which is not supported; supported ops: {supported_ops_text()}")
    attrs, module = OPS[n.op_type].convert(n, attributes(n), consts, opset)
    acts = tuple(i for i in n.input if i and i not in consts)
    outs = tuple(o for o in n.output if o)
    op = "Identity" if n.op_type == "Dropout" else n.op_type  # identity at inference
    return Node(name, op, acts, outs[:1], attrs), module
