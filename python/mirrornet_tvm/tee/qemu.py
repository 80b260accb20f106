"""Run the CPM trusted application inside a real OP-TEE secure world under QEMU.

``run_cpm(build_dir, taps)`` boots ``qemu-system-aarch64`` (TF-A + Debian's OP-TEE 4.5 for QEMU as the
secure world, Debian's arm64 kernel as the normal world; assembled by ``scripts/optee-env.sh fetch``)
with an initramfs that holds the kernel's ``tee.ko``/``optee.ko``, libteec, tee-supplicant, the signed
TA from the build folder under ``/lib/optee_armtz/``, the project's C client (``src/client``) and a
probe client of the runner's own (``mnq``, below), all cross-compiled against Debian's arm64 libteec.
The C client runs the CPM on every row of ``taps`` (its output file is the result); the probe runs the
same images again, sends the TA a set of malformed invokes, and reads OP-TEE's own secure-memory
statistics (the ``stats.pta`` pseudo TA) before, during and after its session. Both print to the
console between markers. The guest then
powers off; a watchdog kills QEMU when ``timeout`` runs out.

Every boot keeps two logs: the normal-world console (TF-A, Linux, the client) and the secure world's
log (OP-TEE core and TA traces, QEMU's second serial port).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TeeError, UsageError

__all__ = ["QemuResult", "TaMemory", "MalformedAnswer", "run_cpm", "environment_paths", "repo_root",
           "LinearCpm", "build_ta_around", "ta_load_bytes"]

MARK = "@@MNQ"
POLICIES = {0: "logits", 1: "probs", 2: "label"}
# GlobalPlatform codes the client reports (TEEC_* == TEE_* values).
GP_CODES = {
    0x00000000: "TEE_SUCCESS",
    0xFFFF0000: "TEE_ERROR_GENERIC",
    0xFFFF0006: "TEE_ERROR_BAD_PARAMETERS",
    0xFFFF0007: "TEE_ERROR_BAD_STATE",
    0xFFFF0008: "TEE_ERROR_ITEM_NOT_FOUND",
    0xFFFF000A: "TEE_ERROR_NOT_SUPPORTED",
    0xFFFF000C: "TEE_ERROR_OUT_OF_MEMORY",
    0xFFFF0010: "TEE_ERROR_SHORT_BUFFER",
    0xFFFF3024: "TEE_ERROR_TARGET_DEAD",
}
ORIGINS = {1: "api", 2: "comms", 3: "tee", 4: "trusted_app"}


@dataclasses.dataclass(frozen=True)
class MalformedAnswer:
    """What the TA answered to one deliberately malformed invoke inside OP-TEE."""

    case: str            # e.g. "run_wrong_param_types"
    code: int            # GP result code
    origin: str          # "trusted_app" when the TA itself answered; "tee" when OP-TEE did
    returned_size: int   # memref size after the call (the size the TA asks for on SHORT_BUFFER)

    @property
    def code_name(self) -> str:
        return GP_CODES.get(self.code, f"0x{self.code:08x}")


@dataclasses.dataclass(frozen=True)
class TaMemory:
    """OP-TEE's own accounting of secure memory (``stats.pta``, ALLOC_STATS), in bytes.

    ``ta_ram_*`` is the allocator of physical TA memory: every page a loaded TA occupies (code,
    read-only data with the CPM weights, .data/.bss with the heap of TA_DATA_SIZE, stack, ldelf).
    """

    ta_ram_pool: int            # size of OP-TEE's TA RAM pool on this platform
    ta_ram_baseline: int        # allocated before the CPM TA was opened
    ta_ram_with_ta: int         # allocated while the CPM TA session was open, after all runs
    ta_ram_after_close: int     # allocated after the session was closed
    ta_ram_peak: int            # the allocator's high-water mark over the whole boot
    core_heap_peak: int         # OP-TEE core heap high-water mark

    @property
    def ta_footprint(self) -> int:
        """Secure memory the CPM TA instance occupied (with_ta - baseline)."""
        return self.ta_ram_with_ta - self.ta_ram_baseline


@dataclasses.dataclass(frozen=True)
class TaHeap:
    """The CPM TA's own heap after the runs, as OP-TEE's libutils counts it (the TA's HEAP_STATS)."""

    in_use: int                 # bytes allocated now
    peak: int                   # high-water mark since the TA instance started
    size: int                   # the heap (TA_DATA_SIZE less the allocator's bookkeeping)
    failed_allocations: int


@dataclasses.dataclass(frozen=True)
class QemuResult:
    outputs: np.ndarray               # (N, num_classes) float32 for logits/probs, (N,) int32 for label
    client: str                       # who produced ``outputs``: "mirrornet_client" (src/client) or "mnq"
    probe_outputs: np.ndarray         # the same images through the runner's own probe client
    policy: str                       # "logits" | "probs" | "label"
    info: dict                        # the TA's GET_INFO answer
    memory: TaMemory | None           # None when OP-TEE offers no stats pseudo TA
    heap: TaHeap | None               # the TA's heap statistics (None: a TA without HEAP_STATS)
    malformed: tuple                  # MalformedAnswer per case
    recovered: bool                   # a valid run after the malformed ones gave the first answer again
    cpm_ns: np.ndarray                # (N,) uint64, the TA's own CPM timer (TCG time: not a benchmark)
    secure_log: Path
    console_log: Path
    boot_seconds: float
    ta_path: Path


# --------------------------------------------------------------------------------------------------
# The environment (assembled by scripts/optee-env.sh)

def repo_root() -> Path:
    """The source tree this package runs from (holds scripts/ and ta/)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "scripts" / "optee-env.sh").exists() and (parent / "ta").is_dir():
            return parent
    raise TeeError(
        "cannot find the mirrornet-tvm source tree (scripts/optee-env.sh, ta/) above "
        f"{here}; the QEMU runner needs an editable install of the repository"
    )


def environment_paths(fetch: bool = False) -> dict:
    """Artifact paths of the OP-TEE QEMU environment (``scripts/optee-env.sh paths``).

    With ``fetch=True`` runs ``optee-env.sh fetch`` first (idempotent, no network when cached).
    """
    script = repo_root() / "scripts" / "optee-env.sh"
    if fetch:
        proc = subprocess.run([str(script), "fetch"], stdout=sys.stderr, stderr=sys.stderr)
        if proc.returncode != 0:
            raise TeeError(f"`{script} fetch` failed (exit {proc.returncode}); see the messages above")
    proc = subprocess.run([str(script), "paths"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TeeError(
            "the OP-TEE QEMU environment is not assembled: run `scripts/optee-env.sh fetch` "
            f"(or `make setup`). {proc.stderr.strip()}"
        )
    paths = json.loads(proc.stdout)
    for key in ("firmware", "kernel", "modules", "busybox", "tee_supplicant", "libteec", "teec_include"):
        if not Path(paths[key]).exists():
            raise TeeError(f"OP-TEE environment incomplete: {key} = {paths[key]} is missing; "
                           "run `scripts/optee-env.sh fetch`")
    return paths


def _need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise TeeError(f"{name} not found: install the Debian package {package} (scripts/setup.sh does)")
    return path


# --------------------------------------------------------------------------------------------------
# The guest client

PROBE_C = r"""
/* mnq: the QEMU runner's guest client. Generated by mirrornet_tvm.tee.qemu; speaks the contract of
 * ta/include/mirrornet_ta.h. Usage: mnq TAPFILE N  (TAPFILE: N rows of tap_floats float32). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tee_client_api.h>
#include "mirrornet_ta.h"

#define MARK "@@MNQ"
struct alloc_stats { char desc[32]; uint32_t allocated, max_allocated, size, num_alloc_fail,
                     biggest_alloc_fail, biggest_alloc_fail_used; };
static const TEEC_UUID stats_uuid = { 0xd96a5b40, 0xe2c7, 0xb1af,
                                      { 0x87, 0x94, 0x10, 0x02, 0xa5, 0xd5, 0xc6, 0x1b } };
static TEEC_Session stats_sess;
static int have_stats;

static void mem(const char *stage)
{
	struct alloc_stats a[8];
	TEEC_Operation op;
	uint32_t origin = 0;
	if (!have_stats) return;
	memset(&op, 0, sizeof op);
	memset(a, 0, sizeof a);
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_VALUE_INPUT, TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE);
	op.params[0].value.a = 0; /* ALLOC_ID_ALL */
	op.params[1].tmpref.buffer = a;
	op.params[1].tmpref.size = sizeof a;
	TEEC_Result r = TEEC_InvokeCommand(&stats_sess, 1, &op, &origin);
	if (r != TEEC_SUCCESS) { printf(MARK " memerr %s 0x%08x\n", stage, r); return; }
	for (size_t i = 0; i < op.params[1].tmpref.size / sizeof a[0] && i < 8; i++) {
		a[i].desc[31] = 0;
		for (char *c = a[i].desc; *c; c++) if (*c == ' ') *c = '_';
		if (a[i].desc[0])
			printf(MARK " mem %s %s %u %u %u\n", stage, a[i].desc, a[i].allocated,
			       a[i].max_allocated, a[i].size);
	}
}

static void hexline(const char *tag, long idx, const void *p, size_t n)
{
	const unsigned char *b = p;
	printf(MARK " %s %ld ", tag, idx);
	for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
	printf("\n");
}

/* Load every tap chunk with LOAD_TAPS (for TAs whose taps exceed one invoke). */
static TEEC_Result load_all(TEEC_Session *s, float *taps, size_t nbytes, size_t tap_bytes,
                            size_t max_invoke)
{
	TEEC_Operation op;
	uint32_t origin = 0;
	TEEC_Result r = TEEC_SUCCESS;
	for (size_t off = 0; off < nbytes && r == TEEC_SUCCESS; off += max_invoke) {
		memset(&op, 0, sizeof op);
		op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_VALUE_INPUT, TEEC_NONE, TEEC_NONE);
		op.params[0].tmpref.buffer = (char *)taps + off;
		op.params[0].tmpref.size = nbytes - off < max_invoke ? nbytes - off : max_invoke;
		op.params[1].value.a = off;
		op.params[1].value.b = tap_bytes;
		r = TEEC_InvokeCommand(s, MIRRORNET_TA_CMD_LOAD_TAPS, &op, &origin);
	}
	return r;
}

static TEEC_Result run_one(TEEC_Session *s, float *taps, size_t tap_bytes, size_t max_invoke,
                           void *out, size_t out_bytes, uint64_t *ns, uint32_t *origin)
{
	TEEC_Operation op;
	TEEC_Result r;
	if (tap_bytes > max_invoke && (r = load_all(s, taps, tap_bytes, tap_bytes, max_invoke)) != TEEC_SUCCESS) {
		*origin = 0;
		return r;
	}
	memset(&op, 0, sizeof op);
	op.paramTypes = TEEC_PARAM_TYPES(tap_bytes > max_invoke ? TEEC_NONE : TEEC_MEMREF_TEMP_INPUT,
	                                 TEEC_MEMREF_TEMP_OUTPUT, TEEC_VALUE_OUTPUT, TEEC_NONE);
	op.params[0].tmpref.buffer = taps;
	op.params[0].tmpref.size = tap_bytes;
	op.params[1].tmpref.buffer = out;
	op.params[1].tmpref.size = out_bytes;
	r = TEEC_InvokeCommand(s, MIRRORNET_TA_CMD_RUN_CPM, &op, origin);
	*ns = ((uint64_t)op.params[2].value.b << 32) | op.params[2].value.a;
	return r;
}

/* One malformed invoke. A param[0] of TEEC_MEMREF_TEMP_INPUT means "the taps": when they exceed one
 * invoke they are loaded first and param[0] becomes NONE, so only the intended fault remains. */
static void bad(TEEC_Session *s, const char *name, uint32_t cmd, uint32_t types,
                void *b0, size_t n0, void *b1, size_t n1, size_t max_invoke)
{
	TEEC_Operation op;
	uint32_t origin = 0;
	uint32_t t0 = TEEC_PARAM_TYPE_GET(types, 0);
	if (t0 == TEEC_MEMREF_TEMP_INPUT && cmd == MIRRORNET_TA_CMD_RUN_CPM && n0 > max_invoke) {
		if (load_all(s, b0, n0, n0, max_invoke) != TEEC_SUCCESS) {
			printf(MARK " bad %s 0x%08x 0 0\n", name, 0xffffffffu);
			return;
		}
		types = TEEC_PARAM_TYPES(TEEC_NONE, TEEC_PARAM_TYPE_GET(types, 1),
		                         TEEC_PARAM_TYPE_GET(types, 2), TEEC_PARAM_TYPE_GET(types, 3));
		t0 = TEEC_NONE;
	}
	memset(&op, 0, sizeof op);
	op.paramTypes = types;
	if (t0 == TEEC_VALUE_INPUT) { op.params[0].value.a = 1; }
	else if (t0 != TEEC_NONE) { op.params[0].tmpref.buffer = b0; op.params[0].tmpref.size = n0; }
	op.params[1].tmpref.buffer = b1;
	op.params[1].tmpref.size = n1;
	TEEC_Result r = TEEC_InvokeCommand(s, cmd, &op, &origin);
	size_t ret = TEEC_PARAM_TYPE_GET(types, 1) == TEEC_MEMREF_TEMP_OUTPUT ? op.params[1].tmpref.size
	                                                                    : op.params[0].tmpref.size;
	printf(MARK " bad %s 0x%08x %u %zu\n", name, r, origin, ret);
}

int main(int argc, char **argv)
{
	TEEC_Context ctx;
	TEEC_Session s;
	TEEC_UUID uuid = TA_MIRRORNET_UUID;
	TEEC_Operation op;
	uint32_t origin = 0;
	TEEC_Result r;
	struct mirrornet_ta_info info;
	if (argc != 3) { fprintf(stderr, "usage: mnq TAPFILE N\n"); return 2; }
	long n = atol(argv[2]);
	printf(MARK " start\n");
	if ((r = TEEC_InitializeContext(NULL, &ctx)) != TEEC_SUCCESS) {
		printf(MARK " fatal init 0x%08x 0\n", r); return 1;
	}
	have_stats = TEEC_OpenSession(&ctx, &stats_sess, &stats_uuid, TEEC_LOGIN_PUBLIC, NULL, NULL,
	                              &origin) == TEEC_SUCCESS;
	mem("baseline");
	if ((r = TEEC_OpenSession(&ctx, &s, &uuid, TEEC_LOGIN_PUBLIC, NULL, NULL, &origin)) != TEEC_SUCCESS) {
		printf(MARK " fatal open 0x%08x %u\n", r, origin); return 1;
	}
	mem("open");
	memset(&op, 0, sizeof op);
	memset(&info, 0, sizeof info);
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE, TEEC_NONE);
	op.params[0].tmpref.buffer = &info;
	op.params[0].tmpref.size = sizeof info;
	if ((r = TEEC_InvokeCommand(&s, MIRRORNET_TA_CMD_GET_INFO, &op, &origin)) != TEEC_SUCCESS) {
		printf(MARK " fatal info 0x%08x %u\n", r, origin); return 1;
	}
	hexline("info", 0, &info, sizeof info);
	size_t tap_bytes = (size_t)info.tap_floats * 4, out_bytes = info.output_bytes;
	size_t max_invoke = info.max_invoke_bytes ? info.max_invoke_bytes : tap_bytes;
	float *taps = malloc(tap_bytes + 4);
	unsigned char *out = malloc(out_bytes + 4), *first = malloc(out_bytes + 4);
	FILE *f = fopen(argv[1], "rb");
	if (!taps || !out || !first || !f) { printf(MARK " fatal io %d 0\n", errno); return 1; }
	for (long i = 0; i < n; i++) {
		uint64_t ns = 0;
		if (fread(taps, 1, tap_bytes, f) != tap_bytes) { printf(MARK " fatal short_tapfile %ld 0\n", i); return 1; }
		r = run_one(&s, taps, tap_bytes, max_invoke, out, out_bytes, &ns, &origin);
		if (r != TEEC_SUCCESS) { printf(MARK " fatal run 0x%08x %u %ld\n", r, origin, i); return 1; }
		hexline("out", i, out, out_bytes);
		printf(MARK " ns %ld %llu\n", i, (unsigned long long)ns);
		if (i == 0) memcpy(first, out, out_bytes);
	}
	mem("after_runs");
#ifdef MIRRORNET_TA_CMD_HEAP_STATS
	/* The TA heap as libutils counts it, after the runs: in use, peak, size, failed allocations. */
	memset(&op, 0, sizeof op);
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_VALUE_OUTPUT, TEEC_VALUE_OUTPUT, TEEC_NONE, TEEC_NONE);
	r = TEEC_InvokeCommand(&s, MIRRORNET_TA_CMD_HEAP_STATS, &op, &origin);
	printf(MARK " heap 0x%08x %u %u %u %u %u\n", r, origin, op.params[0].value.a, op.params[0].value.b,
	       op.params[1].value.a, op.params[1].value.b);
#endif
	/* Malformed invokes: the TA must answer each with a GP error code, never crash. */
	rewind(f);
	if (fread(taps, 1, tap_bytes, f) != tap_bytes) { printf(MARK " fatal short_tapfile 0 0\n"); return 1; }
	bad(&s, "run_wrong_param_types", MIRRORNET_TA_CMD_RUN_CPM,
	    TEEC_PARAM_TYPES(TEEC_VALUE_INPUT, TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE), 0, 0, out, out_bytes, max_invoke);
	bad(&s, "run_output_swapped", MIRRORNET_TA_CMD_RUN_CPM,
	    TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_MEMREF_TEMP_INPUT, TEEC_NONE, TEEC_NONE),
	    taps, tap_bytes, out, out_bytes, max_invoke);
	bad(&s, "run_short_output", MIRRORNET_TA_CMD_RUN_CPM,
	    TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE),
	    taps, tap_bytes, out, out_bytes - 1, max_invoke);
	if (tap_bytes <= max_invoke)
		bad(&s, "run_short_input", MIRRORNET_TA_CMD_RUN_CPM,
		    TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE),
		    taps, tap_bytes - 4, out, out_bytes, max_invoke);
	{   /* RUN_CPM on an incomplete set of taps: the first LOAD_TAPS chunk, one float short */
		size_t part = (tap_bytes < max_invoke ? tap_bytes : max_invoke) - 4;
		if (part && load_all(&s, taps, part, tap_bytes, max_invoke) != TEEC_SUCCESS)
			printf(MARK " bad run_with_incomplete_taps 0x%08x 0 0\n", 0xffffffffu);
		else
			bad(&s, "run_with_incomplete_taps", MIRRORNET_TA_CMD_RUN_CPM,
			    TEEC_PARAM_TYPES(TEEC_NONE, TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE), 0, 0, out,
			    out_bytes, max_invoke);
	}
	bad(&s, "info_short_buffer", MIRRORNET_TA_CMD_GET_INFO,
	    TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE, TEEC_NONE), &info, 4, 0, 0, max_invoke);
	bad(&s, "unknown_command", 0x7fff,
	    TEEC_PARAM_TYPES(TEEC_NONE, TEEC_NONE, TEEC_NONE, TEEC_NONE), 0, 0, 0, 0, max_invoke);
	/* The session still works after all that, and gives the same answer as before. */
	uint64_t ns = 0;
	r = run_one(&s, taps, tap_bytes, max_invoke, out, out_bytes, &ns, &origin);
	printf(MARK " after_bad 0x%08x %u %d\n", r, origin, r == TEEC_SUCCESS && !memcmp(out, first, out_bytes));
	TEEC_CloseSession(&s);
	mem("closed");
	if (have_stats) TEEC_CloseSession(&stats_sess);
	TEEC_FinalizeContext(&ctx);
	printf(MARK " done %ld\n", n);
	return 0;
}
"""

INIT_SH = """#!/bin/busybox sh
# Generated by mirrornet_tvm.tee.qemu: init of the QEMU guest that runs the MirrorNet CPM TA.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "@@MNQ boot"
for m in {modules}; do insmod /lib/modules/$m || echo "@@MNQ fatal insmod_$m 0 0"; done
i=0; while [ ! -e /dev/teepriv0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -e /dev/teepriv0 ] || echo "@@MNQ fatal no_optee_device 0 0"
mkdir -p /data/tee
tee-supplicant -d
if [ -x /bin/mirrornet_client ]; then
  /bin/mirrornet_client /data/taps.bin /tmp/out.bin 2>/tmp/client.err
  rc=$?
  sed 's/^/@@MNQ client_msg /' /tmp/client.err
  [ $rc -eq 0 ] && od -An -v -tx1 /tmp/out.bin | sed 's/^/@@MNQ cout /'
  echo "@@MNQ client_exit $rc"
fi
/bin/mnq /data/taps.bin {n}
echo "@@MNQ exit $?"
poweroff -f
"""


def _cross_compile(paths: dict, src: Path, exe: Path, what: str) -> Path:
    gcc = _need_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    header_dir = repo_root() / "ta" / "include"
    if not (header_dir / "mirrornet_ta.h").exists():
        raise TeeError(f"{header_dir}/mirrornet_ta.h is missing: the TA contract header is needed for {what}")
    libteec = Path(paths["libteec"]) / "libteec.so.1"
    cmd = [gcc, "-O2", "-Wall", "-o", str(exe), str(src), f"-I{header_dir}", f"-I{paths['teec_include']}",
           str(libteec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TeeError(f"cross-compiling {what} ({src}) for aarch64 failed:\n{proc.stderr.strip()}")
    return exe


def _compile_probe(paths: dict, work: Path) -> Path:
    src = work / "mnq.c"
    src.write_text(PROBE_C)
    return _cross_compile(paths, src, work / "mnq", "the QEMU guest probe")


def _compile_client(paths: dict, work: Path):
    """The project's normal-world C client (src/client), cross-compiled; None when the tree has none."""
    src = repo_root() / "src" / "client" / "mirrornet_client.c"
    if not src.exists():
        return None
    return _cross_compile(paths, src, work / "mirrornet_client", "the C client")


def _module_chain(modules_dir: Path, name: str) -> list:
    """Paths of kernel module ``name`` and its dependencies, dependencies first.

    The package ships no modules.dep (depmod runs at install time): dependencies are read from each
    module's own ``.modinfo`` (``depends=a,b``).
    """
    index = {}
    for p in (modules_dir / "kernel").rglob("*.ko*"):
        index.setdefault(p.name.split(".ko")[0].replace("-", "_"), p)
    order = []

    def visit(mod, stack):
        path = index.get(mod.replace("-", "_"))
        if path is None:
            raise TeeError(f"kernel module {mod} not found under {modules_dir}/kernel")
        if path.name.endswith(".ko.xz") or path.name.endswith(".ko.zst"):
            raise TeeError(f"{path} is compressed; busybox insmod needs plain .ko modules")
        m = re.search(rb"\0depends=([^\0]*)\0", path.read_bytes())
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
            if dep in stack:
                raise TeeError(f"kernel module dependency cycle at {dep}")
            visit(dep, stack + (dep,))
        if path not in order:
            order.append(path)

    visit(name, (name,))
    return order


def find_ta(build_dir: Path) -> Path:
    """The single signed ``<uuid>.ta`` in a build folder."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise ArtifactError(f"build folder {build_dir} does not exist: run `mirrornet compile` and "
                            "`mirrornet package-ta` first")
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.ta$")
    tas = sorted(p for p in build_dir.rglob("*.ta") if uuid.match(p.name))
    if not tas:
        raise ArtifactError(f"no signed TA (<uuid>.ta) in {build_dir}: run `mirrornet package-ta {build_dir}`")
    names = {p.name for p in tas}
    if len(names) > 1:
        raise ArtifactError(f"several TAs in {build_dir} ({', '.join(sorted(names))}): keep one")
    return tas[0]


def _copy(src, dst: Path, mode=None):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst, follow_symlinks=True)
    if mode is not None:
        os.chmod(dst, mode)


def build_initramfs(paths: dict, ta: Path, probe: Path, client, taps_file: Path, n: int, root: Path,
                    out: Path) -> Path:
    """Lay out the guest's root filesystem in ``root`` and pack it as a gzip'd newc cpio ``out``."""
    exe = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    for d in ("bin", "sbin", "lib", "proc", "sys", "dev", "tmp", "data/tee", "lib/optee_armtz", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _copy(paths["busybox"], root / "bin" / "busybox", exe)
    _copy(paths["tee_supplicant"], root / "sbin" / "tee-supplicant", exe)
    libc = Path(paths["arm64_libc"])
    for lib in ("libc.so.6", "ld-linux-aarch64.so.1"):
        if not (libc / lib).exists():
            raise TeeError(f"{libc / lib} missing: install libc6-dev-arm64-cross (arm64 C library)")
        _copy(libc / lib, root / "lib" / lib, exe)
    _copy(Path(paths["libteec"]) / "libteec.so.1", root / "lib" / "libteec.so.1", exe)
    mods = Path(paths["modules"])
    names = []
    for path in _module_chain(mods, "optee"):
        name = path.name
        _copy(path, root / "lib" / "modules" / name)
        names.append(name)
    _copy(ta, root / "lib" / "optee_armtz" / ta.name)
    _copy(probe, root / "bin" / "mnq", exe)
    if client is not None:
        _copy(client, root / "bin" / "mirrornet_client", exe)
    _copy(taps_file, root / "data" / "taps.bin")
    init = root / "init"
    init.write_text(INIT_SH.replace("{modules}", " ".join(names)).replace("{n}", str(n)))
    os.chmod(init, exe)
    cpio = _need_tool("cpio", "cpio")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(out, "wb") as f:
        p1 = subprocess.Popen([cpio, "-o", "-H", "newc", "--quiet"], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
        p2 = subprocess.Popen(["gzip", "-1"], stdin=p1.stdout, stdout=f)
        p1.stdout.close()
        p1.stdin.write(("\n".join(["."] + files) + "\n").encode())
        p1.stdin.close()
        if p1.wait() != 0 or p2.wait() != 0:
            raise TeeError("packing the initramfs with cpio failed")
    return out


# --------------------------------------------------------------------------------------------------
# Booting and reading the answer

def qemu_command(paths: dict, initrd: Path, secure_log: Path) -> list:
    qemu = _need_tool("qemu-system-aarch64", "qemu-system-arm")
    return [qemu, "-M", "virt,secure=on,gic-version=3", "-cpu", "cortex-a53", "-smp", "1", "-m", "1024",
            "-bios", paths["firmware"], "-kernel", paths["kernel"], "-initrd", str(initrd),
            "-append", "console=ttyAMA0 rdinit=/init quiet loglevel=3 panic=-1",
            "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-serial", "stdio", "-serial", f"file:{secure_log}"]


def _boot(cmd: list, console_log: Path, n: int, timeout: float) -> tuple:
    """Run QEMU, tee its console to ``console_log``, return (marker lines, seconds)."""
    from tqdm import tqdm

    lines = []
    t0 = time.monotonic()
    with open(console_log, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        killed = threading.Event()

        def kill():
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        bar = tqdm(total=n, desc="CPM in OP-TEE (QEMU)", unit="img", file=sys.stderr, leave=False)
        try:
            for raw in proc.stdout:
                log.write(raw)
                line = raw.decode("utf-8", "replace").strip()
                pos = line.find(MARK + " ")
                if pos < 0:
                    continue
                line = line[pos:]
                lines.append(line)
                if line.startswith(MARK + " out "):
                    bar.update(1)
            proc.wait()
        finally:
            timer.cancel()
            bar.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - t0
    if killed.is_set():
        raise TeeError(f"QEMU did not finish within {timeout:.0f} s and was killed; "
                       f"console log: {console_log}")
    if proc.returncode != 0:
        raise TeeError(f"qemu-system-aarch64 exited with code {proc.returncode}; console log: {console_log}")
    return lines, seconds


def _parse_info(hexstr: str) -> dict:
    b = bytes.fromhex(hexstr)
    if len(b) < 120:
        raise TeeError(f"GET_INFO answer too short ({len(b)} bytes)")
    u32 = np.frombuffer(b[:48], "<u4")
    keys = ("magic", "abi_version", "policy", "num_taps", "tap_floats", "num_classes", "output_bytes",
            "max_invoke_bytes", "arena_bytes", "weight_bytes", "clock_resolution_ns", "runs")
    info = {k: int(v) for k, v in zip(keys, u32)}
    info["cpm_ns_total"] = int(np.frombuffer(b[48:56], "<u8")[0])
    info["tap_sizes"] = [int(x) for x in np.frombuffer(b[56:120], "<u4")[: info["num_taps"]]]
    info["source_sha256"] = b[120:192].split(b"\0", 1)[0].decode("ascii", "replace")
    return info


def _parse(lines: list, n: int, console_log: Path, secure_log: Path) -> dict:
    fatal = [l for l in lines if l.startswith(MARK + " fatal ")]
    if fatal:
        parts = fatal[0].split()
        what, code = parts[2], int(parts[3], 16) if parts[3].startswith("0x") else parts[3]
        name = GP_CODES.get(code, code) if isinstance(code, int) else code
        hint = ""
        if what == "open" and code == 0xFFFF0008:
            hint = " (OP-TEE did not find the TA: is it signed with the dev kit's key?)"
        raise TeeError(f"the guest client failed at '{what}': {name}{hint}; console log {console_log}, "
                       f"secure-world log {secure_log}", code=code if isinstance(code, int) else None)
    if not any(l.startswith(MARK + " done ") for l in lines):
        last = next((l for l in reversed(lines)), "no marker at all (the guest did not boot)")
        raise TeeError(f"the guest stopped before the client finished (last: {last!r}); "
                       f"console log {console_log}, secure-world log {secure_log}")
    info = None
    outs, ns, bad, mem = {}, {}, [], {}
    after_bad = heap = None
    client = {"exit": None, "hex": [], "msg": []}
    for l in lines:
        p = l.split()
        tag = p[1]
        if tag == "cout":
            client["hex"].append("".join(p[2:]))
        elif tag == "client_msg":
            client["msg"].append(" ".join(p[2:]))
        elif tag == "client_exit":
            client["exit"] = int(p[2])
        elif tag == "info":
            info = _parse_info(p[3])
        elif tag == "out":
            outs[int(p[2])] = bytes.fromhex(p[3]) if len(p) > 3 else b""
        elif tag == "ns":
            ns[int(p[2])] = int(p[3])
        elif tag == "bad":
            bad.append(MalformedAnswer(p[2], int(p[3], 16), ORIGINS.get(int(p[4]), p[4]), int(p[5])))
        elif tag == "mem":
            mem.setdefault(p[2], {})[p[3]] = (int(p[4]), int(p[5]), int(p[6]))
        elif tag == "after_bad":
            after_bad = (int(p[2], 16), p[4] == "1")
        elif tag == "heap" and int(p[2], 16) == 0:
            heap = TaHeap(in_use=int(p[4]), peak=int(p[5]), size=int(p[6]), failed_allocations=int(p[7]))
    if info is None or sorted(outs) != list(range(n)):
        raise TeeError(f"incomplete answer from the guest ({len(outs)} of {n} results); "
                       f"console log {console_log}")
    if client["exit"] not in (None, 0):
        raise TeeError(f"the C client (src/client) failed in the guest with exit {client['exit']}: "
                       f"{' / '.join(client['msg']) or 'no message'}; console log {console_log}")
    return {"info": info, "outs": outs, "ns": ns, "bad": tuple(bad), "mem": mem, "after_bad": after_bad,
            "client": client, "heap": heap}


def _memory(mem: dict):
    pool = "Physical_TA_memory"
    stages = ("baseline", "after_runs", "closed")
    if not all(pool in mem.get(s, {}) for s in stages):
        return None
    heap = max((v.get("Heap", (0, 0, 0))[1] for v in mem.values()), default=0)
    return TaMemory(
        ta_ram_pool=mem["baseline"][pool][2],
        ta_ram_baseline=mem["baseline"][pool][0],
        ta_ram_with_ta=mem["after_runs"][pool][0],
        ta_ram_after_close=mem["closed"][pool][0],
        ta_ram_peak=max(v[pool][1] for v in mem.values() if pool in v),
        core_heap_peak=heap,
    )


def _decode(raw: bytes, policy: str, n: int, info: dict) -> np.ndarray:
    if policy == "label":
        return np.frombuffer(raw, "<i4").astype(np.int32).reshape(n)
    return np.frombuffer(raw, "<f4").astype(np.float32).reshape(n, info["num_classes"])


def run_cpm(build_dir, taps: np.ndarray, timeout: float = 240.0, log_dir=None) -> QemuResult:
    """Run the build folder's TA on every row of ``taps`` inside OP-TEE under QEMU.

    ``taps`` is (N, TAP_FLOATS) float32: each row is one image's tapped maps, concatenated in strategy
    order. Returns the TA's answers (per its output policy), its answers to malformed invokes, OP-TEE's
    secure-memory statistics and the paths of both logs (in ``log_dir``, or a fresh temporary folder).
    """
    taps = np.asarray(taps)
    if taps.ndim != 2 or taps.shape[0] < 1:
        raise UsageError(f"taps must be a 2-D array (N images, TAP_FLOATS), got shape {taps.shape}")
    if taps.dtype != np.float32:
        raise UsageError(f"taps must be float32, got {taps.dtype}")
    ta = find_ta(Path(build_dir))
    paths = environment_paths()
    _need_tool("qemu-system-aarch64", "qemu-system-arm")
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="mirrornet-qemu-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    console_log, secure_log = log_dir / "console.log", log_dir / "secure.log"
    n = taps.shape[0]
    with tempfile.TemporaryDirectory(prefix="mirrornet-qemu-") as tmp:
        tmp = Path(tmp)
        probe = _compile_probe(paths, tmp)
        client = _compile_client(paths, tmp)
        taps_file = tmp / "taps.bin"
        np.ascontiguousarray(taps, dtype="<f4").tofile(taps_file)
        initrd = build_initramfs(paths, ta, probe, client, taps_file, n, tmp / "root", tmp / "initrd.cpio.gz")
        lines, seconds = _boot(qemu_command(paths, initrd, secure_log), console_log, n, timeout)
    res = _parse(lines, n, console_log, secure_log)
    info = res["info"]
    if info["magic"] != 0x41544E4D:
        raise TeeError(f"the TA answered GET_INFO with magic 0x{info['magic']:08x}, not 'MNTA'")
    if info["tap_floats"] != taps.shape[1]:
        raise UsageError(f"taps have {taps.shape[1]} floats per image but the TA expects "
                         f"{info['tap_floats']} (strategy taps {info['tap_sizes']})")
    policy = POLICIES.get(info["policy"])
    if policy is None:
        raise TeeError(f"the TA reports an unknown output policy {info['policy']}")
    probe_outputs = _decode(b"".join(res["outs"][i] for i in range(n)), policy, n, info)
    client = res["client"]
    if client["exit"] == 0:
        raw = bytes.fromhex("".join(client["hex"]))
        if len(raw) != n * info["output_bytes"]:
            raise TeeError(f"the C client wrote {len(raw)} bytes for {n} images, expected "
                           f"{n * info['output_bytes']}; console log {console_log}")
        outputs, used = _decode(raw, policy, n, info), "mirrornet_client"
    else:
        outputs, used = probe_outputs, "mnq"
    return QemuResult(
        outputs=outputs, client=used, probe_outputs=probe_outputs, policy=policy, info=info,
        memory=_memory(res["mem"]), heap=res["heap"],
        malformed=res["bad"], recovered=bool(res["after_bad"] and res["after_bad"][0] == 0
                                             and res["after_bad"][1]),
        cpm_ns=np.array([res["ns"].get(i, 0) for i in range(n)], dtype=np.uint64),
        secure_log=secure_log, console_log=console_log, boot_seconds=seconds, ta_path=ta,
    )


# --------------------------------------------------------------------------------------------------
# A TA around a known CPM: checks and calibrates the secure world independently of the code generator

@dataclasses.dataclass(frozen=True)
class LinearCpm:
    """logits = bias + weights @ relu(concat(taps)): a CPM whose answer numpy can compute."""

    weights: np.ndarray      # (num_classes, sum(tap_sizes)) float32
    bias: np.ndarray         # (num_classes,) float32
    tap_sizes: tuple

    @classmethod
    def random(cls, tap_sizes, num_classes=10, seed=0) -> "LinearCpm":
        rng = np.random.default_rng(seed)
        floats = int(sum(tap_sizes))
        w = (rng.standard_normal((num_classes, floats)) / np.sqrt(floats)).astype(np.float32)
        return cls(w, rng.standard_normal(num_classes).astype(np.float32), tuple(int(t) for t in tap_sizes))

    def reference(self, taps: np.ndarray) -> np.ndarray:
        x = np.maximum(taps, 0).astype(np.float64)
        return (x @ self.weights.T.astype(np.float64) + self.bias).astype(np.float32)

    def write_c(self, cpm: Path):
        """mirrornet_cpm.{h,c} in the generated code's API (docs/architecture.md, the CPM C API)."""
        cpm.mkdir(parents=True, exist_ok=True)
        classes, floats = self.weights.shape
        sizes = ", ".join(str(t) for t in self.tap_sizes)

        def arr(a):
            return ",\n".join(", ".join(f"{float(v)!r}f" for v in row)
                              for row in np.asarray(a, np.float32).reshape(-1, 8 if a.size % 8 == 0 else 1))

        head = "/* Generated by mirrornet_tvm.tee.qemu.LinearCpm: a linear CPM with known weights. */\n"
        (cpm / "mirrornet_cpm.h").write_text(head + f"""#ifndef MIRRORNET_CPM_H
#define MIRRORNET_CPM_H
#define MIRRORNET_CPM_NUM_TAPS {len(self.tap_sizes)}
#define MIRRORNET_CPM_TAP_SIZES {{ {sizes} }}
#define MIRRORNET_CPM_TAP_FLOATS {floats}
#define MIRRORNET_CPM_NUM_CLASSES {classes}
#define MIRRORNET_CPM_ARENA_BYTES {floats * 4}
#define MIRRORNET_CPM_WEIGHT_BYTES {(self.weights.size + self.bias.size) * 4}
#define MIRRORNET_CPM_SOURCE_SHA256 "linear-cpm"
int mirrornet_cpm_run(const float *const taps[], float *logits);
#endif
""")
        (cpm / "mirrornet_cpm.c").write_text(head + f"""#include "mirrornet_cpm.h"
static const float W[{classes * floats}] = {{
{arr(self.weights)} }};
static const float B[{classes}] = {{ {arr(self.bias)} }};
static const int sizes[{len(self.tap_sizes)}] = {{ {sizes} }};
static float x[{floats}];
int mirrornet_cpm_run(const float *const taps[], float *logits)
{{
	int i, j, k = 0;
	for (i = 0; i < {len(self.tap_sizes)}; i++)
		for (j = 0; j < sizes[i]; j++, k++)
			x[k] = taps[i][j] > 0.0f ? taps[i][j] : 0.0f;
	for (i = 0; i < {classes}; i++) {{
		float acc = B[i];
		for (j = 0; j < {floats}; j++)
			acc += W[i * {floats} + j] * x[j];
		logits[i] = acc;
	}}
	return 0;
}}
""")


def build_ta_around(cpm: LinearCpm, out: Path, policy: str = "logits", max_invoke_bytes: int = 512 * 1024,
                    stack_bytes: int = 16 * 1024, data_bytes: int = 32 * 1024) -> Path:
    """Build the project's ta/ source around ``cpm`` with the OP-TEE dev kit; returns the build folder.

    The TA source, its contract header and the dev kit are the real ones; only the CPM and the
    build-time configuration (mirrornet_ta_config.h) are chosen here.
    """
    policies = {"logits": "MIRRORNET_TA_POLICY_LOGITS", "probs": "MIRRORNET_TA_POLICY_PROBS",
                "label": "MIRRORNET_TA_POLICY_LABEL"}
    if policy not in policies:
        raise UsageError(f"policy must be one of {', '.join(policies)}, got {policy!r}")
    root = repo_root()
    out = Path(out)
    proc = subprocess.run([str(root / "scripts" / "optee-env.sh"), "devkit"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TeeError(f"no OP-TEE TA dev kit: {proc.stderr.strip()}; run scripts/optee-env.sh fetch")
    devkit = proc.stdout.strip()
    src = out / "ta"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(root / "ta", src, ignore=shutil.ignore_patterns("out", "*.o", "*.ta", "cpm"))
    cpm.write_c(src / "cpm")
    (src / "include" / "mirrornet_ta_config.h").write_text(f"""/* Generated by mirrornet_tvm.tee.qemu.build_ta_around. */
#ifndef MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_OUTPUT_POLICY {policies[policy]}
#define MIRRORNET_TA_MAX_INVOKE_BYTES {int(max_invoke_bytes)}
#define MIRRORNET_TA_STACK_SIZE {int(stack_bytes)}
#define MIRRORNET_TA_DATA_SIZE {int(data_bytes)}
#endif
""")
    build = out / "build"
    proc = subprocess.run(["make", "-s", "CROSS_COMPILE=aarch64-linux-gnu-", f"TA_DEV_KIT_DIR={devkit}",
                           "PYTHON3=/usr/bin/python3", f"O={build}"], cwd=src, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TeeError(f"building the TA with the dev kit failed:\n{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return build


def ta_load_bytes(ta_path) -> int:
    """Bytes OP-TEE maps for the TA's ELF: every PT_LOAD segment's memsz, rounded to 4 KiB pages.

    (Code, read-only data with the CPM weights, .data and .bss with the CPM arena and the TA heap of
    TA_DATA_SIZE; the stack and ldelf come on top.)
    """
    import struct

    blob = Path(ta_path).read_bytes()
    at = blob.find(b"\x7fELF\x02\x01")
    if at < 0:
        raise ArtifactError(f"{ta_path} holds no 64-bit ELF image (an encrypted TA cannot be inspected)")
    elf = blob[at:]
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    total = 0
    for i in range(phnum):
        p_type, _flags, _off, vaddr, _pa, _filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", elf,
                                                                                    phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            start, end = vaddr & ~0xFFF, (vaddr + memsz + 0xFFF) & ~0xFFF
            total += end - start
    return total
