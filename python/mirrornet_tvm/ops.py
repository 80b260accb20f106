"""The op table: every ONNX op the pipeline supports, defined once.

Each :class:`Op` says, for one ONNX op type, whether a node of it can be handled (:meth:`Op.problem`),
how it becomes a GraphNet record and torch module (:meth:`Op.convert`), how it runs in PyTorch
(:meth:`Op.forward`), how it is written back as ONNX (:meth:`Op.emit`) and what it costs
(:meth:`Op.cost`). The front end's check, the GraphNet converter and exporter, the CPM's torch form and
its ONNX emission and the analysis all read this table, so a new op is added here and nowhere else
(the CPM's mirroring rules, :mod:`mirrornet_tvm.mirror`, say how a mirrored branch scales it).

Records: ``attrs`` holds the ONNX attributes with their defaults filled in and the folded constant
operands (``min``/``max`` of Clip, ``shape`` of Reshape, ``axes``, ``pads``); keys starting with ``_``
are derived helpers of the torch form, not ONNX attributes. Weighted ops keep their weights in a torch
module (Conv2d, BatchNorm, Linear, or :class:`Operand` for the constant operand of an elementwise op),
so they train; :meth:`Op.params` reads them back as the arrays :meth:`Op.emit` writes.

FLOPs: 2 per multiply-accumulate for Conv, Gemm, MatMul and BatchNormalization (bias additions not
counted); one per output element for activations and for each binary elementwise operation; kernel
area per output element for pooling, ``size`` + 3 per element for LRN; one per input element for global
pooling and ReduceMean; three per element for Softmax; none for layout ops (Concat, Flatten, Reshape,
Transpose, Squeeze, Unsqueeze, Pad, Identity, Dropout).
"""
from __future__ import annotations

import math
from collections.abc import MutableMapping

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from .errors import UnsupportedOpError

EXPORT_OPSET = 17


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _operand(node, i: int):
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Torch building blocks
# ---------------------------------------------------------------------------------------------------

class BatchNorm(torch.nn.BatchNorm2d):
    """BatchNormalization over dim 1 for any input rank >= 2 (ONNX allows N x C as well as N x C x H x W)."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"BatchNormalization expects at least 2-D input, got {input.dim()}-D")


class Operand(torch.nn.Module):
    """A trainable constant operand of an elementwise op (the bias after a MatMul, a scale, a mean)."""

    def __init__(self, value: np.ndarray):
        super().__init__()
        self.value = torch.nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32)))

    def forward(self, x):  # the Add form, kept for callers that use the module alone
        return x + self.value


def pads_split(pads):
    """ONNX pads [top, left, bottom, right] -> (symmetric (ph, pw) or None, F.pad list)."""
    t, l, b, r = pads
    sym = (t, l) if (t == b and l == r) else None
    return sym, [l, r, t, b]


def onnx_pool_size(x, a) -> tuple:
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


def avg_pool(x, a):
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


def max_pool(x, a):
    if a["_fpad"] is not None:
        x = F.pad(x, a["_fpad"], value=float("-inf"))
    return F.max_pool2d(x, a["kernel_shape"], a["strides"], a["_tpad"], a["dilations"],
                        ceil_mode=bool(a["ceil_mode"]))


def reshape(x, a):
    shape = list(a["shape"])
    if len(shape) == 2 and shape[1] == -1 and shape[0] in (0, 1, -1) or shape == [x.shape[0], -1]:
        return torch.flatten(x, 1) if x.dim() > 1 else x.reshape(1, -1)
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    # keep the batch dimension free when the target preserves it, so training batches work
    if shape and shape[0] == 1 and -1 not in shape[1:]:
        shape[0] = -1
    return x.reshape(shape)


def lrn(x, a):
    """ONNX LRN: x / (bias + alpha / size * sum of squares over a channel window) ** beta."""
    size = a["size"]
    front, back = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(x * x, [0, 0] * (x.dim() - 2) + [front, back])
    c = x.shape[1]
    total = sum(sq[:, i:i + c] for i in range(size))
    return x / (a["bias"] + a["alpha"] / size * total) ** a["beta"]


# ---------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------

OPS: dict = {}


def _register(*names):
    def wrap(cls):
        for name in names:
            OPS[name] = cls(name)
        return cls
    return wrap


class Op:
    """One ONNX op type (see the module docstring). Subclasses override what differs."""

    tap = False            # its output may be a tap where it is a cut point (mirrornet_tvm.analysis)
    pass_through = False   # a layout op: a tensor reaching the logits only through such ops is the logits
    int_operands: dict = {}  # input index -> name of an integer constant operand (shape, axes, pads)

    def __init__(self, name: str):
        self.name = name

    def problem(self, node, a: dict, consts: dict, graph_outputs: set) -> str | None:
        """Why ``node`` cannot be handled, or None."""
        return None

    def convert(self, node, a: dict, consts: dict, opset: int):
        """(attrs, torch module or None) of the record for ``node``."""
        return {}, None

    def forward(self, args, a: dict, module):
        raise UnsupportedOpError(f"op {self.name} has no torch form")

    def params(self, module) -> dict:
        """The module's weights as the arrays :meth:`emit` writes."""
        return {}

    def emit(self, name, ins, outs, a: dict, params: dict, const) -> list:
        """ONNX nodes for one record; ``const(suffix, array[, dtype])`` adds an initializer, returns its name."""
        attrs = {k: v for k, v in a.items() if not k.startswith("_")}
        return [helper.make_node(self.name, list(ins), list(outs), name=name, **attrs)]

    def cost(self, in_shapes, out_shape, a: dict, module) -> tuple[int, int]:
        """(MACs, FLOPs) for batch 1."""
        return 0, 0


class _Activation(Op):
    tap = True

    def cost(self, in_shapes, out_shape, a, module):
        return 0, math.prod(out_shape)


@_register("Relu")
class _Relu(_Activation):
    def forward(self, args, a, module):
        return F.relu(args[0])


@_register("LeakyRelu")
class _LeakyRelu(_Activation):
    def convert(self, node, a, consts, opset):
        return {"alpha": float(a.get("alpha", 0.01))}, None

    def forward(self, args, a, module):
        return F.leaky_relu(args[0], a["alpha"])


@_register("Clip")
class _Clip(_Activation):
    def problem(self, node, a, consts, graph_outputs):
        if any(i and i not in consts for i in node.input[1:]):
            return "its min/max must be constants"

    def convert(self, node, a, consts, opset):
        lo = a.get("min") if opset < 11 else None
        hi = a.get("max") if opset < 11 else None
        if _operand(node, 1):
            lo = _scalar(consts[node.input[1]])
        if _operand(node, 2):
            hi = _scalar(consts[node.input[2]])
        return {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}, None

    def forward(self, args, a, module):
        return torch.clamp(args[0], a["min"], a["max"])

    def emit(self, name, ins, outs, a, params, const):
        extra = [const("min", a["min"]) if a["min"] is not None else "",
                 const("max", a["max"]) if a["max"] is not None else ""]
        while extra and extra[-1] == "":
            extra.pop()
        return [helper.make_node("Clip", list(ins) + extra, list(outs), name=name)]


@_register("Sigmoid")
class _Sigmoid(_Activation):
    tap = False  # a gate, not a feature map

    def forward(self, args, a, module):
        return torch.sigmoid(args[0])


@_register("Tanh")
class _Tanh(_Activation):
    def forward(self, args, a, module):
        return torch.tanh(args[0])


@_register("HardSigmoid")
class _HardSigmoid(_Activation):
    tap = False

    def convert(self, node, a, consts, opset):
        return {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))}, None

    def forward(self, args, a, module):
        return torch.clamp(a["alpha"] * args[0] + a["beta"], 0.0, 1.0)


@_register("HardSwish")
class _HardSwish(_Activation):
    def forward(self, args, a, module):
        return F.hardswish(args[0])


@_register("Identity", "Dropout")
class _Identity(Op):
    pass_through = True
    int_operands = {2: "training_mode"}

    def problem(self, node, a, consts, graph_outputs):
        if self.name == "Dropout":
            mode = _operand(node, 2)
            if mode and (mode not in consts or bool(consts[mode])):
                return "training_mode must be a constant false (export in eval mode)"

    def forward(self, args, a, module):
        return args[0]

    def emit(self, name, ins, outs, a, params, const):
        return [helper.make_node("Identity", list(ins)[:1], list(outs), name=name)]


def _check_conv_like(node, a, consts):
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return "auto_pad SAME_* is not supported; export with explicit pads"


@_register("Conv")
class _Conv(Op):
    def problem(self, node, a, consts, graph_outputs):
        ins = node.input
        if ins[1] not in consts or (len(ins) > 2 and ins[2] and ins[2] not in consts):
            return "its weight and bias must be constants (initializers)"
        if consts[ins[1]].ndim != 4:
            return "only 2-D convolutions (NCHW) are supported"
        return _check_conv_like(node, a, consts)

    def convert(self, node, a, consts, opset):
        w = consts[node.input[1]]
        b = consts[node.input[2]] if _operand(node, 2) else None
        k = tuple(a.get("kernel_shape", w.shape[2:]))
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        sym, fpad = pads_split(pads)
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
        return attrs, module

    def forward(self, args, a, module):
        x = args[0]
        if a.get("_fpad") is not None:
            x = F.pad(x, a["_fpad"])
        return module(x)

    def params(self, module):
        out = {"weight": _np(module.weight)}
        if module.bias is not None:
            out["bias"] = _np(module.bias)
        return out

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins) + [const("weight", params["weight"])]
        if "bias" in params:
            ins.append(const("bias", params["bias"]))
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()
              if k in ("kernel_shape", "strides", "pads", "dilations", "group")}
        return [helper.make_node("Conv", ins, list(outs), name=name, **kw)]

    def cost(self, in_shapes, out_shape, a, module):
        w = module.weight
        macs = math.prod(out_shape) * w.shape[1] * w.shape[2] * w.shape[3]
        return macs, 2 * macs


@_register("BatchNormalization")
class _BatchNormalization(Op):
    def problem(self, node, a, consts, graph_outputs):
        if any(i not in consts for i in node.input[1:5]):
            return "its scale, bias, mean and variance must be constants"
        if len([o for o in node.output if o]) > 1 or a.get("training_mode", 0):
            return "training-mode BatchNormalization (extra outputs) is not supported; export in eval mode"

    def convert(self, node, a, consts, opset):
        scale, bias, mean, var = (consts[i].astype(np.float32) for i in node.input[1:5])
        eps, mom = float(a.get("epsilon", 1e-5)), float(a.get("momentum", 0.9))
        module = BatchNorm(scale.shape[0], eps=eps, momentum=1.0 - mom)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(scale))
            module.bias.copy_(torch.from_numpy(bias))
            module.running_mean.copy_(torch.from_numpy(mean))
            module.running_var.copy_(torch.from_numpy(var))
        return {"epsilon": eps, "momentum": mom}, module

    def forward(self, args, a, module):
        return module(args[0])

    def params(self, module):
        return {k: _np(getattr(module, k)) for k in ("weight", "bias", "running_mean", "running_var")}

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins) + [const(k, params[k]) for k in ("weight", "bias", "running_mean", "running_var")]
        attrs = {k: v for k, v in a.items() if not k.startswith("_")}
        return [helper.make_node("BatchNormalization", ins, list(outs), name=name, **attrs)]

    def cost(self, in_shapes, out_shape, a, module):
        macs = math.prod(out_shape)
        return macs, 2 * macs


@_register("MaxPool", "AveragePool")
class _Pool(Op):
    tap = True

    def problem(self, node, a, consts, graph_outputs):
        if len(a.get("kernel_shape", ())) != 2:
            return "only 2-D pooling is supported"
        if len([o for o in node.output if o]) > 1:
            return "MaxPool with an indices output is not supported"
        if self.name == "AveragePool" and any(d != 1 for d in a.get("dilations", ())):
            return "dilated AveragePool is not supported"
        return _check_conv_like(node, a, consts)

    def convert(self, node, a, consts, opset):
        k = tuple(a["kernel_shape"])
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        sym, fpad = pads_split(pads)
        # torch pools accept padding up to half the kernel; otherwise pad explicitly
        if sym and any(p > kk // 2 for p, kk in zip(sym, k)):
            sym = None
        attrs = {"kernel_shape": k, "strides": tuple(a.get("strides", (1, 1))), "pads": pads,
                 "ceil_mode": int(a.get("ceil_mode", 0)), "_tpad": sym or (0, 0),
                 "_fpad": None if sym else fpad}
        if self.name == "MaxPool":
            attrs["dilations"] = tuple(a.get("dilations", (1, 1)))
        else:
            attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        return attrs, None

    def forward(self, args, a, module):
        return max_pool(args[0], a) if self.name == "MaxPool" else avg_pool(args[0], a)

    def emit(self, name, ins, outs, a, params, const):
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in a.items() if not k.startswith("_")}
        return [helper.make_node(self.name, list(ins), list(outs), name=name, **kw)]

    def cost(self, in_shapes, out_shape, a, module):
        return 0, math.prod(out_shape) * math.prod(a["kernel_shape"])


@_register("GlobalAveragePool", "GlobalMaxPool")
class _GlobalPool(Op):
    tap = True

    def forward(self, args, a, module):
        x = args[0]
        dims = tuple(range(2, x.dim()))
        if self.name == "GlobalMaxPool":
            return x.amax(dim=dims, keepdim=True)
        if x.dim() == 4:  # adaptive pooling exports back as GlobalAveragePool
            return F.adaptive_avg_pool2d(x, 1)
        return x.mean(dim=dims, keepdim=True)

    def cost(self, in_shapes, out_shape, a, module):
        return 0, math.prod(in_shapes[0])


def _axes(node, a, consts, position: int = 1):
    """Axes from the attribute (older opsets) or the constant operand (newer); None when absent."""
    if "axes" in a:
        return tuple(int(v) for v in a["axes"])
    name = _operand(node, position)
    return None if name is None else tuple(int(v) for v in np.asarray(consts[name]).reshape(-1))


def _axes_problem(node, consts):
    name = _operand(node, 1)
    if name and name not in consts:
        return "its axes must be constants"


@_register("ReduceMean")
class _ReduceMean(Op):
    tap = True
    int_operands = {1: "axes"}

    def problem(self, node, a, consts, graph_outputs):
        return _axes_problem(node, consts)

    def convert(self, node, a, consts, opset):
        return {"axes": _axes(node, a, consts), "keepdims": int(a.get("keepdims", 1)),
                "_noop": int(a.get("noop_with_empty_axes", 0))}, None

    def forward(self, args, a, module):
        x, axes = args[0], a["axes"]
        if not axes:
            if a["_noop"]:
                return x
            axes = tuple(range(x.dim()))
        return x.mean(dim=tuple(d % x.dim() for d in axes), keepdim=bool(a["keepdims"]))

    def emit(self, name, ins, outs, a, params, const):
        kw = {"keepdims": a["keepdims"]}  # the export opset (17) takes axes as an attribute
        if a["axes"] is not None:
            kw["axes"] = list(a["axes"])
        return [helper.make_node("ReduceMean", list(ins), list(outs), name=name, **kw)]

    def cost(self, in_shapes, out_shape, a, module):
        return 0, math.prod(in_shapes[0])


@_register("LRN")
class _LRN(Op):
    tap = True

    def problem(self, node, a, consts, graph_outputs):
        if "size" not in a:
            return "its size attribute is missing"

    def convert(self, node, a, consts, opset):
        return {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
                "bias": float(a.get("bias", 1.0))}, None

    def forward(self, args, a, module):
        return lrn(args[0], a)

    def cost(self, in_shapes, out_shape, a, module):
        return 0, math.prod(out_shape) * (a["size"] + 3)


_BINARY = {"Add": torch.add, "Sum": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@_register("Add", "Sum", "Sub", "Mul", "Div")
class _Elementwise(Op):
    """Binary (n-ary for Sum) elementwise ops with broadcasting; a constant operand becomes an :class:`Operand`."""

    def __init__(self, name):
        super().__init__(name)
        self.tap = name in ("Add", "Sum")  # a residual join (two activation operands, see analysis)

    def problem(self, node, a, consts, graph_outputs):
        ins = [i for i in node.input if i]
        if all(i in consts for i in ins):
            return "all its operands are constants (fold them before export)"

    def convert(self, node, a, consts, opset):
        ins = [i for i in node.input if i]
        const_at = [k for k, i in enumerate(ins) if i in consts]
        if not const_at:
            return {}, None
        values = [np.asarray(consts[ins[k]], dtype=np.float32) for k in const_at]
        value = values[0]
        for v in values[1:]:  # a Sum of several constants: one operand
            value = value + v
        attrs = {"_const_at": const_at[0]} if self.name in ("Sub", "Div") else {}
        return attrs, Operand(value)

    def forward(self, args, a, module):
        args = list(args)
        if module is not None:
            args.insert(a.get("_const_at", len(args)), module.value)
        fn = _BINARY[self.name]
        out = args[0]   # a Sum of one input is that input
        for t in args[1:]:
            out = fn(out, t)
        return out

    def params(self, module):
        return {} if module is None else {"value": _np(module.value)}

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins)
        if "value" in params:
            ins.insert(a.get("_const_at", len(ins)), const("value", params["value"]))
        return [helper.make_node(self.name, ins, list(outs), name=name)]

    def cost(self, in_shapes, out_shape, a, module):
        operands = len(in_shapes) + (module is not None)
        return 0, math.prod(out_shape) * max(operands - 1, 1)


@_register("Concat")
class _Concat(Op):
    tap = True

    def problem(self, node, a, consts, graph_outputs):
        if any(i in consts for i in node.input):
            return "concatenating constants is not supported"

    def convert(self, node, a, consts, opset):
        return {"axis": int(a["axis"])}, None

    def forward(self, args, a, module):
        return torch.cat(list(args), dim=a["axis"])


@_register("Flatten")
class _Flatten(Op):
    pass_through = True

    def convert(self, node, a, consts, opset):
        return {"axis": int(a.get("axis", 1))}, None

    def forward(self, args, a, module):
        x = args[0]
        axis = a["axis"] % x.dim() if x.dim() else 0
        if axis == 1:
            return torch.flatten(x, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)


@_register("Reshape")
class _Reshape(Op):
    pass_through = True
    int_operands = {1: "shape"}

    def problem(self, node, a, consts, graph_outputs):
        if node.input[1] not in consts:
            return ("its target shape is computed at run time (Shape/Gather/Concat); export with static "
                    "shapes and constant folding (torch.onnx.export(..., do_constant_folding=True)) or use "
                    "torch.flatten")
        # allowzero=1 (the dynamo exporter's habit) reads a 0 as an empty axis instead of "copy"; without a 0
        # in the shape both mean the same
        if a.get("allowzero", 0) and 0 in [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]:
            return "allowzero=1 with a 0 in the target shape (an empty axis) is not supported"

    def convert(self, node, a, consts, opset):
        return {"shape": tuple(int(s) for s in consts[node.input[1]])}, None

    def forward(self, args, a, module):
        return reshape(args[0], a)

    def emit(self, name, ins, outs, a, params, const):
        return [helper.make_node("Reshape", list(ins) + [const("shape", a["shape"], np.int64)], list(outs),
                                 name=name)]


@_register("Unsqueeze", "Squeeze")
class _Unsqueeze(Op):
    pass_through = True
    int_operands = {1: "axes"}

    def problem(self, node, a, consts, graph_outputs):
        return _axes_problem(node, consts)

    def convert(self, node, a, consts, opset):
        return {"axes": _axes(node, a, consts)}, None

    def forward(self, args, a, module):
        x, axes = args[0], a["axes"]
        if self.name == "Squeeze":
            if axes is None:  # every size-1 dimension (the batch too, for one image)
                axes = [d for d in range(x.dim()) if x.shape[d] == 1]
            for d in sorted((d % x.dim() for d in axes), reverse=True):
                x = x.squeeze(d)
            return x
        rank = x.dim() + len(axes)
        for d in sorted(d % rank for d in axes):
            x = x.unsqueeze(d)
        return x

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins)
        if a["axes"] is not None:
            ins.append(const("axes", np.array(a["axes"], np.int64), np.int64))
        return [helper.make_node(self.name, ins, list(outs), name=name)]


@_register("Transpose")
class _Transpose(Op):
    pass_through = True

    def convert(self, node, a, consts, opset):
        return {"perm": None if "perm" not in a else tuple(int(p) for p in a["perm"])}, None

    def forward(self, args, a, module):
        x = args[0]
        perm = a["perm"] or tuple(reversed(range(x.dim())))
        return x.permute(*perm)

    def emit(self, name, ins, outs, a, params, const):
        kw = {} if a["perm"] is None else {"perm": list(a["perm"])}
        return [helper.make_node("Transpose", list(ins), list(outs), name=name, **kw)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@_register("Pad")
class _Pad(Op):
    int_operands = {1: "pads"}

    def problem(self, node, a, consts, graph_outputs):
        if _operand(node, 1) and node.input[1] not in consts:
            return "its pads must be constants"
        if _operand(node, 2) and node.input[2] not in consts:
            return "its constant value must be a constant"
        if _operand(node, 3):
            return "the axes operand (opset 18) is not supported; pad every axis"
        mode = a.get("mode", b"constant")
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode not in _PAD_MODES:
            return f"mode {mode} is not supported (constant, reflect, edge)"
        pads = a.get("pads") if _operand(node, 1) is None else consts[node.input[1]]
        if pads is not None and mode != "constant":
            pads = [int(p) for p in np.asarray(pads).reshape(-1)]
            half = len(pads) // 2
            if any(pads[i] or pads[i + half] for i in range(max(half - 2, 0))):
                return f"{mode} padding is supported on the last two (spatial) axes only"

    def convert(self, node, a, consts, opset):
        pads = a.get("pads") if _operand(node, 1) is None else consts[node.input[1]]
        value = a.get("value", 0.0) if _operand(node, 2) is None else consts[node.input[2]]
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = tuple(int(p) for p in np.asarray(pads if pads is not None else ()).reshape(-1))
        half = len(pads) // 2
        fpad = []
        for d in reversed(range(half)):  # F.pad lists the last dimension first
            fpad += [pads[d], pads[d + half]]
        while len(fpad) > 4 and mode != "constant" and not any(fpad[-2:]):
            fpad = fpad[:-2]
        return {"pads": pads, "mode": mode, "value": float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0,
                "_fpad": fpad}, None

    def forward(self, args, a, module):
        if a["mode"] == "constant":
            return F.pad(args[0], a["_fpad"], value=a["value"])
        return F.pad(args[0], a["_fpad"], mode=_PAD_MODES[a["mode"]])

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins) + [const("pads", np.array(a["pads"], np.int64), np.int64)]
        if a["mode"] == "constant" and a["value"]:
            ins.append(const("value", np.array(a["value"], np.float32)))
        return [helper.make_node("Pad", ins, list(outs), name=name, mode=a["mode"])]


@_register("Gemm")
class _Gemm(Op):
    def problem(self, node, a, consts, graph_outputs):
        ins = node.input
        if ins[1] not in consts or (len(ins) > 2 and ins[2] and ins[2] not in consts):
            return "its B and C operands must be constants (a weight and a bias)"
        if ins[0] in consts:
            return "its A operand must be the activation"

    def convert(self, node, a, consts, opset):
        w = consts[node.input[1]].astype(np.float32)
        c = consts[node.input[2]].astype(np.float32) if _operand(node, 2) else None
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        wt = w if a.get("transB", 0) else w.T          # (out, in)
        module = torch.nn.Linear(wt.shape[1], wt.shape[0], bias=c is not None)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(alpha * wt))
            if c is not None:
                module.bias.copy_(torch.from_numpy(np.broadcast_to(beta * c, (1, wt.shape[0])).reshape(-1).copy()))
        return {"transA": int(a.get("transA", 0))}, module

    def forward(self, args, a, module):
        x = args[0]
        if a.get("transA"):
            x = x.transpose(0, 1)
        return module(x)

    params = _Conv.params

    def emit(self, name, ins, outs, a, params, const):
        ins = list(ins) + [const("weight", params["weight"])]
        if "bias" in params:
            ins.append(const("bias", params["bias"]))
        return [helper.make_node("Gemm", ins, list(outs), name=name, transA=a.get("transA", 0), transB=1,
                                 alpha=1.0, beta=1.0)]

    def cost(self, in_shapes, out_shape, a, module):
        macs = math.prod(out_shape) * module.weight.shape[1]
        return macs, 2 * macs


@_register("MatMul")
class _MatMul(_Gemm):
    def problem(self, node, a, consts, graph_outputs):
        ins = node.input
        if ins[1] not in consts or consts[ins[1]].ndim != 2 or ins[0] in consts:
            return "only activation @ constant 2-D weight is supported"

    def convert(self, node, a, consts, opset):
        w = consts[node.input[1]].astype(np.float32)      # (in, out)
        module = torch.nn.Linear(w.shape[0], w.shape[1], bias=False)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(w.T.copy()))
        return {}, module

    def forward(self, args, a, module):
        return module(args[0])

    def emit(self, name, ins, outs, a, params, const):
        return [helper.make_node("MatMul", list(ins) + [const("weight", params["weight"].T)], list(outs), name=name)]


@_register("Softmax")
class _Softmax(Op):
    pass_through = True

    def problem(self, node, a, consts, graph_outputs):
        # final node: its output is a graph output, or only reshaped into one (a combined model may also
        # read it, e.g. backbone_logits)
        if node.output[0] not in graph_outputs:
            return "Softmax is supported only as the final node (its output must be a graph output)"

    def convert(self, node, a, consts, opset):
        # before opset 13 the input is coerced to 2-D at the axis and normalised over the trailing block
        return {"axis": int(a.get("axis", -1 if opset >= 13 else 1)), "_flat": opset < 13}, None

    def forward(self, args, a, module):
        x = args[0]
        if a.get("_flat") and x.dim() > 2:
            axis = a["axis"] % x.dim()
            return torch.softmax(x.flatten(axis), dim=-1).reshape(x.shape)
        return torch.softmax(x, dim=a["axis"])

    def emit(self, name, ins, outs, a, params, const):
        shape = a.get("_flat")
        if not isinstance(shape, tuple):  # one axis (GraphNet resolves _flat once it knows the rank)
            return [helper.make_node("Softmax", list(ins), list(outs), name=name, axis=a["axis"])]
        # spanning several axes (opset < 13): flatten them, normalise, restore the shape
        flat, soft = f"{name}:flat", f"{name}:softmax"
        return [helper.make_node("Flatten", list(ins), [flat], name=flat, axis=a["axis"]),
                helper.make_node("Softmax", [flat], [soft], name=soft, axis=-1),
                helper.make_node("Reshape", [soft, const("shape", np.array(shape, np.int64), np.int64)],
                                 list(outs), name=name)]

    def cost(self, in_shapes, out_shape, a, module):
        return 0, 3 * math.prod(out_shape)


@_register("Constant")
class _Constant(Op):
    """Folded into the records that read it; never a record of its own."""


SUPPORTED_OPS = (  # the table's ops, in the order the errors list them
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "LRN", "Add",
    "Sum", "Sub", "Mul", "Div", "Concat", "Flatten", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Pad",
    "Gemm", "MatMul", "Softmax", "Dropout", "Identity", "Constant",
)
assert sorted(SUPPORTED_OPS) == sorted(OPS), "SUPPORTED_OPS must list the op table"


def supported_ops_text() -> str:
    return ", ".join(SUPPORTED_OPS)


def op(name: str) -> Op:
    """The table entry of ``name`` (UnsupportedOpError naming the supported ops if there is none)."""
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"op {name} is not supported; supported ops: {supported_ops_text()}") from None


INTEGER_OPERANDS = {name: o.int_operands for name, o in OPS.items() if o.int_operands}


def node_problem(node, consts: dict, graph_outputs: set) -> str | None:
    """Why ``node`` (a supported op type) cannot be handled, or None."""
    return op(node.op_type).problem(node, attributes(node), consts, graph_outputs)


class Constants(MutableMapping):
    """Tensor name -> numpy array of every initializer, Constant node and Identity of a constant
    (initializers only with ``nodes=False``); values may be added, e.g. by constant folding.

    Initializers are converted on first access (a large model's weights are read once, where a record
    needs them); :meth:`dtype` answers without converting.
    """

    def __init__(self, graph, nodes: bool = True):
        self._protos = {t.name: t for t in graph.initializer}
        self._arrays: dict = {}
        self._alias: dict = {}
        for node in graph.node if nodes else ():
            if node.op_type == "Constant":
                self._arrays[node.output[0]] = constant_value(node)
            elif node.op_type == "Identity" and node.input[0] in self:
                self._alias[node.output[0]] = self._alias.get(node.input[0], node.input[0])

    def __getitem__(self, name):
        name = self._alias.get(name, name)
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._protos[name])  # KeyError when absent
        return self._arrays[name]

    def __setitem__(self, name, value):
        self._alias.pop(name, None)
        self._arrays[name] = value

    def __delitem__(self, name):
        if self._alias.pop(name, None) is None:
            self._arrays.pop(name, None)
            del self._protos[name]

    def __contains__(self, name):
        name = self._alias.get(name, name)
        return name in self._arrays or name in self._protos

    def __iter__(self):
        yield from self._protos
        yield from (n for n in self._arrays if n not in self._protos)
        yield from self._alias

    def __len__(self):
        return len(set(self._protos) | set(self._arrays)) + len(self._alias)

    def dtype(self, name) -> np.dtype:
        name = self._alias.get(name, name)
        if name in self._arrays:
            return self._arrays[name].dtype
        return np.dtype(helper.tensor_dtype_to_np_dtype(self._protos[name].data_type))


def onnx_constants(graph) -> Constants:
    """The constants of ``graph`` (see :class:`Constants`)."""
    return Constants(graph)


def constant_value(node) -> np.ndarray:
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
