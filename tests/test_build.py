"""Backbone build: host library runs on the Relax VM, rpi3 library is an AArch64 ELF, targets, tuning."""
from __future__ import annotations

import struct

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import tvm
import tvm_ffi
from tvm import relax

from mirrornet_tvm.build import (AVX512_TILE, TARGET_PRESETS, apply_default_schedules, build_backbone,
                                  default_rule, host_cpu, keep_faster_schedules, lower_backbone,
                                  resolve_target)
from mirrornet_tvm.errors import CompileError, UsageError
from mirrornet_tvm.transform import MirrorNetPartition
from test_partition_models import (Combined, Micro, export_combined, relax_module, sample_input,
                                   strategy_dict)

EM_AARCH64, EM_X86_64, ET_DYN = 183, 62, 3


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    s = strategy_dict("add", "correction")
    proto = export_combined(Combined("add", "correction"), folder / "combined.onnx", s)
    return folder / "combined.onnx", MirrorNetPartition(s)(relax_module(proto))


def elf_header(path) -> dict:
    data = path.read_bytes()[:64]
    assert data[:4] == b"\x7fELF", "not an ELF file"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    return {"class": data[4], "data": data[5], "type": e_type, "machine": e_machine}


def test_host_library_loads_on_the_relax_vm_and_computes_the_taps(partitioned, tmp_path):
    onnx_path, mod = partitioned
    build = build_backbone(mod, "host", out=tmp_path / "backbone.so")
    assert build.tuning == "untuned" and build.tune_trials == 0 and build.new_trials == 0
    assert build.target == {"kind": "llvm", "mcpu": host_cpu(), "num-cores": build.target["num-cores"]}
    assert build.lib_bytes == (tmp_path / "backbone.so").stat().st_size > 0
    assert build.kernels > 0 and build.cross_compiler is None
    assert build.default_kernels == build.kernels and build.tuned_kernels == 0  # no record: default rule
    header = elf_header(tmp_path / "backbone.so")
    assert header["type"] == ET_DYN

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "backbone.so")), tvm.cpu())
    x = sample_input(seed=7)
    outs = [t.numpy() for t in vm["backbone"](tvm.runtime.tensor(x))]
    want = ort.InferenceSession(str(onnx_path)).run(None, {"input": x})
    # backbone returns tap:b1_relu, tap:b4_maxpool, backbone_logits (correction strategy)
    for got, ref in zip(outs, [want[2], want[3], want[1]]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert len(outs) == 3


def test_naive_loops_on_request_compute_the_same_as_the_default_schedules(partitioned, tmp_path):
    _, mod = partitioned
    naive = build_backbone(mod, "host", out=tmp_path / "naive.so", default_schedules=False)
    scheduled = build_backbone(mod, "host", out=tmp_path / "scheduled.so")
    assert naive.default_kernels == 0 and scheduled.default_kernels == scheduled.kernels > 0
    x = sample_input(seed=3)
    outs = {}
    for name in ("naive", "scheduled"):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / f"{name}.so")), tvm.cpu())
        outs[name] = [t.numpy() for t in vm["backbone"](tvm.runtime.tensor(x))]
    for a, b in zip(outs["naive"], outs["scheduled"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_default_schedules_leave_the_module_as_it_was(partitioned):
    _, mod = partitioned
    lowered = lower_backbone(mod)
    kernels = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    scheduled, count = apply_default_schedules(lowered, resolve_target("host").target)
    assert count == len(kernels) > 0
    for gv, f in lowered.functions_items():  # the input module is unchanged
        if gv.name_hint in kernels:
            assert f.same_as(kernels[gv.name_hint]) and "tirx.is_scheduled" not in (f.attrs or {})
    assert all(f.attrs["tirx.is_scheduled"] for _, f in scheduled.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc))
    again, count_again = apply_default_schedules(scheduled, resolve_target("host").target)
    assert count_again == 0  # already scheduled kernels (e.g. tuned ones) are left alone


def test_a_tuning_record_slower_than_the_default_schedule_is_not_used():
    """A "tuned" convolution that is really the naive loop nest loses to the default schedule."""
    import torch

    from mirrornet_tvm import frontend
    from mirrornet_tvm.transform.pipeline import backbone_lowering_passes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU())
    target = resolve_target("host").target
    with target:
        lowered = tvm.transform.Sequential(backbone_lowering_passes())(
            frontend.load_model(net, input_shape=(16, 28, 28)).relax())
    kernels = [gv for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1
    naive_as_tuned = tvm.IRModule(dict(lowered.functions_items()), attrs=lowered.attrs)
    naive_as_tuned[kernels[0]] = lowered[kernels[0]].with_attr("tirx.is_scheduled", True)
    kept, replaced = keep_faster_schedules(naive_as_tuned, lowered, target)
    assert replaced == [kernels[0].name_hint]
    default, _ = apply_default_schedules(lowered, target)
    assert tvm_ffi.structural_equal(kept[kernels[0].name_hint], default[kernels[0].name_hint])
    assert naive_as_tuned[kernels[0]].attrs["tirx.is_scheduled"]  # the input module is unchanged


def test_register_tiles_follow_the_targets_vector_registers():
    from tvm.target.codegen import target_has_features

    from mirrornet_tvm.codegen.schedule import MAX_ROW, MAX_TILE

    for name in ("rpi3", '{"kind": "llvm", "mcpu": "haswell"}', '{"kind": "llvm", "mcpu": "skylake-avx512"}'):
        target = resolve_target(name).target
        rule = default_rule(target)
        wide = target_has_features("avx512f", target)
        assert (rule.max_row, rule.max_tile) == (AVX512_TILE if wide else (MAX_ROW, MAX_TILE)), name
        assert wide == ("avx512" in name)


def test_rpi3_library_is_an_aarch64_shared_object(partitioned, tmp_path):
    _, mod = partitioned
    build = build_backbone(mod, "rpi3", out=tmp_path / "rpi3" / "backbone.so")
    assert build.target_name == "rpi3" and build.cross_compiler == "aarch64-linux-gnu-gcc"
    assert build.target["mcpu"] == "cortex-a53" and build.target["mtriple"] == "aarch64-linux-gnu"
    header = elf_header(tmp_path / "rpi3" / "backbone.so")
    assert header == {"class": 2, "data": 1, "type": ET_DYN, "machine": EM_AARCH64}  # 64-bit LE .so
    assert elf_header(tmp_path / "rpi3" / "backbone.so")["machine"] != EM_X86_64


def test_a_failed_build_leaves_the_previous_library(partitioned, tmp_path):
    _, mod = partitioned
    out = tmp_path / "backbone.so"
    out.write_bytes(b"previous build")
    with pytest.raises(CompileError, match="no function"):
        build_backbone(tvm.IRModule({"main": mod["main"]}), "host", out=out)
    with pytest.raises(UsageError, match="rejects the target|not a JSON|neither"):
        build_backbone(mod, '{"kind": "nonsense"}', out=out)
    assert out.read_bytes() == b"previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.so"]  # no temporary left behind


def test_resolve_target():
    host = resolve_target(None)
    assert host.name == "host" and host.config["mcpu"] == host_cpu() and host.cross_compiler is None
    assert resolve_target("host") == host
    rpi3 = resolve_target("rpi3")
    assert rpi3.config == TARGET_PRESETS["rpi3"] and rpi3.cross_compiler == "aarch64-linux-gnu-gcc"
    custom = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}')
    assert custom.name == "custom" and custom.cross_compiler == "aarch64-linux-gnu-gcc"
    assert str(custom.target.attrs["mcpu"]) == "cortex-a72"
    for bad, match in [("rpi4", "neither a preset"), ('{"mcpu": "x"}', "needs a 'kind'"),
                       ('{"kind": "nonsense"}', "rejects the target"), ('{"kind": "c"}', "CPU targets"),
                       (42, "must be 'host'")]:
        with pytest.raises(UsageError, match=match):
            resolve_target(bad)


def test_tuning_is_refused_for_a_target_this_machine_cannot_run(partitioned, tmp_path):
    _, mod = partitioned
    with pytest.raises(UsageError, match="RPC"):
        build_backbone(mod, "rpi3", database=tmp_path / "db", tune_trials=4, out=tmp_path / "b.so")
    assert not (tmp_path / "b.so").exists()


@pytest.mark.slow
def test_tuning_database_is_reused_by_a_second_build(tmp_path):
    """One MetaSchedule trial on a one-kernel backbone; the second build measures nothing."""
    s = strategy_dict(taps=("b1_relu",))
    proto = export_combined(Micro(), tmp_path / "micro.onnx", s, (1, 1, 8, 8))
    mod = MirrorNetPartition(s)(relax_module(proto))
    db = tmp_path / "db"
    first = build_backbone(mod, "host", database=db, tune_trials=1, out=tmp_path / "a.so")
    assert first.new_trials >= 1 and first.tuning == "tuned (1 trials)" and first.tuned_kernels == 1
    # the one kernel has a record; it keeps the tuned schedule unless the default one measured faster
    assert first.default_kernels == first.default_over_tuned <= 1
    records = (db / "database_tuning_record.json").read_bytes()
    assert records.strip()
    assert not psutil.Process().children(recursive=True), "tuning left worker processes running"

    second = build_backbone(mod, "host", database=db, tune_trials=1, out=tmp_path / "b.so")
    assert second.new_trials == 0 and second.tuning == "tuned (1 trials)" and second.tuned_kernels == 1
    assert (db / "database_tuning_record.json").read_bytes() == records  # no new measurement
    reuse = build_backbone(mod, "host", database=db, out=tmp_path / "c.so")  # no tuning asked
    assert reuse.tuning == "tuned (1 trials)" and reuse.new_trials == 0
    assert build_backbone(mod, "host", out=tmp_path / "d.so").tuning == "untuned"

    x = sample_input(seed=1, shape=(1, 1, 8, 8))
    want = ort.InferenceSession(str(tmp_path / "micro.onnx")).run(None, {"input": x})[2]
    for lib in ("a.so", "d.so"):  # tuned and untuned schedules compute the same
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / lib)), tvm.cpu())
        np.testing.assert_allclose(vm["backbone"](tvm.runtime.tensor(x))[0].numpy(), want,
                                   rtol=1e-5, atol=1e-5)
