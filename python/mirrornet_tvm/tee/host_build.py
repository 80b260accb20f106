"""Build the TA for the host TEE simulator: the same TA source and CPM, compiled for this machine.

The result, ``<uuid>.sim``, is one TA instance as a process (``src/tee_sim/ta_host.c``) that the
simulator's libteec starts per session. What the real TA environment lacks is reproduced where it is
cheap to do so:

- TA code (``mirrornet_ta.c`` and the CPM) is compiled ``-nostdinc -ffreestanding`` against the
  compiler's freestanding headers, the GP API shim and the few libutils headers OP-TEE offers, with
  the CPM's own ``math.h`` first on the include path (there is no ``<math.h>`` in a TA);
- the TA objects' ``malloc``/``calloc``/``realloc``/``free`` are renamed to the simulator's TA heap
  (``objcopy --redefine-sym``), so they count against TA_DATA_SIZE as in OP-TEE's libutils;
- every symbol the TA objects leave undefined must be one a TA can link against (GP API, mem*/str*):
  a call into libm or libc fails the build here, as it would with the dev kit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import CompileError
from ..util import atomic_path
from .sources import tee_sim_dir

# What a TA may leave undefined: the GP Internal Core API the shim implements, the simulator's clock,
# libutils' string functions, and what the compiler itself emits calls to.
_ALLOWED_UNDEFINED = {
    "TEE_Malloc", "TEE_Realloc", "TEE_Free", "TEE_MemMove", "TEE_MemCompare", "TEE_MemFill",
    "TEE_CheckMemoryAccessRights", "TEE_Panic", "TEE_GetSystemTime", "TEE_GetREETime",
    "tee_sim_clock_ns", "malloc_get_stats", "tee_sim_ta_malloc", "tee_sim_ta_calloc", "tee_sim_ta_realloc", "tee_sim_ta_free",
    "memcpy", "memmove", "memset", "memcmp", "memchr", "strlen", "strnlen", "strcmp", "strncmp",
    "strchr", "strrchr", "abs", "qsort",
    "__stack_chk_fail", "__stack_chk_guard", "_GLOBAL_OFFSET_TABLE_",
}
_RENAMES = {"malloc": "tee_sim_ta_malloc", "calloc": "tee_sim_ta_calloc",
            "realloc": "tee_sim_ta_realloc", "free": "tee_sim_ta_free"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise CompileError(f"{name} not found: install build-essential (scripts/setup.sh does)")
    return path


def _run(cmd, what):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{what} failed ({' '.join(str(c) for c in cmd[:2])} ...):\n"
                           f"{(proc.stderr or proc.stdout).strip()[-4000:]}")
    return proc.stdout


def build_host_ta(ta_build, out, cc: str | None = None, opt: str = "-O2") -> Path:
    """Compile ``ta_build`` (a package-ta folder: mirrornet_ta.c, cpm/, include/) into ``out``.

    Returns ``out`` (an executable). Raises CompileError naming any symbol the TA may not use.
    """
    ta_build = Path(ta_build)
    cc = cc or os.environ.get("CC") or "cc"
    cc_path = _tool(cc)
    sim = tee_sim_dir()
    for f in ("mirrornet_ta.c", "cpm/mirrornet_cpm.c", "cpm/mirrornet_cpm.h",
              "include/mirrornet_ta_config.h", "user_ta_header_defines.h"):
        if not (ta_build / f).is_file():
            raise CompileError(f"{ta_build / f} is missing: the TA build folder is incomplete "
                               "(run `mirrornet package-ta`)")
    freestanding = _run([cc_path, "-print-file-name=include"], "finding the compiler's headers").strip()
    ta_includes = ["-I", ta_build / "cpm", "-I", ta_build / "include", "-I", ta_build,
                   "-isystem", sim / "include", "-isystem", sim / "libutils_include",
                   "-isystem", freestanding]
    ta_flags = ["-std=gnu11", opt, "-fPIE", "-ffreestanding", "-nostdinc", "-fno-math-errno",
                "-fstack-protector-strong", "-fno-common", "-Wall"]
    with tempfile.TemporaryDirectory(prefix="mirrornet-host-ta-") as tmp:
        tmp = Path(tmp)
        objs = []
        for src in (ta_build / "mirrornet_ta.c", ta_build / "cpm" / "mirrornet_cpm.c"):
            obj = tmp / (src.stem + ".o")
            _run([cc_path, *ta_flags, *ta_includes, "-c", src, "-o", obj], f"compiling {src.name} for the host TA")
            _run([_tool("objcopy"), *[f"--redefine-sym={k}={v}" for k, v in _RENAMES.items()], obj],
                 "renaming the TA's malloc family")
            objs.append(obj)
        undefined, defined = set(), set()
        for obj in objs:
            out_nm = _run([_tool("nm"), "-u", obj], "listing undefined symbols")
            undefined |= {line.split()[-1] for line in out_nm.splitlines() if line.strip()}
            out_nm = _run([_tool("nm"), "--defined-only", obj], "listing defined symbols")
            defined |= {line.split()[-1] for line in out_nm.splitlines() if line.strip()}
        bad = sorted(undefined - defined - _ALLOWED_UNDEFINED)
        if bad:
            raise CompileError(
                f"the TA (with its CPM) calls {', '.join(bad)}, which a trusted application cannot "
                "link against (no libm, no libc beyond libutils' mem*/str*): the CPM's math.h must "
                "implement these"
            )
        host_flags = ["-std=gnu11", opt, "-fPIE", "-Wall"]
        host_includes = ["-I", sim / "include", "-I", sim, "-I", ta_build / "include", "-I", ta_build]
        for src in (sim / "tee_api.c", sim / "ta_host.c"):
            obj = tmp / (src.stem + ".o")
            _run([cc_path, *host_flags, *host_includes, "-c", src, "-o", obj], f"compiling {src.name}")
            objs.append(obj)
        out = Path(out)
        with atomic_path(out) as tmp_out:
            # -z now: no lazy symbol binding on the TA stack (the resolver saves the whole vector
            # register file there, kilobytes that a TA on OP-TEE never spends).
            _run([cc_path, "-pie", "-Wl,-z,now", "-o", tmp_out, *objs], "linking the host TA")
        os.chmod(out, 0o755)   # after the rename: atomic_path gives the file plain-file permissions
    return out
