"""The secure-memory estimate against the generated C of CPMs of the standard architectures.

Each CPM goes the way ``mirrornet compile`` takes it: the combined model's ONNX, imported to Relax,
cleaned up and partitioned, its ``cpm`` function generated as C. The estimate
(:func:`mirrornet_tvm.codegen.estimate_arena`, from the plan alone) must give the generated arena and
weight bytes exactly, and the same buffers with the same lifetimes. Taps are shallow, middle and
deep ones of each network (``analysis.candidate_taps``), widths 1/4 and 1/8, and two-tap strategies
with either merge.

The batch norms of the backbones get random statistics, as a trained network has: the compile's
clean-up shares equal bindings, so the vectors of lone batch norms with equal values (every
untrained one) become shared arrays, the one case where the estimate is an upper bound
(``test_untrained_batch_norms_make_the_estimate_an_upper_bound``).
"""
from __future__ import annotations

import functools

import onnx
import pytest
import torch
import tvm
from onnx import helper
from tvm import relax

from mirrornet_tvm import architectures, frontend, mirror
from mirrornet_tvm.analysis import candidate_taps
from mirrornet_tvm.codegen import estimate_arena, generate_cpm_c, kernel_lifetimes
from mirrornet_tvm.codegen.emit import cpm_memory
from mirrornet_tvm.mirror import MirrorNet
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.transform import AttachMirrorNetMetadata, FoldWeightLayout, MirrorNetPartition
from mirrornet_tvm.transform.extract_functions import ExtractFunctions

torch.set_num_threads(1)
CIFAR = (3, 32, 32)


def _random_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@functools.cache
def _graph(name: str, shape=CIFAR, trained: bool = True):
    torch.manual_seed(0)
    model = architectures.build(name, shape).eval()
    model = _random_batch_norms(model) if trained else model
    return mirror.strip_softmax(frontend.load_model(model, shape).graph())


def _cpm(graph, strategy):
    """The plan, and the ``cpm`` function as ``mirrornet compile`` hands it to the C generator."""
    torch.manual_seed(1)
    net = MirrorNet(graph, strategy).eval()
    proto = net.export_onnx()
    mod = frontend.to_relax(proto)
    mod = AttachMirrorNetMetadata([o.name for o in proto.graph.output], strategy.to_dict())(mod)
    mod = tvm.transform.Sequential([  # phases 1 and 2 of the "mirrornet" pipeline (the backbone stays)
        relax.transform.DecomposeOpsForInference(), FoldWeightLayout(), relax.transform.CanonicalizeBindings(),
        MirrorNetPartition(strategy)])(mod)
    return net.plan, ExtractFunctions(["cpm"])(mod)


def _check_exact(plan, mod):
    est = estimate_arena(plan)
    real = cpm_memory(mod, "cpm")
    assert all(how == "default" for _, how in real.schedules)
    assert (est.arena_bytes, est.weight_bytes) == (real.arena_bytes, real.weight_bytes)
    assert sorted(kernel_lifetimes(est.steps, plan.output), key=lambda b: b.name) == \
        sorted(real.buffers, key=lambda b: b.name)


CASES = [  # name, taps, width, merge, output
    ("resnet18", ("b0_relu",), 0.125, "add", "logits"),
    ("resnet18", ("b9_add",), 0.25, "add", "logits"),
    ("resnet18", ("b17_globalaveragepool",), 0.25, "add", "logits"),
    ("resnet50", ("b11_add", "b32_relu"), 0.125, "concat", "logits"),         # bottlenecks
    ("mobilenet_v2", ("b0_clip",), 0.25, "add", "logits"),                    # ReLU6, depthwise
    ("mobilenet_v2", ("b13_add",), 0.125, "add", "logits"),
    ("mobilenet_v2", ("b22_clip",), 0.25, "add", "logits"),
    ("mobilenet_v2", ("b1_clip", "b14_clip"), 0.125, "add", "correction"),
    ("squeezenet1_1", ("b0_relu",), 0.25, "add", "logits"),                   # ceil-mode max pools
    ("squeezenet1_1", ("b10_concat",), 0.125, "add", "logits"),
    ("squeezenet1_1", ("b7_relu", "b19_concat"), 0.125, "concat", "logits"),
    ("se_resnet18", ("b9_add",), 0.25, "add", "logits"),                      # sigmoid gates
    ("se_resnet18", ("b16_relu",), 0.125, "add", "logits"),
    ("se_resnet18", ("b1_add", "b10_relu"), 0.125, "add", "correction"),
    ("densenet121", ("b9_averagepool",), 0.125, "add", "logits"),             # concat of up to 17 maps
]


@pytest.mark.parametrize("name, taps, width, merge, output", CASES,
                         ids=[f"{c[0]}-{'+'.join(c[1])}-{c[2]}-{c[3]}-{c[4]}" for c in CASES])
def test_estimate_equals_the_generated_cpm(name, taps, width, merge, output):
    graph = _graph(name)
    assert set(taps) <= {t.name for t in candidate_taps(graph)}
    _check_exact(*_cpm(graph, Strategy(taps, width, merge, output)))


def test_mobilenet_v2_at_224_b7_add_quarter_width(tmp_path):
    # the ReLU6 bounds (two floats all Clips share) were missing from the estimate's weights
    plan, mod = _cpm(_graph("mobilenet_v2", (3, 224, 224)), Strategy(("b7_add",), 0.25, "add", "logits"))
    est = estimate_arena(plan)
    code = generate_cpm_c(mod, "cpm", out_dir=tmp_path, measure_stack_usage=False)
    assert (est.arena_bytes, est.weight_bytes) == (code.arena_bytes, code.weight_bytes)
    assert est.weight_bytes == 4 * plan.params + 8


def test_untrained_batch_norms_make_the_estimate_an_upper_bound():
    plan, mod = _cpm(_graph("densenet121", trained=False), Strategy(("b10_concat",), 0.25, "add", "logits"))
    assert "BatchNormalization" in [op.op for op in plan.ops]
    est, real = estimate_arena(plan), cpm_memory(mod, "cpm")
    assert est.arena_bytes == real.arena_bytes
    assert est.weight_bytes >= real.weight_bytes


# ---- operators the six architectures lack ----------------------------------------------------------

class _Mixed(torch.nn.Module):
    """HardSwish, Pad, grouped conv, ReduceMean, a Linear gate reshaped to [1, C, 1, 1], GlobalMaxPool."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3)
        self.fc1, self.fc2 = nn.Linear(32, 8), nn.Linear(8, 32)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        F = torch.nn.functional
        x = torch.relu(self.c2(F.pad(F.hardswish(self.b1(self.c1(x))), (1, 1, 1, 1))))
        s = x.mean(dim=(2, 3), keepdim=True).reshape(1, 32)
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s)))).reshape(1, 32, 1, 1)
        x = x + F.hardswish(self.c3(x))
        return self.fc(torch.cat([F.adaptive_max_pool2d(x, 1).flatten(1), x.mean(dim=(2, 3))], 1))


def _with_lrn():
    """conv/ReLU x3, an LRN after each of the first two ReLUs (torch exports none: spliced in)."""
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 10)).eval()
    proto = frontend.from_torch(net, (3, 16, 16))
    nodes = list(proto.graph.node)
    for relu in [n for n in nodes if n.op_type == "Relu"][:2]:
        out = relu.output[0]
        relu.output[0] = f"{out}_pre"
        nodes.insert(nodes.index(relu) + 1, helper.make_node("LRN", [f"{out}_pre"], [out], name=f"{relu.name}_lrn",
                                                             size=5, alpha=0.02, beta=0.75, bias=2.0))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto


@pytest.mark.parametrize("make, ops", [(_Mixed, {"HardSwish", "Pad", "ReduceMean", "GlobalMaxPool", "Mul"}),
                                       (_with_lrn, {"LRN"})], ids=["mixed", "lrn"])
def test_estimate_equals_the_generated_cpm_beyond_the_architectures(make, ops):
    torch.manual_seed(0)
    model = make()
    graph = mirror.strip_softmax(frontend.load_model(model.eval() if isinstance(model, torch.nn.Module) else model,
                                                     (3, 16, 16)).graph())
    first = candidate_taps(graph)[0].name
    for width in (0.5, 0.25):
        plan, mod = _cpm(graph, Strategy((first,), width, "add", "logits"))
        assert ops <= {op.op for op in plan.ops}
        _check_exact(plan, mod)
