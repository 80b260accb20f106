"""A standard architecture as a user brings it (torch.onnx.export, dynamic batch, ImageNet layout) through
every CLI step with no dataset at its input size: inspect, strategies (pruned structures with the reason),
protect --epochs 0, compile, package-ta (simulator) and run --random, whose outputs equal combined.onnx's
in onnxruntime."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirrornet_tvm import architectures

torch.set_num_threads(1)


def _mirrornet(*args):
    exe = Path(sys.executable).with_name("mirrornet")
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    return proc


def _ok(*args):
    proc = _mirrornet(*args)
    assert proc.returncode == 0, f"mirrornet {' '.join(map(str, args))}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("real-network")
    torch.manual_seed(0)
    model = architectures.build("mobilenet_v2", (3, 64, 64), 100)
    with torch.no_grad():   # batch-norm statistics of real activations and logits of a realistic scale
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        model.train()(torch.randn(16, 3, 64, 64))
        model.classifier[-1].weight.mul_(10.0)
    model.eval()
    path = d / "mobilenet_v2.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return d, path


def test_every_step_runs_untrained_on_random_images(exported):
    d, path = exported
    inspect = _ok("inspect", path, "--json")
    assert "dynamic batch" in inspect.stderr and inspect.stderr.count("\n") == 1
    taps = json.loads(inspect.stdout)["taps"]
    assert len(taps) >= 20 and any(t["op"] == "Clip" for t in taps)

    strategies = json.loads(_ok("strategies", path, "--json", "--budget-kib", "600").stdout)
    assert strategies["strategies"] and strategies["pruned"]
    assert all("over the 600 KiB budget" in p["reason"] for p in strategies["pruned"])
    assert strategies["auto"] is not None

    _ok("protect", path, "--auto", "--epochs", "0", "-q", "-o", d / "art")
    metrics = json.loads((d / "art" / "metrics.json").read_text())
    assert metrics["accuracy"] is None and metrics["dataset"] is None and not metrics["training"]["trained"]
    assert metrics["targets"]["authorized_within_1_point"]["met"] is None
    assert metrics["cpm"]["flop_share"] <= 0.05
    report = _ok("report", d / "art").stdout
    assert "NOT protected" in report

    _ok("compile", d / "art", "-o", d / "build")
    manifest = json.loads((d / "build" / "manifest.json").read_text())
    assert manifest["backbone"]["input"]["shape"] == [1, 3, 64, 64]
    _ok("package-ta", d / "build", "--sim-only", "-q")
    run = _ok("run", d / "build", "--random", "4", "--tee", "sim", "-q", "--json", d / "run.json")
    assert "seeded random images, 4 images" in run.stdout
    ref = json.loads((d / "run.json").read_text())["reference"]
    assert ref["same_top1"] == 4 and ref["reference_scale"] > 0.1 and ref["max_rel_diff"] < 1e-4, ref


def test_untrained_protect_and_random_run_refuse_what_they_cannot_do(exported, tmp_path):
    _, path = exported
    proc = _mirrornet("protect", path, "--auto", "-q", "-o", tmp_path / "art")
    assert proc.returncode != 0 and "give --dataset" in proc.stderr and "--epochs 0" in proc.stderr
    proc = _mirrornet("run", tmp_path / "nothing", "--random", "2", "--dataset", "mnist")
    assert proc.returncode != 0 and "exactly one of --dataset NAME or --random N" in proc.stderr
