"""`mirrornet package-ta`: build the CPM into a signed OP-TEE TA (not built yet)."""
import click

from ._common import not_built


@click.command("package-ta", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def package_ta(args):
    """Build the CPM into a signed OP-TEE TA. (Not built yet.)"""
    not_built("package-ta", "the TA issue")
