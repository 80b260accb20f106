"""`mirrornet compile`: partition, compile the backbone and generate the CPM's C (not built yet)."""
import click

from ._common import not_built


@click.command("compile", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def compile_(args):
    """Partition, compile the backbone and generate the CPM's C. (Not built yet.)"""
    not_built("compile", "the partition/codegen issue")
