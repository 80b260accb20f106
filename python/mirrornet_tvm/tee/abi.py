"""The TA's contract as the Python client reads it: parsed from ``mirrornet_ta.h``, not restated.

``ta/include/mirrornet_ta.h`` is the one place that defines the UUID, the command IDs, the output
policies and the layout of the GET_INFO answer. This module reads the header of the TA that was built
(``BUILD/ta_build/include/mirrornet_ta.h``), or the template's, into a frozen ``TaAbi``.
"""
from __future__ import annotations

import dataclasses
import re
import struct
import uuid as uuidlib
from pathlib import Path

from ..errors import TeeError
from .sources import ta_template

POLICY_NAMES = {"LOGITS": "logits", "PROBS": "probs", "LABEL": "label"}
_C_TYPES = {"uint32_t": "I", "uint64_t": "Q", "char": "s"}


@dataclasses.dataclass(frozen=True)
class TaInfo:
    """The TA's GET_INFO answer."""

    policy: str                 # "logits" | "probs" | "label"
    num_taps: int
    tap_sizes: tuple
    tap_floats: int
    num_classes: int
    output_bytes: int
    max_invoke_bytes: int
    arena_bytes: int
    weight_bytes: int
    clock_resolution_ns: int
    runs: int
    cpm_ns_total: int
    source_sha256: str

    @property
    def tap_bytes(self) -> int:
        return self.tap_floats * 4


@dataclasses.dataclass(frozen=True)
class TaAbi:
    """Constants and the GET_INFO layout from one copy of ``mirrornet_ta.h``."""

    header: str                 # path of the header this was read from
    uuid: str
    commands: dict              # "GET_INFO" -> 0, ...
    policies: dict              # 0 -> "logits", ...
    info_magic: int
    abi_version: int
    max_taps: int
    info_bytes: int
    info_fields: tuple          # ((name, struct format), ...) in order

    def command(self, name: str) -> int:
        return self.commands[name]

    def uuid_fields(self) -> tuple:
        """(timeLow, timeMid, timeHiAndVersion, clockSeqAndNode bytes) for a TEEC_UUID."""
        u = uuidlib.UUID(self.uuid)
        return u.time_low, u.time_mid, u.time_hi_version, u.bytes[8:]

    def parse_info(self, raw: bytes) -> TaInfo:
        if len(raw) != self.info_bytes:
            raise TeeError(f"GET_INFO answered {len(raw)} bytes, the contract says {self.info_bytes}")
        fmt = "<" + "".join(f for _, f in self.info_fields)
        values = dict(zip((n for n, _ in self.info_fields), _group(struct.unpack(fmt, raw), self.info_fields)))
        if values["magic"] != self.info_magic:
            raise TeeError(f"GET_INFO magic 0x{values['magic']:08x} is not 0x{self.info_magic:08x}: "
                           "this is not the MirrorNet CPM TA")
        if values["abi_version"] != self.abi_version:
            raise TeeError(f"the TA speaks ABI version {values['abi_version']}, this client "
                           f"{self.abi_version}: rebuild the TA with `mirrornet package-ta`")
        policy = self.policies.get(values["policy"])
        n = values["num_taps"]
        if policy is None or not 1 <= n <= self.max_taps:
            raise TeeError(f"GET_INFO answer is inconsistent (policy {values['policy']}, {n} taps)")
        sizes = tuple(int(s) for s in values["tap_sizes"][:n])
        if sum(sizes) != values["tap_floats"]:
            raise TeeError(f"GET_INFO tap sizes {sizes} do not add up to {values['tap_floats']}")
        return TaInfo(
            policy=policy, num_taps=n, tap_sizes=sizes, tap_floats=values["tap_floats"],
            num_classes=values["num_classes"], output_bytes=values["output_bytes"],
            max_invoke_bytes=values["max_invoke_bytes"], arena_bytes=values["arena_bytes"],
            weight_bytes=values["weight_bytes"], clock_resolution_ns=values["clock_resolution_ns"],
            runs=values["runs"], cpm_ns_total=values["cpm_ns_total"],
            source_sha256=values["source_sha256"].split(b"\0", 1)[0].decode("ascii", "replace"),
        )


def _group(flat, fields):
    """Regroup struct.unpack's flat tuple by field (arrays become tuples)."""
    out, i = [], 0
    for _, fmt in fields:
        m = re.fullmatch(r"(\d*)([IQs])", fmt)
        count = int(m.group(1) or 1)
        if m.group(2) == "s":
            out.append(flat[i])
            i += 1
        elif count == 1:
            out.append(flat[i])
            i += 1
        else:
            out.append(tuple(flat[i:i + count]))
            i += count
    return out


def _int(text: str) -> int:
    return int(text.rstrip("uUlL"), 0)


def load_abi(header=None) -> TaAbi:
    """Read ``mirrornet_ta.h`` (default: the TA template's) into a ``TaAbi``."""
    header = Path(header) if header is not None else ta_template() / "include" / "mirrornet_ta.h"
    try:
        text = header.read_text()
    except OSError as err:
        raise TeeError(f"cannot read the TA contract header {header}: {err}") from err
    defines = dict(re.findall(r"^#define[ \t]+(MIRRORNET_TA_\w+)[ \t]+(\S+)", text, flags=re.M))
    try:
        uuid = re.search(r'^#define\s+MIRRORNET_TA_UUID_STRING\s+"([0-9a-f-]{36})"', text, re.M).group(1)
        commands = {k[len("MIRRORNET_TA_CMD_"):]: _int(v) for k, v in defines.items()
                    if k.startswith("MIRRORNET_TA_CMD_")}
        policies = {_int(v): POLICY_NAMES[k[len("MIRRORNET_TA_POLICY_"):]] for k, v in defines.items()
                    if k.startswith("MIRRORNET_TA_POLICY_")}
        max_taps = _int(defines["MIRRORNET_TA_MAX_TAPS"])
        body = re.search(r"struct\s+mirrornet_ta_info\s*\{(.*?)\};", text, re.S).group(1)
        fields = []
        for ctype, name, count in re.findall(r"^\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;", body, re.M):
            n = 1 if not count else (max_taps if count == "MIRRORNET_TA_MAX_TAPS" else _int(count))
            code = _C_TYPES[ctype]
            fields.append((name, f"{n}s" if code == "s" else (f"{n}{code}" if n > 1 else code)))
        abi = TaAbi(
            header=str(header), uuid=uuid, commands=commands, policies=policies,
            info_magic=_int(defines["MIRRORNET_TA_INFO_MAGIC"]),
            abi_version=_int(defines["MIRRORNET_TA_ABI_VERSION"]), max_taps=max_taps,
            info_bytes=_int(defines["MIRRORNET_TA_INFO_BYTES"]), info_fields=tuple(fields),
        )
    except (AttributeError, KeyError, ValueError) as err:
        raise TeeError(f"{header} does not have the expected contract ({err!r}); is it the MirrorNet "
                       "TA header?") from err
    size = struct.calcsize("<" + "".join(f for _, f in abi.info_fields))
    if size != abi.info_bytes:
        raise TeeError(f"{header}: struct mirrornet_ta_info adds up to {size} bytes, "
                       f"MIRRORNET_TA_INFO_BYTES says {abi.info_bytes}")
    for name in ("GET_INFO", "RUN_CPM", "LOAD_TAPS"):
        if name not in abi.commands:
            raise TeeError(f"{header} defines no MIRRORNET_TA_CMD_{name}")
    return abi
