"""Model zoo: shapes, sizes, supported op set, and ONNX export checked in onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mirrornet_tvm import zoo
from mirrornet_tvm.errors import ModelError
from mirrornet_tvm.training_base import export_onnx

torch.set_num_threads(1)

SHAPES = [(1, 28, 28), (3, 32, 32)]
# ONNX ops the front end accepts (see the front end's supported set); the zoo must stay inside it.
SUPPORTED_OPS = {"Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Add", "Concat", "Flatten", "Reshape", "Gemm", "MatMul", "Softmax"}


def _randomise_bn(model, seed=0):
    """Give BatchNorm non-trivial statistics so the export check covers them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_forward_shape_and_size(name, shape):
    torch.manual_seed(0)
    model = zoo.build(name, shape)
    assert model.in_shape == shape and model.num_classes == 10 and model.zoo_name == name
    out = model.eval()(torch.rand(4, *shape))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert 50_000 <= zoo.count_parameters(model) <= 400_000


def test_num_classes():
    assert zoo.build("resnet", (1, 28, 28), num_classes=3)(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_resnet_has_residual_adds():
    model = zoo.build("resnet")
    blocks = [m for m in model.modules() if isinstance(m, zoo.BasicBlock)]
    assert len(blocks) == 3
    # A block whose convolutions output zero passes relu(shortcut(x)) through: the add is real.
    block = blocks[0].eval()
    torch.nn.init.zeros_(block.conv2.weight)
    _randomise_bn(block)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x + block.bn2(torch.zeros_like(x))))
        assert not torch.allclose(block(x), torch.relu(block.bn2(torch.zeros_like(x))))


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_onnx_export_matches_torch(name, shape, tmp_path):
    torch.manual_seed(1)
    model = zoo.build(name, shape)
    _randomise_bn(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", metadata={"mirrornet.source": "test"})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *shape]
    assert proto.opset_import[0].version == 17
    assert {n.op_type for n in proto.graph.node} <= SUPPORTED_OPS
    if name == "resnet":
        assert sum(n.op_type == "Add" for n in proto.graph.node) == 3
    assert {p.key: p.value for p in proto.metadata_props}["mirrornet.source"] == "test"

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((3, 1, *shape), dtype=np.float32)
    got = np.concatenate([sess.run(["logits"], {"input": xi})[0] for xi in x])
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x[:, 0])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_unknown_model_lists_names():
    with pytest.raises(ModelError, match="unknown zoo model 'alexnet'.*lenet, resnet, vgg"):
        zoo.build("alexnet")


@pytest.mark.parametrize("name, shape, message", [
    ("lenet", (1, 28), "three positive integers"),
    ("lenet", (1, 0, 28), "three positive integers"),
    ("lenet", "abc", "three integers"),
    ("vgg", (16, 28, 28), "1 to 4 channels"),
    ("lenet", (1, 10, 10), "too small for 'lenet'.*at least 12"),
    ("vgg", (1, 6, 6), "too small for 'vgg'"),
])
def test_bad_in_shape(name, shape, message):
    with pytest.raises(ModelError, match=message):
        zoo.build(name, shape)


def test_bad_num_classes():
    with pytest.raises(ModelError, match="num_classes must be an integer >= 2"):
        zoo.build("lenet", num_classes=1)
