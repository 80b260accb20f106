"""The strategy's secure-memory estimate against the generated CPM C: arena and weights agree exactly."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from tvm.relax.frontend.onnx import from_onnx

from mirrornet_tvm import frontend, zoo
from mirrornet_tvm.codegen import cpm_memory, estimate_arena, kernel_lifetimes, plan_arena
from mirrornet_tvm.codegen.memory_plan import KernelStep
from mirrornet_tvm.compile import _secure_memory, compile_artifact, read_artifact
from mirrornet_tvm.mirror import CPM, MirrorNet, plan_cpm
from mirrornet_tvm.strategy import Strategy, cpm_secure_memory, generate_strategies, secure_memory

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graphs():
    out = {}
    for name in ("lenet", "vgg", "resnet"):
        torch.manual_seed(0)
        out[name] = frontend.load_model(zoo.build(name).eval(), (1, 28, 28)).graph()
    return out


def _cpm_module(plan):
    """The CPM of ``plan`` as a Relax module (``main``), as the deployed ONNX CPM imports."""
    torch.manual_seed(1)
    nodes, inits = CPM(plan, init="fresh", batchnorm=False).onnx_nodes()
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s)) for n, s in plan.inputs]
    outputs = [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, plan.num_classes])]
    proto = helper.make_model(helper.make_graph(nodes, "cpm", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    return from_onnx(proto, shape_dict={n: list(s) for n, s in plan.inputs}, keep_params_in_input=False)


# single and multi tap, add and concat, logits and correction, every width; taps before, after and
# between pools, residual adds, the global average pool
GRID = [
    ("lenet", ("b1_maxpool",), 0.5, "add", "logits"),
    ("lenet", ("b2_relu", "b3_maxpool"), 0.125, "add", "correction"),   # merge fused into a pool
    ("lenet", ("b0_relu", "b4_relu"), 0.25, "concat", "logits"),
    ("vgg", ("b2_maxpool",), 0.25, "add", "logits"),
    ("vgg", ("b1_relu", "b5_maxpool"), 0.125, "concat", "correction"),
    ("vgg", ("b5_maxpool", "b8_maxpool"), 0.0625, "add", "logits"),
    ("vgg", ("b9_globalaveragepool",), 0.5, "add", "correction"),
    ("resnet", ("b1_add", "b5_add"), 0.25, "add", "correction"),
    ("resnet", ("b0_relu",), 0.5, "add", "logits"),
    ("resnet", ("b3_add", "b6_relu"), 0.125, "concat", "logits"),
]


@pytest.mark.parametrize("model, taps, width, merge, output", GRID)
def test_estimate_equals_the_generated_arena_and_weights(graphs, model, taps, width, merge, output):
    plan = plan_cpm(graphs[model], Strategy(taps, width, merge, output))
    est = estimate_arena(plan)
    real = cpm_memory(_cpm_module(plan), "main")
    assert all(how == "default" for _, how in real.schedules)
    assert est.weight_bytes == real.weight_bytes == 4 * plan.params
    assert est.arena_bytes == real.arena_bytes
    assert est.peak_live_bytes == real.peak_live_bytes
    # not just the totals: the same buffers with the same lifetimes
    assert sorted(kernel_lifetimes(est.steps, plan.output), key=lambda b: b.name) == \
        sorted(real.buffers, key=lambda b: b.name)
    mem = cpm_secure_memory(plan)
    assert (mem.weights, mem.arena) == (real.weight_bytes, real.arena_bytes)


class _OtherOps(torch.nn.Module):
    """Operators the zoo lacks: clip, depthwise conv, leaky ReLU, average pool, strided and padded pools."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        F = torch.nn.functional
        x = torch.clamp(self.b1(self.c1(x)), 0, 6)
        x = F.avg_pool2d(F.leaky_relu(self.b2(self.dw(x)), 0.1), 2)
        x = F.max_pool2d(torch.relu(self.c3(x)), 3, stride=2, padding=1)
        return self.fc(x.flatten(1))


class _PoolNorm(torch.nn.Module):
    """Batch norms that follow pools, so no convolution absorbs them: the CPM keeps them as ops."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.b1, self.b2 = nn.BatchNorm2d(16), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 7 * 7, 10)
        with torch.no_grad():
            for bn in (self.b1, self.b2):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        F = torch.nn.functional
        x = self.b1(F.max_pool2d(torch.relu(self.c1(x)), 2))
        x = self.b2(F.max_pool2d(torch.relu(self.c2(x)), 2))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("net, taps, width, merge, output", [
    (_OtherOps, ("b0_clip", "b2_averagepool"), 0.25, "add", "correction"),   # merge fused into an average pool
    (_OtherOps, ("b1_leakyrelu", "b3_relu"), 0.5, "concat", "logits"),
    (_PoolNorm, ("b0_relu",), 0.5, "add", "logits"),                        # batch norm fused into a pool
])
def test_estimate_covers_operators_beyond_the_zoo(net, taps, width, merge, output):
    torch.manual_seed(0)
    graph = frontend.load_model(net().eval(), (1, 28, 28)).graph()
    plan = plan_cpm(graph, Strategy(taps, width, merge, output))
    est = estimate_arena(plan)
    assert [op.op for op in plan.ops].count("BatchNormalization") == (2 if net is _PoolNorm else 0)
    real = cpm_memory(_cpm_module(plan), "main")
    assert (est.arena_bytes, est.weight_bytes) == (real.arena_bytes, real.weight_bytes)


def test_estimate_is_the_planner_applied_to_the_predicted_kernels(graphs):
    # every kernel output but the logits, and every workspace, is an arena buffer
    plan = plan_cpm(graphs["resnet"], Strategy(("b1_add", "b5_add"), 0.25, "add", "correction"))
    est = estimate_arena(plan)
    assert [len(k) for k in est.kernels][:2] == [2, 2]  # conv+relu (projection), conv+relu
    assert est.kernels[-1] == ("18_gemm", "correct")     # the correction add fused into the Gemm
    lives = kernel_lifetimes(est.steps, plan.output)
    assert plan_arena(lives).arena_bytes == est.arena_bytes
    assert est.arena_bytes % 64 == 0 and est.arena_bytes >= est.peak_live_bytes


def test_kernel_lifetimes_rules():
    steps = [KernelStep(("tap0",), (("a", 100),), (40,)),
             KernelStep(("a",), (("b", 200),)),
             KernelStep(("a", "b"), (("out", 40),), (8, 8))]
    lives = {b.name: (b.size, b.first, b.last) for b in kernel_lifetimes(steps, "out")}
    assert lives == {"a": (100, 0, 2), "ws0_0": (40, 0, 0), "b": (200, 1, 2), "ws2_0": (8, 2, 2),
                     "ws2_1": (8, 2, 2)}


def test_generate_strategies_stays_fast_and_uses_the_same_estimate(graphs):
    start = time.perf_counter()
    costs = {name: generate_strategies(g, None) for name, g in graphs.items()}
    elapsed = time.perf_counter() - start
    total = sum(len(c) for c in costs.values())
    assert total > 600
    assert elapsed < 30, f"{total} strategies took {elapsed:.1f} s"  # about 0.6 s unloaded
    for name, cs in costs.items():
        for c in cs[::37]:
            assert c.memory == secure_memory(c.strategy, graphs[name])


# ---- end to end: `mirrornet compile` of a zoo model --------------------------------------------------

@pytest.fixture(scope="module")
def built(graphs, tmp_path_factory):
    torch.manual_seed(0)
    strategy = Strategy(("b0_relu", "b3_maxpool"), 0.25, "concat", "correction")
    net = MirrorNet(graphs["lenet"], strategy).eval()
    art = tmp_path_factory.mktemp("art") / "artifact"
    art.mkdir()
    net.export_onnx(art / "combined.onnx")
    strategy.save(art / "strategy.json")
    build = tmp_path_factory.mktemp("build") / "build"
    result = compile_artifact(art, build, progress=False)
    return SimpleNamespace(art=art, build=build, manifest=result.manifest, strategy=strategy,
                           graph=graphs["lenet"])


def _header(build: Path) -> dict:
    text = (build / "cpm" / "mirrornet_cpm.h").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"#define MIRRORNET_CPM_(\w+)\s+(\S+)", text)}


def test_manifest_and_estimate_agree_byte_for_byte(built):
    mem = built.manifest["secure_memory"]
    assert mem["exact"] is True and mem["within_estimate"] is True and mem["tolerance_bytes"] == 0
    assert mem["difference"] == {"weights": 0, "arena": 0, "taps": 0, "logits": 0, "total": 0}
    est = secure_memory(built.strategy, built.graph)
    assert mem["estimate"] == {"weights": est.weights, "arena": est.arena, "taps": est.taps,
                               "logits": est.logits, "total": est.total}
    gen = mem["generated"]
    assert gen["code"] == built.manifest["sizes"]["cpm_code_bytes"] > 0
    assert gen["total"] == gen["weights"] + gen["arena"] + gen["taps"] + gen["logits"]


def test_memory_accounting_matches_the_exported_tensors(built):
    est = secure_memory(built.strategy, built.graph)
    # weights: the CPM's initializers in the combined ONNX == the C's static const arrays
    proto = onnx.load(str(built.art / "combined.onnx"))
    cpm_inits = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.startswith("cpm/")]
    assert est.weights == sum(a.size * 4 for a in cpm_inits)
    source = (built.build / "cpm" / "mirrornet_cpm.c").read_text()
    arrays = re.findall(r"static const float mirrornet_w\d+\[(\d+)\]", source)
    assert est.weights == 4 * sum(map(int, arrays))
    # arena: the C's static array and the header's size
    header = _header(built.build)
    assert est.arena == int(header["ARENA_BYTES"])
    (arena_floats,) = re.findall(r"float mirrornet_arena\[(\d+)\]", source)
    assert est.arena == 4 * int(arena_floats)
    assert int(header["WEIGHT_BYTES"]) == est.weights
    # taps and logits: the TA's copy of the taps (plus backbone logits for a correction) and its output
    cpm_inputs = [i for i in proto.graph.output if i.name.startswith("tap:")]
    tap_floats = sum(int(np.prod([d.dim_value for d in o.type.tensor_type.shape.dim])) for o in cpm_inputs)
    assert est.taps == 4 * (tap_floats + 10) == 4 * int(header["TAP_FLOATS"])
    assert est.logits == 4 * int(header["NUM_CLASSES"])
    ta = (ROOT / "ta" / "mirrornet_ta.c").read_text()
    assert re.search(r"static float \w+\[MIRRORNET_CPM_TAP_FLOATS\];", ta)
    assert re.search(r"static float \w+\[MIRRORNET_CPM_NUM_CLASSES\];", ta)
    assert json.loads((built.build / "manifest.json").read_text())["secure_memory"] == \
        built.manifest["secure_memory"]


def test_manifest_says_when_and_why_the_build_differs(built):
    artifact = read_artifact(built.art)
    m = built.manifest
    inputs = m["cpm"]["inputs"]
    gen = m["secure_memory"]["generated"]

    def code(**kw):
        base = dict(weight_bytes=gen["weights"], arena_bytes=gen["arena"], num_classes=10,
                    code_bytes=gen["code"], schedules=(("k0", "default"),))
        return SimpleNamespace(**{**base, **kw})

    smaller = _secure_memory(artifact, code(weight_bytes=gen["weights"] - 64), inputs)
    assert smaller["within_estimate"] and not smaller["exact"] and smaller["difference"]["weights"] == 64
    assert "does not model" in smaller["note"]
    tuned = _secure_memory(artifact, code(arena_bytes=gen["arena"] + 64, schedules=(("k0", "tuned"),)), inputs)
    assert tuned["within_estimate"] is False and tuned["difference"]["arena"] == -64
    assert "tuned" in tuned["note"] and "does not model" not in tuned["note"]
