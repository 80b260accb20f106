"""``mirrornet package-ta``: the generated CPM into the MirrorNet TA, built for OP-TEE and the simulator.

    result = package_ta("out/build", policy="logits", encrypt=None, shm_limit=512 * 1024)

Steps, each visible in the progress bar:
1. read ``BUILD/cpm/mirrornet_cpm.h`` (sizes, source hash) and check the sources against the hash;
2. assemble ``BUILD/ta_build``: a copy of the TA template (``ta/``), the CPM sources in ``cpm/`` and a
   generated ``include/mirrornet_ta_config.h`` (policy, per-invoke limit, TA_STACK_SIZE, TA_DATA_SIZE);
3. build the TA for the host simulator, ``BUILD/sim/<uuid>.sim``, and run it once on zero taps to
   read its stack and heap high-water marks;
4. build it with the OP-TEE TA dev kit into ``BUILD/<uuid>.ta``: signed, and encrypted where the dev kit
   allows (the default); verify the signature; account its ELF sizes against the Raspberry Pi 3 budget;
5. record everything under ``"ta"`` in ``BUILD/manifest.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TeeError, UsageError
from ..util import atomic_path, read_json, write_json
from . import budget as budget_mod
from . import devkit as devkit_mod
from .abi import load_abi
from .elf_sizes import elf_sizes
from .host_build import build_host_ta
from .sources import ta_template

POLICIES = ("logits", "probs", "label")
DEFAULT_SHM_LIMIT = 512 * 1024          # the GP spec's promise per shared buffer
MAX_SHM_LIMIT = 4 << 20                 # OP-TEE's static shared-memory pool on the RPi3
TA_RUNTIME_STACK = 2048                 # the TA's own frames (GET_INFO's answer, checks) beyond the CPM
DEFAULT_CPM_STACK = 2048                # when the manifest does not say (the CPM keeps data in its arena)
DEFAULT_DATA_SIZE = 16 * 1024           # TA heap: the CPM never allocates; libutee's session bookkeeping
_CPM_FILES = ("mirrornet_cpm.c", "mirrornet_cpm.h", "math.h")


@dataclasses.dataclass(frozen=True)
class CpmHeader:
    """What ``mirrornet_cpm.h`` declares."""

    num_taps: int
    tap_sizes: tuple
    tap_floats: int
    num_classes: int
    arena_bytes: int
    weight_bytes: int
    source_sha256: str


@dataclasses.dataclass(frozen=True)
class PackagedTa:
    """What ``package_ta`` produced (also recorded in the manifest under "ta")."""

    build_dir: Path
    uuid: str
    policy: str
    max_invoke_bytes: int
    stack_size: int
    data_size: int
    source_sha256: str
    sim_ta: Path
    sim_peaks: dict             # {"stack_peak": bytes, "heap_peak": bytes} measured in the simulator
    signed_ta: Path | None      # None with sim_only
    encrypted: bool | None
    elf: dict | None            # text / rodata / data / bss of the dev kit's ELF
    footprint: dict | None      # secure-memory estimate against the RPi3 budget


def read_cpm_header(cpm_dir) -> CpmHeader:
    """Parse the generated CPM header and check it against the generated C's hash."""
    cpm_dir = Path(cpm_dir)
    for name in _CPM_FILES:
        if not (cpm_dir / name).is_file():
            raise ArtifactError(f"{cpm_dir / name} is missing: run `mirrornet compile` to generate the CPM's C")
    text = (cpm_dir / "mirrornet_cpm.h").read_text()
    defs = dict(re.findall(r"^#define[ \t]+MIRRORNET_CPM_(\w+)[ \t]+(.+?)[ \t]*(?:/\*.*)?$", text, flags=re.M))
    try:
        sizes = tuple(int(x) for x in re.findall(r"\d+", defs["TAP_SIZES"]))
        sha = re.fullmatch(r'"([^"]*)"', defs["SOURCE_SHA256"]).group(1)
        header = CpmHeader(
            num_taps=int(defs["NUM_TAPS"]), tap_sizes=sizes, tap_floats=int(defs["TAP_FLOATS"]),
            num_classes=int(defs["NUM_CLASSES"]), arena_bytes=int(defs["ARENA_BYTES"].rstrip("uUlL")),
            weight_bytes=int(defs["WEIGHT_BYTES"].rstrip("uUlL")), source_sha256=sha,
        )
    except (KeyError, ValueError, AttributeError) as err:
        raise ArtifactError(f"{cpm_dir / 'mirrornet_cpm.h'} lacks the CPM C API's size macros ({err}); "
                            "regenerate it with `mirrornet compile`") from err
    if len(header.tap_sizes) != header.num_taps or sum(header.tap_sizes) != header.tap_floats:
        raise ArtifactError(f"{cpm_dir / 'mirrornet_cpm.h'}: TAP_SIZES {header.tap_sizes} does not match "
                            f"NUM_TAPS {header.num_taps} / TAP_FLOATS {header.tap_floats}")
    if not 1 <= header.num_taps <= 16:
        raise ArtifactError(f"the CPM reads {header.num_taps} taps; the TA supports 1 to 16")
    actual = hashlib.sha256((cpm_dir / "mirrornet_cpm.c").read_bytes()).hexdigest()
    if re.fullmatch(r"[0-9a-f]{64}", header.source_sha256) and actual != header.source_sha256:
        raise ArtifactError(f"{cpm_dir / 'mirrornet_cpm.c'} does not match the hash in its header "
                            "(edited after generation?): regenerate it with `mirrornet compile`")
    return header


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _config_header(policy: str, shm_limit: int, stack: int, data: int, source: str) -> str:
    return f"""/* Generated by `mirrornet package-ta` from {source}; do not edit. */
#ifndef MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_CONFIG_H
#define MIRRORNET_TA_OUTPUT_POLICY MIRRORNET_TA_POLICY_{policy.upper()}
#define MIRRORNET_TA_MAX_INVOKE_BYTES {shm_limit}
#define MIRRORNET_TA_STACK_SIZE {stack}
#define MIRRORNET_TA_DATA_SIZE {data}
#endif
"""


def _assemble(build_dir: Path, cpm_dir: Path, config: str) -> Path:
    """Write BUILD/ta_build afresh: template + CPM sources + config header."""
    final = build_dir / "ta_build"
    tmp = Path(tempfile.mkdtemp(prefix=".ta_build.", dir=build_dir))
    try:
        shutil.copytree(ta_template(), tmp / "ta", ignore=shutil.ignore_patterns(
            "out", "*.o", "*.ta", "cpm", "mirrornet_ta_config.h"))
        (tmp / "ta" / "cpm").mkdir()
        for f in sorted(cpm_dir.iterdir()):
            if f.is_file() and f.suffix in (".c", ".h"):
                shutil.copy2(f, tmp / "ta" / "cpm" / f.name)
        (tmp / "ta" / "include" / "mirrornet_ta_config.h").write_text(config)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "ta", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _sim_peaks(build_dir: Path, header: CpmHeader) -> dict:
    """Run the simulated TA once (GET_INFO, RUN_CPM on zero taps) and read its high-water marks."""
    from .session import TeeSession

    with tempfile.TemporaryDirectory(prefix="mirrornet-sim-stats-") as tmp:
        stats = Path(tmp) / "stats"
        old = os.environ.get("MIRRORNET_TEE_SIM_STATS")
        os.environ["MIRRORNET_TEE_SIM_STATS"] = str(stats)
        try:
            with TeeSession(build_dir, tee="sim", ta_dir=build_dir / "sim", check_identity=False) as tee:
                if tee.info.source_sha256 != header.source_sha256:
                    raise TeeError("the simulated TA reports another CPM than the one just packaged")
                tee.run(np.zeros(header.tap_floats, np.float32))
        finally:
            if old is None:
                os.environ.pop("MIRRORNET_TEE_SIM_STATS", None)
            else:
                os.environ["MIRRORNET_TEE_SIM_STATS"] = old
        if not stats.is_file():
            raise TeeError("the simulated TA did not report its stack and heap use")
        return {k: int(v) for k, v in (kv.split("=") for kv in stats.read_text().split())}


def _update_manifest(build_dir: Path, record: dict) -> None:
    path = build_dir / "manifest.json"
    manifest = read_json(path)
    manifest["ta"] = record
    write_json(path, manifest)


def package_ta(build_dir, policy: str = "logits", encrypt: bool | None = None,
               shm_limit: int = DEFAULT_SHM_LIMIT, sim_only: bool = False, devkit=None, sign_key=None,
               enc_key: str | None = None, ta_budget: int | None = None, progress: bool = True) -> PackagedTa:
    """Build the build folder's CPM into the MirrorNet TA (see the module docstring)."""
    from tqdm import tqdm

    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise ArtifactError(f"build folder {build_dir} does not exist: run `mirrornet compile` first")
    if not (build_dir / "manifest.json").is_file():
        raise ArtifactError(f"{build_dir / 'manifest.json'} is missing: run `mirrornet compile` first")
    if policy not in POLICIES:
        raise UsageError(f"--policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if sim_only and encrypt:
        raise UsageError("--encrypt needs the OP-TEE dev kit; drop --sim-only")
    kit = None if sim_only else devkit_mod.find_devkit(devkit)   # fail before building anything
    manifest = read_json(build_dir / "manifest.json")
    header = read_cpm_header(build_dir / "cpm")
    output_bytes = 4 if policy == "label" else 4 * header.num_classes
    if not max(output_bytes, 192, 4) <= shm_limit <= MAX_SHM_LIMIT:
        raise UsageError(f"--shm-limit {shm_limit} must lie between {max(output_bytes, 192)} bytes (the "
                         f"TA's largest answer) and {MAX_SHM_LIMIT} (OP-TEE's shared-memory pool)")

    cpm_stack = int(manifest.get("cpm", {}).get("max_stack_bytes") or DEFAULT_CPM_STACK)
    stack = _round_up(cpm_stack + TA_RUNTIME_STACK + 4 * header.num_classes, 1024)
    data = _round_up(max(DEFAULT_DATA_SIZE, int(manifest.get("cpm", {}).get("heap_bytes") or 0)), 1024)

    if "ta" in manifest:    # a failed run must not leave the previous TA's record behind
        del manifest["ta"]
        write_json(build_dir / "manifest.json", manifest)
    steps = ["assemble", "simulator build", "simulator check"] + ([] if sim_only else ["dev kit build"])
    bar = tqdm(total=len(steps), desc="package-ta", unit="step", file=sys.stderr, leave=False,
               disable=not progress)
    try:
        bar.set_postfix_str("assemble")
        config = _config_header(policy, shm_limit, stack, data, f"{build_dir.name}/manifest.json")
        ta_build = _assemble(build_dir, build_dir / "cpm", config)
        abi = load_abi(ta_build / "include" / "mirrornet_ta.h")
        bar.update()

        bar.set_postfix_str("simulator build")
        sim_ta = build_host_ta(ta_build, build_dir / "sim" / f"{abi.uuid}.sim")
        bar.update()
        bar.set_postfix_str("simulator check")
        record = {
            "generated_by": "mirrornet package-ta",
            "uuid": abi.uuid, "policy": policy, "output_bytes": output_bytes,
            "max_invoke_bytes": shm_limit, "stack_size": stack, "data_size": data,
            "source_sha256": header.source_sha256, "tap_sizes": list(header.tap_sizes),
            "sim_ta": str(sim_ta.relative_to(build_dir)),
            "signed_ta": None, "encrypted": None,
        }
        peaks = _sim_peaks(build_dir, header)
        if peaks["stack_peak"] > stack or peaks["heap_peak"] > data:
            raise TeeError(f"the simulated TA used {peaks} beyond TA_STACK_SIZE {stack} / TA_DATA_SIZE {data}")
        record["sim_peaks"] = {"stack_peak": peaks["stack_peak"], "heap_peak": peaks["heap_peak"]}
        bar.update()

        signed = encrypted = sizes = fp = None
        if not sim_only:
            bar.set_postfix_str("dev kit build")
            supports = "CFG_ENCRYPT_TA" in (kit / "mk" / "link.mk").read_text(errors="replace") \
                if (kit / "mk" / "link.mk").is_file() else False
            if encrypt and not supports:
                raise TeeError(f"the dev kit {kit} cannot encrypt TAs (no CFG_ENCRYPT_TA in mk/link.mk); "
                               "use --no-encrypt")
            encrypted = supports if encrypt is None else bool(encrypt)
            out_dir = ta_build / "out"
            built = devkit_mod.build_ta(ta_build, kit, abi.uuid, out_dir, encrypted, sign_key, enc_key)
            devkit_mod.verify_ta(kit, built["ta"], abi.uuid, sign_key,
                                 (enc_key or devkit_mod.DEFAULT_TA_ENC_KEY) if encrypted else None)
            if devkit_mod.is_encrypted(built["ta"]) != encrypted:
                raise TeeError(f"{built['ta']} is {'not ' if encrypted else ''}encrypted, contrary to the request")
            signed = build_dir / f"{abi.uuid}.ta"
            with atomic_path(signed) as tmp:
                shutil.copyfile(built["ta"], tmp)
            built["ta"].unlink()    # one <uuid>.ta per build folder
            sizes = elf_sizes(built["elf"])
            fp = budget_mod.footprint(sizes, stack, ta_budget)
            record.update({
                "signed_ta": signed.name, "encrypted": encrypted,
                "signing_key": str(sign_key) if sign_key else "dev kit default keys/default_ta.pem (public)",
                "encryption_key": (None if not encrypted else "custom --enc-key" if enc_key else
                                   "dev kit default TA_ENC_KEY (derived from the all-zero HUK; public)"),
                "devkit": str(kit), "elf": sizes.as_dict(), "footprint": fp.as_dict(),
            })
            _update_manifest(build_dir, record)
            budget_mod.check_fits(fp)
            bar.update()
        else:
            _update_manifest(build_dir, record)
    finally:
        bar.close()
    return PackagedTa(
        build_dir=build_dir, uuid=abi.uuid, policy=policy, max_invoke_bytes=shm_limit, stack_size=stack,
        data_size=data, source_sha256=header.source_sha256, sim_ta=sim_ta, sim_peaks=record["sim_peaks"],
        signed_ta=signed, encrypted=encrypted, elf=sizes.as_dict() if sizes else None,
        footprint=fp.as_dict() if fp else None,
    )
