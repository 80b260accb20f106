"""Test fixture: a hand-written stand-in for the generated CPM, in the generated code's C API.

It writes ``mirrornet_cpm.h`` / ``mirrornet_cpm.c`` / ``math.h`` as the CPM code generator does
(docs/architecture.md, "The CPM C API"), for a linear CPM with known weights:

    logits = B + W @ relu(concat(taps))

so the TA and its clients can be tested against a numpy reference without the rest of the pipeline.
With ``misbehave=True`` the CPM also reacts to trigger values in ``taps[0][0]`` (crash, hang, stack
overflow, heap exhaustion, error return) so the tests can check how a dying TA is reported. It is a
test fixture only; the product's CPM comes from ``mirrornet_tvm.codegen``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

# taps[0][0] values that make a misbehaving stand-in CPM fail on purpose.
TRIGGER_CRASH = -1001.0       # NULL write: SIGSEGV
TRIGGER_HANG = -1002.0        # endless loop
TRIGGER_STACK = -1003.0       # recursion far beyond TA_STACK_SIZE
TRIGGER_FAIL = -1004.0        # mirrornet_cpm_run returns an error
TRIGGER_HEAP = -1005.0        # TEE_Malloc more than TA_DATA_SIZE (reported, not fatal)


@dataclasses.dataclass(frozen=True)
class StandInCpm:
    tap_sizes: tuple
    w: np.ndarray            # (num_classes, tap_floats) float32
    b: np.ndarray            # (num_classes,) float32
    cpm_dir: Path

    @property
    def tap_floats(self) -> int:
        return int(sum(self.tap_sizes))

    @property
    def num_classes(self) -> int:
        return int(self.b.shape[0])

    def logits(self, taps: np.ndarray) -> np.ndarray:
        """Reference: (N, tap_floats) -> (N, num_classes) float32."""
        x = np.maximum(np.asarray(taps, np.float32), 0).astype(np.float64)
        return (x @ self.w.T.astype(np.float64) + self.b).astype(np.float32)


def _floats(a) -> str:
    flat = [f"{float(v)!r}f" for v in np.asarray(a, np.float32).ravel()]
    return ",\n\t".join(", ".join(flat[i:i + 8]) for i in range(0, len(flat), 8))


def write_stand_in_cpm(cpm_dir, tap_sizes=(72, 40), num_classes=10, seed=7, misbehave=False) -> StandInCpm:
    """Write the stand-in CPM sources into ``cpm_dir`` and return its weights."""
    cpm_dir = Path(cpm_dir)
    cpm_dir.mkdir(parents=True, exist_ok=True)
    tap_sizes = tuple(int(s) for s in tap_sizes)
    floats = sum(tap_sizes)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((num_classes, floats)) / np.sqrt(floats)).astype(np.float32)
    b = rng.standard_normal(num_classes).astype(np.float32)
    offsets = np.cumsum((0,) + tap_sizes)[:-1]

    misbehave_c = ""
    misbehave_decl = ""
    if misbehave:
        misbehave_decl = """
#include <tee_internal_api.h>
static int deep(volatile int n)
{
	volatile char pad[512];
	pad[0] = (char)n;
	return n <= 0 ? pad[0] : deep(n - 1) + pad[0];
}
"""
        misbehave_c = f"""
	if (taps[0][0] == {TRIGGER_CRASH}f)
		*(volatile int *)0 = 1;
	if (taps[0][0] == {TRIGGER_HANG}f)
		for (;;)
			;
	if (taps[0][0] == {TRIGGER_STACK}f)
		return deep(1 << 20);
	if (taps[0][0] == {TRIGGER_FAIL}f)
		return 1;
	if (taps[0][0] == {TRIGGER_HEAP}f) {{
		void *p = TEE_Malloc(64u << 20, 0);
		if (p)
			TEE_Free(p);
		return p ? 0 : 2;
	}}
"""
    c_src = f"""/* Test fixture written by tests/tee_stand_in_cpm.py: a stand-in for the generated CPM
 * (linear layer over relu(taps), seed {seed}). Not the product's CPM. */
#include "mirrornet_cpm.h"
#include <math.h>
{misbehave_decl}
static const float W[{num_classes * floats}] = {{
	{_floats(w)}
}};
static const float B[{num_classes}] = {{
	{_floats(b)}
}};
static const int OFFSETS[{len(tap_sizes)}] = {{ {", ".join(str(int(o)) for o in offsets)} }};
static const int SIZES[{len(tap_sizes)}] = {{ {", ".join(str(s) for s in tap_sizes)} }};
static float arena[{floats}];

int mirrornet_cpm_run(const float *const taps[], float *logits)
{{
	int i, j;
{misbehave_c}
	for (i = 0; i < {len(tap_sizes)}; i++)
		for (j = 0; j < SIZES[i]; j++)
			arena[OFFSETS[i] + j] = fmaxf(taps[i][j], 0.0f);
	for (i = 0; i < {num_classes}; i++) {{
		float acc = 0.0f;
		for (j = 0; j < {floats}; j++)
			acc += W[i * {floats} + j] * arena[j];
		logits[i] = acc + B[i];
	}}
	return 0;
}}
"""
    (cpm_dir / "mirrornet_cpm.c").write_text(c_src)
    sha = hashlib.sha256(c_src.encode()).hexdigest()
    banner = "/* Test fixture written by tests/tee_stand_in_cpm.py"
    (cpm_dir / "mirrornet_cpm.h").write_text(f"""{banner} (stand-in for the generated header). */
#ifndef MIRRORNET_CPM_H
#define MIRRORNET_CPM_H
#define MIRRORNET_CPM_NUM_TAPS {len(tap_sizes)}
#define MIRRORNET_CPM_TAP_SIZES {{ {", ".join(str(s) for s in tap_sizes)} }}
#define MIRRORNET_CPM_TAP_FLOATS {floats}
#define MIRRORNET_CPM_NUM_CLASSES {num_classes}
#define MIRRORNET_CPM_ARENA_BYTES {floats * 4}
#define MIRRORNET_CPM_WEIGHT_BYTES {(w.size + b.size) * 4}
#define MIRRORNET_CPM_SOURCE_SHA256 "{sha}"
int mirrornet_cpm_run(const float *const taps[], float *logits);
#endif
""")
    (cpm_dir / "math.h").write_text(f"""{banner}: the TA-side math header (no libm). */
#ifndef MIRRORNET_MATH_H
#define MIRRORNET_MATH_H
static inline float fmaxf(float a, float b) {{ return a > b ? a : b; }}
#endif
""")
    return StandInCpm(tap_sizes, w, b, cpm_dir)


def write_stand_in_build(build_dir, tap_sizes=(72, 40), num_classes=10, seed=7, misbehave=False,
                         stack_bytes=None) -> StandInCpm:
    """A build folder as `mirrornet compile` lays it out, with the stand-in CPM and no backbone."""
    build_dir = Path(build_dir)
    cpm = write_stand_in_cpm(build_dir / "cpm", tap_sizes, num_classes, seed, misbehave)
    floats = sum(cpm.tap_sizes)
    manifest = {
        "generated_by": "tests/tee_stand_in_cpm.py (test fixture)",
        "cpm": {
            "tap_names": [f"b{i}_relu" for i in range(len(tap_sizes))],
            "tap_sizes": list(cpm.tap_sizes),
            "tap_floats": floats,
            "tap_bytes": floats * 4,
            "num_classes": num_classes,
            "arena_bytes": floats * 4,
            "weight_bytes": int((cpm.w.size + cpm.b.size) * 4),
            "source_sha256": hashlib.sha256((build_dir / "cpm" / "mirrornet_cpm.c").read_bytes()).hexdigest(),
        },
    }
    if stack_bytes is not None:
        manifest["cpm"]["max_stack_bytes"] = int(stack_bytes)
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return cpm


def packaged_stand_in(build_dir, policy="logits", shm_limit=512 * 1024, sim_only=True, misbehave=False,
                      tap_sizes=(72, 40), num_classes=10, seed=7, **package_options):
    """A stand-in build folder run through `package_ta`; returns (StandInCpm, PackagedTa)."""
    from mirrornet_tvm.tee.package import package_ta

    cpm = write_stand_in_build(build_dir, tap_sizes, num_classes, seed, misbehave)
    packaged = package_ta(build_dir, policy=policy, shm_limit=shm_limit, sim_only=sim_only, **package_options)
    return cpm, packaged
