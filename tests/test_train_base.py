"""Base training: the loop helpers, ONNX export, and the `mirrornet train-base` command."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mirrornet_tvm import data, frontend, training_base, zoo
from mirrornet_tvm.cli import main
from mirrornet_tvm.errors import UsageError

torch.set_num_threads(1)


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


class _Fixed(torch.nn.Module):
    """Predicts the class given by the first pixel (times 9): a model with known accuracy."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), (x[:, 0, 0, 0] * 9).round().long()] = 1.0
        return logits


def test_evaluate_known_accuracy():
    x = np.zeros((10, 1, 4, 4), np.float32)
    x[:, 0, 0, 0] = np.arange(10) / 9
    y = np.arange(10)
    y[:3] = 9  # three wrong predictions
    assert training_base.evaluate(_Fixed(), x, y, batch_size=4) == pytest.approx(0.7)
    assert training_base.predict(_Fixed(), x, batch_size=3).shape == (10, 10)


def test_evaluate_length_mismatch():
    with pytest.raises(UsageError, match="10 images but 9 labels"):
        training_base.evaluate(_Fixed(), np.zeros((10, 1, 4, 4), np.float32), np.zeros(9))


def _tiny():
    x, y, xt, yt = data.load("fashion-mnist", subset=256)
    return x, y, xt[:256], yt[:256]


def test_fit_learns_and_is_deterministic():
    x, y, xt, yt = _tiny()
    weights, results = [], []
    for _ in range(2):
        torch.manual_seed(3)
        model = zoo.build("lenet")
        results.append(training_base.fit(model, x, y, epochs=2, lr=2e-3, batch_size=32, seed=5,
                                         progress=False, eval_data=(xt, yt)))
        weights.append([p.detach().clone() for p in model.state_dict().values()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    res = results[0]
    assert [e.epoch for e in res.epochs] == [1, 2]
    assert res.epochs[1].loss < res.epochs[0].loss
    assert res.final_test_accuracy == results[1].final_test_accuracy > 0.3  # chance is 0.1
    assert not model.training  # fit leaves the model in evaluation mode


def test_fit_different_seed_differs():
    x, y, _, _ = _tiny()
    outs = []
    for seed in (0, 1):
        torch.manual_seed(0)
        model = zoo.build("lenet")
        training_base.fit(model, x, y, epochs=1, batch_size=64, seed=seed, progress=False)
        outs.append(training_base.predict(model, x[:8]))
    assert not np.allclose(outs[0], outs[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(epochs=1, batch_size=0), "batch size"),
    (dict(epochs=1, lr=-1.0), "learning rate"),
])
def test_fit_bad_arguments(kwargs, message):
    x, y, _, _ = _tiny()
    with pytest.raises(UsageError, match=message):
        training_base.fit(zoo.build("lenet"), x, y, progress=False, **kwargs)


def test_fit_diverging_loss_is_reported():
    x, y, _, _ = _tiny()
    with pytest.raises(Exception, match="training diverged"):
        training_base.fit(zoo.build("lenet"), x, y, epochs=1, progress=False,
                          loss_fn=lambda logits, labels: logits.sum() * float("nan"))


def test_cli_train_base_tiny_subset(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, err = _run_cli(["train-base", "--model", "lenet", "--dataset", "fashion-mnist", "--subset", "512",
                                  "--epochs", "1", "--batch-size", "32", "--seed", "7", "-o", str(out)], capsys)
    assert code == 0, err
    assert "test accuracy" in stdout and str(out) in stdout
    assert "lenet epoch 1/1" in err  # per-epoch progress on stderr

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mirrornet.generated_by"].startswith("mirrornet train-base")
    assert "fashion-mnist" in meta["mirrornet.source"]

    side = json.loads((tmp_path / "m.onnx.json").read_text())
    assert side["model"] == "lenet" and side["dataset"] == "fashion-mnist" and side["seed"] == 7
    assert side["epochs"] == 1 and side["subset"] == 512 and side["train_samples"] == 512
    assert 0.3 < side["test_accuracy"] <= 1.0
    assert f"{side['test_accuracy']:.2%}" in stdout
    assert side["onnx_max_abs_diff"] <= 1e-4

    # The ONNX file reproduces the sidecar's test accuracy in onnxruntime, image by image.
    _, _, x_test, y_test = data.load("fashion-mnist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    preds = np.array([sess.run(["logits"], {"input": x_test[i : i + 1]})[0].argmax() for i in range(len(x_test))])
    assert abs((preds == y_test).mean() - side["test_accuracy"]) <= 2e-4  # at most 2 near-ties may flip

    # The front end accepts it, and the Relax VM agrees with onnxruntime.
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(frontend.load_model(out).relax(), target="llvm"), tvm.cpu())
    for i in range(4):
        want = sess.run(["logits"], {"input": x_test[i : i + 1]})[0]
        got = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x_test[i : i + 1]))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


@pytest.fixture
def rgb_npz(tmp_path):
    """A small 3x32x32 .npz dataset (the Fashion-MNIST RGB variant, 96 + 64 images, NHWC uint8)."""
    x, y, xt, yt = data.load("fashion-mnist-rgb", subset=96)
    to_u8 = lambda a: (a.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # noqa: E731
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=to_u8(x), y_train=y, x_test=to_u8(xt[:64]), y_test=yt[:64])
    return path


def test_cli_same_seed_same_file(tmp_path, capsys, rgb_npz):
    sides = []
    for i in range(2):
        out = tmp_path / f"r{i}.onnx"
        code, _, err = _run_cli(["train-base", "--model", "resnet", "--dataset", str(rgb_npz), "--epochs", "1",
                                 "--batch-size", "32", "--in-shape", "3x32x32", "-q", "-o", str(out)], capsys)
        assert code == 0, err
        sides.append(json.loads((tmp_path / f"r{i}.onnx.json").read_text()))
    assert sides[0]["dataset"] == "rgb.npz" and sides[0]["in_shape"] == [3, 32, 32]
    assert sides[0]["test_samples"] == 64
    assert sides[0]["test_accuracy"] == sides[1]["test_accuracy"]
    assert sides[0]["onnx_sha256"] == sides[1]["onnx_sha256"]
    assert (tmp_path / "r0.onnx").read_bytes() == (tmp_path / "r1.onnx").read_bytes()
    proto = onnx.load(str(tmp_path / "r0.onnx"))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]


@pytest.mark.parametrize("args, code, message", [
    (["--model", "alexnet", "--dataset", "fashion-mnist"], 2, "alexnet"),
    (["--model", "lenet", "--dataset", "cifar10"], 1, "unknown dataset 'cifar10'"),
    (["--model", "lenet", "--dataset", "nope.npz"], 1, "does not exist"),
    (["--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "0"], 2, "--epochs"),
    (["--model", "lenet", "--dataset", "fashion-mnist", "--subset", "70000"], 1, "subset size 70000 is out of range"),
    (["--model", "lenet", "--dataset", "fashion-mnist", "--lr", "0"], 2, "--lr"),
    (["--model", "lenet", "--dataset", "fashion-mnist", "--in-shape", "28x28"], 2, "CxHxW"),
    (["--model", "lenet", "--dataset", "fashion-mnist", "--in-shape", "3x32x32"], 2, "fashion-mnist-rgb"),
    (["--dataset", "fashion-mnist"], 2, "--model"),
])
def test_cli_bad_args(tmp_path, capsys, args, code, message):
    out = tmp_path / "bad.onnx"
    got, _, err = _run_cli(["train-base", *args, "-o", str(out)], capsys)
    assert got == code
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip().startswith("Error") or "error" in line.lower()]) == 1
    assert not out.exists()


def test_cli_output_must_be_onnx_file(tmp_path, capsys):
    code, _, err = _run_cli(["train-base", "--model", "lenet", "--dataset", "mnist", "-o", str(tmp_path / "x.txt")],
                            capsys)
    assert code == 2 and "must be an .onnx file" in err and len(err.strip().splitlines()) == 1


def test_missing_dataset_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "_search_dirs", lambda name, root: [tmp_path / name])
    data._load_idx_dataset.cache_clear()
    try:
        code, _, err = _run_cli(["train-base", "--model", "lenet", "--dataset", "mnist", "-o",
                                 str(tmp_path / "m.onnx")], capsys)
    finally:
        data._load_idx_dataset.cache_clear()
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and "make setup" in err
