"""The machine a measurement ran on, as the benchmark tables print it."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(python: bool = True) -> str:
    """``platform | CPU | N cores[ | Python X.Y.Z]``: one line for a table's header."""
    parts = [platform.platform(), cpu_model(), f"{os.cpu_count()} cores"]
    if python:
        parts.append(f"Python {platform.python_version()}")
    return " | ".join(parts)


__all__ = ["cpu_model", "describe"]
