"""`mirrornet run`: protected inference on a dataset split (not built yet)."""
import click

from ._common import not_built


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args):
    """Protected inference on a dataset split. (Not built yet.)"""
    not_built("run", "the TA issue")
