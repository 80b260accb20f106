"""`mirrornet report`: print an artifact's metrics (not built yet)."""
import click

from ._common import not_built


@click.command("report", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def report(args):
    """Print an artifact's metrics. (Not built yet.)"""
    not_built("report", "the MirrorNet training issue")
