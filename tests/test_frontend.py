"""Front end: checks, Relax import against onnxruntime, load_model, and `mirrornet inspect` errors."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from tvm import relax

from mirrornet_tvm import frontend
from mirrornet_tvm.cli import main as cli_main
from mirrornet_tvm.errors import ModelError, UnsupportedOpError
from mirrornet_tvm.frontend import check_onnx, from_torch, load_model, output_names_of, to_relax
from mirrornet_tvm.graph import GraphNet

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)


# --- small nets in plain torch ----------------------------------------------------------------------

class LeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 12, 5)
        self.f1, self.f2 = nn.Linear(12 * 5 * 5, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.avg_pool2d(nn.functional.relu6(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        return torch.softmax(self.f2(nn.functional.leaky_relu(self.f1(x), 0.1)), dim=1)


class VGGLike(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        layers, cin = [], c
        for cout in (8, 16):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 7))

    def forward(self, x):
        return self.head(self.features(x))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = torch.relu(self.down(x) + self.b(x))
        x = torch.cat([nn.functional.adaptive_avg_pool2d(x, 1), nn.functional.adaptive_max_pool2d(x, 1)], 1)
        return self.fc(torch.flatten(x, 1))


def _randomize_bn(module):
    """Give BatchNorm layers non-trivial statistics so folding them is really tested."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


def ort_run(proto, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def vm_runner(mod):
    """Compile a Relax module for the host CPU; return x -> list of numpy outputs."""
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())

    def run(x):
        out = vm["main"](tvm.runtime.tensor(x))
        if isinstance(out, tvm.runtime.Tensor):
            return [out.numpy()]
        return [o.numpy() for o in out]

    return run


def _zoo_cases():
    try:
        from mirrornet_tvm import zoo
    except ImportError:
        return []
    return [pytest.param(lambda n=n, s=s: zoo.build(n, in_shape=s), s, id=f"zoo-{n}-{s[0]}x{s[1]}")
            for n, s in [("lenet", (1, 28, 28)), ("vgg", (1, 28, 28)), ("resnet", (1, 28, 28)),
                         ("resnet", (3, 32, 32))]]


CASES = [
    pytest.param(LeNetLike, (1, 28, 28), id="lenet-like"),
    pytest.param(lambda: VGGLike(3), (3, 18, 18), id="vgg-like-rgb-ceil"),
    pytest.param(ResNetLike, (1, 16, 16), id="resnet-like"),
] + _zoo_cases()


@pytest.mark.parametrize("make,shape", CASES)
def test_relax_and_graphnet_match_onnxruntime(make, shape):
    torch.manual_seed(0)
    module = _randomize_bn(make())
    model = load_model(module, shape)
    assert model.input_shape == (1,) + tuple(shape) and model.input_name == "input"
    rng = np.random.default_rng(0)
    vm_run = vm_runner(model.relax())
    for _ in range(2):
        x = rng.random((1,) + tuple(shape), dtype=np.float32)
        ref = ort_run(model.proto, x)[0]
        with torch.no_grad():
            torch_ref = module(torch.from_numpy(x)).numpy()
            graph_out = model.graph().eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ref, torch_ref, atol=1e-4, rtol=0)
        np.testing.assert_allclose(graph_out, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(vm_run(x)[0], ref, atol=1e-4, rtol=0)
    assert model.num_classes == ref.shape[1]


def test_relax_outputs_internal_tensors_by_name():
    torch.manual_seed(0)
    model = load_model(_randomize_bn(ResNetLike()), (1, 16, 16))
    graph = model.graph()
    inner = [n.output for n in graph.nodes if n.op in ("Add", "MaxPool")][:2]
    mod = to_relax(model.proto, output_names=inner)
    assert output_names_of(mod) == ["logits"] + inner
    assert output_names_of(model.relax()) == ["logits"]
    x = np.random.default_rng(1).random((1, 1, 16, 16), dtype=np.float32)
    outs = vm_runner(mod)(x)
    with torch.no_grad():
        logits, tensors = graph.eval()(torch.from_numpy(x), return_tensors=inner)
    np.testing.assert_allclose(outs[0], logits.numpy(), atol=1e-4)
    for got, name in zip(outs[1:], inner):
        assert got.shape == graph.tensor_shapes[name]
        np.testing.assert_allclose(got, tensors[name].numpy(), atol=1e-4)
    with pytest.raises(ModelError, match="no tensor named 'missing'"):
        to_relax(model.proto, output_names=["missing"])


def test_load_model_from_file_and_module(tmp_path):
    torch.manual_seed(0)
    proto = from_torch(LeNetLike(), (1, 28, 28))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    model = load_model(path)
    assert model.graph() is model.graph() and isinstance(model.graph(), GraphNet)
    assert model.num_classes == 10 and model.output_name == "logits"
    assert "Softmax" == model.graph().nodes[-1].op
    assert load_model(str(path), input_shape=(1, 28, 28)).input_shape == (1, 1, 28, 28)
    with pytest.raises(ModelError, match=r"has input shape \[1, 1, 28, 28\], not \[3, 28, 28\]"):
        load_model(path, input_shape=(3, 28, 28))
    with pytest.raises(ModelError, match="needs an input shape"):
        load_model(LeNetLike())
    carrying = LeNetLike()
    carrying.in_shape = (1, 28, 28)
    assert load_model(carrying).input_shape == (1, 1, 28, 28)
    with pytest.raises(ModelError, match=r"must be \(C, H, W\) or \(1, C, H, W\)"):
        from_torch(LeNetLike(), (2, 1, 28, 28))
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        from_torch("not a module", (1, 28, 28))
    with pytest.raises(ModelError, match="torch.onnx.export failed"):
        from_torch(nn.Linear(3, 2), (1, 28, 28))  # wrong input shape for the module


# --- bad models: each through the Python API and through `mirrornet inspect` ------------------------

def _tiny(nodes, inits=(), in_type=TensorProto.FLOAT, in_shape=(1, 2, 4, 4), out_shape=None, extra_inputs=()):
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", in_type, list(in_shape))] + list(extra_inputs),
        [helper.make_tensor_value_info("y", in_type, out_shape)], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _bad_models(tmp_path):
    """name -> (path, expected exception type, regex the message must match)."""
    good = from_torch(LeNetLike(), (1, 28, 28))
    cases = {}

    def save(name, proto_or_bytes):
        p = tmp_path / f"{name}.onnx"
        if isinstance(proto_or_bytes, bytes):
            p.write_bytes(proto_or_bytes)
        else:
            onnx.save(proto_or_bytes, str(p))
        return p

    cases["missing"] = (tmp_path / "nope.onnx", ModelError, r"nope.onnx not found")
    cases["empty"] = (save("empty", b""), ModelError, r"is empty")
    cases["garbage"] = (save("garbage", b"\x08\x07not an onnx model at all\xff\xff\xff"), ModelError,
                        r"not a readable ONNX model|fails the ONNX checker|holds no ONNX graph")
    cases["truncated"] = (save("truncated", good.SerializeToString()[:5000]), ModelError,
                          r"not a readable ONNX model|corrupt")
    cases["directory"] = (tmp_path, ModelError, r"is not a file")
    cases["unsorted"] = (save("unsorted", _tiny([helper.make_node("Relu", ["z"], ["y"]),
                                                 helper.make_node("Relu", ["x"], ["z"])])),
                         ModelError, r"fails the ONNX checker")

    dyn = tmp_path / "dynamic.onnx"
    torch.onnx.export(LeNetLike().eval(), (torch.zeros(1, 1, 28, 28),), str(dyn), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {2: "height"}})  # (a dynamic batch is fixed to 1)
    cases["dynamic"] = (dyn, ModelError, r"input 'input' .* dynamic dimension 2 \(symbolic \('height'\)\).*"
                                         r"--input-shape C,H,W")
    batch2 = onnx.load(str(dyn))
    batch2.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    batch2.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 28
    cases["batch2"] = (save("batch2", batch2), ModelError, r"has batch 2.*batch 1")

    cases["int_input"] = (save("int_input", _tiny([helper.make_node("Relu", ["x"], ["y"])], in_type=TensorProto.INT32)),
                          ModelError, r"input 'x' .* is int32, not float32")
    w64 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float64), "w64")
    cases["float64_weight"] = (save("float64_weight", _tiny([helper.make_node("Conv", ["x", "w64"], ["y"])], [w64])),
                               ModelError, r"constant 'w64' .* float64, not float32")
    cases["two_inputs"] = (save("two_inputs", _tiny(
        [helper.make_node("Add", ["x", "x2"], ["y"])],
        extra_inputs=[helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 2, 4, 4])])),
        ModelError, r"2 inputs")

    sig = tmp_path / "sin_cos.onnx"

    class SinCos(nn.Module):
        def forward(self, x):
            return torch.cos(torch.sin(x))

    torch.onnx.export(nn.Sequential(nn.Conv2d(1, 2, 3), SinCos()).eval(), (torch.zeros(1, 1, 8, 8),),
                      str(sig), dynamo=False, opset_version=17, input_names=["input"])
    cases["unsupported_op"] = (sig, UnsupportedOpError,
                               r"node '/1/Sin' .* uses op Sin.*also unsupported here: Cos.*supported ops: Conv")
    cases["softmax_inside"] = (save("softmax_inside", _tiny([helper.make_node("Softmax", ["x"], ["s"], name="sm"),
                                                             helper.make_node("Relu", ["s"], ["y"])])),
                               UnsupportedOpError, r"Softmax at node 'sm'.*only as the final node")
    cases["shape_of_computed"] = (save("shape_of_computed", _tiny(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("Reshape", ["x", "f"], ["y"], name="rs")], out_shape=[1, 32])),
        UnsupportedOpError, r"Reshape at node 'rs'.*computed at run time")
    return cases


BAD = ["missing", "empty", "garbage", "truncated", "directory", "unsorted", "dynamic", "batch2", "int_input",
       "float64_weight", "two_inputs", "unsupported_op", "softmax_inside", "shape_of_computed"]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    torch.manual_seed(0)
    return _bad_models(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD)
def test_bad_model_python_api(bad_models, case):
    path, exc, pattern = bad_models[case]
    with pytest.raises(exc, match=pattern):
        load_model(path)
    with pytest.raises(exc, match=pattern):
        check_onnx(str(path))


@pytest.mark.parametrize("case", BAD)
def test_bad_model_cli_one_line_nonzero_exit(bad_models, case, capsys):
    path, _, pattern = bad_models[case]
    with pytest.raises(SystemExit) as done:
        cli_main(["inspect", str(path)])
    assert done.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    import re
    assert re.search(pattern, err), err


def test_reshape_shape_from_shape_op_is_explained():
    model = _tiny([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])])
    folded = check_onnx(model)  # the Shape of a static tensor folds to a constant
    assert [n.op_type for n in folded.graph.node] == ["Reshape"]
    assert numpy_helper.to_array(folded.graph.initializer[0]).tolist() == [1, 2, 4, 4]
    # a Reshape fed by a computed (non-constant) tensor names the way out
    relu_shape = _tiny([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Flatten", ["r"], ["f"]),
                        helper.make_node("Reshape", ["x", "f"], ["y"], name="rs")], out_shape=[1, 32])
    with pytest.raises(UnsupportedOpError, match="Reshape at node 'rs'.*computed at run time.*constant folding"):
        check_onnx(relu_shape)


def test_weights_in_an_external_data_file(tmp_path):
    proto = from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 5, 5))
    x = np.random.default_rng(0).random((1, 1, 5, 5), dtype=np.float32)
    ref = ort_run(proto, x)[0]
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin",
              size_threshold=0)  # (moves the weights out of `proto` too)
    assert (tmp_path / "ext.bin").exists()
    with torch.no_grad():
        got = load_model(path).graph().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_check_onnx_returns_the_proto_and_relax_names_outputs():
    proto = from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 5, 5))
    assert check_onnx(proto) is proto
    assert check_onnx(proto.SerializeToString()).graph.node[0].op_type == "Conv"
    mod = frontend.to_relax(proto)
    assert output_names_of(mod) == ["logits"]
    with pytest.raises(ModelError, match="not made by mirrornet_tvm.frontend.to_relax"):
        output_names_of(tvm.IRModule({"main": mod["main"].without_attr("mirrornet.output_names")}))


def test_a_truncated_large_weight_is_named(tmp_path):
    """The checker runs without the large weights' data; their sizes are checked on their own."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64, 3, 3], np.zeros(64 * 64 * 9, np.float32).tobytes(),
                           raw=True)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    check_onnx(model)   # intact: accepted
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4000]
    with pytest.raises(ModelError, match=r"weight 'w' .* holds 35864 values but its shape \[64, 64, 3, 3\] needs 36864"):
        check_onnx(model)
