"""Build and run the generated CPM C with the hosted driver ``runtime/cpm_harness.c``.

Used by the test suite and the benchmark: the CPM object is compiled on its own with the flags of
the environment it targets (e.g. freestanding for a TA), the driver with an ordinary hosted
toolchain, and the two are linked into one program that reads taps from a file and writes logits.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompileError
from .emit import SOURCE_NAME

HARNESS_SOURCE = Path(__file__).with_name("runtime") / "cpm_harness.c"


@dataclass(frozen=True)
class Toolchain:
    """How to build: the compiler, the CPM object's flags, the driver's flags, link flags, runner."""

    cc: str
    cpm_flags: tuple[str, ...]
    harness_flags: tuple[str, ...] = ("-O2",)
    link_flags: tuple[str, ...] = ()
    runner: tuple[str, ...] = ()  # e.g. ("qemu-aarch64",) for a cross-compiled program


# The warnings OP-TEE's TA build enables (mk/compile.mk), plus -Wcast-qual: the generated C is clean.
STRICT_WARNINGS = (
    "-Wall", "-Wextra", "-Wcast-align", "-Wcast-qual", "-Wfloat-equal", "-Wformat=2", "-Winit-self",
    "-Wmissing-declarations", "-Wmissing-include-dirs", "-Wmissing-noreturn", "-Wmissing-prototypes",
    "-Wnested-externs", "-Wpointer-arith", "-Wshadow", "-Wstrict-prototypes", "-Wswitch-default",
    "-Wwrite-strings", "-Wredundant-decls", "-Wold-style-definition", "-Wstrict-aliasing=2", "-Wundef",
    "-Werror",
)


def native(opt: str = "-O2") -> Toolchain:
    return Toolchain("gcc", (opt, "-fno-math-errno", *STRICT_WARNINGS))


def freestanding_include_dir(cc: str) -> str:
    out = subprocess.run([cc, "-print-file-name=include"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def aarch64(opt: str = "-Os") -> Toolchain:
    """The TA's view: freestanding, no system headers, our math.h, static driver under qemu."""
    cc = "aarch64-linux-gnu-gcc"
    return Toolchain(
        cc,
        (opt, "-ffreestanding", "-fno-math-errno", "-nostdinc", "-I", freestanding_include_dir(cc),
         "-fpic", "-mstrict-align", *STRICT_WARNINGS),
        ("-O2",),
        ("-static",),
        ("qemu-aarch64",),
    )


def available(toolchain: Toolchain) -> bool:
    return shutil.which(toolchain.cc) is not None and all(shutil.which(t) for t in toolchain.runner[:1])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompileError(f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")


def compile_cpm_object(cpm_dir: Path, toolchain: Toolchain, obj: Path) -> Path:
    """Compile ``mirrornet_cpm.c`` alone, with the CPM flags (``-I cpm_dir`` for math.h)."""
    cpm_dir = Path(cpm_dir)
    _run([toolchain.cc, *toolchain.cpm_flags, "-I", str(cpm_dir), "-c", str(cpm_dir / SOURCE_NAME), "-o", str(obj)])
    return obj


def build(cpm_dir: Path, toolchain: Toolchain, exe: Path) -> Path:
    """Link the CPM object and the driver into ``exe``."""
    exe = Path(exe)
    cpm_obj = compile_cpm_object(cpm_dir, toolchain, exe.with_suffix(".cpm.o"))
    drv_obj = exe.with_suffix(".drv.o")
    _run([toolchain.cc, *toolchain.harness_flags, "-I", str(cpm_dir), "-c", str(HARNESS_SOURCE), "-o", str(drv_obj)])
    _run([toolchain.cc, *toolchain.link_flags, str(cpm_obj), str(drv_obj), "-o", str(exe)])
    return exe


@dataclass(frozen=True)
class Timing:
    """Seconds per inference over 7 timed batches: the median batch's mean and the fastest's."""

    median: float
    best: float


def run(exe: Path, taps, num_classes: int, toolchain: Toolchain, iterations: int | None = None):
    """Run the program on ``taps`` (arrays, strategy order); returns (logits, Timing or None).

    With ``iterations``, the program also times 7 batches of that many inferences.
    """
    with tempfile.TemporaryDirectory(prefix="mirrornet-cpm-run-") as tmp:
        taps_file, out_file = Path(tmp) / "taps.bin", Path(tmp) / "logits.bin"
        np.concatenate([np.asarray(t, dtype=np.float32).reshape(-1) for t in taps]).tofile(taps_file)
        cmd = [*toolchain.runner, str(exe), str(taps_file), str(out_file)]
        if iterations:
            cmd.append(str(iterations))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CompileError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
        logits = np.fromfile(out_file, dtype=np.float32)
    if logits.size != num_classes:
        raise CompileError(f"the CPM program wrote {logits.size} floats, expected {num_classes}.")
    timing = None
    for line in done.stdout.splitlines():
        if line.startswith("ns_per_inference "):
            median, best = (float(x) * 1e-9 for x in line.split()[1:3])
            timing = Timing(median, best)
    if iterations and timing is None:
        raise CompileError(f"{' '.join(cmd)} printed no timing.")
    return logits, timing
