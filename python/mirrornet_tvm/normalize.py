"""Normalisation on load: the habits of real exporters (docs/real-models.md) made into the plain form the
rest of the pipeline reads, without changing what the model computes.

:func:`normalize` returns the model it was given, the same object, when nothing needs changing (so files
this project writes pass through byte for byte); otherwise a normalised copy. It never changes the
caller's proto and never writes files. In order:

1. initializers also listed as graph inputs (IR < 4) stop being inputs;
2. opsets below 7 are upgraded with ``onnx.version_converter`` (zoo-style files of opset 6 convert; those
   of opsets 1-5 do not, as the converter needs tensor shapes that shape inference cannot give for their
   old ops, and get an error saying what to do); opsets above 21 are refused;
3. an NHWC input [1, H, W, C] whose only consumer is a Transpose with perm [0, 3, 1, 2] becomes an NCHW
   input [1, C, H, W] and the Transpose goes (a notice says so);
4. a dynamic batch is fixed to 1 (a notice says so); ``input_shape`` fixes other dynamic dimensions, and
   any left is an error naming the input, the dimension and ``--input-shape``;
5. shape computations fold to constants: a node whose inputs are all constant, or a ``Shape`` of a
   tensor of static shape, is evaluated and its outputs become initializers of the same names;
6. Dropout (identity at inference, every opset form) is removed and its consumers read its input.

ONNX local functions (modules a scripted or dynamo export keeps as functions) are inlined first, with
``onnx.inliner``; logits of shape [1, C, 1, 1] (a convolutional classifier) are flattened to [1, C] last.

Folding uses onnx's own ``onnx.reference.ReferenceEvaluator`` per node and ``onnx.shape_inference`` for
the shapes: on torch exports (opsets 11-17, computed ``F.pad`` and ``view`` flatten) it folds every chain
in memory (a 1057-node EfficientNet-style export with 17 padding chains became 88 nodes in 1.6 s), keeps
every node and tensor name and leaves BatchNormalization alone, whereas onnxruntime's offline optimisation
needs a file and fuses Conv+BN, Pad+Conv and Relu+Clip unless each rule is disabled by name, and onnxslim
and onnxsim fold Pad into Conv (renaming outputs) by default.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError, ModelNotice
from .ops import Constants

MIN_OPSET, MAX_OPSET = 7, 21
_STANDARD = ("", "ai.onnx")
_NOT_FOLDED = {"Constant", "Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
SHAPE_HINT = "give the input shape (--input-shape C,H,W; input_shape=(C, H, W) in Python) or re-export it " \
             "with static shapes"


SKELETON_MIN_ELEMENTS = 4096   # float initializers this large are left out of shape inference and checks


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its large float initializers, each an input of the same type and shape.

    Shape inference and the checker serialise the whole model; for an ImageNet network that is hundreds of
    MB each time. What they infer and check does not depend on those values (shape operands are small
    integer tensors and stay), so they run on this instead.
    """
    g = model.graph
    big = [t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= SKELETON_MIN_ELEMENTS]
    if not big:
        return model
    names = {t.name for t in big}
    listed = {i.name for i in g.input}
    graph = onnx.helper.make_graph(
        list(g.node), g.name,
        list(g.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in big if t.name not in listed],
        list(g.output), [t for t in g.initializer if t.name not in names], value_info=list(g.value_info))
    light = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    light.functions.extend(model.functions)
    return light


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` run on the :func:`skeleton`; ``model`` gains the inferred types."""
    light = skeleton(model)
    if light is model:
        return onnx.shape_inference.infer_shapes(model)
    inferred = onnx.shape_inference.infer_shapes(light).graph
    g = model.graph
    del g.value_info[:]
    g.value_info.extend(inferred.value_info)
    for out, typed in zip(g.output, inferred.output):
        out.type.CopyFrom(typed.type)
    return model


def notice(message: str) -> None:
    """A one-line notice about a change made to a model (the CLI prints it as ``note: ...``)."""
    warnings.warn(message, ModelNotice, stacklevel=3)


def normalize(proto: onnx.ModelProto, where: str = "the model", input_shape=None) -> onnx.ModelProto:
    """``proto`` itself if it needs no change, else a normalised copy (see the module docstring).

    ``input_shape`` is the full input shape (1, C, H, W); its sizes fix the input's dynamic dimensions and
    must equal its static ones.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    changed = _inline_functions(model)
    changed |= _drop_initializer_inputs(model)
    changed |= _upgrade_opset(model, where)
    changed |= _nchw_input(model, where)
    changed |= _fix_input_shape(model, where, input_shape)
    changed |= _fold_constants(model)
    changed |= _remove_dropout(model)
    changed |= _flatten_output(model, where)
    if not changed:
        return proto
    return infer_shapes(model)


def _inline_functions(model) -> bool:
    """Calls of the model's local functions (a dynamo or scripted export's modules) become their nodes."""
    if not model.functions:
        return False
    from onnx.inliner import inline_local_functions

    inlined = inline_local_functions(model)
    del inlined.functions[:]
    used = {n.domain for n in inlined.graph.node}
    keep = [o for o in inlined.opset_import if o.domain in _STANDARD or o.domain in used]
    del inlined.opset_import[:]
    inlined.opset_import.extend(keep)
    model.CopyFrom(inlined)
    return True


def _real_inputs(g):
    inits = {t.name for t in g.initializer}
    return [i for i in g.input if i.name not in inits]


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in _STANDARD), 1)


def _drop_initializer_inputs(model) -> bool:
    g = model.graph
    real = _real_inputs(g)
    if len(real) == len(g.input):
        return False
    del g.input[:]
    g.input.extend(real)
    model.ir_version = max(model.ir_version, 4)  # IR 3 requires every initializer to be an input
    return True


def _upgrade_opset(model, where) -> bool:
    version = _opset(model)
    if version > MAX_OPSET:
        raise ModelError(f"{where} uses ONNX opset {version}, newer than the opsets {MIN_OPSET} to {MAX_OPSET} "
                         f"MirrorNet reads; re-export it at opset {MAX_OPSET} or older (torch.onnx.export(..., "
                         "opset_version=17))")
    if version >= MIN_OPSET:
        return False
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as err:  # the converter raises RuntimeError, the checker ValidationError
        why = " ".join(str(err).split())[-160:]
        raise ModelError(f"{where} uses ONNX opset {version}, older than the opsets {MIN_OPSET} to {MAX_OPSET} "
                         f"MirrorNet reads, and onnx's version converter could not upgrade it ({why}); "
                         f"re-export it at opset {MIN_OPSET} or newer, e.g. from its original framework") from None
    model.CopyFrom(upgraded)
    notice(f"{where} upgraded from ONNX opset {version} to {MIN_OPSET}")
    return True


def _consumers(g, name):
    return [n for n in g.node if name in n.input]


def _rewire(g, old, new):
    for n in g.node:
        for i, t in enumerate(n.input):
            if t == old:
                n.input[i] = new


def _nchw_input(model, where) -> bool:
    g = model.graph
    inputs = _real_inputs(g)
    if len(inputs) != 1:
        return False
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    users = _consumers(g, inp.name)
    if len(dims) != 4 or len(users) != 1 or users[0].op_type != "Transpose" or users[0].domain not in _STANDARD:
        return False
    t = users[0]
    perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
    if perm != [0, 3, 1, 2] or t.output[0] in {o.name for o in g.output}:
        return False
    nhwc = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
    for k, d in enumerate(dims):
        nhwc[k].CopyFrom(d)
    for k, src in enumerate(perm):
        dims[k].CopyFrom(nhwc[src])
    g.node.remove(t)
    _rewire(g, t.output[0], inp.name)
    notice(f"input '{inp.name}' of {where} is NHWC followed by a Transpose to NCHW: it now takes NCHW "
           f"{_dims_text(dims)} and the Transpose is removed")
    return True


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _dynamic(d) -> bool:
    return not d.HasField("dim_value") or d.dim_value <= 0


def _fix_input_shape(model, where, input_shape) -> bool:
    g = model.graph
    inputs = _real_inputs(g)
    if len(inputs) != 1 or not inputs[0].type.tensor_type.HasField("shape"):
        return False  # the front end's checks explain these
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    before = [d.dim_value if not _dynamic(d) else None for d in dims]
    if input_shape is not None:
        if len(input_shape) != len(dims) or any(b is not None and b != s for b, s in zip(before, input_shape)):
            raise ModelError(f"{where} has input shape {_dims_text(dims)}, not {list(input_shape[1:])}")
        fixed = list(input_shape)
    else:
        fixed = list(before)
        if dims and fixed[0] is None:
            fixed[0] = 1
            what = f"'{dims[0].dim_param}'" if dims[0].dim_param else "unknown"
            notice(f"input '{inp.name}' of {where} has a dynamic batch ({what}); fixed to 1")
        for k, d in enumerate(dims):
            if fixed[k] is None:
                what = f"symbolic ('{d.dim_param}')" if d.dim_param else "unknown"
                raise ModelError(f"input '{inp.name}' of {where} has a dynamic dimension {k} ({what}); {SHAPE_HINT}")
    if fixed == before:
        return False
    for d, size in zip(dims, fixed):
        d.Clear()
        d.dim_value = size
    # shapes derived from the dynamic ones are inferred again from the static input
    keep = [v for v in g.value_info if not any(_dynamic(d) for d in v.type.tensor_type.shape.dim)]
    del g.value_info[:]
    g.value_info.extend(keep)
    for out in g.output:
        if any(_dynamic(d) for d in out.type.tensor_type.shape.dim):
            out.type.tensor_type.ClearField("shape")
    return True


def _static_shapes(model) -> dict:
    """Tensor name -> static shape, from shape inference on the model as it is now."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # an op it cannot type: fold what is constant without shapes
        inferred = model
    g = inferred.graph
    shapes = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        tt = v.type.tensor_type
        if tt.HasField("shape") and not any(_dynamic(d) for d in tt.shape.dim):
            shapes[v.name] = [d.dim_value for d in tt.shape.dim]
    return shapes


def _shape_of(node, shape) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _foldable(node, consts, shapes, outputs) -> bool:
    if node.op_type in _NOT_FOLDED or any(o in outputs for o in node.output):
        return False
    if node.op_type == "Shape":
        return node.input[0] in shapes
    real = [t for t in node.input if t]
    return bool(real) and all(t in consts for t in real)


def _evaluate(node, opsets, feeds) -> list:
    from onnx.reference import ReferenceEvaluator

    graph = onnx.helper.make_graph([node], "fold", [onnx.ValueInfoProto(name=t) for t in feeds],
                                   [onnx.ValueInfoProto(name=t) for t in node.output if t])
    return ReferenceEvaluator(graph, opsets=opsets).run(None, feeds)


def _fold_constants(model) -> bool:
    """Fold until nothing more folds: each round can make more shapes static (e.g. a Pad's output once its
    pads are known), so the next round's ``Shape`` nodes fold too."""
    g = model.graph
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    outputs = {o.name for o in g.output}
    changed = False
    while True:
        consts = Constants(g, nodes=False)   # initializers, read only when a folded node needs them
        shapes = _static_shapes(model) if any(n.op_type == "Shape" for n in g.node) else {}
        folded, new = [], []
        for n in g.node:
            if n.domain not in _STANDARD:
                continue
            if n.op_type == "Constant":  # a constant as it is: kept unless what reads it folds
                consts[n.output[0]] = _evaluate(n, opsets, {})[0]
            elif n.op_type == "Identity" and n.input[0] in consts:
                consts[n.output[0]] = consts[n.input[0]]
            elif _foldable(n, consts, shapes, outputs):
                results = ([_shape_of(n, shapes[n.input[0]])] if n.op_type == "Shape" else
                           _evaluate(n, opsets, {t: consts[t] for t in n.input if t}))
                consts.update((name, np.asarray(v)) for name, v in zip(n.output, results) if name)
                new += [name for name in n.output if name]
                folded.append(n)
        if not folded:
            return changed
        changed = True
        for n in folded:
            g.node.remove(n)
        used = {t for n in g.node for t in n.input} | outputs
        g.initializer.extend(numpy_helper.from_array(consts[t], t) for t in new if t in used)
        while True:  # constants no longer read
            dead = [n for n in g.node if n.op_type in ("Constant", "Identity") and not set(n.output) & used]
            for n in dead:
                g.node.remove(n)
            used = {t for n in g.node for t in n.input} | outputs
            if not dead:
                break
        _drop_unused_initializers(g, used)


def _drop_unused_initializers(g, used):
    for t in [t for t in g.initializer if t.name not in used]:   # few: no copy of the others
        g.initializer.remove(t)


def _flatten_output(model, where) -> bool:
    """Logits of shape [1, C, 1, 1] (a convolutional classifier, e.g. the zoo's DenseNet) become [1, C]."""
    g = model.graph
    if len(g.output) != 1:
        return False
    out = g.output[0]
    dims = out.type.tensor_type.shape.dim
    if len(dims) < 3 or any(_dynamic(d) or d.dim_value != 1 for d in dims[2:]):
        return False
    inner = out.name + ":unflattened"
    producer = next((n for n in g.node if out.name in n.output), None)
    axis = next((a.i for a in producer.attribute if a.name == "axis"), 1 if _opset(model) < 13 else -1) \
        if producer is not None and producer.op_type == "Softmax" else None
    if axis in (1, -len(dims)):   # a final Softmax over the classes: flatten before it, it stays last
        flat = producer.input[0] + ":flat"
        g.node.insert(list(g.node).index(producer),
                      onnx.helper.make_node("Flatten", [producer.input[0]], [flat], name=flat, axis=1))
        producer.input[0] = flat
        del producer.attribute[:]
        producer.attribute.append(onnx.helper.make_attribute("axis", 1))
    else:
        for n in g.node:
            n.output[:] = [inner if t == out.name else t for t in n.output]
            n.input[:] = [inner if t == out.name else t for t in n.input]
        g.node.append(onnx.helper.make_node("Flatten", [inner], [out.name], name=out.name + ":flatten", axis=1))
    c = dims[1].dim_value if not _dynamic(dims[1]) else None
    out.type.tensor_type.ClearField("shape")
    if c:
        out.type.CopyFrom(onnx.helper.make_tensor_type_proto(out.type.tensor_type.elem_type, [1, c]))
    notice(f"output '{out.name}' of {where} is [1, C, 1, 1]; flattened to [1, C] logits")
    return True


def _remove_dropout(model) -> bool:
    g = model.graph
    drops = [n for n in g.node if n.op_type == "Dropout" and n.domain in _STANDARD]
    outputs = {o.name for o in g.output}
    changed = False
    for n in drops:
        if len(n.output) > 1 and n.output[1] and (_consumers(g, n.output[1]) or n.output[1] in outputs):
            continue  # its mask is used: the op check explains
        changed = True
        if n.output[0] in outputs:  # keep the graph output's name: an Identity produces it
            n.CopyFrom(onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
            continue
        g.node.remove(n)
        _rewire(g, n.output[0], n.input[0])
    if changed:
        _drop_unused_initializers(g, {t for n in g.node for t in n.input} | outputs)
    return changed
