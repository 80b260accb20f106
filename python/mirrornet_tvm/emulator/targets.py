"""Targets the emulator measures and predicts for: resolution from names or dicts, and a stable key.

A cost model is only valid for the target it was trained on; :func:`target_key` is the identity that
is stored with it and compared before every prediction.
"""
from __future__ import annotations

import json
import shutil

import tvm

from ..errors import UsageError

#: Raspberry Pi 3 (Cortex-A53, 64-bit Linux, four cores), the board the MirrorNet paper evaluates on.
RPI3 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "num-cores": 4}

_ALIASES = {"raspberry-pi-3": RPI3}


def host_target() -> tvm.target.Target:
    """The CPU this process runs on, exactly as ``mirrornet compile --target host`` builds for it."""
    return resolve_target("host")


def resolve_target(spec=None) -> tvm.target.Target:
    """``None``/``"host"``, a preset (``"rpi3"``), a dict, its JSON text or a Target -> a Target.

    Names and dicts resolve as the backbone build resolves them (:func:`mirrornet_tvm.build.resolve_target`),
    so a cost model trained for ``host`` is bound to the very target ``mirrornet compile`` uses.
    """
    if isinstance(spec, tvm.target.Target):
        return spec
    from ..build import resolve_target as build_target

    if isinstance(spec, str) and spec in _ALIASES:
        spec = dict(_ALIASES[spec])
    if isinstance(spec, dict) and spec.get("kind") != "llvm":
        try:
            return tvm.target.Target(spec)
        except Exception as err:  # TVM raises its own error types for unknown kinds / attributes
            raise UsageError(f"TVM rejected the target {json.dumps(spec)}: {err}") from None
    return build_target(spec).target


def _plain(value):
    """Plain JSON data from what ``Target.export()`` returns (FFI arrays and maps included)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)


def target_dict(target) -> dict:
    """The target as plain JSON data (what :func:`resolve_target` accepts back)."""
    target = resolve_target(target)
    exported = _plain(dict(target.export()))
    if exported.get("tag") == "":
        del exported["tag"]
    return exported


def target_key(target) -> str:
    """A canonical string identifying the target (sorted JSON of its exported attributes)."""
    return json.dumps(target_dict(target), sort_keys=True, separators=(",", ":"))


def is_cross(target) -> bool:
    """True when code for ``target`` cannot run on this machine (another ISA)."""
    triple = str(target_dict(target).get("mtriple", ""))
    host = str(target_dict(host_target()).get("mtriple", ""))
    return bool(triple) and triple.split("-")[0] != host.split("-")[0]


def compiler_for(target) -> str:
    """The C compiler that links libraries for ``target`` (a cross compiler for another ISA)."""
    if not is_cross(target):
        return shutil.which("gcc") or shutil.which("cc") or "gcc"
    triple = str(target_dict(target)["mtriple"])
    arch = triple.split("-")[0]
    candidates = [f"{triple}-gcc", f"{arch}-linux-gnu-gcc"]
    for cc in candidates:
        if shutil.which(cc):
            return cc
    raise UsageError(
        f"no cross compiler for {triple} found (tried {', '.join(candidates)}); "
        "install gcc-aarch64-linux-gnu (scripts/setup.sh does)"
    )
