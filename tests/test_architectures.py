"""Standard architectures: torchvision parameter counts, both layouts, ONNX export checked in onnxruntime,
the front end (check_onnx, GraphNet) and the Relax VM, and `mirrornet train-base` on them."""
import functools
import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mirrornet_tvm import architectures, data, zoo
from mirrornet_tvm.cli import main
from mirrornet_tvm.cli.train_base_cmd import _MODELS
from mirrornet_tvm.errors import ModelError
from mirrornet_tvm.frontend import check_onnx, load_model, to_relax

torch.set_num_threads(1)

NAMES = architectures.NAMES
CIFAR, IMAGENET = (3, 32, 32), (3, 224, 224)
# torchvision's models at 1000 classes (torchvision.models.<name>().parameters()).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872,
                      "squeezenet1_1": 1_235_496, "densenet121": 7_978_856}


def _prepared(name, shape, seed=0):
    """An eval-mode model with non-trivial BatchNorm statistics, its last layer scaled so that the logits of
    a [0, 1) image have standard deviation 1: a 1e-4 tolerance is then relative to the logit scale."""
    torch.manual_seed(seed)
    model = zoo.build(name, shape).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        std = model(torch.rand(4, *shape, generator=g)).std()
        last.weight /= std
        last.bias /= std
    return model


@functools.lru_cache(maxsize=None)
def _exported(name, shape, opset):
    """(prepared model, ONNX bytes) for torch.onnx.export at ``opset``; shared by the tests below."""
    model = _prepared(name, shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), buf, dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"])
    return model, buf.getvalue()


def _torch_logits(model, x):
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert 0.3 < out.std() < 3  # the comparison is at logit scale ~1, not on vanishing numbers
    return out


def _image(shape, seed=3):
    return np.random.default_rng(seed).random((1, *shape), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts(name):
    model = zoo.build(name, IMAGENET)
    assert model.num_classes == 1000 and model.in_shape == IMAGENET and model.zoo_name == name
    assert zoo.count_parameters(model) == TORCHVISION_PARAMS[name]


def test_se_resnet18_adds_one_gate_per_block():
    se = zoo.build("se_resnet18", IMAGENET)
    gates = [m for m in se.modules() if isinstance(m, architectures.SqueezeExcitation)]
    assert [g.fc1.in_channels for g in gates] == [64, 64, 128, 128, 256, 256, 512, 512]
    # each gate: c -> c/16 -> c 1x1 convs with biases, on top of ResNet-18
    assert zoo.count_parameters(se) == TORCHVISION_PARAMS["resnet18"] + sum(2 * c * (c // 16) + c // 16 + c
                                                                            for c in (64, 128, 256, 512) * 2)
    x = torch.rand(2, 64, 8, 8)
    with torch.no_grad():  # the gate is a per-channel sigmoid scale of its input
        s = torch.sigmoid(gates[0].fc2(torch.relu(gates[0].fc1(x.mean((2, 3), keepdim=True)))))
        torch.testing.assert_close(gates[0](x), x * s)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw, classes, final", [(32, 10, 4), (48, 10, 6), (64, 1000, 2)])
def test_layout_from_in_shape(name, hw, classes, final):
    """Below 64x64 the CIFAR layout (stride-1 stem: a 4x4 final map at 32x32), from 64 the ImageNet one (/32)."""
    model = zoo.build(name, (3, hw, hw))
    assert model.num_classes == classes and model.in_shape == (3, hw, hw)
    last = model.layer4 if hasattr(model, "layer4") else model.features
    seen = []
    last.register_forward_hook(lambda m, i, out: seen.append(out.shape[-2:]))
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, hw, hw))
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    if name == "squeezenet1_1" and hw == 64:  # unpadded stride-2 stem and ceil-mode pools: 64 -> 31 -> 15 -> 7 -> 3
        final = 3
    assert tuple(seen[0]) == (final, final)


def test_cifar_and_imagenet_stems():
    small, big = zoo.build("resnet18", CIFAR), zoo.build("resnet18", IMAGENET)
    assert (small.conv1.kernel_size, small.conv1.stride, type(small.maxpool)) == ((3, 3), (1, 1), torch.nn.Identity)
    assert (big.conv1.kernel_size, big.conv1.stride, type(big.maxpool)) == ((7, 7), (2, 2), torch.nn.MaxPool2d)
    strides = lambda m: [c.stride[0] for c in m.features.modules() if isinstance(c, torch.nn.Conv2d)  # noqa: E731
                         and c.kernel_size == (3, 3)]
    assert sum(s == 2 for s in strides(zoo.build("mobilenet_v2", IMAGENET))) == 5
    assert sum(s == 2 for s in strides(zoo.build("mobilenet_v2", CIFAR))) == 3
    squeeze = zoo.build("squeezenet1_1", CIFAR)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in squeeze.classifier)


def test_torchvision_initialisation():
    torch.manual_seed(0)
    model = zoo.build("resnet18", CIFAR)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
    w = model.layer3[0].conv2.weight  # kaiming normal, fan_out = 256 * 3 * 3
    assert abs(w.std().item() - (2 / (256 * 9)) ** 0.5) < 0.05 * (2 / (256 * 9)) ** 0.5
    mobile = zoo.build("mobilenet_v2", CIFAR)
    assert abs(mobile.classifier[1].weight.std().item() - 0.01) < 5e-4 and (mobile.classifier[1].bias == 0).all()


@pytest.mark.parametrize("call, message", [
    (lambda: zoo.build("vgg16"), r"unknown zoo model 'vgg16'.*lenet.*resnet18, resnet50"),
    (lambda: architectures.build("resnet"), r"unknown architecture 'resnet'.*resnet18"),
    (lambda: zoo.build("resnet18", (1, 32, 32)), r"'resnet18' takes 3-channel images, not 1.*fashion-mnist-rgb"),
    (lambda: zoo.build("mobilenet_v2", (3, 28, 28)), r"too small for 'mobilenet_v2'.*at least 32"),
    (lambda: zoo.build("densenet121", (3, 224, 16)), r"too small for 'densenet121'"),
    (lambda: zoo.build("squeezenet1_1", (3, 32)), "three positive integers"),
    (lambda: zoo.build("se_resnet18", "3x32x32"), "three integers"),
    (lambda: zoo.build("resnet50", CIFAR, num_classes=1), "num_classes must be an integer >= 2"),
])
def test_bad_input(call, message):
    with pytest.raises(ModelError, match=message):
        call()


def test_small_zoo_defaults_unchanged():
    model = zoo.build("lenet")
    assert model.in_shape == (1, 28, 28) and model.num_classes == 10
    assert zoo.build("resnet18").in_shape == IMAGENET
    assert set(zoo.NAMES) == {"lenet", "vgg", "resnet"} and zoo.ALL_NAMES == zoo.NAMES + NAMES
    assert sorted(_MODELS) == sorted(zoo.ALL_NAMES)  # train-base --model offers every zoo name


# --------------------------------------------------------------------------------------------------
# ONNX export, onnxruntime, front end, Relax
# --------------------------------------------------------------------------------------------------

EXPORT_CASES = ([(name, CIFAR, 17) for name in NAMES] + [("resnet18", CIFAR, 13), ("squeezenet1_1", CIFAR, 13)]
                + [(name, IMAGENET, opset) for name in ("resnet18", "mobilenet_v2") for opset in (13, 17)])
# ops each model must export to (the plain-op forms the front end reads)
EXPECTED_OPS = {"resnet18": {"Add"}, "resnet50": {"Add"}, "mobilenet_v2": {"Clip", "Add"},
                "squeezenet1_1": {"Concat", "MaxPool"}, "densenet121": {"Concat", "AveragePool"},
                "se_resnet18": {"Sigmoid", "Mul", "Add"}}


@pytest.mark.parametrize("name, shape, opset", EXPORT_CASES,
                         ids=[f"{n}-{s[1]}-opset{o}" for n, s, o in EXPORT_CASES])
def test_onnx_export_matches_torch(name, shape, opset):
    model, blob = _exported(name, shape, opset)
    proto = check_onnx(onnx.load_model_from_string(blob))  # the front end accepts it
    assert proto.opset_import[0].version == opset
    ops = {n.op_type for n in proto.graph.node}
    assert EXPECTED_OPS[name] | {"Conv", "GlobalAveragePool", "Flatten"} <= ops
    assert not ops & {"Dropout", "ReduceMean", "Shape", "Gather"}  # eval export, plain pooling and flatten
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = _image(shape)
    got = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    want = _torch_logits(model, x)
    assert got.shape == (1, model.num_classes)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_graphnet_matches_torch(name):
    """load_model(module) exports and checks the module; its GraphNet reproduces the module's logits."""
    model = _prepared(name, CIFAR)
    loaded = load_model(model)
    assert tuple(loaded.input_shape) == (1, *CIFAR)
    net = loaded.graph().eval()
    x = _image(CIFAR, seed=4)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _torch_logits(model, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "se_resnet18"])
def test_relax_vm_matches_onnxruntime(name):
    import tvm
    from tvm import relax

    _, blob = _exported(name, CIFAR, 17)
    proto = onnx.load_model_from_string(blob)
    vm = relax.VirtualMachine(tvm.compile(to_relax(proto), tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    for seed in (5, 6):
        x = _image(CIFAR, seed)
        want = sess.run(["logits"], {"input": x})[0]
        assert want.std() > 0.3
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# mirrornet train-base
# --------------------------------------------------------------------------------------------------


def _npz(path, shape_fn, n_train=32, n_test=16):
    x, y, xt, yt = data.load("fashion-mnist-rgb", subset=n_train)
    to_u8 = lambda a: (shape_fn(a).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_u8(x), y_train=y, x_test=to_u8(xt[:n_test]), y_test=yt[:n_test])
    return path


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_train_base_architecture(tmp_path, capsys):
    dataset = _npz(tmp_path / "rgb.npz", lambda a: a)
    out = tmp_path / "sq.onnx"
    code, stdout, err = _run_cli(["train-base", "--model", "squeezenet1_1", "--dataset", str(dataset),
                                  "--batch-size", "16", "-q", "-o", str(out)], capsys)
    assert code == 0, err
    side = json.loads((tmp_path / "sq.onnx.json").read_text())
    assert side["model"] == "squeezenet1_1" and side["epochs"] == 1 and side["in_shape"] == [3, 32, 32]
    assert side["parameters"] == zoo.count_parameters(zoo.build("squeezenet1_1", CIFAR)) and side["num_classes"] == 10
    assert side["onnx_max_abs_diff"] <= 1e-4
    check_onnx(str(out))


def test_cli_train_base_grey_data_is_refused(tmp_path, capsys):
    dataset = _npz(tmp_path / "grey.npz", lambda a: a[:, :1, 2:30, 2:30])  # 1x28x28
    code, _, err = _run_cli(["train-base", "--model", "resnet18", "--dataset", str(dataset), "-q",
                             "-o", str(tmp_path / "r.onnx")], capsys)
    assert code == 1
    assert "'resnet18' takes 3-channel images, not 1" in err and not (tmp_path / "r.onnx").exists()
