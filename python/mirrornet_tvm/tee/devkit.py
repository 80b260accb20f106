"""Build a TA with the real OP-TEE TA dev kit (Debian's ``optee-os-dev``) into a signed ``<uuid>.ta``.

The dev kit comes from ``scripts/optee-env.sh devkit`` (or ``$TA_DEV_KIT_DIR``). It cross-compiles the
TA with ``aarch64-linux-gnu-gcc`` in OP-TEE's TA environment (``-nostdinc``, libutils, no libm), links
it, and signs it with ``scripts/sign_encrypt.py``; with ``CFG_ENCRYPT_TA=y`` it also encrypts the TA
image (AES-GCM) with ``TA_ENC_KEY``.

What the keys protect, with the dev kit's defaults:
- signing key ``keys/default_ta.pem`` is OP-TEE's public test key: anyone can sign a TA this OP-TEE
  build accepts. A deployment signs with its own key (``--sign-key``) in an OP-TEE core built with the
  matching public key.
- the default ``TA_ENC_KEY`` is derived from the default hardware unique key (16 zero bytes) and is
  printed in the dev kit's own makefile: encryption with it keeps the weights out of plain sight
  (``strings``, a file scan) but anyone who knows OP-TEE can decrypt the TA. Real protection needs a
  device-specific key (``--enc-key``) provisioned in the core's ``tee_otp_get_ta_enc_key`` and a
  secure boot chain, which the Raspberry Pi 3 port does not have.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import CompileError, TeeError
from .sources import repo_root

# link.mk's documented default (derived from the default all-zero hardware unique key).
DEFAULT_TA_ENC_KEY = "b64d239b1f3c7d3b06506229cd8ff7c8af2bb4db2168621ac62c84948468c4f4"
CROSS_COMPILE = "aarch64-linux-gnu-"
SIGNING_PYTHON = "/usr/bin/python3"   # the dev kit's script needs python3-cryptography/-pyelftools


def find_devkit(devkit=None) -> Path:
    """The TA dev kit folder: ``devkit``, ``$TA_DEV_KIT_DIR``, or ``scripts/optee-env.sh devkit``."""
    if devkit is None:
        devkit = os.environ.get("TA_DEV_KIT_DIR")
    if devkit is None:
        script = repo_root() / "scripts" / "optee-env.sh"
        if not script.is_file():
            raise TeeError(f"no OP-TEE TA dev kit: {script} is missing; give --devkit DIR or set "
                           "TA_DEV_KIT_DIR")
        proc = subprocess.run([str(script), "devkit"], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise TeeError(f"`scripts/optee-env.sh devkit` could not provide the OP-TEE TA dev kit: "
                           f"{proc.stderr.strip()[-800:]}")
        devkit = proc.stdout.strip().splitlines()[-1]
    devkit = Path(devkit)
    if not (devkit / "mk" / "ta_dev_kit.mk").is_file():
        raise TeeError(f"{devkit} is not an OP-TEE TA dev kit (no mk/ta_dev_kit.mk)")
    return devkit


def _check_tools():
    if not shutil.which(CROSS_COMPILE + "gcc"):
        raise TeeError("aarch64-linux-gnu-gcc not found: install gcc-aarch64-linux-gnu "
                       "(scripts/setup.sh does)")
    if not Path(SIGNING_PYTHON).exists():
        raise TeeError(f"{SIGNING_PYTHON} not found: the dev kit's signing script needs the system "
                       "Python with python3-cryptography and python3-pyelftools")
    for module in ("cryptography", "elftools"):
        proc = subprocess.run([SIGNING_PYTHON, "-c", f"import {module}"], capture_output=True)
        if proc.returncode != 0:
            pkg = "python3-cryptography" if module == "cryptography" else "python3-pyelftools"
            raise TeeError(f"{SIGNING_PYTHON} lacks the module {module}: install {pkg}")


def build_ta(ta_build, devkit: Path, uuid: str, out_dir, encrypt: bool, sign_key=None,
             enc_key: str | None = None) -> dict:
    """Run the dev kit's make in ``ta_build``; objects and outputs go to ``out_dir``.

    Returns the paths of ``ta`` (signed, maybe encrypted), ``elf`` (unstripped) and the make log.
    """
    _check_tools()
    ta_build, out_dir, devkit = Path(ta_build).resolve(), Path(out_dir).resolve(), Path(devkit).resolve()
    args = ["make", "-C", str(ta_build), f"CROSS_COMPILE={CROSS_COMPILE}", f"TA_DEV_KIT_DIR={devkit}",
            f"PYTHON3={SIGNING_PYTHON}", f"O={out_dir}", f"CFG_ENCRYPT_TA={'y' if encrypt else 'n'}"]
    if sign_key is not None:
        if not Path(sign_key).is_file():
            raise TeeError(f"signing key {sign_key} does not exist")
        args.append(f"TA_SIGN_KEY={Path(sign_key).resolve()}")
    if encrypt and enc_key is not None:
        if len(enc_key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in enc_key):
            raise TeeError("--enc-key must be 64 hex digits (a 256-bit AES key)")
        args.append(f"TA_ENC_KEY={enc_key}")
    proc = subprocess.run(args, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise CompileError(f"the OP-TEE dev kit could not build the TA (make exit {proc.returncode}):\n"
                           f"{log.strip()[-4000:]}")
    ta, elf = out_dir / f"{uuid}.ta", out_dir / f"{uuid}.elf"
    if not ta.is_file() or not elf.is_file():
        raise CompileError(f"the dev kit's make succeeded but {ta.name} or {elf.name} is missing in {out_dir}")
    return {"ta": ta, "elf": elf, "log": log}


def verify_ta(devkit: Path, ta, uuid: str, sign_key=None, enc_key: str | None = None) -> None:
    """Check the TA's signature (and decryptability) with the dev kit's ``sign_encrypt.py verify``."""
    key = Path(sign_key) if sign_key is not None else devkit / "keys" / "default_ta.pem"
    args = [SIGNING_PYTHON, str(devkit / "scripts" / "sign_encrypt.py"), "verify", "--uuid", uuid,
            "--in", str(ta), "--key", str(key)]
    if enc_key is not None:
        args += ["--enc-key", enc_key]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{ta} does not verify with {key}: {(proc.stderr or proc.stdout).strip()[-800:]}")


def is_encrypted(ta) -> bool:
    """Whether a signed TA image is of type SHDR_ENCRYPTED_TA (its header's img_type == 2)."""
    head = Path(ta).read_bytes()[:8]
    if head[:4] != b"HSTO":
        raise TeeError(f"{ta} is not a signed OP-TEE TA (no 'HSTO' header)")
    return int.from_bytes(head[4:8], "little") == 2
