"""`mirrornet strategies`: enumerate and rank CPM strategies (not built yet)."""
import click

from ._common import not_built


@click.command("strategies", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def strategies(args):
    """Enumerate and rank CPM strategies. (Not built yet.)"""
    not_built("strategies", "the strategy generator / emulator issues")
