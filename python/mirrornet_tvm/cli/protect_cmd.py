"""`mirrornet protect`: turn a trained model into a MirrorNet (backbone + CPM) (not built yet)."""
import click

from ._common import not_built


@click.command("protect", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def protect(args):
    """Turn a trained model into a MirrorNet (backbone + CPM). (Not built yet.)"""
    not_built("protect", "the MirrorNet training issue")
