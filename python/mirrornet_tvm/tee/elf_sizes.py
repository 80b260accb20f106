"""Sizes of an ELF file's sections, grouped as ``size`` groups them (text / rodata / data / bss).

A small reader of ELF64 and ELF32 section headers (little-endian), enough to account for a TA's
memory: code, read-only data (the CPM weights live there), initialised data, and zero-initialised
data (.bss: the CPM arena, the TA's copy of the taps, the TA_DATA_SIZE heap).
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

from ..errors import ArtifactError

_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_SHT_NOBITS = 8


@dataclasses.dataclass(frozen=True)
class ElfSizes:
    text: int       # executable sections
    rodata: int     # allocated, read-only, not executable (weights, constants, relocations)
    data: int       # allocated, writable, initialised
    bss: int        # allocated, writable, zero-initialised
    machine: str    # "aarch64", "x86_64", ...

    @property
    def total(self) -> int:
        return self.text + self.rodata + self.data + self.bss

    def as_dict(self) -> dict:
        return {"text": self.text, "rodata": self.rodata, "data": self.data, "bss": self.bss,
                "total": self.total, "machine": self.machine}


_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0x03: "x86"}


def elf_sizes(path) -> ElfSizes:
    """Sum the allocated sections of the ELF file ``path`` by kind."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    if raw[:4] != b"\x7fELF" or raw[5] != 1:
        raise ArtifactError(f"{path} is not a little-endian ELF file")
    is64 = raw[4] == 2
    machine = _MACHINES.get(struct.unpack_from("<H", raw, 18)[0], "unknown")
    if is64:
        shoff, = struct.unpack_from("<Q", raw, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", raw, 0x3A)
        fmt = "<IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from("<I", raw, 0x20)
        shentsize, shnum = struct.unpack_from("<HH", raw, 0x2E)
        fmt = "<IIIIIIIIII"
    if shoff == 0 or shoff + shnum * shentsize > len(raw):
        raise ArtifactError(f"{path} has no readable section headers")
    text = rodata = data = bss = 0
    for i in range(shnum):
        fields = struct.unpack_from(fmt, raw, shoff + i * shentsize)
        sh_type, flags, size = fields[1], fields[2], fields[5]
        if not flags & _SHF_ALLOC:
            continue
        if flags & _SHF_EXECINSTR:
            text += size
        elif sh_type == _SHT_NOBITS:
            bss += size
        elif flags & _SHF_WRITE:
            data += size
        else:
            rodata += size
    return ElfSizes(text, rodata, data, bss, machine)
