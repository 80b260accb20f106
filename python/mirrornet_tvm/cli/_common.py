"""Helpers shared by the subcommands."""
from __future__ import annotations

from ..errors import NotBuiltYet


def not_built(command: str, issue: str) -> None:
    """Raise the standard 'not built yet' error for a planned subcommand."""
    raise NotBuiltYet(f"`mirrornet {command}` is not built yet ({issue}); nothing was done")
