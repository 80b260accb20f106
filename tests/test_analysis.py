"""Model analysis: cut points, stable tap names, FLOPs/params, and `mirrornet inspect`."""
import json
import math
import random
import re

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from mirrornet_tvm.analysis import as_graph, candidate_taps, cut_points, model_summary, tap_by_name
from mirrornet_tvm.cli import main as cli_main
from mirrornet_tvm.errors import StrategyError
from mirrornet_tvm.frontend import check_onnx, from_torch, load_model, output_names_of, to_relax
from mirrornet_tvm.graph import GraphNet

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)


class Plain(nn.Module):
    """conv-relu-pool twice, then an MLP: every activation and pool is a cut point."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.c = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.c(self.f(x))


class Residual(nn.Module):
    """A stem and one basic block: the block's inner ReLU is not a cut point (the skip is live)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)), 1)


def _graph(module, shape):
    torch.manual_seed(0)
    return GraphNet.from_onnx(from_torch(module.eval(), shape))


def test_plain_net_taps_are_every_activation_and_pool():
    g = _graph(Plain(), (1, 10, 10))
    taps = candidate_taps(g)
    assert [t.name for t in taps] == ["b0_relu", "b1_maxpool", "b2_relu", "b3_maxpool", "b4_relu"]
    assert [t.shape for t in taps] == [(1, 4, 10, 10), (1, 4, 5, 5), (1, 8, 3, 3), (1, 8, 1, 1), (1, 16)]
    for t in taps:
        assert t.bytes == 4 * math.prod(t.shape)
        assert g.nodes[t.node_index].outputs[0] == t.tensor and g.tensor_shapes[t.tensor] == t.shape
    # ceil_mode-free 3x3 -> pool 2 gives 1x1: still a tap; the final Linear (logits) is never one
    assert g.output_name not in {t.tensor for t in taps}


def test_residual_block_inner_activation_is_not_a_cut_point():
    g = _graph(Residual(), (1, 6, 6))
    taps = candidate_taps(g)
    assert [t.name for t in taps] == ["b0_relu", "b1_add", "b2_relu", "b3_globalaveragepool"]
    relus = [i for i, n in enumerate(g.nodes) if n.op == "Relu"]
    inner = relus[1]
    assert inner not in cut_points(g)
    assert g.nodes[inner].outputs[0] not in {t.tensor for t in taps}
    # the Gemm before the final Softmax is the logits: excluded, like the Softmax output
    assert g.nodes[-1].op == "Softmax" and all(t.op != "Gemm" for t in taps)


def test_flops_and_params_split_at_each_tap():
    g = _graph(Plain(), (1, 10, 10))
    summary = model_summary(g)
    assert len(summary.rows) == len(g.nodes)
    conv0 = summary.rows[0]
    assert conv0.op == "Conv" and conv0.shape == (1, 4, 10, 10)
    assert conv0.macs == 4 * 10 * 10 * (1 * 3 * 3) and conv0.flops == 2 * conv0.macs and conv0.params == 4 * 9 + 4
    pool0 = summary.rows[2]
    assert pool0.op == "MaxPool" and pool0.flops == 4 * 5 * 5 * 4
    gemm = [r for r in summary.rows if r.op == "Gemm"][0]
    assert gemm.macs == 16 * 8 and gemm.params == 8 * 16 + 16
    assert summary.total_params == sum(p.numel() for p in g.parameters())
    assert summary.total_flops == sum(r.flops for r in summary.rows)
    for t in candidate_taps(g):
        assert t.flops_before + t.flops_after == summary.total_flops
        assert t.params_before + t.params_after == summary.total_params
        assert t.flops_before == sum(r.flops for r in summary.rows[: t.node_index + 1])
    taps = candidate_taps(g)
    assert all(a.flops_before < b.flops_before for a, b in zip(taps, taps[1:]))
    json.dumps(summary.to_dict())
    json.dumps([t.to_dict() for t in taps])


def test_bias_add_is_not_a_residual_tap():
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((8, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "b"),
             numpy_helper.from_array(np.ones((4, 3), np.float32), "w2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert [t.name for t in candidate_taps(model)] == ["b0_relu"]


class Combined(nn.Module):
    """A stand-in for the mirror builder's export: backbone + a small head reading two taps."""

    def __init__(self, backbone, tap_tensors):
        super().__init__()
        self.backbone, self.tap_tensors = backbone, list(tap_tensors)
        chans = [backbone.channels(t) for t in self.tap_tensors]
        self.heads = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                 nn.Linear(2, backbone.num_classes)) for c in chans)

    def forward(self, x):
        logits, taps = self.backbone(x, return_tensors=self.tap_tensors)
        cpm = sum(h(taps[t]) for h, t in zip(self.heads, self.tap_tensors))
        return (logits + cpm, logits) + tuple(taps[t] for t in self.tap_tensors)


def _permuted(proto, seed):
    """The same model with another valid topological node order and renamed nodes."""
    nodes = list(proto.graph.node)
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    rng = random.Random(seed)
    done, order = set(), []
    while len(order) < len(nodes):
        ready = [i for i, n in enumerate(nodes) if i not in done
                 and all(produced_by.get(t) in done or t not in produced_by for t in n.input)]
        pick = rng.choice(ready)
        done.add(pick)
        order.append(pick)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    for k, i in enumerate(order):
        n = onnx.NodeProto()
        n.CopyFrom(nodes[i])
        n.name = f"renamed_{k}"
        out.graph.node.append(n)
    return out


@pytest.mark.parametrize("make,shape", [(Plain, (1, 10, 10)), (Residual, (1, 6, 6))])
def test_tap_names_stable_across_exports(make, shape, tmp_path):
    torch.manual_seed(0)
    original = from_torch(make().eval(), shape)
    g = GraphNet.from_onnx(original)
    ref = [(t.name, t.shape, t.flops_before, t.params_before) for t in candidate_taps(original)]
    assert ref

    def key(model):
        return [(t.name, t.shape, t.flops_before, t.params_before) for t in candidate_taps(model)]

    assert key(g) == ref
    assert key(g.export_onnx()) == ref                       # GraphNet re-export
    assert key(from_torch(g, shape)) == ref                  # torch.onnx.export of the GraphNet
    assert key(_permuted(original, 1)) == ref                # another topological order, other node names
    assert key(_permuted(original, 2)) == ref

    # a combined model: outputs logits, backbone_logits, tap:<name>...
    taps = candidate_taps(g)
    chosen = [t for t in taps if len(t.shape) == 4][:2]
    combined = Combined(g, [t.tensor for t in chosen]).eval()
    path = tmp_path / "combined.onnx"
    torch.onnx.export(combined, (torch.zeros((1,) + shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"],
                      output_names=["logits", "backbone_logits"] + [f"tap:{t.name}" for t in chosen])
    proto = check_onnx(path)
    assert key(proto) == ref
    assert key(load_model(path)) == ref
    assert key(as_graph(proto, output="backbone_logits")) == ref
    # the combined model's tap outputs carry what the analysis calls those taps
    with torch.no_grad():
        outs = combined(torch.rand((1,) + shape))
        _, direct = g(torch.rand((1,) + shape), return_tensors=[chosen[0].tensor])
    assert tuple(outs[2].shape) == chosen[0].shape == tuple(direct[chosen[0].tensor].shape)


def test_taps_are_addressable_in_relax():
    import tvm
    from tvm import relax

    torch.manual_seed(0)
    model = load_model(Residual().eval(), (1, 6, 6))
    taps = candidate_taps(model)
    mod = to_relax(model.proto, output_names=[t.tensor for t in taps])
    assert output_names_of(mod) == ["logits"] + [t.tensor for t in taps]
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    x = np.random.default_rng(0).random((1, 1, 6, 6), dtype=np.float32)
    outs = vm["main"](tvm.runtime.tensor(x))
    with torch.no_grad():
        _, ref = model.graph().eval()(torch.from_numpy(x), return_tensors=[t.tensor for t in taps])
    for t, got in zip(taps, list(outs)[1:]):
        assert tuple(got.numpy().shape) == t.shape
        np.testing.assert_allclose(got.numpy(), ref[t.tensor].numpy(), atol=1e-4)


def test_relax_with_taps_names_outputs_by_tap():
    import tvm
    from tvm import relax

    from mirrornet_tvm.analysis import relax_with_taps

    torch.manual_seed(0)
    model = load_model(Plain().eval(), (1, 10, 10))
    mod = relax_with_taps(model, ["b1_maxpool", "b4_relu"])
    assert output_names_of(mod) == ["logits", "tap:b1_maxpool", "tap:b4_relu"]
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    x = np.random.default_rng(0).random((1, 1, 10, 10), dtype=np.float32)
    outs = [o.numpy() for o in vm["main"](tvm.runtime.tensor(x))]
    taps = {t.name: t for t in candidate_taps(model)}
    with torch.no_grad():
        logits, ref = model.graph().eval()(torch.from_numpy(x), return_tensors=[taps["b1_maxpool"].tensor,
                                                                                taps["b4_relu"].tensor])
    np.testing.assert_allclose(outs[0], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(outs[1], ref[taps["b1_maxpool"].tensor].numpy(), atol=1e-4)
    np.testing.assert_allclose(outs[2], ref[taps["b4_relu"].tensor].numpy(), atol=1e-4)
    assert output_names_of(relax_with_taps(model.proto))[1:] == [f"tap:{n}" for n in taps]
    with pytest.raises(StrategyError, match="no tap.*b7_add"):
        relax_with_taps(model, ["b7_add"])


def test_tap_by_name():
    g = _graph(Plain(), (1, 10, 10))
    assert tap_by_name(g, "b1_maxpool").shape == (1, 4, 5, 5)
    with pytest.raises(StrategyError, match="no tap 'b9_relu'.*b0_relu, b1_maxpool"):
        tap_by_name(g, "b9_relu")


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(args)
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_inspect_text_and_json(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "residual.onnx"
    onnx.save(from_torch(Residual().eval(), (1, 6, 6)), str(path))
    code, out, err = _run_cli(["inspect", str(path)], capsys)
    assert code == 0, err
    assert "layers" in out and "candidate taps" in out and "FLOPs" in out
    for name in ("b0_relu", "b1_add", "b2_relu", "b3_globalaveragepool"):
        assert re.search(rf"^{name}\s", out, re.M), out
    assert re.search(r"^\s*\d+\s+\S+\s+Softmax\s+1x5\b", out, re.M), out

    code, out, err = _run_cli(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    graph = load_model(path).graph()
    assert [t["name"] for t in doc["taps"]] == [t.name for t in candidate_taps(graph)]
    assert len(doc["layers"]) == len(graph.nodes)
    assert doc["input"] == {"name": "input", "shape": [1, 1, 6, 6]} and doc["num_classes"] == 5
    assert doc["totals"]["params"] == sum(p.numel() for p in graph.parameters())
    assert doc["totals"]["flops"] == sum(layer["flops"] for layer in doc["layers"])


def test_inspect_needs_a_model_argument(capsys):
    code, _, err = _run_cli(["inspect"], capsys)
    assert code != 0 and "MODEL.onnx" in err
