"""Model analysis: per-layer FLOPs and parameters, and the candidate tap points of a network.

A *tap* is a cut point of the backbone: a tensor produced by an activation (Relu, LeakyRelu, Clip, Tanh,
HardSwish), a pooling (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean), an LRN, a
channel Concat or a residual join (Add or Sum of activation operands) that every path from the input to
the output passes through, i.e. the only live tensor at that point of the topological order (the op
table's ``tap`` flag, :mod:`mirrornet_tvm.ops`). The final logits (and tensors only reshaped or
softmax-ed into them) are excluded.

Taps are named ``b<k>_<op>``: ``k`` is the tap's position among the candidate taps counted from the
input (0-based) and ``op`` is the lower-case op producing the tensor. Cut points of a graph are totally
ordered (each lies on every path through the next), so the names do not depend on node names, on which topological order an exporter
chose, or on extra branches outside the backbone: they are identical for the original ONNX, for a
``GraphNet.export_onnx`` re-export and for the backbone part (``backbone_logits``) of a combined model.

FLOPs are counted by the op table (:mod:`mirrornet_tvm.ops`): 2 x MACs for Conv, Gemm, MatMul and
BatchNormalization (bias additions not counted), one per output element for activations and each
elementwise operation, kernel area per output element for MaxPool/AveragePool, one per input element for
global pooling and ReduceMean, three per element for Softmax, and zero for layout ops. Parameters are the
trainable ones (``nn.Parameter``s; BatchNorm running statistics are buffers and not counted).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ModelError
from .ops import OPS

TAP_OPS = tuple(name for name, o in OPS.items() if o.tap)
_PASS_THROUGH = tuple(name for name, o in OPS.items() if o.pass_through)
FLOPS_NOTE = ("FLOPs = 2 x MACs for Conv/Gemm/MatMul/BatchNormalization; 1 per output element for "
              "activations and elementwise ops; kernel area per output for pooling")
BACKBONE_OUTPUT = "backbone_logits"


@dataclass(frozen=True)
class LayerRow:
    """One node of the network with its cost."""

    index: int
    name: str
    op: str
    output: str
    shape: tuple
    macs: int
    flops: int
    params: int


@dataclass(frozen=True)
class Tap:
    """A candidate cut point where the CPM may read the backbone's feature map."""

    name: str            # b<k>_<op>, stable across export and import
    tensor: str          # the tensor's name in this graph
    op: str              # ONNX op producing it
    shape: tuple         # static shape, batch 1
    bytes: int           # float32 bytes of the tensor (batch 1)
    node_index: int      # index of the producing node in GraphNet.nodes
    flops_before: int    # FLOPs of the nodes the tap depends on
    flops_after: int     # FLOPs of the rest of the network
    params_before: int
    params_after: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals of a network."""

    input_name: str
    input_shape: tuple
    output_name: str
    rows: tuple
    total_macs: int
    total_flops: int
    total_params: int
    flops_note: str = FLOPS_NOTE

    def to_dict(self) -> dict:
        return {
            "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "output": self.output_name,
            "layers": [dict(dataclasses.asdict(r), shape=list(r.shape)) for r in self.rows],
            "totals": {"macs": self.total_macs, "flops": self.total_flops, "params": self.total_params},
            "flops_note": self.flops_note,
        }


def as_graph(model, output: str | None = None):
    """A GraphNet from a GraphNet, a front-end Model, an onnx.ModelProto or an ONNX path.

    For an ONNX model with an output named ``backbone_logits`` (a combined MirrorNet export), the
    backbone part is analysed unless ``output`` says otherwise.
    """
    from .graph import GraphNet

    if isinstance(model, GraphNet):
        if output not in (None, model.output_name):
            raise ModelError(f"this GraphNet's output is '{model.output_name}', not '{output}'")
        return model
    from .frontend import check_onnx

    loaded = model if callable(getattr(model, "graph", None)) and hasattr(model, "proto") else None
    proto = loaded.proto if loaded is not None else check_onnx(model)
    names = [o.name for o in proto.graph.output]
    if output is None and BACKBONE_OUTPUT in names:
        output = BACKBONE_OUTPUT
    if loaded is not None and output in (None, names[0]):
        return loaded.graph()
    return GraphNet.from_onnx(proto, output=output)


def _node_cost(graph, node) -> tuple[int, int, int]:
    """(MACs, FLOPs, params) of one node."""
    module = graph.module_of(node)
    params = sum(p.numel() for p in module.parameters()) if module is not None else 0
    in_shapes = [graph.tensor_shapes[t] for t in node.inputs]
    macs, flops = OPS[node.op].cost(in_shapes, graph.tensor_shapes[node.outputs[0]], node.attrs, module)
    return macs, flops, params


def model_summary(model) -> ModelSummary:
    """Per-layer name, op, output shape, MACs, FLOPs and parameters, with totals."""
    graph = as_graph(model)
    rows = []
    for i, n in enumerate(graph.nodes):
        macs, flops, params = _node_cost(graph, n)
        rows.append(LayerRow(i, n.name, n.op, n.outputs[0], tuple(graph.tensor_shapes[n.outputs[0]]),
                             macs, flops, params))
    return ModelSummary(graph.input_name, tuple(graph.input_shape), graph.output_name, tuple(rows),
                        sum(r.macs for r in rows), sum(r.flops for r in rows), sum(r.params for r in rows))


def _logit_tensors(graph) -> set:
    """The output and the tensors that reach it only through Identity/Flatten/Reshape/Softmax."""
    names = {graph.output_name}
    t = graph.output_name
    while True:
        n = graph.producer(t)
        if n is None:
            return names
        names.add(n.outputs[0])
        if n.op not in _PASS_THROUGH:
            return names
        t = n.inputs[0]
        names.add(t)


def cut_points(graph) -> list:
    """Indices of the nodes after which their output is the only live tensor (input excluded)."""
    last_use = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            last_use[t] = i
    live = {graph.input_name}
    cuts = []
    for i, n in enumerate(graph.nodes):
        live.update(n.outputs)
        live = {t for t in live if last_use.get(t, -1) > i or t == graph.output_name}
        if live == {n.outputs[0]}:
            cuts.append(i)
    return cuts


def candidate_taps(model, output: str | None = None) -> list:
    """The candidate taps of a network, shallow to deep (see the module docstring)."""
    graph = as_graph(model, output)
    costs = [_node_cost(graph, n) for n in graph.nodes]
    total_flops = sum(c[1] for c in costs)
    total_params = sum(c[2] for c in costs)
    excluded = _logit_tensors(graph)
    taps = []
    for i in cut_points(graph):
        n = graph.nodes[i]
        t = n.outputs[0]
        if n.op not in TAP_OPS or t in excluded:
            continue
        if n.op in ("Add", "Sum") and (n.module is not None or len(n.inputs) < 2):
            continue  # a bias add, not a residual join
        # every earlier node is an ancestor of a cut point, every later one a descendant
        flops_before = sum(c[1] for c in costs[: i + 1])
        params_before = sum(c[2] for c in costs[: i + 1])
        shape = tuple(graph.tensor_shapes[t])
        taps.append(Tap(
            name=f"b{len(taps)}_{n.op.lower()}", tensor=t, op=n.op, shape=shape, bytes=4 * math.prod(shape),
            node_index=i, flops_before=flops_before, flops_after=total_flops - flops_before,
            params_before=params_before, params_after=total_params - params_before))
    return taps


def tap_by_name(model, name: str) -> Tap:
    """The candidate tap called ``name`` (StrategyError naming the available taps if there is none)."""
    from .errors import StrategyError

    taps = candidate_taps(model)
    for tap in taps:
        if tap.name == name:
            return tap
    raise StrategyError(f"no tap '{name}' in this model; its candidate taps are "
                        f"{', '.join(t.name for t in taps) or '(none)'}")


def relax_with_taps(model, names=None):
    """The Relax form of ``model`` with the candidate taps (all, or those ``names``) as extra outputs.

    The outputs are the model's own, then ``tap:<name>`` per tap; ``main``'s ``mirrornet.output_names``
    lists them in that order, so a pass can find a tap in Relax by its analysis name.
    """
    import onnx
    from onnx import helper

    from .errors import StrategyError
    from .frontend import check_onnx, to_relax

    loaded = model if callable(getattr(model, "graph", None)) and hasattr(model, "proto") else None
    proto = loaded.proto if loaded is not None else check_onnx(model)
    taps = {t.name: t for t in candidate_taps(loaded if loaded is not None else proto)}
    names = list(taps) if names is None else list(names)
    unknown = [n for n in names if n not in taps]
    if unknown:
        raise StrategyError(f"no tap(s) {', '.join(unknown)} in this model; its candidate taps are "
                            f"{', '.join(taps) or '(none)'}")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    existing = {o.name for o in out.graph.output}
    for name in names:
        tap, oname = taps[name], f"tap:{name}"
        if oname in existing:
            continue
        out.graph.node.append(helper.make_node("Identity", [tap.tensor], [oname], name=f"output:{oname}"))
        out.graph.output.append(helper.make_tensor_value_info(oname, onnx.TensorProto.FLOAT, list(tap.shape)))
    return to_relax(out)
