"""Secure-memory budget of a Raspberry Pi 3 running OP-TEE, and whether a TA fits in it.

OP-TEE's ``plat-rpi3`` reserves 15 MiB of secure DRAM; the core takes about 7 MiB, which leaves about
8 MiB for every TA loaded at the same time (code, data, heap, stack, page tables). The CPM TA must leave
room for OP-TEE's own TAs and for other applications' TAs, so by default it may use half of that.

A TA's footprint, as OP-TEE maps it: its ELF segments (text + rodata, data + bss: bss holds the
TA_DATA_SIZE heap, the CPM arena and the TA's copy of the taps), each rounded up to 4 KiB pages, plus
the stack (TA_STACK_SIZE + the 2 KiB OP-TEE's framework adds), plus ldelf and the TA's page tables,
counted together as a fixed overhead.
"""
from __future__ import annotations

import dataclasses

from ..errors import CompileError
from .elf_sizes import ElfSizes

RPI3_SECURE_DRAM = 15 << 20
RPI3_OPTEE_CORE = 7 << 20
RPI3_TA_RAM = RPI3_SECURE_DRAM - RPI3_OPTEE_CORE   # for all TAs together
DEFAULT_TA_SHARE = 0.5                              # of RPI3_TA_RAM, for the CPM TA
PAGE = 4096
FRAMEWORK_STACK = 2048        # user_ta_header.c adds TA_FRAMEWORK_STACK_SIZE to TA_STACK_SIZE
LDELF_AND_TABLES = 96 << 10   # ldelf's own pages and the TA's translation tables (approximate)


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclasses.dataclass(frozen=True)
class TaFootprint:
    """Secure memory one instance of the TA occupies, and the budget it is checked against."""

    code_and_rodata: int
    data_and_bss: int            # includes the heap (TA_DATA_SIZE)
    stack: int
    overhead: int
    budget: int

    @property
    def total(self) -> int:
        return self.code_and_rodata + self.data_and_bss + self.stack + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def as_dict(self) -> dict:
        return {"code_and_rodata": self.code_and_rodata, "data_and_bss": self.data_and_bss,
                "stack": self.stack, "overhead": self.overhead, "total": self.total,
                "budget": self.budget, "rpi3_ta_ram": RPI3_TA_RAM, "fits_rpi3": self.fits}


def footprint(sizes: ElfSizes, stack_size: int, budget: int | None = None) -> TaFootprint:
    """The footprint of a TA whose ELF has ``sizes`` and whose TA_STACK_SIZE is ``stack_size``."""
    budget = int(RPI3_TA_RAM * DEFAULT_TA_SHARE) if budget is None else int(budget)
    return TaFootprint(
        code_and_rodata=_pages(sizes.text + sizes.rodata),
        data_and_bss=_pages(sizes.data + sizes.bss),
        stack=_pages(stack_size + FRAMEWORK_STACK),
        overhead=LDELF_AND_TABLES,
        budget=budget,
    )


def check_fits(fp: TaFootprint) -> None:
    """Raise CompileError when the TA does not fit its share of the Raspberry Pi 3's TA memory."""
    if not fp.fits:
        raise CompileError(
            f"the TA needs about {fp.total / 2**20:.2f} MiB of secure memory (code+rodata "
            f"{fp.code_and_rodata / 2**10:.0f} KiB, data+bss {fp.data_and_bss / 2**10:.0f} KiB, stack "
            f"{fp.stack / 2**10:.0f} KiB), more than its budget of {fp.budget / 2**20:.2f} MiB of the "
            f"Raspberry Pi 3's {RPI3_TA_RAM / 2**20:.0f} MiB for all TAs: choose a strategy with a "
            "smaller CPM (mirrornet strategies), or raise the budget with --ta-budget if the board "
            "runs no other TA"
        )
