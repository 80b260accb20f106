"""Measurement through a real TVM RPC tracker and server on 127.0.0.1, and `mirrornet tune` over RPC.

The fleet (tracker + one server, each in its own process group) is started once for the module and
always shut down. Workloads are tiny; timings use few repeats.
"""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from mirrornet_tvm.cli import cli
from mirrornet_tvm.emulator import corpus, harness
from mirrornet_tvm.emulator.cost_model import CostModel, FlopsBaseline
from mirrornet_tvm.emulator.rpc import group_members, local_fleet, parse_tracker, rpc_device
from mirrornet_tvm.emulator.targets import host_target
from mirrornet_tvm.errors import UsageError

torch.set_num_threads(1)
KEY = "mirrornet-test"
FAST = harness.TimingConfig(repeat=5, min_repeat_ms=1)


@pytest.fixture(scope="module")
def fleet():
    with local_fleet(KEY) as device:
        yield device


@pytest.fixture(scope="module")
def measured(fleet, tmp_path_factory):
    """A small corpus measured through the RPC server (shared by the tests below)."""
    records = tmp_path_factory.mktemp("rpc") / "measurements.jsonl"
    kernels = corpus.random_kernels(70, seed=3)
    ms = harness.measure(kernels, host_target(), fleet, records=records, timing=FAST, progress=False)
    return kernels, ms, records


def test_measures_through_the_tracker(measured, fleet):
    kernels, ms, records = measured
    assert [m.kernel for m in ms] == [k.key for k in kernels]
    ok = harness.usable(ms)
    assert len(ok) >= 0.9 * len(ms), [m.error for m in ms if not m.ok][:3]
    assert all(m.device == f"rpc:{KEY}@{fleet.tracker}" for m in ms)
    # bigger work takes longer: the largest-FLOP kernels are slower than the smallest ones
    by_flops = sorted(ok, key=lambda m: m.flops)
    assert np.median([m.seconds for m in by_flops[-10:]]) > 5 * np.median([m.seconds for m in by_flops[:10]])


def test_records_resume_without_measuring_again(measured, fleet):
    kernels, ms, records = measured
    lines = records.read_text().splitlines()
    again = harness.measure(kernels[:10], host_target(), fleet, records=records, timing=FAST, progress=False)
    assert records.read_text().splitlines() == lines  # nothing new was measured or written
    assert [m.measured_at for m in again] == [m.measured_at for m in ms[:10]]
    # a torn last line (an interrupted write) is skipped, the rest still loads
    with open(records, "a") as f:
        f.write('{"key": "torn')
    assert len(harness.RecordStore(records).load()) == len(ms)


def test_cost_model_beats_flops_on_held_out_kernels(measured):
    kernels, ms, _ = measured
    pairs = [(k, m.seconds) for k, m in zip(kernels, ms) if m.ok]
    train, held = pairs[:48], pairs[48:]
    model = CostModel(host_target())
    model.fit([k for k, _ in train], [s for _, s in train], "tvm")
    truth = np.array([s for _, s in held])
    ours = spearmanr(model.predict([k for k, _ in held], host_target(), "tvm"), truth)[0]
    flops = spearmanr(FlopsBaseline().fit([k for k, _ in train], [s for _, s in train]).predict(
        [k for k, _ in held]), truth)[0]
    assert ours > flops, (ours, flops)
    assert ours > 0.85


def test_wrong_key_and_unreachable_tracker_fail_clearly(fleet):
    with pytest.raises(UsageError, match="no server registered under key 'nobody'"):
        rpc_device(str(fleet.tracker), "nobody").check()
    with pytest.raises(UsageError, match="cannot reach the RPC tracker"):
        rpc_device("127.0.0.1:1", KEY).check()
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_tracker("localhost")


def test_mirrornet_tune_over_rpc(fleet, tmp_path):
    from mirrornet_tvm import frontend, zoo

    model = tmp_path / "lenet.onnx"
    onnx.save(frontend.load_model(zoo.build("lenet")).proto, str(model))
    out = tmp_path / "tuning"
    args = ["tune", str(model), "--rpc-tracker", str(fleet.tracker), "--rpc-key", KEY, "-o", str(out),
            "--corpus", "6", "--strategies", "1", "--repeat", "3", "--quiet"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cost model ->" in result.output
    report = json.loads((out / "tune_report.json").read_text())
    assert report["device"] == f"rpc:{KEY}@{fleet.tracker}"
    assert report["measured"]["tvm"] >= 6 and report["measured"]["c-O2"] >= 6
    cm = CostModel.load(out / "cost_model.json")
    assert set(cm.flavours) == {"tvm", "c-O2"}
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()[1:]]
    assert records and all(r["device"].startswith("rpc:") for r in records)
    # a second run resumes: nothing new to measure
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "(0 new)" in result.output


def test_fleet_processes_are_gone_after_shutdown():
    fleet = local_fleet("short-lived")
    with fleet as device:
        groups = fleet.process_groups
        assert len(groups) == 2 and all(group_members(g) for g in groups)
        rpc_device(str(device.tracker), "short-lived").check()
    assert not any(group_members(g) for g in groups)
