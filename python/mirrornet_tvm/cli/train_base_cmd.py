"""`mirrornet train-base`: train a zoo model on a dataset and save it as ONNX (not built yet)."""
import click

from ._common import not_built


@click.command("train-base", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_base(args):
    """Train a zoo model on a dataset and save it as ONNX. (Not built yet.)"""
    not_built("train-base", "the foundation issue")
