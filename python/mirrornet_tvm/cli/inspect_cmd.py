"""`mirrornet inspect`: layers, shapes, FLOPs, params and candidate taps of an ONNX model (not built yet)."""
import click

from ._common import not_built


@click.command("inspect", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def inspect(args):
    """Layers, shapes, FLOPs, params and candidate taps of an ONNX model. (Not built yet.)"""
    not_built("inspect", "the front-end issue")
