"""`mirrornet attack`: security evaluation: illegal use and model stealing (not built yet)."""
import click

from ._common import not_built


@click.command("attack", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def attack(args):
    """Security evaluation: illegal use and model stealing. (Not built yet.)"""
    not_built("attack", "the security-evaluation issue")
