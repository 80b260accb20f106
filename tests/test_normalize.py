"""Normalisation on load: files as torch.onnx.export, tf2onnx and the ONNX Model Zoo write them load, compute
what onnxruntime computes on the original file, and import into Relax; the project's own files pass unchanged."""
import math
import os
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import tvm
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from tvm import relax

from mirrornet_tvm import zoo
from mirrornet_tvm.analysis import candidate_taps
from mirrornet_tvm.cli import main as cli_main
from mirrornet_tvm.errors import ModelError, ModelNotice, UnsupportedOpError
from mirrornet_tvm.frontend import check_onnx, load_model, to_relax
from mirrornet_tvm.mirror import MirrorNet
from mirrornet_tvm.normalize import normalize
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.training_base import export_onnx

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)
FOLDED_AWAY = {"Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape", "Slice", "Cast", "Sub", "Div",
               "Dropout", "Transpose"}


# --- files as exporters write them ------------------------------------------------------------------

class SameNet(nn.Module):
    """EfficientNet-style "static same" padding computed from x.size(), ReLU6, view flatten."""

    def __init__(self, computed_pads=True):
        super().__init__()
        self.computed = computed_pads
        self.c1, self.bn = nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 8, 3), nn.Linear(8 * 4 * 4, 10)

    def same(self, x, k, s):
        ih, iw = x.size()[-2:]
        if not self.computed:  # opset 9 cannot export pads computed at run time
            ih, iw = int(ih), int(iw)
        ph, pw = (max((math.ceil(i / s) - 1) * s + k - i, 0) for i in (ih, iw))
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def forward(self, x):
        x = F.relu6(self.bn(self.c1(self.same(x, 3, 2))))
        x = F.max_pool2d(F.relu(self.c2(self.same(x, 3, 1))), 2)
        return self.fc(x.view(x.size(0), -1))


class PlainNet(nn.Module):
    """Only long-supported ops: Conv, Relu, MaxPool, a view flatten and Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class PooledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.c1(x)), 1), 1))


def _export(module, shape, opset, axes=None, **kw):
    import io

    torch.manual_seed(0)
    module = module.eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"], dynamic_axes=axes, **kw)
    return onnx.load_model_from_string(buf.getvalue())


def _with_dropout(proto, tensor, ratio=0.3):
    """Insert a Dropout in front of ``tensor`` (torch drops them at export) in the form of the file's opset."""
    opset = proto.opset_import[0].version
    g = proto.graph
    i, prod = next((i, n) for i, n in enumerate(g.node) if tensor in n.output)
    prod.output[list(prod.output).index(tensor)] = tensor + "_pre"
    if opset >= 12:  # ratio and training_mode inputs, the mask output unused
        g.initializer.extend([numpy_helper.from_array(np.array(ratio, np.float32), tensor + "_ratio"),
                              numpy_helper.from_array(np.array(False), tensor + "_training")])
        node = helper.make_node("Dropout", [tensor + "_pre", tensor + "_ratio", tensor + "_training"],
                                [tensor, tensor + "_mask"], name=tensor + "_dropout")
    else:
        node = helper.make_node("Dropout", [tensor + "_pre"], [tensor], name=tensor + "_dropout", ratio=ratio)
    g.node.insert(i + 1, node)
    onnx.checker.check_model(proto)
    return proto


def torch_file(opset):
    proto = _export(SameNet(computed_pads=opset > 9), (1, 3, 16, 16), opset,
                    axes={"input": {0: "batch_size"}, "logits": {0: "batch_size"}})
    flat = next(n for n in proto.graph.node if n.op_type == "Gemm").input[0]
    proto = _with_dropout(proto, flat)
    return _with_dropout(proto, "logits") if opset >= 13 else proto  # a Dropout that makes a graph output


def classic_file(opset, in_shape=(1, 3, 8, 8)):
    """A Model Zoo classic: IR 3, initializers listed as inputs, LRN, Sum, Dropout(ratio), Reshape with a
    shape initializer, Softmax; BatchNormalization with the attributes of its opset."""
    rng = np.random.default_rng(0)
    w = {"conv_w": rng.standard_normal((4, in_shape[1], 3, 3)) * 0.3, "conv_b": rng.standard_normal(4) * 0.1,
         "bn_s": rng.random(4) + 0.5, "bn_b": rng.standard_normal(4) * 0.1, "bn_m": rng.standard_normal(4) * 0.1,
         "bn_v": rng.random(4) + 0.5, "fc_w": rng.standard_normal((5, 64)) * 0.1, "fc_b": rng.standard_normal(5) * 0.1}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    bn = {"epsilon": 1e-5, **({"spatial": 1} if opset < 9 else {}), **({"is_test": 1} if opset < 7 else {}),
          **({"consumed_inputs": [0, 0, 0, 1, 1]} if opset < 6 else {})}
    nodes = [helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["c1"], name="conv1", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["b1"], name="bn1", **bn),
             helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             helper.make_node("LRN", ["r1"], ["l1"], name="lrn1", size=3, alpha=1e-4, beta=0.75, bias=1.0),
             helper.make_node("Sum", ["l1", "r1"], ["s1"], name="sum1"),
             helper.make_node("MaxPool", ["s1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Dropout", ["p1"], ["d1"], name="drop1", ratio=0.4,
                              **({"is_test": 1} if opset < 7 else {}))]
    if opset < 5:
        nodes.append(helper.make_node("Reshape", ["d1"], ["f1"], name="flat", shape=[1, -1]))
    else:
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["d1", "flat_shape"], ["f1"], name="flat"))
    nodes += [helper.make_node("Gemm", ["f1", "fc_w", "fc_b"], ["g1"], name="fc", transB=1,
                               **({"broadcast": 1} if opset < 7 else {})),
              helper.make_node("Softmax", ["g1"], ["prob"], name="softmax")]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(in_shape))]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "classic", inputs, [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 3
    onnx.checker.check_model(m)
    return m


def nhwc_file():
    """tf2onnx's habits: NHWC input with batch 'unk__5', a Transpose to NCHW, Dense as MatMul + Add, and
    ai.onnx.ml declared but unused."""
    rng = np.random.default_rng(3)
    consts = {"k": rng.standard_normal((4, 3, 3, 3)) * 0.3, "kb": rng.standard_normal(4) * 0.1,
              "dense": rng.standard_normal((4, 6)) * 0.3, "dense_b": rng.standard_normal(6) * 0.1,
              "flat": np.array([-1, 4], np.int64)}
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in consts.items()]
    nodes = [helper.make_node("Transpose", ["input_1"], ["nchw"], name="model/transpose", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "k", "kb"], ["conv"], name="model/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="model/relu"),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="model/gap"),
             helper.make_node("Reshape", ["gap", "flat"], ["vec"], name="model/flatten"),
             helper.make_node("MatMul", ["vec", "dense"], ["mm"], name="model/dense/MatMul"),
             helper.make_node("Add", ["mm", "dense_b"], ["dense_out"], name="model/dense/BiasAdd")]
    g = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT,
                                                                           ["unk__5", 10, 10, 3])],
                          [helper.make_tensor_value_info("dense_out", TensorProto.FLOAT, ["unk__6", 6])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


# --- runners --------------------------------------------------------------------------------------

def ort_run(proto, x):
    opts = ort.SessionOptions()
    opts.log_severity_level, opts.intra_op_num_threads = 3, 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def vm_run(proto, x):
    ex = tvm.compile(to_relax(proto), tvm.target.Target({"kind": "llvm"}))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


def input_shape(proto):
    return [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


def assert_matches_original(original, to_original=lambda x: x, reference=None, seeds=(0, 1)):
    """check_onnx accepts ``original`` without changing it; the normalised model and its Relax import
    compute what onnxruntime computes on the original file (or on ``reference``)."""
    before = original.SerializeToString()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelNotice)
        proto = check_onnx(original)
    assert original.SerializeToString() == before  # never changed in place
    assert check_onnx(proto) is proto  # normalised once and for all
    for seed in seeds:
        x = np.random.default_rng(seed).standard_normal(input_shape(proto)).astype(np.float32)
        want = ort_run(reference or original, to_original(x))
        np.testing.assert_allclose(ort_run(proto, x), want, atol=1e-4, rtol=0)
        np.testing.assert_allclose(vm_run(proto, x), want, atol=1e-4, rtol=0)
    return proto


# --- torch.onnx.export ----------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_torch_export_with_shape_chains_dynamic_batch_and_dropout(opset):
    original = torch_file(opset)
    ops = {n.op_type for n in original.graph.node}
    assert {"Shape", "Dropout"} <= ops and input_shape(original)[0] == 0  # what the exporter wrote
    with pytest.warns(ModelNotice, match=r"input 'input' of the model has a dynamic batch \('batch_size'\); "
                                         r"fixed to 1"):
        normalize(original)
    proto = assert_matches_original(original)
    assert input_shape(proto) == [1, 3, 16, 16]
    assert not {n.op_type for n in proto.graph.node} & FOLDED_AWAY, [n.op_type for n in proto.graph.node]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    # untouched nodes keep their names; BatchNormalization is not fused away
    names = {n.name for n in original.graph.node}
    assert {n.name for n in proto.graph.node if n.op_type not in ("Identity",)} <= names
    if opset >= 11:
        assert sum(n.op_type == "Pad" for n in proto.graph.node) == 2
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    shape = next(t for t in proto.graph.initializer if t.name == reshape.input[1])
    assert numpy_helper.to_array(shape).tolist() == [1, -1]  # the flatten's batch is fixed too


def test_batchnorm_is_kept():
    original = _export(SameNet(), (1, 3, 16, 16), 13, axes={"input": {0: "n"}}, do_constant_folding=False)
    proto = assert_matches_original(original, seeds=(0,))
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 1


# --- Model Zoo classics ---------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [7, 8, 9])
def test_zoo_classic_with_initializers_as_inputs(opset):
    original = classic_file(opset)
    assert len(original.graph.input) > 1
    proto = assert_matches_original(original)
    assert [i.name for i in proto.graph.input] == ["data"] and proto.ir_version >= 4
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    assert {"LRN", "Sum", "BatchNormalization", "Softmax"} <= {n.op_type for n in proto.graph.node}


def test_opset_6_is_upgraded_and_opsets_below_are_explained():
    original = classic_file(6)
    with pytest.warns(ModelNotice, match="upgraded from ONNX opset 6 to 7"):
        normalize(original)
    # onnxruntime runs no opset-6 BatchNormalization: the same network at opset 9 is the reference
    assert_matches_original(original, reference=classic_file(9), seeds=(0,))
    with pytest.raises(ModelError, match=r"the model uses ONNX opset 3, older than the opsets 7 to 21 .*version "
                                         r"converter could not upgrade it .*re-export it at opset 7 or newer"):
        check_onnx(classic_file(3))
    newer = _export(PlainNet(), (1, 1, 8, 8), 17)
    newer.opset_import[0].version = 22
    with pytest.raises(ModelError, match=r"opset 22, newer than the opsets 7 to 21.*re-export it at opset 21"):
        check_onnx(newer)


# --- dynamic dimensions ---------------------------------------------------------------------------

def test_dynamic_spatial_dims_need_the_input_shape(tmp_path, capsys):
    original = _export(PooledNet(), (1, 3, 12, 12), 13, axes={"input": {0: "batch", 2: "height", 3: "width"}})
    path = tmp_path / "dynamic_hw.onnx"
    onnx.save(original, str(path))
    with pytest.raises(ModelError, match=r"input 'input' of .*dynamic_hw.onnx has a dynamic dimension 2 "
                                         r"\(symbolic \('height'\)\); give the input shape \(--input-shape C,H,W"):
        load_model(path)
    with pytest.raises(SystemExit) as done:
        cli_main(["inspect", str(path)])
    assert done.value.code != 0 and "--input-shape C,H,W" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelNotice)  # the shape given fixes the batch too: no notice
        model = load_model(path, input_shape=(3, 12, 12))
    assert model.input_shape == (1, 3, 12, 12)
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(vm_run(model.proto, x), ort_run(original, x), atol=1e-4, rtol=0)
    with pytest.raises(ModelError, match=r"has input shape \[batch, 3, height, width\], not \[4, 12, 12\]"):
        load_model(path, input_shape=(4, 12, 12))
    with pytest.raises(SystemExit) as done:
        cli_main(["inspect", str(path), "--input-shape", "3,12,12"])
    assert done.value.code == 0
    out = capsys.readouterr()
    assert "input  input [1, 3, 12, 12] float32" in out.out and out.err == ""


# --- tf2onnx --------------------------------------------------------------------------------------

def test_nhwc_input_with_leading_transpose_becomes_nchw():
    original = nhwc_file()
    with pytest.warns(ModelNotice) as notes:
        normalize(original)
    texts = [str(w.message) for w in notes]
    assert any(re.search(r"input 'input_1' of the model is NHWC .* now takes NCHW \[unk__5, 3, 10, 10\]", t)
               for t in texts), texts
    proto = assert_matches_original(original, to_original=lambda x: x.transpose(0, 2, 3, 1).copy())
    assert input_shape(proto) == [1, 3, 10, 10] and proto.graph.input[0].name == "input_1"
    assert "Transpose" not in {n.op_type for n in proto.graph.node}
    # an NHWC input used otherwise stays as it is
    other = nhwc_file()
    other.graph.node[0].attribute[0].ints[:] = [0, 3, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelNotice)
        assert input_shape(normalize(other)) == [1, 10, 10, 3]


def test_declared_but_unused_domains_do_no_harm_and_used_ones_are_refused():
    proto = _export(PlainNet(), (1, 1, 8, 8), 17)
    proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    assert check_onnx(proto) is proto
    np.testing.assert_allclose(vm_run(proto, x), ort_run(proto, x), atol=1e-4, rtol=0)
    proto.graph.node.append(helper.make_node("Custom", ["logits"], ["y"], domain="com.example"))
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match=r"uses ops of the custom domain 'com.example'; only standard"):
        check_onnx(proto)


def test_unsupported_ops_are_all_listed_after_normalisation():
    class Trig(nn.Module):
        def forward(self, x):
            return torch.cos(torch.sin(x)).view(x.size(0), -1)

    original = _export(nn.Sequential(nn.Conv2d(1, 2, 3), Trig()), (1, 1, 6, 6), 13, axes={"input": {0: "b"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelNotice)
        with pytest.raises(UnsupportedOpError, match=r"uses op Sin.*also unsupported here: Cos\).*supported ops"):
            check_onnx(original)


# --- the project's own files pass unchanged --------------------------------------------------------

def test_project_files_pass_byte_identical(tmp_path):
    for name in zoo.NAMES:
        torch.manual_seed(0)
        path = export_onnx(zoo.build(name, (1, 28, 28)), tmp_path / f"{name}.onnx")
        proto = onnx.load(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ModelNotice)
            assert normalize(proto) is proto and check_onnx(proto) is proto
            assert check_onnx(str(path)).SerializeToString() == path.read_bytes()
    graph = load_model(proto).graph()
    tap = candidate_taps(graph)[0].name
    combined = MirrorNet(graph, Strategy((tap,), 0.25)).export_onnx()
    assert any(n.op_type == "Identity" and n.name.startswith("output:tap:") for n in combined.graph.node)
    data = combined.SerializeToString()
    assert check_onnx(combined) is combined and normalize(combined).SerializeToString() == data


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_inspect_on_a_dynamic_batch_torch_export(tmp_path, capsys):
    proto = _export(PlainNet(), (1, 1, 8, 8), 13, axes={"input": {0: "batch_size"}, "logits": {0: "batch_size"}})
    proto = _with_dropout(proto, next(n for n in proto.graph.node if n.op_type == "Gemm").input[0])
    path = tmp_path / "plain.onnx"
    onnx.save(proto, str(path))
    before = path.read_bytes()
    with pytest.raises(SystemExit) as done:
        cli_main(["inspect", str(path)])
    assert done.value.code == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"note: input 'input' of {path} has a dynamic batch ('batch_size'); "
                                    "fixed to 1"]
    assert "input  input [1, 1, 8, 8] float32" in out.out and "Dropout" not in out.out
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["plain.onnx"]  # no file written
    with pytest.raises(SystemExit) as done:
        cli_main(["inspect", str(path), "--input-shape", "1,8"])
    assert done.value.code == 2 and "--input-shape takes C,H,W" in capsys.readouterr().err


def test_dynamo_habits_local_functions_and_allowzero_reshape():
    """A dynamo or scripted export: a module kept as an ONNX local function, a flatten Reshape with
    allowzero=1 and no 0 in its shape. Both load; a 0 with allowzero=1 (an empty axis) is explained."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    block = helper.make_function("blocks", "ConvRelu", ["x", "w"], ["y"],
                                 [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                                  helper.make_node("Relu", ["c"], ["y"])],
                                 [helper.make_opsetid("", 18)])
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    fc = numpy_helper.from_array(rng.standard_normal((4 * 8 * 8, 5)).astype(np.float32), "fc")
    nodes = [helper.make_node("ConvRelu", ["input", "w"], ["h"], domain="blocks", name="block"),
             helper.make_node("Reshape", ["h", "shape"], ["f"], allowzero=1, name="node_view"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], [w, shape, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("blocks", 1)],
                              functions=[block])
    proto = assert_matches_original(model)
    assert not proto.functions and {n.op_type for n in proto.graph.node} == {"Conv", "Relu", "Reshape", "MatMul"}
    assert [o.domain for o in proto.opset_import] == [""]
    graph = load_model(proto).graph()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(graph(torch.from_numpy(x)).detach().numpy(), ort_run(model, x), atol=1e-4)

    empty = onnx.ModelProto()
    empty.CopyFrom(model)
    empty.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    with pytest.raises(UnsupportedOpError, match="allowzero=1 with a 0 in the target shape"):
        check_onnx(empty)


@pytest.mark.parametrize("softmax", [False, True])
def test_convolutional_logits_are_flattened(softmax):
    """A classifier ending in a 1x1 convolution ([1, C, 1, 1] logits, optionally through a Softmax over the
    classes, as the zoo's DenseNet and SqueezeNet) gives [1, C]; a final Softmax stays the last node."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((10, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
             helper.make_node("Conv", ["p", "w"], ["c" if softmax else "prob"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["c"], ["prob"], axis=1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10, 1, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.warns(ModelNotice, match=r"output 'prob' .* flattened to \[1, C\]"):
        proto = check_onnx(model)
    assert input_shape(proto) == [1, 4, 6, 6] and [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    assert proto.graph.node[-1].op_type == ("Softmax" if softmax else "Flatten")
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_run(proto, x), ort_run(model, x).reshape(1, -1), atol=1e-6)
    assert load_model(proto).graph().num_classes == 10
