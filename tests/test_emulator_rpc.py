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
FAST = harness.TimingConfig(repeat=4, min_repeat_ms=1)


@pytest.fixture(scope="module")
def fleet():
    fleet = local_fleet(KEY)
    with fleet as device:
        groups = fleet.process_groups
        assert len(groups) == 2 and all(group_members(g) for g in groups)  # tracker and server alive
        yield device
    # shut down: no process of either group is left (also checks the forked session workers)
    assert not any(group_members(g) for g in groups)


@pytest.fixture(scope="module")
def measured(fleet, tmp_path_factory):
    """A small corpus measured through the RPC server (shared by the tests below)."""
    records = tmp_path_factory.mktemp("rpc") / "measurements.jsonl"
    kernels = corpus.random_kernels(56, seed=3)
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
    train, held = pairs[:38], pairs[38:]
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


@pytest.mark.slow
def test_mirrornet_tune_trials_through_rpc_runner(fleet, tmp_path):
    """MetaSchedule measures its candidates on the RPC server; the database feeds `mirrornet compile`."""
    from mirrornet_tvm import frontend
    from mirrornet_tvm.build import TUNING_LEDGER

    tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 7, 10))
    model = tmp_path / "tiny.onnx"
    onnx.save(frontend.load_model(tiny, input_shape=(1, 14, 14)).proto, str(model))
    out = tmp_path / "tuning"
    result = CliRunner().invoke(cli, [
        "tune", str(model), "--rpc-tracker", str(fleet.tracker), "--rpc-key", KEY, "-o", str(out),
        "--trials", "4", "--corpus", "4", "--strategies", "1", "--repeat", "3", "--quiet"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    db = out / "database"
    assert (db / "database_tuning_record.json").stat().st_size > 0
    assert json.loads((db / TUNING_LEDGER).read_text())["workloads"]
    report = json.loads((out / "tune_report.json").read_text())
    assert report["database_records"] > 0
    # the measured backbone kernels are the tuned ones
    from mirrornet_tvm.build import open_database
    from mirrornet_tvm.emulator.strategy_kernels import ModelKernels

    loaded = frontend.load_model(str(model))
    mk = ModelKernels(loaded, host_target(), open_database(db))
    # (untuned kernels get the default rule, so "tuned" = differs from the model's kernels without the database)
    untuned = {k.key for k in ModelKernels(loaded, host_target()).full_model()}
    tuned = [k for k in mk.full_model() if k.key not in untuned]
    measured = {json.loads(line)["kernel"] for line in (out / "measurements.jsonl").read_text().splitlines()[1:]}
    assert tuned and {k.key for k in tuned} <= measured
