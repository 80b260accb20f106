"""The mirrored branch: plan structure, export to one ONNX graph, runtimes agree, memory accounting."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper, shape_inference

from mirrornet_tvm import frontend, zoo
from mirrornet_tvm.analysis import candidate_taps, model_summary
from mirrornet_tvm.errors import StrategyError
from mirrornet_tvm.mirror import MirrorNet, model_totals, plan_cpm
from mirrornet_tvm.strategy import Strategy, auto_select, generate_strategies, secure_memory

torch.set_num_threads(1)


def _graph(name):
    torch.manual_seed(0)
    m = zoo.build(name).eval()
    # non-trivial batch-norm statistics, so folding them is exercised
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
    return frontend.load_model(m, (1, 28, 28)).graph()


@pytest.fixture(scope="module")
def graphs():
    return {name: _graph(name) for name in ("lenet", "vgg", "resnet")}


def _net(graph, strategy, seed=0):
    torch.manual_seed(seed)
    net = MirrorNet(graph, strategy)
    net.train()
    with torch.no_grad():  # move the CPM's batch-norm statistics away from their defaults
        net(torch.rand(8, *graph.input_shape[1:]))
        for bn in net.cpm.norms.values():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return net.eval()


CASES = [
    ("vgg", ("b2_maxpool",), 0.25, "add", "logits"),
    ("vgg", ("b1_relu", "b5_maxpool"), 0.125, "concat", "correction"),
    ("resnet", ("b1_add", "b5_add"), 0.25, "add", "correction"),
    ("resnet", ("b0_relu", "b3_add"), 0.5, "concat", "logits"),
    ("lenet", ("b1_maxpool", "b4_relu"), 0.5, "add", "logits"),
    ("lenet", ("b5_relu",), 0.0625, "add", "correction"),
]


def _torch_outputs(net, x):
    with torch.no_grad():
        rect, bl, taps = net(torch.from_numpy(x))
    return [rect.numpy(), bl.numpy()] + [t.numpy() for t in taps.values()]


@pytest.mark.parametrize("model, taps, width, merge, output", CASES)
def test_combined_onnx_matches_torch_in_onnxruntime(graphs, model, taps, width, merge, output):
    s = Strategy(taps, width, merge, output)
    net = _net(graphs[model], s)
    proto = net.export_onnx()
    names = [o.name for o in proto.graph.output]
    assert names == ["logits", "backbone_logits"] + [f"tap:{t}" for t in taps]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert Strategy.from_json(meta["mirrornet.strategy"]) == s
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    got = sess.run(None, {"input": x})
    for name, a, b in zip(names, got, _torch_outputs(net, x)):
        assert a.shape == b.shape, name
        assert np.abs(a - b).max() < 1e-4, name
    # the rectified output is not just the backbone's: the CPM contributes
    assert np.abs(got[0] - got[1]).max() > 1e-3
    # the taps keep their analysis names in the combined file's backbone
    assert [t.name for t in candidate_taps(proto)] == [t.name for t in candidate_taps(graphs[model])]


def test_combined_onnx_matches_torch_in_relax_vm(graphs):
    import tvm
    from tvm import relax

    s = Strategy(("b1_add", "b5_add"), 0.25, "concat", "correction")
    net = _net(graphs["resnet"], s)
    proto = net.export_onnx()
    mod = frontend.to_relax(proto)
    assert frontend.output_names_of(mod) == ["logits", "backbone_logits", "tap:b1_add", "tap:b5_add"]
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(2).random((1, 1, 28, 28), dtype=np.float32)
    out = vm["main"](tvm.runtime.tensor(x))
    for a, b in zip(out, _torch_outputs(net, x)):
        assert np.abs(a.numpy() - b).max() < 1e-4


def test_backbone_export_is_the_backbone_alone(graphs, tmp_path):
    net = _net(graphs["vgg"], Strategy(("b5_maxpool",), 0.25))
    proto = net.export_backbone(tmp_path / "backbone.onnx")
    assert [o.name for o in proto.graph.output] == ["backbone_logits"]
    sess = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).random((1, 1, 28, 28), dtype=np.float32)
    assert np.abs(sess.run(None, {"input": x})[0] - _torch_outputs(net, x)[1]).max() < 1e-4
    assert not any(n.name.startswith("cpm/") for n in proto.graph.node)


def _onnx_cpm_accounting(proto):
    """(weight bytes, tap bytes, activation peak bytes) of the CPM part of a combined ONNX graph."""
    g = shape_inference.infer_shapes(proto).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.output) + list(g.input)}
    producer = {o: n for n in g.node for o in n.output}

    def ancestors(tensors):
        seen, stack = set(), list(tensors)
        while stack:
            n = producer.get(stack.pop())
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            stack.extend(n.input)
        return seen

    backbone_outs = [o.name for o in g.output if o.name != "logits"]
    backbone = ancestors(backbone_outs)
    cpm = [n for n in g.node if id(n) in ancestors(["logits"]) - backbone]
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    weights = sum(inits[i].nbytes for n in cpm for i in n.input if i in inits)
    cpm_outputs = {o for n in cpm for o in n.output}
    inputs = {i for n in cpm for i in n.input if i and i not in inits and i not in cpm_outputs}
    taps = sum(4 * int(np.prod(shapes[i])) for i in inputs)
    last = {}
    for i, n in enumerate(cpm):
        for t in n.input:
            last[t] = i
    first = {n.output[0]: i for i, n in enumerate(cpm)}
    peak = 0
    for i in range(len(cpm)):
        live = sum(4 * int(np.prod(shapes[t])) for t, p in first.items()
                   if t != "logits" and p <= i <= last.get(t, p))
        peak = max(peak, live)
    return weights, taps, peak, inputs


@pytest.mark.parametrize("model, taps, width, merge, output", CASES)
def test_secure_memory_matches_exported_tensors(graphs, model, taps, width, merge, output):
    s = Strategy(taps, width, merge, output)
    net = _net(graphs[model], s)
    weights, tap_bytes, peak, inputs = _onnx_cpm_accounting(net.export_onnx())
    mem = secure_memory(s, graphs[model])
    assert inputs == {f"tap:{t}" for t in taps} | ({"backbone_logits"} if output == "correction" else set())
    assert mem.weights == weights
    assert mem.taps == tap_bytes
    assert net.plan.activation_peak_bytes() == peak  # the graph's own liveness
    assert mem.activations >= 4 * max(int(np.prod(op.shape)) for op in net.plan.ops[:-1])  # the arena
    assert mem.logits == 4 * 10
    assert mem.total == weights + tap_bytes + mem.activations + 40
    assert net.plan.params * 4 == weights


def test_plan_flops_by_hand(graphs):
    # vgg from b5_maxpool (48x7x7) at width 1/4: proj 48->12, conv 12->24, relu, conv 24->24, relu,
    # maxpool 2x2 -> 3x3, global average pool, flatten, gemm 24->10
    plan = plan_cpm(graphs["vgg"], Strategy(("b5_maxpool",), 0.25))
    assert [op.op for op in plan.ops] == ["Conv", "Conv", "Relu", "Conv", "Relu", "MaxPool",
                                          "GlobalAveragePool", "Flatten", "Gemm"]
    expected = (2 * 12 * 49 * 48 + 2 * 24 * 49 * 12 * 9 + 24 * 49 + 2 * 24 * 49 * 24 * 9 + 24 * 49
                + 24 * 9 * 4 + 24 * 9 + 0 + 2 * 24 * 10)
    assert plan.flops == expected
    assert plan.params == (48 * 12 + 12) + (12 * 9 * 24 + 24) + (24 * 9 * 24 + 24) + (24 * 10 + 10)
    flops, params = model_totals(graphs["vgg"])
    summary = model_summary(graphs["vgg"])
    assert (flops, params) == (summary.total_flops, summary.total_params)


def test_residual_mirror_keeps_adds(graphs):
    plan = plan_cpm(graphs["resnet"], Strategy(("b0_relu",), 0.25))
    ops = [op.op for op in plan.ops]
    assert ops.count("Add") == 3  # the three residual joins
    assert plan.ops[-1].shape == (1, 10)
    assert all(op.shape[1] >= 4 for op in plan.ops if op.op == "Conv")


def test_slice_init_starts_from_the_backbone(graphs):
    g = graphs["vgg"]
    torch.manual_seed(0)
    net = MirrorNet(g, Strategy(("b2_maxpool",), 0.5), batchnorm=False).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        _, tensors = g(x, return_tensors=[net.plan.tap_tensors[0]])
        tap = tensors[net.plan.tap_tensors[0]]
        first = net.cpm._run_op(net.plan.ops[0], [tap])
        second = net.cpm._run_op(net.plan.ops[1], [first])
    assert torch.equal(first, tap[:, :12])
    # the next convolution is the backbone's own, restricted to the kept channels
    src = g.module_of(next(n for n in g.nodes if n.name == net.plan.ops[1].source))
    ref = torch.nn.functional.conv2d(tap[:, :12], src.weight[:24, :12], src.bias[:24], padding=1)
    assert torch.allclose(second, ref, atol=1e-6)


@pytest.mark.parametrize("taps, words", [
    (("b99_relu",), "unknown tap(s) b99_relu"),
    (("b5_maxpool", "b2_maxpool"), "ordered shallow to deep"),
])
def test_bad_taps_are_named(graphs, taps, words):
    with pytest.raises(StrategyError) as info:
        plan_cpm(graphs["vgg"], Strategy(taps, 0.25))
    assert words in str(info.value)
    assert "b2_maxpool" in str(info.value)


def test_generate_strategies_space_and_budget(graphs):
    g = graphs["vgg"]
    costs = generate_strategies(g)
    assert 20 <= len(costs) <= 400
    names = [c.strategy.name for c in costs]
    assert len(set(names)) == len(names)
    taps = [t.name for t in candidate_taps(g)]
    singles = [c.strategy.taps[0] for c in costs if len(c.strategy.taps) == 1]
    assert taps[0] in singles and taps[-1] in singles          # shallow to deep, CPM completes the net
    assert any(len(c.strategy.taps) == 2 for c in costs)
    assert {c.strategy.degradation for c in costs} == {"uniform", "adversarial"}
    everything = generate_strategies(g, budget_bytes=None)
    small = generate_strategies(g, budget_bytes=64 * 1024)
    assert len(small) < len(everything)
    assert all(c.memory.total <= 64 * 1024 for c in small)
    for c in small[:5]:
        assert c.memory == secure_memory(c.strategy, g)


def test_auto_select_prefers_shallow_taps_within_the_flop_share(graphs):
    costs = generate_strategies(graphs["vgg"])
    pick = auto_select(costs, max_flop_share=0.05)
    assert pick.flop_share <= 0.05 and len(pick.strategy.taps) == 1 and pick.strategy.width_ratio >= 0.25
    assert pick.strategy.name == "b2_maxpool-w4-add-logits-uniform"
    order = [t.name for t in candidate_taps(graphs["vgg"])]
    cheaper = [c for c in costs if len(c.strategy.taps) == 1 and c.flop_share <= 0.05
               and c.strategy.output == "logits" and c.strategy.width_ratio >= 0.25]
    assert min(order.index(c.strategy.taps[0]) for c in cheaper) == order.index(pick.strategy.taps[0])
    with pytest.raises(StrategyError, match="FLOPs"):
        auto_select(costs, max_flop_share=1e-6)


def test_cpm_converts_like_any_module(graphs):
    net = _net(graphs["vgg"], Strategy(("b5_maxpool",), 0.25))
    cpm = net.cpm.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in cpm.parameters())
    cpm.to(torch.float32)


def test_a_final_softmax_is_dropped():
    class WithSoftmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = zoo.build("lenet")

        def forward(self, x):
            return torch.softmax(self.net(x), 1)

    torch.manual_seed(0)
    g = frontend.load_model(WithSoftmax().eval(), (1, 28, 28)).graph()
    assert g.nodes[-1].op == "Softmax"
    s = Strategy(("b3_maxpool",), 0.5)
    with pytest.raises(StrategyError, match="Softmax"):
        plan_cpm(g, s)
    assert secure_memory(s, g).total > 0                   # the API drops it
    net = MirrorNet(g, s).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        _, bl, _ = net(x)
        assert torch.allclose(torch.softmax(bl, 1), g(x), atol=1e-6)   # logits before the Softmax


def test_auto_select_passes_over_full_resolution_taps_when_a_downsampled_one_fits(graphs):
    # ResNet: b1_add (28x28, the input's resolution) fits at 1/4 within 5%, but b3_add (14x14) also does
    costs = generate_strategies(graphs["resnet"])
    by_name = {c.strategy.name: c for c in costs}
    assert by_name["b1_add-w4-add-logits-uniform"].flop_share <= 0.05
    assert by_name["b1_add-w4-add-logits-uniform"].tap_resolution == 1.0
    assert by_name["b3_add-w4-add-logits-uniform"].tap_resolution == 0.25
    assert auto_select(costs, max_flop_share=0.05).strategy.name == "b3_add-w4-add-logits-uniform"
    # alone, a full-resolution candidate is still accepted (the preference is not a floor)
    only = [c for c in costs if c.strategy.taps == ("b1_add",)]
    assert auto_select(only, max_flop_share=0.05).strategy.name == "b1_add-w4-add-logits-uniform"
    # LeNet's pick is already past its first pooling, the flat taps count as downsampled
    lenet = auto_select(generate_strategies(graphs["lenet"]), max_flop_share=0.05)
    assert lenet.tap_resolution < 1.0
    assert all(c.tap_resolution == 0.0 for c in generate_strategies(graphs["lenet"])
               if c.strategy.taps == ("b4_relu",))
