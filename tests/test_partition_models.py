"""Hand-made combined models (docs/architecture.md, "The combined ONNX") for the partition, build and
compile tests, written with plain torch so those tests do not depend on the training code; and checks
that the files they write are what the contract describes.

``Combined``: input [1,1,16,16] -> conv/relu (tap b1_relu) -> pool -> conv/relu/pool (tap b4_maxpool)
-> gemm (backbone_logits). The CPM reads both taps, merges them by ``add`` or ``concat`` and outputs
either the logits or a correction added to backbone_logits.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)

INPUT_SHAPE = (1, 1, 16, 16)
TAPS = ("b1_relu", "b4_maxpool")


def strategy_dict(merge="add", output="logits", taps=TAPS, width_ratio=0.5) -> dict:
    return {"taps": list(taps), "width_ratio": width_ratio, "merge": merge, "output": output,
            "degradation": "uniform", "name": f"test-{merge}-{output}"}


class Combined(nn.Module):
    """Backbone + CPM. ``leak=True`` makes the CPM read a backbone value that is not a tap (and cannot
    be recomputed from one): the pre-activation of the first convolution."""

    def __init__(self, merge="add", output="logits", leak=False):
        super().__init__()
        torch.manual_seed(0)
        self.merge, self.output, self.leak = merge, output, leak
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.m1 = nn.Conv2d(4, 2, 3, padding=1)
        self.m2 = nn.Conv2d(8, 2, 1)
        self.mfc = nn.Linear((2 if merge == "add" else 4) * 4 * 4, 10)

    def forward(self, x):
        h = self.c1(x)                                           # not a tap, not computable from one
        t1 = F.relu(h)                                           # b1_relu     [1,4,16,16]
        t2 = F.max_pool2d(F.relu(self.c2(F.max_pool2d(t1, 2))), 2)  # b4_maxpool  [1,8,4,4]
        backbone_logits = self.fc(t2.flatten(1))
        a = F.max_pool2d(F.relu(self.m1(h if self.leak else t1)), 4)
        b = self.m2(t2)
        m = a + b if self.merge == "add" else torch.cat([a, b], 1)
        c = self.mfc(m.flatten(1))
        logits = backbone_logits + c if self.output == "correction" else c
        return logits, backbone_logits, t1, t2


class Micro(nn.Module):
    """The smallest combined model: a one-kernel backbone (conv+relu, tap b1_relu), a Gemm CPM."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 10)
        self.mfc = nn.Linear(2 * 8 * 8, 10)

    def forward(self, x):
        t1 = F.relu(self.c1(x))
        return self.mfc(t1.flatten(1)), self.fc(t1.flatten(1)), t1


def export_combined(model: nn.Module, path, strategy: dict, input_shape=INPUT_SHAPE) -> onnx.ModelProto:
    """Write ``model`` as a combined ONNX: outputs logits, backbone_logits, tap:<name>...; strategy metadata."""
    names = ["logits", "backbone_logits"] + [f"tap:{t}" for t in strategy["taps"]]
    model.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(input_shape),), str(path), input_names=["input"],
                          output_names=names, dynamo=False, opset_version=17)
    proto = onnx.load(str(path))
    for key, value in (("mirrornet.strategy", json.dumps(strategy)), ("mirrornet.version", "0.1.0")):
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(proto, str(path))
    return proto


def make_artifact(folder, model=None, strategy=None, input_shape=INPUT_SHAPE):
    """An artifact folder (combined.onnx + strategy.json) as `mirrornet protect` would leave it."""
    strategy = strategy or strategy_dict()
    model = model or Combined(strategy["merge"], strategy["output"])
    folder.mkdir(parents=True, exist_ok=True)
    export_combined(model, folder / "combined.onnx", strategy, input_shape)
    (folder / "strategy.json").write_text(json.dumps(strategy, indent=2) + "\n")
    return folder


def relax_module(proto):
    """Import a combined ONNX proto the way `mirrornet compile` does (output names on main)."""
    from mirrornet_tvm.frontend import to_relax

    return to_relax(proto)


def sample_input(seed=0, shape=INPUT_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ---- the fixtures follow the contract ----------------------------------------------------------------

@pytest.mark.parametrize("merge,output", [("add", "logits"), ("concat", "correction")])
def test_combined_onnx_follows_the_contract(tmp_path, merge, output):
    import onnxruntime as ort

    strategy = strategy_dict(merge, output)
    model = Combined(merge, output)
    proto = export_combined(model, tmp_path / "c.onnx", strategy)
    assert [o.name for o in proto.graph.output] == ["logits", "backbone_logits", "tap:b1_relu",
                                                    "tap:b4_maxpool"]
    assert [i.name for i in proto.graph.input] == ["input"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["mirrornet.strategy"])["taps"] == list(TAPS)
    x = sample_input()
    got = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"input": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)
    if output == "correction":  # rectified = backbone_logits + cpm_out
        assert not np.allclose(got[0], got[1])
