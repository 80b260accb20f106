"""Strategy kernels (fast path vs the real compile path) and emulation of a whole strategy space."""
import collections
import time

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi

from mirrornet_tvm import frontend, mirror, zoo
from mirrornet_tvm.emulator import calibration as cal_mod
from mirrornet_tvm.emulator.cost_model import CostModel
from mirrornet_tvm.emulator.emulate import Emulator, pareto_front, rank_strategies, select
from mirrornet_tvm.emulator.strategy_kernels import ModelKernels
from mirrornet_tvm.emulator.targets import host_target
from mirrornet_tvm.emulator.workloads import kernels_of
from mirrornet_tvm.strategy import Strategy, generate_strategies

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lenet():
    model = frontend.load_model(zoo.build("lenet"))
    return model, ModelKernels(model, host_target())


def _multiset(kernels):
    return collections.Counter({int(tvm_ffi.structural_hash(k.func)): k.calls for k in kernels})


def _real_compile_kernels(model, strategy, target):
    """backbone and cpm kernels as `mirrornet compile` lowers and schedules them."""
    from mirrornet_tvm.build import apply_default_schedules, lower_backbone
    from mirrornet_tvm.codegen import lower_cpm
    from mirrornet_tvm.transform import AttachMirrorNetMetadata
    from mirrornet_tvm.transform.pipeline import mirrornet_pipeline

    net = mirror.MirrorNet(mirror.strip_softmax(model.graph()), strategy)
    proto = net.export_onnx()
    mod = AttachMirrorNetMetadata([o.name for o in proto.graph.output], strategy.to_dict())(
        frontend.to_relax(proto))
    with target:
        mod = mirrornet_pipeline(strategy)(mod)
    backbone, _ = apply_default_schedules(tvm.relax.transform.RewriteDataflowReshape()(lower_backbone(mod)), target)
    return (kernels_of(backbone, "backbone", lowered=True),
            kernels_of(lower_cpm(mod, "cpm", target), "cpm", lowered=True))


@pytest.mark.parametrize("strategy", [
    Strategy(("b1_maxpool",), 0.25, "add", "logits"),
    Strategy(("b0_relu", "b3_maxpool"), 0.5, "concat", "logits"),
    Strategy(("b2_relu",), 0.125, "add", "correction"),
])
def test_fast_kernels_match_the_compile_path(lenet, strategy):
    model, mk = lenet
    backbone, cpm = _real_compile_kernels(model, strategy, mk.target)
    sk = mk.of(strategy)
    assert _multiset(sk.backbone) == _multiset(backbone)
    assert _multiset(sk.cpm) == _multiset(cpm)
    assert sk.secure_memory == mirror.plan_cpm(mk.graph, strategy).secure_memory()


def test_backbone_slices_follow_the_taps(lenet):
    _, mk = lenet
    shallow = mk.backbone(Strategy(("b0_relu",), 0.25))
    deep = mk.backbone(Strategy(("b3_maxpool",), 0.25))
    full = mk.backbone(Strategy(("b0_relu",), 0.25, output="correction"))  # needs the backbone's logits
    calls = lambda ks: sum(k.calls for k in ks)  # noqa: E731
    assert 0 < calls(shallow) < calls(deep) < calls(full)
    assert _multiset(full) == _multiset(mk.full_model())


def _synthetic_model(mk, strategies):
    """A cost model fitted to a made-up but plausible law (no measurement: tests the plumbing)."""
    model = CostModel(mk.target)
    tvm_k = {k.key: k for s in strategies for k in mk.backbone(s)}.values()
    c_k = {k.key: k for s in strategies for k in mk.cpm(s)[0]}.values()
    law = lambda ks: np.array([(k.flops + 1) * 2e-10 + k.arg_bytes * 1e-10 + 1e-7 for k in ks])  # noqa: E731
    model.fit(list(tvm_k), law(tvm_k), "tvm")
    model.fit(list(c_k), law(c_k) * 3, "c-O2")
    return model


def test_emulating_the_space_is_fast_and_consistent(lenet):
    model, mk = lenet
    costs = generate_strategies(mk.graph, budget_bytes=None)
    cm = _synthetic_model(mk, [c.strategy for c in costs[::9]])
    cal = cal_mod.Calibration(transfer=cal_mod.Transfer(per_invoke=20e-6, per_byte=1e-9, shm_limit=4096))
    emu = Emulator(cm, mk.target, cal)
    start = time.perf_counter()
    estimates = emu.emulate(costs, mk, progress=False)
    elapsed = time.perf_counter() - start
    assert len(estimates) == len(costs) >= 100
    assert elapsed < 90, f"emulating {len(costs)} strategies took {elapsed:.1f} s"
    for c, e in zip(costs, estimates):
        assert e.name == c.strategy.name
        assert e.total_s == pytest.approx(e.backbone_s + e.cpm_s + e.transfer_s)
        assert e.backbone_s > 0 and e.cpm_s > 0 and e.transfer_s > 0
        assert e.secure_bytes == c.memory.total
        assert e.invokes == (1 if c.memory.taps <= 4096 else -(-c.memory.taps // 4096) + 1)
    # the same strategy under another degradation objective is the same workload
    by_name = {e.name: e for e in estimates}
    for c in costs:
        if c.strategy.degradation == "adversarial":
            twin = by_name[c.strategy.replace(degradation="uniform").name]
            assert by_name[c.strategy.name].total_s == twin.total_s
    ranked = rank_strategies(mk, costs, emu, budget_bytes=256 * 1024, progress=False)
    assert [e.total_s for e in ranked] == sorted(e.total_s for e in ranked)
    assert all(e.secure_bytes <= 256 * 1024 for e in ranked)
    assert select(estimates, budget_bytes=256 * 1024) == ranked[0]
    front = pareto_front(estimates)
    assert front and ranked[0].total_s >= front[0].total_s
    assert emu.predict(model.relax()) > 0


def test_emulator_refuses_a_model_for_another_target(lenet):
    _, mk = lenet
    cm = _synthetic_model(mk, [c.strategy for c in generate_strategies(mk.graph, budget_bytes=None)[::20]])
    from mirrornet_tvm.errors import TargetMismatchError

    with pytest.raises(TargetMismatchError):
        Emulator(cm, "rpi3")


@pytest.mark.slow
def test_tune_calibrates_on_the_tee_simulator(tmp_path):
    """`mirrornet tune --calibrate`: strategies built and run in the host TEE simulator fit the stages."""
    import json

    import onnx
    from click.testing import CliRunner

    from mirrornet_tvm.cli import cli

    model = tmp_path / "lenet.onnx"
    onnx.save(frontend.load_model(zoo.build("lenet")).proto, str(model))
    out = tmp_path / "tuning"
    result = CliRunner().invoke(cli, ["tune", str(model), "-o", str(out), "--corpus", "8", "--strategies", "2",
                                      "--calibrate", "3", "--images", "5", "--repeat", "3", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "calibration: fitted on 3 protected runs" in result.output
    samples = json.loads((out / "calibration_samples.json").read_text())
    assert len(samples) == 3 and all(s["backbone_measured"] > 0 and s["cpm_measured"] >= 0 for s in samples)
    emu = Emulator.load(out)
    assert emu.calibration.samples == 3
    lenet = frontend.load_model(str(model))
    by_name = {c.strategy.name: c.strategy
               for c in generate_strategies(mirror.strip_softmax(lenet.graph()), budget_bytes=None)}
    # the calibrated prediction of each calibration strategy lands near its measurement
    for s in samples:
        total = s["backbone_measured"] + s["cpm_measured"] + s["transfer_measured"]
        e = emu.estimate(by_name[s["name"]], lenet)
        assert e.total_s == pytest.approx(total, rel=0.5), (s["name"], e.total_s, total)


def test_kernels_and_predictions_from_an_onnx_path(lenet, tmp_path):
    """An ONNX path goes through the front end's Relax import, like the module it holds."""
    import onnx

    from mirrornet_tvm.emulator.workloads import as_kernels
    from mirrornet_tvm.errors import ModelError

    model, mk = lenet
    path = tmp_path / "lenet.onnx"
    onnx.save(model.proto, str(path))
    from_path = as_kernels(path, target=mk.target)
    assert from_path and _multiset(from_path) == _multiset(as_kernels(model.relax(), target=mk.target))
    emu = Emulator(_synthetic_model(mk, [c.strategy for c in generate_strategies(mk.graph, budget_bytes=None)[::20]]),
                   mk.target)
    assert emu.predict(str(path)) == pytest.approx(emu.predict(model.relax())) and emu.predict(path) > 0
    with pytest.raises(ModelError, match="does not exist"):
        as_kernels(tmp_path / "missing.onnx")
