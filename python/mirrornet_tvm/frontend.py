"""The front end: an ONNX file or a ``torch.nn.Module`` in, a checked ONNX model, its Relax ``IRModule``
(weights bound as constants) and its trainable :class:`~mirrornet_tvm.graph.GraphNet` out.

Every model is checked first (:func:`check_onnx`): the file exists and parses, ``onnx.checker`` accepts
it, it is normalised (:func:`mirrornet_tvm.normalize.normalize`: exporters' habits such as a dynamic batch,
shape computations, Dropout or initializers listed as inputs), then it has one float32 input with static
shape and batch 1, its weights are float32 and its nodes use only the supported ops
(:data:`mirrornet_tvm.graph.SUPPORTED_OPS`) of the standard domain. Anything else raises
:class:`~mirrornet_tvm.errors.ModelError` (or :class:`~mirrornet_tvm.errors.UnsupportedOpError`) saying
what was wrong and what to do.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, UnsupportedOpError
from .graph import INTEGER_OPERANDS, SUPPORTED_OPS, GraphNet, node_problem, onnx_constants, supported_ops_text
from .normalize import SHAPE_HINT, normalize, skeleton

OUTPUT_NAMES_ATTR = "mirrornet.output_names"
TORCH_EXPORT_OPSET = 17
_STATIC_HINT = ("re-export it with static shapes and batch 1 (torch.onnx.export without dynamic_axes, "
                "an example input of shape [1, C, H, W])")


# ---------------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------------

def _load_proto(model_or_path) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "the model"
    if isinstance(model_or_path, (bytes, bytearray)):
        where, data = "the model bytes", bytes(model_or_path)
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        where = str(path)
        if not path.exists():
            raise ModelError(f"ONNX file {path} not found; give the path to an existing .onnx model")
        if not path.is_file():
            raise ModelError(f"{path} is not a file; give the path to an .onnx model")
        if path.stat().st_size == 0:
            raise ModelError(f"{where} is empty; it is not an ONNX model (re-export or re-download it)")
        try:
            proto = onnx.load(str(path))  # also reads external weight files next to it
        except (DecodeError, ValueError, RuntimeError, OSError) as err:
            raise ModelError(f"{where} is not a readable ONNX model ({_one_line(err)}); "
                             "the file is corrupt or not ONNX, re-export it") from None
        return _nonempty(proto, where), where
    else:
        raise ModelError(f"expected an ONNX file path or onnx.ModelProto, got {type(model_or_path).__name__}")
    if not data:
        raise ModelError(f"{where} is empty; it is not an ONNX model (re-export or re-download it)")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ModelError(f"{where} is not a readable ONNX model ({_one_line(err)}); "
                         "the file is corrupt or not ONNX, re-export it") from None
    return _nonempty(proto, where), where


def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _nonempty(proto, where):
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{where} holds no ONNX graph (corrupt or not an ONNX file); re-export it")
    return proto


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown"


def check_onnx(model_or_path, input_shape=None) -> onnx.ModelProto:
    """Load (if a path), normalise and validate a model for MirrorNet; return the ``onnx.ModelProto``
    (the one given if it needed no normalisation, else a normalised copy).

    ``input_shape`` ((C, H, W) or (1, C, H, W)) fixes dynamic input dimensions other than the batch and
    must match the static ones. Raises ModelError for a missing, unreadable or invalid file, dynamic or
    non-batch-1 input shapes, non-float32 inputs or weights, and UnsupportedOpError for an op outside the
    supported set.
    """
    proto, where = _load_proto(model_or_path)
    shape = None if input_shape is None else _static_shape(input_shape)
    try:
        onnx.checker.check_model(skeleton(proto))   # the large weights' bytes are checked below
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{where} fails the ONNX checker ({first}): it is corrupt or invalid; "
                         "re-export the model") from None
    _check_weight_sizes(proto, where)
    proto = normalize(proto, where, shape)
    g = proto.graph
    for domain in sorted({n.domain for n in g.node} - {"", "ai.onnx"}):  # declared but unused ones do no harm
        raise UnsupportedOpError(f"{where} uses ops of the custom domain '{domain}'; only standard "
                                 f"ONNX ops are supported: {supported_ops_text()}")
    _check_input(g, where)
    _check_ops(g, where)
    _check_dtypes(g, where)
    if len(g.output) < 1:
        raise ModelError(f"{where} has no graph output")
    for out in g.output:
        et = out.type.tensor_type.elem_type
        if et not in (0, onnx.TensorProto.FLOAT):
            raise ModelError(f"output '{out.name}' of {where} is {_dtype_name(et)}, not float32; "
                             "convert the model to float32 (model.float() before export)")
    return proto


def _check_input(g, where):
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelError(f"{where} has {len(inputs)} inputs {names}; MirrorNet supports models with exactly "
                         "one image input")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type"):
        raise ModelError(f"input '{inp.name}' of {where} is not a tensor; give an image classifier")
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"input '{inp.name}' of {where} is {_dtype_name(tt.elem_type)}, not float32; "
                         "convert the model to float32 (model.float() before export)")
    if not tt.HasField("shape") or not tt.shape.dim:
        raise ModelError(f"input '{inp.name}' of {where} has an unknown shape; {_STATIC_HINT}")
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_param") or not d.HasField("dim_value") or d.dim_value <= 0:
            what = f"symbolic ('{d.dim_param}')" if d.dim_param else "unknown"
            raise ModelError(f"input '{inp.name}' of {where} has a dynamic dimension {k} ({what}); {SHAPE_HINT}")
    if tt.shape.dim[0].dim_value != 1:
        raise ModelError(f"input '{inp.name}' of {where} has batch {tt.shape.dim[0].dim_value}; MirrorNet runs "
                         f"one image per inference: {_STATIC_HINT}")


def _check_ops(g, where):
    bad = [(n.op_type, n.name or f"#{i}") for i, n in enumerate(g.node)
           if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")]
    if bad:
        op, name = bad[0]
        others = sorted({o for o, _ in bad[1:] if o != op})
        also = f" (also unsupported here: {', '.join(others)})" if others else ""
        raise UnsupportedOpError(f"node '{name}' of {where} uses op {op}, which is not supported{also}; "
                                 f"supported ops: {supported_ops_text()}")
    consts = onnx_constants(g)
    outputs = final_tensors(g)
    for i, n in enumerate(g.node):
        why = node_problem(n, consts, outputs)
        if why:
            raise UnsupportedOpError(f"{n.op_type} at node '{n.name or f'#{i}'}' of {where} is not supported: "
                                     f"{why}")


def _check_weight_sizes(proto, where):
    """Every float initializer holds as many values as its dims say (the checker ran without the large ones)."""
    for t in proto.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        want = int(np.prod(t.dims))
        got = len(t.raw_data) // 4 if t.HasField("raw_data") else len(t.float_data)
        if got != want or (t.HasField("raw_data") and len(t.raw_data) % 4):
            raise ModelError(f"weight '{t.name}' of {where} holds {got} values but its shape {list(t.dims)} needs "
                             f"{want}: the file is corrupt or truncated; re-export it")


def final_tensors(g) -> set:
    """The graph outputs and the tensors that reach one only through reshapes (Reshape, Flatten, Identity)."""
    finals = {o.name for o in g.output}
    for n in reversed(g.node):
        if n.op_type in ("Reshape", "Flatten", "Identity") and n.output[0] in finals:
            finals.add(n.input[0])
    return finals


def _check_dtypes(g, where):
    """Weights must be float32; integer constants only where an op takes them (a Reshape's shape,
    Unsqueeze/Squeeze/ReduceMean axes, Pad's pads: :data:`mirrornet_tvm.graph.INTEGER_OPERANDS`)."""
    int_inputs = {n.input[i] for n in g.node for i in INTEGER_OPERANDS.get(n.op_type, ())
                  if i < len(n.input) and n.input[i]}
    identity_of = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    int_inputs |= {identity_of[t] for t in list(int_inputs) if t in identity_of}
    consts = onnx_constants(g)
    for name in consts:
        dtype = consts.dtype(name)
        if dtype.name == "float32" or (name in int_inputs and dtype.kind in "iub"):
            continue
        raise ModelError(f"constant '{name}' of {where} is {dtype.name}, not float32; MirrorNet supports "
                         "float32 models only: convert it (model.float() before export, no quantization)")


# ---------------------------------------------------------------------------------------------------
# Relax
# ---------------------------------------------------------------------------------------------------

def _input_info(proto):
    inits = {t.name for t in proto.graph.initializer}
    inp = [i for i in proto.graph.input if i.name not in inits][0]
    return inp.name, tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)


def with_outputs(proto: onnx.ModelProto, output_names) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph outputs also include the internal tensors ``output_names``."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    existing = {o.name for o in out.graph.output}
    produced = {t for n in out.graph.node for t in n.output}
    for name in output_names:
        if name in existing:
            continue
        if name not in produced:
            raise ModelError(f"no tensor named '{name}' is produced in the model; give an internal tensor name "
                             "(see `mirrornet inspect MODEL --json`)")
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        existing.add(name)
    return onnx.shape_inference.infer_shapes(out)  # fills in the new outputs' shapes


def to_relax(model, output_names=None):
    """Import a checked model into a Relax ``IRModule`` with the weights bound as constants.

    ``output_names`` (internal tensor names) are added to the graph outputs first, since ONNX node
    names do not survive the import. ``main`` carries the attribute ``mirrornet.output_names``: the
    names of the tuple fields it returns (or of its single output), in order.
    """
    from tvm.relax.frontend.onnx import from_onnx

    proto = check_onnx(model)
    if output_names:
        proto = with_outputs(proto, output_names)
    name, shape = _input_info(proto)
    try:
        mod = from_onnx(proto, shape_dict={name: list(shape)}, keep_params_in_input=False)
    except Exception as err:  # the importer raises many types; say which model and why
        raise ModelError(f"TVM could not import the model into Relax ({_one_line(err)})") from None
    names = [o.name for o in proto.graph.output]
    mod["main"] = mod["main"].with_attr(OUTPUT_NAMES_ATTR, names)
    return mod


def output_names_of(mod) -> list:
    """The ``mirrornet.output_names`` recorded on ``mod['main']`` by :func:`to_relax`."""
    attrs = mod["main"].attrs
    if attrs is None or OUTPUT_NAMES_ATTR not in attrs:
        raise ModelError("this IRModule was not made by mirrornet_tvm.frontend.to_relax (no output names)")
    return [str(n) for n in attrs[OUTPUT_NAMES_ATTR]]


# ---------------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------------

def _static_shape(input_shape) -> tuple:
    if input_shape is None:
        raise ModelError("a torch module needs an input shape, e.g. load_model(module, input_shape=(1, 28, 28))")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelError(f"input shape {input_shape!r} is not a tuple of integers, e.g. (1, 28, 28)") from None
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or shape[0] != 1 or any(d <= 0 for d in shape):
        raise ModelError(f"input shape {input_shape!r} must be (C, H, W) or (1, C, H, W) with positive sizes")
    return shape


def from_torch(module, input_shape) -> onnx.ModelProto:
    """Export a ``torch.nn.Module`` to ONNX (opset 17, input ``input``, output ``logits``, batch 1) and check it."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    shape = _static_shape(input_shape)
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(shape),), buf, dynamo=False, opset_version=TORCH_EXPORT_OPSET,
                              input_names=["input"], output_names=["logits"], do_constant_folding=True)
    except Exception as err:
        raise ModelError(f"torch.onnx.export failed for {type(module).__name__} with input {list(shape)} "
                         f"({_one_line(err)}); check the input shape and that the module is traceable") from None
    finally:
        module.train(was_training)
    return check_onnx(onnx.load_model_from_string(buf.getvalue()))


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------

class Model:
    """A checked model: its ONNX proto, lazily its Relax module and its GraphNet."""

    def __init__(self, proto: onnx.ModelProto, source: str = "<model>"):
        self.proto = proto
        self.source = source
        self.input_name, self.input_shape = _input_info(proto)
        self._relax = None
        self._graph = None

    @property
    def output_name(self) -> str:
        return self.proto.graph.output[0].name

    @property
    def num_classes(self) -> int:
        return self.graph().num_classes

    def relax(self):
        """The Relax ``IRModule`` (weights bound), imported on first use."""
        if self._relax is None:
            self._relax = to_relax(self.proto)
        return self._relax

    def graph(self) -> GraphNet:
        """The model's GraphNet, converted on first use (each call returns the same instance)."""
        if self._graph is None:
            self._graph = GraphNet.from_onnx(self.proto, checked=True)
        return self._graph

    def __repr__(self):
        return f"Model({self.source}, input {self.input_name}{list(self.input_shape)})"


def load_model(path_or_module, input_shape=None) -> Model:
    """Load an ONNX file / ``onnx.ModelProto`` or a ``torch.nn.Module`` as a Model.

    A module needs ``input_shape`` ((C, H, W) or (1, C, H, W)) unless it has an ``in_shape`` attribute;
    for an ONNX model it fixes dynamic input dimensions (see :func:`check_onnx`) and must match static ones.
    """
    try:
        import torch
        is_module = isinstance(path_or_module, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_module = False
    if is_module:
        if input_shape is None:  # the zoo's models carry their input shape
            input_shape = getattr(path_or_module, "in_shape", None)
        return Model(from_torch(path_or_module, input_shape), type(path_or_module).__name__)
    proto = check_onnx(path_or_module, input_shape)
    source = str(path_or_module) if isinstance(path_or_module, (str, os.PathLike)) else "<onnx model>"
    return Model(proto, source)
