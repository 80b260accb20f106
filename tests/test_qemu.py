"""The CPM trusted application inside a real OP-TEE secure world (QEMU, Debian's OP-TEE 4.5).

Each boot is one module-scoped fixture (about 10 s): nothing here is simulated. The TA is the project's
own ta/ source, built and signed with Debian's OP-TEE TA dev kit.
"""
from __future__ import annotations

import shutil
import subprocess
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


def _c_floats(a) -> str:
    return ", ".join(f"{float(v)!r}f" for v in np.asarray(a, np.float32).ravel())


def _write_cpm(cpm: Path, w: np.ndarray, b: np.ndarray):
    """A linear CPM in the generated code's API: logits = b + W @ relu(concat(taps))."""
    cpm.mkdir(parents=True)
    floats = sum(TAP_SIZES)
    (cpm / "mirrornet_cpm.h").write_text(f"""/* Test CPM written by tests/test_qemu.py (linear layer, fixed seed). */
#ifndef MIRRORNET_CPM_H
#define MIRRORNET_CPM_H
#define MIRRORNET_CPM_NUM_TAPS 2
#define MIRRORNET_CPM_TAP_SIZES {{ {TAP_SIZES[0]}, {TAP_SIZES[1]} }}
#define MIRRORNET_CPM_TAP_FLOATS {floats}
#define MIRRORNET_CPM_NUM_CLASSES {NUM_CLASSES}
#define MIRRORNET_CPM_ARENA_BYTES {floats * 4}
#define MIRRORNET_CPM_WEIGHT_BYTES {(w.size + b.size) * 4}
#define MIRRORNET_CPM_SOURCE_SHA256 "test-linear-cpm"
int mirrornet_cpm_run(const float *const taps[], float *logits);
#endif
""")
    (cpm / "mirrornet_cpm.c").write_text(f"""/* Test CPM written by tests/test_qemu.py. */
#include "mirrornet_cpm.h"
static const float W[{NUM_CLASSES}][{floats}] = {{ {_c_floats(w)} }};
static const float B[{NUM_CLASSES}] = {{ {_c_floats(b)} }};
static float x[{floats}];
int mirrornet_cpm_run(const float *const taps[], float *logits)
{{
	int i, j, k = 0;
	for (i = 0; i < 2; i++) {{
		int n = i == 0 ? {TAP_SIZES[0]} : {TAP_SIZES[1]};
		for (j = 0; j < n; j++, k++) x[k] = taps[i][j] > 0.0f ? taps[i][j] : 0.0f;
	}}
	for (i = 0; i < {NUM_CLASSES}; i++) {{
		float acc = B[i];
		for (j = 0; j < {floats}; j++) acc += W[i][j] * x[j];
		logits[i] = acc;
	}}
	return 0;
}}
""")


def _reference(taps, w, b):
    x = np.maximum(taps, 0).astype(np.float64)
    return (x @ w.T.astype(np.float64) + b).astype(np.float32)


def _build_ta(out: Path, policy: str, w, b) -> Path:
    """Copy ta/, add the test CPM and a config, build + sign with the dev kit; returns the folder."""
    root = qemu.repo_root()
    devkit = subprocess.run([str(root / "scripts" / "optee-env.sh"), "devkit"], capture_output=True,
                            text=True, check=True).stdout.strip()
    src = out / "ta"
    shutil.copytree(root / "ta", src, ignore=shutil.ignore_patterns("out", "*.o", "*.ta", "cpm"))
    _write_cpm(src / "cpm", w, b)
    pol = {"logits": "MIRRORNET_TA_POLICY_LOGITS", "label": "MIRRORNET_TA_POLICY_LABEL"}[policy]
    (src / "include" / "mirrornet_ta_config.h").write_text(f"""/* Test configuration written by tests/test_qemu.py. */
#ifndef MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_OUTPUT_POLICY {pol}
#define MIRRORNET_TA_MAX_INVOKE_BYTES {MAX_INVOKE}
#define MIRRORNET_TA_STACK_SIZE (16 * 1024)
#define MIRRORNET_TA_DATA_SIZE (32 * 1024)
#endif
""")
    proc = subprocess.run(["make", "-s", "CROSS_COMPILE=aarch64-linux-gnu-", f"TA_DEV_KIT_DIR={devkit}",
                           "PYTHON3=/usr/bin/python3", f"O={out / 'build'}"], cwd=src,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "build"


def _linear_run(tmp_path_factory, policy):
    rng = np.random.default_rng(7)
    floats = sum(TAP_SIZES)
    w = (rng.standard_normal((NUM_CLASSES, floats)) / np.sqrt(floats)).astype(np.float32)
    b = rng.standard_normal(NUM_CLASSES).astype(np.float32)
    taps = rng.standard_normal((24, floats)).astype(np.float32)
    out = tmp_path_factory.mktemp(f"linear-{policy}")
    build = _build_ta(out, policy, w, b)
    res = qemu.run_cpm(build, taps, timeout=240, log_dir=out / "logs")
    return taps, w, b, res


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    return _linear_run(tmp_path_factory, "logits")


@pytest.fixture(scope="module")
def linear_label(tmp_path_factory):
    return _linear_run(tmp_path_factory, "label")


def test_known_cpm_in_optee_matches_reference(linear):
    taps, w, b, res = linear
    assert res.policy == "logits"
    assert res.info["tap_sizes"] == list(TAP_SIZES) and res.info["max_invoke_bytes"] == MAX_INVOKE
    assert res.outputs.shape == (len(taps), NUM_CLASSES)
    np.testing.assert_allclose(res.outputs, _reference(taps, w, b), rtol=1e-5, atol=1e-5)
    # The project's C client produced the result; the runner's probe got bit-identical answers.
    assert res.client == "mirrornet_client"
    np.testing.assert_array_equal(res.outputs, res.probe_outputs)
    # Every row differs: the TA did not answer the same thing for all inputs.
    assert len({r.tobytes() for r in res.outputs}) == len(taps)


def test_label_policy_is_the_argmax_of_the_same_logits(linear, linear_label):
    logits, labels = linear[3].outputs, linear_label[3].outputs
    assert linear_label[3].policy == "label" and linear_label[3].info["output_bytes"] == 4
    assert labels.dtype == np.int32 and labels.shape == (len(logits),)
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=1))


def test_malformed_invokes_answered_by_the_ta(linear):
    res = linear[3]
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


def test_optee_reports_the_ta_footprint(linear):
    res = linear[3]
    mem = res.memory
    assert mem is not None, "Debian's OP-TEE offers stats.pta; its answer was missing"
    assert mem.ta_ram_pool >= 8 << 20
    # The TA's pages: at least its stack + TA_DATA_SIZE heap + weights, returned when it closes.
    floats = sum(TAP_SIZES)
    assert mem.ta_footprint >= 16 * 1024 + 32 * 1024 + NUM_CLASSES * floats * 4
    assert mem.ta_footprint < 2 << 20
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
