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
from .graph import GraphNet, _avg_pool
from .strategy import FLOAT_BYTES, SecureMemory, Strategy, cpm_secure_memory

MIN_CHANNELS = 4
CPM_PREFIX = "cpm/"
_POINTWISE = ("Relu", "LeakyRelu", "Clip")


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

    def start(self, tap: str, tensor: str):
        shape = self.g.tensor_shapes[tensor]
        cout = self.scale(shape[1])
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
        bout = n.outputs[0]
        bshape = g.tensor_shapes[bout]
        ins = [self.mt[t] for t in n.inputs]
        x = ins[0] if ins else None
        xs = self.shape.get(x)
        key = f"{len(self.ops)}_{op.lower()}"
        sel_in = self.sel.get(x)
        if op == "Identity" or (op == "Add" and n.module) or n.name in self.absorbed:
            return self.alias(n)
        if op == "Conv":
            a = n.attrs
            m = g.module_of(n)
            cin_b, group = m.in_channels, a["group"]
            cin = xs[1]
            if group == 1:
                cout, g2 = self.scale(bshape[1]), 1
            elif group == cin_b and m.out_channels == cin_b:
                cout, g2 = cin, cin
            else:
                raise StrategyError(f"cannot mirror grouped convolution '{n.name}' (group {group}); "
                                    "only plain and depthwise convolutions are mirrored")
            consumers = g.consumers(bout)
            bn = consumers[0].name if (len(consumers) == 1 and consumers[0].op == "BatchNormalization") else None
            if bn:
                self.absorbed.add(bn)
            shape = (1, cout) + tuple(bshape[2:])
            k = int(np.prod(a["kernel_shape"]))
            attrs = {k_: v for k_, v in a.items()}
            attrs.update(in_channels=cin, out_channels=cout, group=g2, bn_source=bn, init_from=n.name,
                         sel_in=sel_in)
            sel_out = tuple(range(cout)) if group == 1 else sel_in
            out = self.emit(key, "Conv", "mirror", n.name, [x], shape, attrs,
                            cout * (cin // g2) * k + cout, 2 * _numel(shape) * (cin // g2) * k,
                            sel=sel_out)
        elif op == "BatchNormalization":
            out = self.emit(key, op, "mirror", n.name, [x], xs, dict(n.attrs, init_from=n.name),
                            4 * xs[1], 2 * _numel(xs), sel=sel_in)
        elif op in _POINTWISE:
            out = self.emit(key, op, "mirror", n.name, [x], xs, dict(n.attrs), 0, _numel(xs), sel=sel_in)
        elif op in ("MaxPool", "AveragePool"):
            shape = (1, xs[1]) + tuple(bshape[2:])
            out = self.emit(key, op, "mirror", n.name, [x], shape, dict(n.attrs), 0,
                            _numel(shape) * int(np.prod(n.attrs["kernel_shape"])), sel=sel_in)
        elif op == "GlobalAveragePool":
            out = self.emit(key, op, "mirror", n.name, [x], (1, xs[1], 1, 1), {}, 0, _numel(xs), sel=sel_in)
        elif op == "Add":
            shapes = [self.shape[t] for t in ins]
            if shapes[0] != shapes[1]:
                raise StrategyError(f"the mirrored inputs of Add '{n.name}' differ in shape {shapes}; "
                                    "choose another width ratio")
            out = self.emit(key, op, "mirror", n.name, ins, xs, {}, 0, _numel(xs), sel=sel_in)
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
        elif op in ("Flatten", "Reshape"):
            if len(bshape) != 2 or (op == "Flatten" and n.attrs["axis"] != 1):
                raise StrategyError(f"cannot mirror {op} '{n.name}' to shape {bshape}; only flattening "
                                    "to [batch, features] is mirrored")
            hw = _numel(xs[2:])
            bhw = _numel(g.tensor_shapes[n.inputs[0]][2:])
            sel = None if sel_in is None else [c * bhw + p for c in sel_in for p in range(hw)]
            out = self.emit(key, "Flatten", "mirror", n.name, [x], (1, _numel(xs)), {"axis": 1}, sel=sel)
        elif op in ("Gemm", "MatMul"):
            if len(xs) != 2 or n.attrs.get("transA"):
                raise StrategyError(f"cannot mirror {op} '{n.name}' on a {len(xs)}-d input")
            fin = xs[1]
            fout = bshape[1] if bout == self.final else self.scale(bshape[1])
            sel_out = tuple(range(fout))
            out = self.emit(key, "Gemm", "mirror", n.name, [x], (1, fout),
                            {"in_channels": fin, "out_channels": fout, "init_from": n.name, "sel_in": sel_in},
                            fin * fout + fout, 2 * fin * fout, sel=sel_out)
        else:
            raise StrategyError(f"cannot mirror op {op} (node '{n.name}')")
        self.mt[bout] = out


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
    b.start(strategy.taps[0], tensors[0])
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
                if a["group"] == 1 and in_idx is not None:
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
        x, a = args[0], op.attrs
        if op.op == "Conv":
            if a.get("_fpad") is not None:
                x = F.pad(x, a["_fpad"])
            y = self.layers[op.key](x)
            return self.norms[op.key](y) if op.key in self.norms else y
        if op.op in ("Gemm", "BatchNormalization"):
            return self.layers[op.key](x)
        if op.op == "Relu":
            return F.relu(x)
        if op.op == "LeakyRelu":
            return F.leaky_relu(x, a["alpha"])
        if op.op == "Clip":
            return torch.clamp(x, a["min"], a["max"])
        if op.op == "MaxPool":
            if a.get("_fpad") is not None:
                x = F.pad(x, a["_fpad"], value=float("-inf"))
            return F.max_pool2d(x, a["kernel_shape"], a["strides"], a["_tpad"], a["dilations"],
                                ceil_mode=bool(a["ceil_mode"]))
        if op.op == "AveragePool":
            return _avg_pool(x, a)
        if op.op == "GlobalAveragePool":
            return x.mean(dim=(2, 3), keepdim=True)
        if op.op == "Add":
            return args[0] + args[1]
        if op.op == "Concat":
            return torch.cat(args, dim=1)
        if op.op == "Flatten":
            return torch.flatten(x, 1)
        raise StrategyError(f"CPM op {op.op} has no torch form")

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

        def const(name, value):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
            return name

        for op in self.plan.ops:
            name = f"{CPM_PREFIX}{op.key}"
            ins, out, a = [r(t) for t in op.inputs], r(op.output), op.attrs
            if op.op == "Conv":
                w, b = self.folded(op)
                pads = list(a["pads"])
                nodes.append(helper.make_node(
                    "Conv", ins + [const(f"{name}.weight", w), const(f"{name}.bias", b)], [out], name=name,
                    kernel_shape=list(a["kernel_shape"]), strides=list(a["strides"]), pads=pads,
                    dilations=list(a["dilations"]), group=int(a["group"])))
            elif op.op == "Gemm":
                w, b = self.folded(op)
                nodes.append(helper.make_node("Gemm", ins + [const(f"{name}.weight", w),
                                                             const(f"{name}.bias", b)], [out],
                                              name=name, transB=1))
            elif op.op == "BatchNormalization":
                bn = self.layers[op.key]
                nodes.append(helper.make_node(
                    "BatchNormalization",
                    ins + [const(f"{name}.{k}", getattr(bn, k).detach().numpy())
                           for k in ("weight", "bias", "running_mean", "running_var")],
                    [out], name=name, epsilon=float(bn.eps)))
            elif op.op in ("Relu", "GlobalAveragePool", "Add"):
                nodes.append(helper.make_node(op.op, ins, [out], name=name))
            elif op.op == "LeakyRelu":
                nodes.append(helper.make_node(op.op, ins, [out], name=name, alpha=float(a["alpha"])))
            elif op.op == "Clip":
                extra = [const(f"{name}.min", np.float32(a["min"])) if a["min"] is not None else "",
                         const(f"{name}.max", np.float32(a["max"])) if a["max"] is not None else ""]
                while extra and extra[-1] == "":
                    extra.pop()
                nodes.append(helper.make_node(op.op, ins + extra, [out], name=name))
            elif op.op in ("MaxPool", "AveragePool"):
                kw = {"kernel_shape": list(a["kernel_shape"]), "strides": list(a["strides"]),
                      "pads": list(a["pads"]), "ceil_mode": int(a["ceil_mode"])}
                if op.op == "MaxPool":
                    kw["dilations"] = list(a["dilations"])
                else:
                    kw["count_include_pad"] = int(a["count_include_pad"])
                nodes.append(helper.make_node(op.op, ins, [out], name=name, **kw))
            elif op.op == "Concat":
                nodes.append(helper.make_node("Concat", ins, [out], name=name, axis=1))
            elif op.op == "Flatten":
                nodes.append(helper.make_node("Flatten", ins, [out], name=name, axis=1))
            else:
                raise StrategyError(f"CPM op {op.op} has no ONNX form")
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
