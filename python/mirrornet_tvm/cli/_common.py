"""Helpers shared by the subcommands."""
from __future__ import annotations

import click

from ..errors import NotBuiltYet, UsageError


def _parse_shape(ctx, param, value):
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise UsageError(f"--input-shape takes C,H,W (three positive sizes, e.g. 3,224,224), not {value!r}")
    return shape


input_shape_option = click.option(
    "--input-shape", metavar="C,H,W", default=None, callback=_parse_shape,
    help="Input size for a model with dynamic input dimensions (a dynamic batch is fixed to 1 anyway).")


def not_built(command: str, issue: str) -> None:
    """Raise the standard 'not built yet' error for a planned subcommand."""
    raise NotBuiltYet(f"`mirrornet {command}` is not built yet ({issue}); nothing was done")
