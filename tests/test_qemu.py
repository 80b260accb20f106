"""The CPM trusted application inside a real OP-TEE secure world (QEMU, Debian's OP-TEE 4.5).

Each boot is one module-scoped fixture (about 10 s): nothing here is simulated. The TA is the project's
own ta/ source, built and signed with Debian's OP-TEE TA dev kit.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                       reason="qemu-system-aarch64 is not installed (Debian package qemu-system-arm)"),
]

from mirrornet_tvm.errors import ArtifactError, UsageError  # noqa: E402
from mirrornet_tvm.tee import qemu  # noqa: E402

BAD_PARAMETERS, BAD_STATE, SHORT_BUFFER, NOT_SUPPORTED = 0xFFFF0006, 0xFFFF0007, 0xFFFF0010, 0xFFFF000A


# --------------------------------------------------------------------------------------------------
# A TA from the project's ta/ source around a small CPM with known weights (numpy is the reference)

TAP_SIZES = (72, 40)       # two taps, 112 floats = 448 bytes
NUM_CLASSES = 10
MAX_INVOKE = 256           # smaller than the taps: every run goes through LOAD_TAPS chunks
STACK, DATA = 16 * 1024, 32 * 1024


def _linear_run(tmp_path_factory, policy):
    cpm = qemu.LinearCpm.random(TAP_SIZES, NUM_CLASSES, seed=7)
    taps = np.random.default_rng(8).standard_normal((24, sum(TAP_SIZES))).astype(np.float32)
    out = tmp_path_factory.mktemp(f"linear-{policy}")
    build = qemu.build_ta_around(cpm, out, policy, max_invoke_bytes=MAX_INVOKE, stack_bytes=STACK,
                                 data_bytes=DATA)
    res = qemu.run_cpm(build, taps, timeout=240, log_dir=out / "logs")
    return taps, cpm, res


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    return _linear_run(tmp_path_factory, "logits")


@pytest.fixture(scope="module")
def linear_label(tmp_path_factory):
    return _linear_run(tmp_path_factory, "label")


def test_known_cpm_in_optee_matches_reference(linear):
    taps, cpm, res = linear
    assert res.policy == "logits"
    assert res.info["tap_sizes"] == list(TAP_SIZES) and res.info["max_invoke_bytes"] == MAX_INVOKE
    assert res.outputs.shape == (len(taps), NUM_CLASSES)
    np.testing.assert_allclose(res.outputs, cpm.reference(taps), rtol=1e-5, atol=1e-5)
    # The project's C client produced the result; the runner's probe got bit-identical answers.
    assert res.client == "mirrornet_client"
    np.testing.assert_array_equal(res.outputs, res.probe_outputs)
    # Every row differs: the TA did not answer the same thing for all inputs.
    assert len({r.tobytes() for r in res.outputs}) == len(taps)


def test_label_policy_is_the_argmax_of_the_same_logits(linear, linear_label):
    logits, labels = linear[2].outputs, linear_label[2].outputs
    assert linear_label[2].policy == "label" and linear_label[2].info["output_bytes"] == 4
    assert labels.dtype == np.int32 and labels.shape == (len(logits),)
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=1))


def test_malformed_invokes_answered_by_the_ta(linear):
    res = linear[2]
    got = {m.case: m for m in res.malformed}
    assert got["run_wrong_param_types"].code == BAD_PARAMETERS
    assert got["run_output_swapped"].code == BAD_PARAMETERS
    assert got["run_short_output"].code == SHORT_BUFFER
    assert got["run_short_output"].returned_size == NUM_CLASSES * 4   # the TA says what it needs
    assert got["run_with_incomplete_taps"].code == BAD_STATE
    assert got["info_short_buffer"].code == SHORT_BUFFER and got["info_short_buffer"].returned_size == 192
    assert got["unknown_command"].code == NOT_SUPPORTED
    # The TA itself answered (origin TEEC_ORIGIN_TRUSTED_APP), it did not panic, and still works.
    assert {m.origin for m in res.malformed} == {"trusted_app"}
    assert res.recovered


def test_the_ta_reports_its_own_heap(linear):
    heap = linear[2].heap  # HEAP_STATS: libutils' statistics of the TA heap, inside OP-TEE
    assert heap is not None, "the TA's HEAP_STATS command failed under OP-TEE"
    assert 0 < heap.size <= DATA and heap.failed_allocations == 0
    assert 0 <= heap.in_use <= heap.peak <= heap.size


def test_optee_reports_the_ta_footprint(linear):
    res = linear[2]
    mem = res.memory
    assert mem is not None, "Debian's OP-TEE offers stats.pta; its answer was missing"
    assert mem.ta_ram_pool >= 8 << 20
    # The TA's pages: at least its stack + TA_DATA_SIZE heap + weights, returned when it closes.
    # The TA's pages: its ELF (code, weights, arena, TA_DATA_SIZE heap) and its stack at least, and
    # returned when the session closes.
    elf = qemu.ta_load_bytes(res.ta_path)
    assert elf >= DATA + NUM_CLASSES * sum(TAP_SIZES) * 4
    assert elf + STACK <= mem.ta_footprint < elf + STACK + (1 << 20)
    assert mem.ta_ram_after_close == mem.ta_ram_baseline
    assert res.secure_log.stat().st_size > 0 and "bdded61c" in res.secure_log.read_text(errors="replace")
    assert res.console_log.exists()


# --------------------------------------------------------------------------------------------------
# Bad input to the runner

def test_runner_rejects_bad_input(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        qemu.run_cpm(tmp_path / "missing", np.zeros((1, 4), np.float32))
    with pytest.raises(ArtifactError, match="package-ta"):
        qemu.run_cpm(tmp_path, np.zeros((1, 4), np.float32))
    with pytest.raises(UsageError, match="float32"):
        qemu.run_cpm(tmp_path, np.zeros((1, 4), np.float64))
    with pytest.raises(UsageError, match="2-D"):
        qemu.run_cpm(tmp_path, np.zeros(4, np.float32))


# --------------------------------------------------------------------------------------------------
# The whole pipeline: a protected zoo model, its TA, 100 real Fashion-MNIST test images

N_IMAGES = 100


def _mirrornet(*args, cwd):
    exe = Path(sys.executable).with_name("mirrornet")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def _step(args, cwd):
    proc = _mirrornet(*args, cwd=cwd)
    if proc.returncode == 3 and "not built yet" in proc.stderr:
        pytest.skip(f"`mirrornet {args[0]}` is not built yet: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"mirrornet {' '.join(map(str, args))}:\n{proc.stdout}\n{proc.stderr}"


def _vm_outputs(vm, name, x):
    import tvm

    out = vm[name](tvm.runtime.tensor(x))
    items = list(out) if hasattr(out, "__len__") and not hasattr(out, "numpy") else [out]
    return [np.asarray(o.numpy(), np.float32) for o in items]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from tvm import relax
    import tvm

    from mirrornet_tvm import data

    d = tmp_path_factory.mktemp("pipeline")
    _step(["train-base", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1", "--subset",
           "2000", "-q", "-o", d / "lenet.onnx"], d)
    _step(["protect", d / "lenet.onnx", "--dataset", "fashion-mnist", "--auto", "--epochs", "1",
           "--subset", "2000", "-q", "-o", d / "artifact"], d)
    _step(["compile", d / "artifact", "-o", d / "build"], d)
    _step(["package-ta", d / "build"], d)
    x_test = data.load("fashion-mnist")[2][:N_IMAGES]
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "build" / "backbone.so")), tvm.cpu())
    # backbone(input) -> the taps in strategy order (+ backbone_logits for a "correction" CPM): exactly
    # what the CPM reads, concatenated.
    taps = np.stack([np.concatenate([t.ravel() for t in _vm_outputs(vm, "backbone", x[None])])
                     for x in x_test]).astype(np.float32)
    res = qemu.run_cpm(d / "build", taps, timeout=300, log_dir=d / "qemu-logs")
    # The reference: the combined model (backbone + CPM, `logits` first) compiled for the Relax VM.
    from mirrornet_tvm import frontend

    combined = relax.VirtualMachine(tvm.compile(frontend.to_relax(d / "artifact" / "combined.onnx"), "llvm"),
                                    tvm.cpu())
    return d, x_test, taps, combined, res


def _as_policy(logits, policy):
    if policy == "label":
        return np.argmax(logits, axis=1).astype(np.int32)
    if policy == "probs":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return logits


def _check(res, expected_logits):
    want = _as_policy(np.asarray(expected_logits, np.float32), res.policy)
    if res.policy == "label":
        np.testing.assert_array_equal(res.outputs, want)
    else:
        np.testing.assert_allclose(res.outputs, want, rtol=1e-5, atol=1e-5)


def test_protected_model_in_optee_matches_the_relax_vm(pipeline):
    d, x_test, taps, vm, res = pipeline
    assert res.outputs.shape[0] == N_IMAGES and res.client == "mirrornet_client"
    rectified = np.stack([_vm_outputs(vm, "main", x[None])[0].ravel() for x in x_test])
    _check(res, rectified)
    assert {m.origin for m in res.malformed} == {"trusted_app"} and res.recovered


def test_protected_model_in_optee_matches_the_simulator(pipeline):
    d, x_test, taps, vm, res = pipeline
    from mirrornet_tvm.tee.session import TeeSession

    with TeeSession(d / "build", tee="sim") as s:
        sim = s.run_many(taps).outputs
    assert sim.shape == res.outputs.shape
    if res.policy == "label":
        np.testing.assert_array_equal(res.outputs, sim)
    else:
        np.testing.assert_allclose(res.outputs, sim, rtol=1e-5, atol=1e-5)
