"""Secure memory of the CPM TA as OP-TEE itself reports it, under QEMU (functional, not timing).

For each TA, boots the real OP-TEE secure world (scripts/optee-env.sh), runs a few inferences and reads
OP-TEE's TA-RAM allocator (stats.pta ALLOC_STATS) before, during and after the TA's session. Compares
the measured footprint with the project's secure-memory estimate (weights + activation arena + tapped
maps + logits, as in mirrornet_tvm.strategy.SecureMemory, here taken from the TA's own GET_INFO answer).

    .venv/bin/python bench/qemu_measurements.py                 # linear CPMs of three sizes
    .venv/bin/python bench/qemu_measurements.py --build BUILD   # plus a packaged build folder (repeatable)

Without --build the TAs are the project's ta/ source around linear CPMs of known size
(mirrornet_tvm.tee.qemu.LinearCpm); with --build, the signed TA that `mirrornet package-ta` put there.
QEMU runs under TCG: the TA's own CPM timer is shown for completeness, not as a benchmark.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mirrornet_tvm.machine import describe  # noqa: E402
from mirrornet_tvm.tee import qemu  # noqa: E402

RPI3_TA_BUDGET = 8 << 20     # secure DRAM left for all TAs on a Raspberry Pi 3 (docs: optee.md)
KIB = 1024


def estimate(info: dict) -> int:
    return info["weight_bytes"] + info["arena_bytes"] + info["tap_floats"] * 4 + info["num_classes"] * 4


def run(name: str, build: Path, tap_floats: int, images: int, logs: Path) -> dict:
    taps = np.random.default_rng(0).standard_normal((images, tap_floats)).astype(np.float32)
    res = qemu.run_cpm(build, taps, timeout=300, log_dir=logs / name)
    if res.memory is None:
        raise SystemExit("OP-TEE answered no memory statistics (stats.pta missing)")
    info, mem = res.info, res.memory
    try:
        elf = qemu.ta_load_bytes(res.ta_path)
    except qemu.ArtifactError:   # an encrypted TA: read the dev kit's stripped ELF beside it
        stripped = next(build.rglob(res.ta_path.stem + ".stripped.elf"), None)
        elf = qemu.ta_load_bytes(stripped) if stripped else 0
    est = estimate(info)
    return {
        "case": name,
        "weights": info["weight_bytes"],
        "estimate": est,
        "elf": elf,
        "measured": mem.ta_footprint,
        "released": mem.ta_ram_after_close == mem.ta_ram_baseline,
        "ratio": mem.ta_footprint / est,
        "overhead": mem.ta_footprint - est,
        "rpi3": mem.ta_footprint / RPI3_TA_BUDGET,
        "cpm_ms": float(np.mean(res.cpm_ns)) / 1e6,
        "secure_log": res.secure_log,
    }


def tap_floats_of(build: Path) -> int:
    """Floats of one image's taps, from the build folder's generated header (BUILD/cpm/mirrornet_cpm.h)."""
    header = build / "cpm" / "mirrornet_cpm.h"
    if header.exists():
        for line in header.read_text().splitlines():
            if line.startswith("#define MIRRORNET_CPM_TAP_FLOATS"):
                return int(line.split()[2])
    raise SystemExit(f"{header} is missing or has no MIRRORNET_CPM_TAP_FLOATS: is {build} a build folder?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", default=[], type=Path, help="packaged build folder")
    ap.add_argument("--images", type=int, default=8, help="inferences per TA (default 8)")
    ap.add_argument("--logs", type=Path, default=None, help="keep the QEMU logs here")
    args = ap.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="mirrornet-qemu-bench-"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mirrornet-qemu-bench-") as tmp:
        for floats in (784, 6272, 25088):          # 28x28, 8x28x28, 32x28x28 tapped floats
            cpm = qemu.LinearCpm.random((floats,), 10, seed=floats)
            build = qemu.build_ta_around(cpm, Path(tmp) / f"linear{floats}")
            rows.append(run(f"linear-{floats}", build, floats, args.images, logs))
            print(f"measured {rows[-1]['case']}", file=sys.stderr)
        for b in args.build:
            rows.append(run(b.name, b, tap_floats_of(b), args.images, logs))
    print(f"machine: {describe(python=False)}")
    print("OP-TEE 4.5 (Debian) under qemu-system-aarch64, TA RAM allocator of stats.pta; KiB = 1024 B")
    cols = ("case", "weights KiB", "estimate KiB", "ELF KiB", "measured KiB", "measured/estimate",
            "overhead KiB", "of RPi3 8 MiB", "freed", "CPM ms (TCG)")
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join([
            r["case"], f"{r['weights'] / KIB:.1f}", f"{r['estimate'] / KIB:.1f}", f"{r['elf'] / KIB:.0f}",
            f"{r['measured'] / KIB:.0f}", f"{r['ratio']:.2f}", f"{r['overhead'] / KIB:.0f}",
            f"{100 * r['rpi3']:.1f}%", "yes" if r["released"] else "NO", f"{r['cpm_ms']:.1f}",
        ]))
    print(f"logs: {logs}")


if __name__ == "__main__":
    main()
