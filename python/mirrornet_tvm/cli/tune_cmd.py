"""`mirrornet tune`: measure and tune through TVM RPC (not built yet)."""
import click

from ._common import not_built


@click.command("tune", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def tune(args):
    """Measure and tune through TVM RPC. (Not built yet.)"""
    not_built("tune", "the emulator issue")
