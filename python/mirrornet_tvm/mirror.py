"""The mirrored branch: the CPM as a width-scaled mirror of the backbone, and ``MirrorNet`` (backbone + CPM).

The CPM is derived from the backbone's own node records (:class:`~mirrornet_tvm.graph.GraphNet`), not from
per-model code. :func:`plan_cpm` walks the backbone from the strategy's first tap to its logits and emits,
for every node, the same op with each channel or feature count scaled by ``width_ratio`` (never below
:data:`MIN_CHANNELS`), except the final Gemm, which keeps the class count. The CPM starts from a 1x1
projection of the first tap (a Gemm for a flat tap). At every later tap the mirrored state is merged with
the tapped map: ``add`` adds a projection of the tap, ``concat`` concatenates the tap and projects back
with a 1x1 convolution. With ``output == "correction"`` the CPM's output is added to the backbone's logits.

The plan (:class:`CpmPlan`) is plain data: op records with shapes, parameters and FLOPs, from which the
secure-memory accounting is computed without building any torch module. :class:`CPM` instantiates it;
every convolution of the CPM is followed by batch normalisation while it trains, folded into the
convolution when it is exported, so the deployed CPM has exactly the plan's ops and parameters.

FLOPs follow the analysis' convention (:mod:`mirrornet_tvm.analysis`) for the CPM and the original model
alike: a multiply-accumulate is 2 FLOPs (Conv, Gemm; bias additions not counted); activations and adds
count one FLOP per element, batch normalisation two; pooling counts the window per output element;
concat and flatten count none. CPM parameters are counted as deployed (batch norm folded).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from . import __version__
from .errors import StrategyError
from .graph import GraphNet
from .ops import OPS
from .strategy import FLOAT_BYTES, SecureMemory, Strategy, cpm_secure_memory

MIN_CHANNELS = 4
CPM_PREFIX = "cpm/"
_POINTWISE = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LRN")
_ELEMENTWISE = ("Add", "Sum", "Sub", "Mul", "Div")
_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")
# plan bookkeeping in CpmOp.attrs that is not an ONNX attribute
_PLAN_KEYS = frozenset({"in_channels", "out_channels", "bn_source", "init_from", "sel_in", "sel_out", "select"})


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpmOp:
    """One CPM operation. ``role``: project (first tap), mirror (a backbone node), merge, correct."""

    key: str
    op: str
    role: str
    source: str
    inputs: tuple
    output: str
    shape: tuple
    attrs: dict = field(default_factory=dict, hash=False, compare=False)
    params: int = 0
    flops: int = 0


@dataclass(frozen=True)
class CpmPlan:
    """The CPM of one strategy for one backbone: its inputs, ops in execution order, and its output."""

    strategy: Strategy
    inputs: tuple          # ((name, shape), ...): "tap:<name>" in strategy order, then "backbone_logits"
    tap_tensors: tuple     # backbone tensor of each tap, strategy order
    logits_tensor: str     # backbone tensor holding its logits
    ops: tuple
    output: str
    num_classes: int

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops)

    def activation_peak_bytes(self) -> int:
        """Peak bytes of the CPM's live intermediates, each op writing a fresh buffer.

        CPM inputs (taps) and the final output are accounted separately (:class:`SecureMemory`).
        """
        produced = {op.output: i for i, op in enumerate(self.ops)}
        size = {op.output: int(np.prod(op.shape)) * FLOAT_BYTES for op in self.ops}
        last = dict(produced)
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                if t in produced:
                    last[t] = i
        peak = 0
        for i in range(len(self.ops)):
            live = sum(size[t] for t, p in produced.items()
                       if t != self.output and p <= i <= last[t])
            peak = max(peak, live)
        return peak

    def secure_memory(self) -> SecureMemory:
        """The compiled CPM's secure memory (generated C's weights and arena; TA tap and logit buffers)."""
        return cpm_secure_memory(self)


def _numel(shape) -> int:
    return int(np.prod(shape))


def logits_tensor(graph: GraphNet) -> str:
    """The backbone tensor holding the logits (the graph output; a final Softmax must be stripped first)."""
    producer = graph.producer(graph.output_name)
    if producer is not None and producer.op == "Softmax":
        raise StrategyError("the model ends with Softmax; MirrorNet works on logits: strip it first "
                            "(mirror.strip_softmax), argmax is unchanged")
    return graph.output_name


def strip_softmax(graph: GraphNet) -> GraphNet:
    """The same network without a final Softmax (returns ``graph`` itself when there is none)."""
    last = graph.producer(graph.output_name)
    if last is None or last.op != "Softmax":
        return graph
    nodes = [n for n in graph.nodes if n is not last]
    return GraphNet(nodes, dict(graph.layers.items()), graph.input_name, last.inputs[0], graph.input_shape)


def tap_index(graph: GraphNet) -> dict:
    """Candidate tap name -> (backbone tensor, depth order), from the analysis."""
    from .analysis import candidate_taps

    return {t.name: (t.tensor, i) for i, t in enumerate(candidate_taps(graph))}


def resolve_taps(graph: GraphNet, names, taps: dict | None = None) -> list:
    """Backbone tensors of the named taps; checks they exist and are ordered shallow to deep."""
    taps = tap_index(graph) if taps is None else taps
    unknown = [n for n in names if n not in taps]
    if unknown:
        raise StrategyError(f"unknown tap(s) {', '.join(unknown)}; this model's taps are "
                            f"{', '.join(taps) or '(none)'} (see `mirrornet inspect`)")
    order = [taps[n][1] for n in names]
    if order != sorted(order):
        deep = sorted(names, key=lambda n: taps[n][1])
        raise StrategyError(f"strategy taps must be ordered shallow to deep: {list(names)} -> {deep}")
    return [taps[n][0] for n in names]


def model_totals(graph: GraphNet) -> tuple[int, int]:
    """(FLOPs, parameters) of the whole model, as :func:`mirrornet_tvm.analysis.model_summary` counts them."""
    from .analysis import model_summary

    summary = model_summary(graph)
    return summary.total_flops, summary.total_params


class _Builder:
    """Walks backbone nodes and emits the CPM ops (one instance per plan)."""

    def __init__(self, graph: GraphNet, ratio: float, min_channels: int, final: str):
        self.g = graph
        self.ratio = ratio
        self.min_channels = min_channels
        self.final = final
        self.keep = _keep_width(graph, final)
        self.ops: list[CpmOp] = []
        self.mt: dict = {}        # backbone tensor -> CPM tensor
        self.shape: dict = {}     # CPM tensor -> shape (batch 1)
        self.sel: dict = {}       # CPM tensor -> backbone channel/feature indices it mirrors
        self.absorbed: set = set()

    def scale(self, c: int) -> int:
        return min(c, max(self.min_channels, int(round(c * self.ratio))))

    def emit(self, key, op, role, source, inputs, shape, attrs=None, params=0, flops=0, sel=None):
        out = f"{CPM_PREFIX}{key}"
        self.ops.append(CpmOp(key, op, role, source, tuple(inputs), out, tuple(shape), attrs or {},
                              int(params), int(flops)))
        self.shape[out] = tuple(shape)
        if sel is not None:
            self.sel[out] = tuple(sel)
        return out

    def project(self, key, source, src, src_shape, cout, spatial, select=None):
        """1x1 conv (or Gemm for a flat tensor) from ``src`` to ``cout`` channels."""
        cin = src_shape[1]
        attrs = {"in_channels": cin, "out_channels": cout}
        if select is not None:
            attrs["select"] = tuple(select)
        if len(src_shape) == 2:
            return self.emit(key, "Gemm", "project", source, [src], (1, cout), attrs,
                             cin * cout + cout, 2 * cin * cout)
        attrs.update(kernel_shape=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                     _fpad=None)
        shape = (1, cout) + tuple(spatial)
        return self.emit(key, "Conv", "project", source, [src], shape, attrs,
                         cin * cout + cout, 2 * _numel(shape) * cin)

    def start(self, tap: str, tensor: str, last_weighted: bool = False):
        """Project the first tap; past the last Conv/Gemm (``last_weighted``) it keeps its width (the classes)."""
        shape = self.g.tensor_shapes[tensor]
        cout = shape[1] if last_weighted else self.scale(shape[1])
        out = self.project(f"project_{tap}", tap, f"tap:{tap}", shape, cout, shape[2:],
                           select=range(cout))
        self.sel[out] = tuple(range(cout))
        self.mt[tensor] = out

    def merge(self, tap: str, tensor: str, how: str):
        h = self.mt[tensor]
        hshape, tshape = self.shape[h], self.g.tensor_shapes[tensor]
        src = f"tap:{tap}"
        if how == "add":
            p = self.project(f"project_{tap}", tap, src, tshape, hshape[1], hshape[2:])
            out = self.emit(f"merge_{tap}", "Add", "merge", tap, [h, p], hshape, flops=_numel(hshape),
                            sel=self.sel.get(h))
        else:
            cat_shape = (1, hshape[1] + tshape[1]) + tuple(hshape[2:])
            cat = self.emit(f"concat_{tap}", "Concat", "merge", tap, [h, src], cat_shape, {"axis": 1})
            out = self.project(f"merge_{tap}", tap, cat, cat_shape, hshape[1], hshape[2:],
                               select=range(hshape[1]))
            self.sel[out] = self.sel.get(h)
        self.mt[tensor] = out

    def alias(self, n):
        self.mt[n.outputs[0]] = self.mt[n.inputs[0]]

    def mirror(self, n):
        g, op = self.g, n.op
        if n.name in self.absorbed:  # a batch norm folded into its convolution, a shuffle's later nodes
            return self.alias(n) if op == "BatchNormalization" else None
        bout = n.outputs[0]
        bshape = g.tensor_shapes[bout]
        ins = [self.mt[t] for t in n.inputs]
        x = ins[0] if ins else None
        xs = self.shape.get(x)
        key = f"{len(self.ops)}_{op.lower()}"
        sel_in = self.sel.get(x)
        if op == "Identity" or (op in _ELEMENTWISE and n.module and len(ins) == 1):
            # constant operands (a bias, a scale, a normalisation) are left to the CPM's own batch norms
            return self.alias(n)
        if op == "Conv":
            a = n.attrs
            m = g.module_of(n)
            cin_b, group = m.in_channels, a["group"]
            cin = xs[1]
            if group > 1 and group == cin_b and m.out_channels == cin_b:
                cout, g2 = cin, cin  # depthwise: one filter per mirrored channel
            else:  # plain or grouped: as many groups of the original as the mirrored counts divide into
                cout = bshape[1] if bout in self.keep else self.scale(bshape[1])
                g2 = max(d for d in range(1, group + 1) if group % d == 0 and cin % d == 0 and cout % d == 0)
            consumers = g.consumers(bout)
            bn = consumers[0].name if (len(consumers) == 1 and consumers[0].op == "BatchNormalization") else None
            if bn:
                self.absorbed.add(bn)
            shape = (1, cout) + tuple(bshape[2:])
            k = int(np.prod(a["kernel_shape"]))
            attrs = {k_: v for k_, v in a.items()}
            attrs.update(in_channels=cin, out_channels=cout, group=g2, bn_source=bn, init_from=n.name,
                         sel_in=sel_in)
            sel_out = sel_in if g2 == cin and cout == cin and group > 1 else tuple(range(cout))
            out = self.emit(key, "Conv", "mirror", n.name, [x], shape, attrs,
                            cout * (cin // g2) * k + cout, 2 * _numel(shape) * (cin // g2) * k,
                            sel=sel_out)
        elif op == "BatchNormalization":
            out = self.emit(key, op, "mirror", n.name, [x], xs, dict(n.attrs, init_from=n.name),
                            4 * xs[1], 2 * _numel(xs), sel=sel_in)
        elif op in _POINTWISE:
            out = self.emit(key, op, "mirror", n.name, [x], xs, dict(n.attrs), 0, _flops(op, [xs], xs, n.attrs),
                            sel=sel_in)
        elif op in ("MaxPool", "AveragePool"):
            shape = (1, xs[1]) + tuple(bshape[2:])
            out = self.emit(key, op, "mirror", n.name, [x], shape, dict(n.attrs), 0,
                            _flops(op, [xs], shape, n.attrs), sel=sel_in)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
            if op == "ReduceMean" and sorted(d % len(xs) for d in (n.attrs["axes"] or ())) != [2, 3]:
                raise StrategyError(f"cannot mirror ReduceMean '{n.name}' over axes {n.attrs['axes']} "
                                    "(only the spatial mean over H, W)")
            shape = self._shape_of(op, n.attrs, [xs])
            out = self.emit(key, op, "mirror", n.name, [x], shape, dict(n.attrs), 0, _flops(op, [xs], shape, n.attrs),
                            sel=sel_in)
        elif op in _ELEMENTWISE:
            shapes = [self.shape[t] for t in ins]
            try:
                shape = tuple(np.broadcast_shapes(*shapes))
            except ValueError:
                # maps of the same size whose mirrors differ in width (a concat's scaled parts against one
                # scaled whole, as in ShuffleNet): the narrower ones are projected to the widest
                if len({len(sh) for sh in shapes}) > 1 or len({tuple(sh[2:]) for sh in shapes}) > 1:
                    raise StrategyError(f"the mirrored inputs of {op} '{n.name}' do not broadcast {shapes}; "
                                        "choose another width ratio") from None
                c = max(sh[1] for sh in shapes)
                ins = [t if self.shape[t][1] == c else
                       self.project(f"{key}_fit{j}", n.name, t, self.shape[t], c, self.shape[t][2:])
                       for j, t in enumerate(ins)]
                key = f"{len(self.ops)}_{op.lower()}"
                shape = tuple(np.broadcast_shapes(*[self.shape[t] for t in ins]))
            widest = max(ins, key=lambda t: _numel(self.shape[t]))
            out = self.emit(key, "Sum" if len(ins) > 2 else op, "mirror", n.name, ins, shape, {}, 0,
                            _flops(op, [self.shape[t] for t in ins], shape, {}), sel=self.sel.get(widest))
        elif op == "Concat":
            if n.attrs["axis"] not in (1, -3 if len(xs) == 4 else 1):
                raise StrategyError(f"cannot mirror Concat '{n.name}' on axis {n.attrs['axis']} "
                                    "(only the channel axis)")
            shape = list(xs)
            shape[1] = sum(self.shape[t][1] for t in ins)
            sel, offset = [], 0
            for bt, t in zip(n.inputs, ins):
                sel.extend(offset + i for i in self.sel.get(t, range(self.shape[t][1])))
                offset += g.tensor_shapes[bt][1]
            out = self.emit(key, op, "mirror", n.name, ins, shape, {"axis": 1}, sel=sel)
        elif op in ("Flatten", "Reshape") and len(bshape) == 2 and len(xs) > 2:
            if op == "Flatten" and n.attrs["axis"] != 1:
                raise StrategyError(f"cannot mirror Flatten '{n.name}' on axis {n.attrs['axis']}")
            hw = _numel(xs[2:])
            bhw = _numel(g.tensor_shapes[n.inputs[0]][2:])
            sel = None if sel_in is None else [c * bhw + p for c in sel_in for p in range(hw)]
            out = self.emit(key, "Flatten", "mirror", n.name, [x], (1, _numel(xs)), {"axis": 1}, sel=sel)
        elif op in _LAYOUT + ("Flatten",):
            return self.layout(n, key, x, xs, sel_in)
        elif op == "Pad":
            if any(n.attrs["pads"][i] or n.attrs["pads"][i + len(xs)] for i in range(2)):
                raise StrategyError(f"cannot mirror Pad '{n.name}': it pads the batch or channel axis")
            shape = self._shape_of(op, n.attrs, [xs])
            out = self.emit(key, op, "mirror", n.name, [x], shape, dict(n.attrs), sel=sel_in)
        elif op in ("Gemm", "MatMul"):
            if len(xs) != 2 or n.attrs.get("transA"):
                raise StrategyError(f"cannot mirror {op} '{n.name}' on a {len(xs)}-d input")
            fin = xs[1]
            fout = bshape[1] if bout in self.keep else self.scale(bshape[1])
            sel_out = tuple(range(fout))
            out = self.emit(key, "Gemm", "mirror", n.name, [x], (1, fout),
                            {"in_channels": fin, "out_channels": fout, "init_from": n.name, "sel_in": sel_in},
                            fin * fout + fout, 2 * fin * fout, sel=sel_out)
        else:
            raise StrategyError(f"cannot mirror op {op} (node '{n.name}')")
        self.mt[bout] = out

    @staticmethod
    def _shape_of(op: str, attrs: dict, in_shapes) -> tuple:
        """Output shape of a weightless op on the mirrored shapes (run once on zeros)."""
        with torch.no_grad():
            y = OPS[op].forward([torch.zeros(s) for s in in_shapes], attrs, None)
        return tuple(y.shape)

    def layout(self, n, key, x, xs, sel_in):
        """Reshape / Transpose / Squeeze / Unsqueeze after the tap.

        A chain of them that maps a feature map back to its own shape and only reorders its channels
        (the channel shuffle Reshape-Transpose-Reshape) is the identity on the mirrored channels, which
        keep their backbone channel indices, permuted. A reshape that only adds or removes unit axes
        (``[1, C] <-> [1, C, 1, 1]`` around a squeeze-and-excitation gate) keeps the mirrored width.
        """
        g = self.g
        bin_shape, bshape = g.tensor_shapes[n.inputs[0]], g.tensor_shapes[n.outputs[0]]
        if [d for d in bin_shape if d != 1] == [d for d in bshape if d != 1] and len(xs) == len(bin_shape):
            c = xs[1]
            shape = tuple(c if d == bin_shape[1] and i == bshape.index(bin_shape[1]) else d
                          for i, d in enumerate(bshape))
            attrs = dict(n.attrs)
            op = n.op
            if op in ("Reshape", "Flatten"):
                op, attrs = "Reshape", {"shape": shape}
            out = self.emit(key, op, "mirror", n.name, [x], shape, attrs, sel=sel_in)
            self.mt[n.outputs[0]] = out
            return
        chain, t = self._permutation_chain(n)
        if chain is None:
            raise StrategyError(f"cannot mirror {n.op} '{n.name}' from {list(bin_shape)} to {list(bshape)}; "
                                "only flattening, unit axes and channel permutations (shuffles) are mirrored")
        perm = _channel_permutation(g, chain)
        inverse = {src: dst for dst, src in enumerate(perm)}
        self.absorbed.update(c.name for c in chain[1:])
        self.mt[t] = x
        if sel_in is not None:
            self.sel[x] = tuple(inverse[c] for c in sel_in)

    def _permutation_chain(self, n):
        """The layout nodes from ``n`` up to the first tensor shaped like ``n``'s input, or (None, None)."""
        g = self.g
        start = g.tensor_shapes[n.inputs[0]]
        chain, node = [], n
        while node is not None and node.op in _LAYOUT and len(chain) < 8:
            chain.append(node)
            t = node.outputs[0]
            if g.tensor_shapes[t] == start:
                return chain, t
            consumers = g.consumers(t)
            node = consumers[0] if len(consumers) == 1 else None
        return None, None


def _flops(op: str, in_shapes, out_shape, attrs) -> int:
    """FLOPs of a weightless CPM op, as the op table counts them for the original model."""
    return OPS[op].cost(in_shapes, out_shape, attrs, None)[1]


def _channel_permutation(graph, chain) -> list:
    """For a layout chain from a map back to its shape: the input channel each output channel holds."""
    shape = graph.tensor_shapes[chain[0].inputs[0]]
    x = torch.arange(shape[1], dtype=torch.float64).view(1, -1, *([1] * (len(shape) - 2))).expand(shape)
    with torch.no_grad():
        for node in chain:
            x = OPS[node.op].forward([x], node.attrs, None)
    flat = x.reshape(shape[0], shape[1], -1)
    if not torch.equal(flat, flat[:, :, :1].expand_as(flat)):
        raise StrategyError(f"the layout chain from '{chain[0].name}' to '{chain[-1].name}' mixes spatial "
                            "positions, not only channels; it cannot be mirrored")
    perm = [int(v) for v in flat[0, :, 0]]
    if sorted(perm) != list(range(shape[1])):
        raise StrategyError(f"the layout chain from '{chain[0].name}' is not a channel permutation")
    return perm


def _keep_width(graph: GraphNet, final: str) -> set:
    """Backbone tensors whose mirror keeps its full width: the output of the last Conv/Gemm before the logits.

    Everything between it and the logits (activations, pooling, flattening) preserves its features, so
    it must produce the class count (a Gemm classifier, or SqueezeNet's final 1x1 convolution).
    """
    t = final
    while True:
        node = graph.producer(t)
        if node is None:
            return set()
        if node.op in ("Conv", "Gemm", "MatMul"):
            return {t}
        if not node.inputs:
            return set()
        t = node.inputs[0]


def plan_cpm(graph: GraphNet, strategy: Strategy, *, taps: dict | None = None,
             min_channels: int = MIN_CHANNELS) -> CpmPlan:
    """The CPM of ``strategy`` for ``graph`` (see the module docstring). ``taps``: a :func:`tap_index`."""
    tensors = resolve_taps(graph, strategy.taps, taps)
    final = logits_tensor(graph)
    nodes = graph.subgraph(tensors[0], final)
    available = {tensors[0]} | {o for n in nodes for o in n.outputs}
    for n in nodes:
        outside = [t for t in n.inputs if t not in available]
        if outside:
            raise StrategyError(f"tap {strategy.taps[0]} is not a cut point: node '{n.name}' after it reads "
                                f"{outside[0]} from before it; choose a tap from `mirrornet inspect`")
    later = dict(zip(tensors[1:], strategy.taps[1:]))
    missing = [name for t, name in later.items() if t not in available]
    if missing:
        raise StrategyError(f"tap(s) {', '.join(missing)} do not lie between {strategy.taps[0]} and the "
                            "logits")
    b = _Builder(graph, strategy.width_ratio, min_channels, final)
    b.start(strategy.taps[0], tensors[0], not any(n.op in ("Conv", "Gemm", "MatMul") for n in nodes))
    for n in nodes:
        b.mirror(n)
        if n.outputs[0] in later:
            b.merge(later[n.outputs[0]], n.outputs[0], strategy.merge)
    out = b.mt[final]
    num_classes = graph.tensor_shapes[final][1]
    inputs = [(f"tap:{name}", tuple(graph.tensor_shapes[t])) for name, t in zip(strategy.taps, tensors)]
    if strategy.output == "correction":
        inputs.append(("backbone_logits", tuple(graph.tensor_shapes[final])))
        out = b.emit("correct", "Add", "correct", "backbone_logits", [out, "backbone_logits"],
                     (1, num_classes), flops=num_classes)
    ops = tuple(CpmOp(op.key, op.op, op.role, op.source, op.inputs, op.output, op.shape,
                      dict(op.attrs, sel_out=b.sel.get(op.output)),
                      op.params, op.flops) for op in b.ops)
    return CpmPlan(strategy, tuple(inputs), tuple(tensors), final, ops, out, int(num_classes))


# ---------------------------------------------------------------------------------------------------
# The CPM as a torch module
# ---------------------------------------------------------------------------------------------------

class CPM(torch.nn.Module):
    """The trainable CPM of a :class:`CpmPlan`: ``forward(taps, backbone_logits=None) -> logits``.

    ``init="slice"`` copies the backbone's weights into every mirrored layer (the channels the mirror
    keeps) and starts the first projection as a channel selection, so training starts from a pruned copy
    of the backbone's tail; ``init="fresh"`` uses torch's default initialisation. ``batchnorm`` puts a
    batch normalisation after every convolution (folded on export).
    """

    def __init__(self, plan: CpmPlan, backbone: GraphNet | None = None, init: str = "slice",
                 batchnorm: bool = True):
        super().__init__()
        if init not in ("slice", "fresh"):
            raise StrategyError(f"CPM init must be 'slice' or 'fresh', got {init!r}")
        if init == "slice" and backbone is None:
            raise StrategyError("init='slice' needs the backbone to copy weights from")
        self.plan = plan
        self.input_names = [name for name, _ in plan.inputs]
        self.layers = torch.nn.ModuleDict()
        self.norms = torch.nn.ModuleDict()
        for op in plan.ops:
            a = op.attrs
            if op.op == "Conv":
                pads = a["pads"]
                sym = (pads[0], pads[1]) if a.get("_fpad") is None else 0
                self.layers[op.key] = torch.nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_shape"],
                                                      a["strides"], sym, a["dilations"], a["group"])
                if batchnorm or a.get("bn_source"):
                    self.norms[op.key] = torch.nn.BatchNorm2d(a["out_channels"])
            elif op.op == "Gemm":
                self.layers[op.key] = torch.nn.Linear(a["in_channels"], a["out_channels"])
            elif op.op == "BatchNormalization":
                self.layers[op.key] = torch.nn.BatchNorm2d(op.shape[1], eps=a.get("epsilon", 1e-5))
        if init == "slice":
            self._init_from(backbone)
        self._last_use = {}
        for i, op in enumerate(plan.ops):
            for t in op.inputs:
                self._last_use[t] = i

    @torch.no_grad()
    def _init_from(self, backbone: GraphNet):
        nodes = {n.name: n for n in backbone.nodes}
        for op in self.plan.ops:
            a = op.attrs
            layer = self.layers[op.key] if op.key in self.layers else None
            if op.role == "project":
                if a.get("select") is not None:
                    # first tap / concat merge: start as a selection of the channels the mirror keeps
                    layer.weight.zero_()
                    layer.bias.zero_()
                    w = layer.weight.view(layer.weight.shape[0], -1)
                    for j, c in enumerate(a["select"]):
                        w[j, c] = 1.0
                elif op.key in self.norms:
                    # add merge: a later tap starts as a no-op on the mirrored state
                    self.norms[op.key].weight.zero_()
                else:
                    layer.weight.zero_()
                    layer.bias.zero_()
                continue
            src = nodes.get(a.get("init_from"))
            if src is None or layer is None:
                continue
            bm = backbone.module_of(src)
            out_idx = torch.as_tensor(a["sel_out"] or range(layer.weight.shape[0]), dtype=torch.long)
            in_idx = a.get("sel_in")
            if op.op == "Conv":
                w = bm.weight[out_idx]
                if a["group"] == 1 and bm.groups == 1 and in_idx is not None:
                    w = w[:, torch.as_tensor(in_idx, dtype=torch.long)]
                if w.shape == layer.weight.shape:
                    layer.weight.copy_(w)
                    if bm.bias is not None:
                        layer.bias.copy_(bm.bias[out_idx])
                    else:
                        layer.bias.zero_()
                bn = nodes.get(a.get("bn_source"))
                if bn is not None and op.key in self.norms:
                    bbn, cbn = backbone.module_of(bn), self.norms[op.key]
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(cbn, name).copy_(getattr(bbn, name)[out_idx])
            elif op.op == "Gemm":
                w = bm.weight[out_idx]
                if in_idx is not None:
                    w = w[:, torch.as_tensor(in_idx, dtype=torch.long)]
                if w.shape == layer.weight.shape:
                    layer.weight.copy_(w)
                    if bm.bias is not None:
                        layer.bias.copy_(bm.bias[out_idx])
            elif op.op == "BatchNormalization":
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer, name).copy_(getattr(bm, name)[out_idx])

    def forward(self, taps, backbone_logits=None):
        args = list(taps)
        if self.plan.strategy.output == "correction":
            if backbone_logits is None:
                raise StrategyError("this CPM adds a correction to the backbone's logits: pass them")
            args.append(backbone_logits)
        if len(args) != len(self.input_names):
            raise StrategyError(f"the CPM reads {len(self.input_names)} inputs ({self.input_names}), "
                                f"got {len(args)}")
        env = dict(zip(self.input_names, args))
        for i, op in enumerate(self.plan.ops):
            env[op.output] = self._run_op(op, [env[t] for t in op.inputs])
            for t in op.inputs:
                if self._last_use.get(t) == i:
                    env.pop(t, None)
        return env[self.plan.output]

    def _run_op(self, op: CpmOp, args):
        layer = self.layers[op.key] if op.key in self.layers else None
        y = OPS[op.op].forward(args, op.attrs, layer)
        return self.norms[op.key](y) if op.key in self.norms else y

    # -- export ---------------------------------------------------------------------------------------
    def folded(self, op: CpmOp) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of a Conv/Gemm op as deployed, batch normalisation folded in."""
        layer = self.layers[op.key]
        w = layer.weight.detach().double()
        b = layer.bias.detach().double()
        if op.key in self.norms:
            bn = self.norms[op.key]
            s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * s.view(-1, *([1] * (w.dim() - 1)))
            b = (b - bn.running_mean.double()) * s + bn.bias.detach().double()
        return w.float().numpy(), b.float().numpy()

    def onnx_nodes(self) -> tuple[list, list]:
        """ONNX nodes and initializers of the deployed CPM (names under ``cpm/``; output ``logits``)."""
        nodes, inits = [], []
        rename = {self.plan.output: "logits"}
        r = lambda t: rename.get(t, t)  # noqa: E731

        def const(name, value, dtype=np.float32):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
            return name

        for op in self.plan.ops:
            name = f"{CPM_PREFIX}{op.key}"
            if op.op in ("Conv", "Gemm"):
                w, b = self.folded(op)
                params = {"weight": w, "bias": b}
            else:
                params = OPS[op.op].params(self.layers[op.key]) if op.key in self.layers else {}
            onnx_attrs = {k: v for k, v in op.attrs.items() if k not in _PLAN_KEYS}
            nodes += OPS[op.op].emit(name, [r(t) for t in op.inputs], [r(op.output)], onnx_attrs, params,
                                     lambda suffix, value, dtype=np.float32, name=name:
                                     const(f"{name}.{suffix}", value, dtype))
        return nodes, inits


# ---------------------------------------------------------------------------------------------------
# MirrorNet: backbone + CPM
# ---------------------------------------------------------------------------------------------------

class MirrorNet(torch.nn.Module):
    """Backbone (a GraphNet) and its CPM. ``forward(x) -> (rectified, backbone_logits, {tap: tensor})``."""

    def __init__(self, backbone: GraphNet, strategy: Strategy, *, init: str = "slice",
                 batchnorm: bool = True, taps: dict | None = None):
        super().__init__()
        self.backbone = strip_softmax(backbone)
        self.strategy = strategy
        self.plan = plan_cpm(self.backbone, strategy, taps=taps)
        self.cpm = CPM(self.plan, self.backbone, init=init, batchnorm=batchnorm)

    @property
    def tap_tensors(self) -> tuple:
        return self.plan.tap_tensors

    def forward(self, x):
        bl, tensors = self.backbone(x, return_tensors=self.plan.tap_tensors)
        taps = [tensors[t] for t in self.plan.tap_tensors]
        rect = self.cpm(taps, bl if self.strategy.output == "correction" else None)
        return rect, bl, dict(zip(self.strategy.taps, taps))

    def tap_forward(self, x) -> list:
        """The tapped maps alone, computing the backbone only as far as its last tap."""
        net = self.__dict__.get("_to_last_tap")
        if net is None:
            last = self.plan.tap_tensors[-1]
            nodes = self.backbone.nodes[:self.backbone.node_index(last) + 1]
            layers = {n.module: self.backbone.layers[n.module] for n in nodes if n.module is not None}
            net = GraphNet(nodes, layers, self.backbone.input_name, last, self.backbone.input_shape)
            object.__setattr__(self, "_to_last_tap", net)   # shares the modules; not a submodule
        earlier = self.plan.tap_tensors[:-1]
        if not earlier:
            return [net(x)]
        out, tensors = net(x, return_tensors=earlier)
        return [tensors[t] for t in earlier] + [out]

    def export_backbone(self, path=None) -> onnx.ModelProto:
        """The backbone alone (input -> backbone_logits), as a thief copies it off the device."""
        proto = self.backbone.export_onnx(None, output_name="backbone_logits")
        proto.producer_name = "mirrornet-tvm protect (backbone)"
        proto.doc_string = ("Generated by mirrornet-tvm protect: the BackboneNet of a MirrorNet, strategy "
                            f"{self.strategy.name}")
        return _save(proto, path)

    def export_onnx(self, path=None, source: str = "") -> onnx.ModelProto:
        """The combined model (docs/architecture.md): outputs logits, backbone_logits, tap:<name>..."""
        extra = {f"tap:{name}": t for name, t in zip(self.strategy.taps, self.plan.tap_tensors)}
        was_training = self.training
        self.eval()
        try:
            proto = self.backbone.export_onnx(None, extra_outputs=extra, output_name="backbone_logits")
            nodes, inits = self.cpm.onnx_nodes()
        finally:
            self.train(was_training)
        g = proto.graph
        g.node.extend(nodes)
        g.initializer.extend(inits)
        outs = list(g.output)
        del g.output[:]
        g.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                                      [1, self.plan.num_classes]))
        g.output.extend(outs)
        g.name = "mirrornet_combined"
        proto.producer_name = "mirrornet-tvm protect"
        proto.doc_string = ("Generated by mirrornet-tvm protect: backbone + CPM (MirrorNet), strategy "
                            f"{self.strategy.name}" + (f", from {source}" if source else ""))
        del proto.metadata_props[:]
        for k, v in (("mirrornet.strategy", self.strategy.to_json().strip()),
                     ("mirrornet.version", __version__)):
            proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
        onnx.checker.check_model(proto)
        return _save(proto, path)


def _save(proto, path):
    if path is not None:
        from .util import atomic_path

        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    return proto
