"""`mirrornet train-base`: train a zoo model on a dataset and save it as ONNX (plus a JSON sidecar)."""
from __future__ import annotations

import click

from ..errors import UsageError

# zoo.ALL_NAMES (not imported here: importing the zoo imports torch): the small models, then the
# standard architectures, which take 3-channel images of at least 32x32 (e.g. --dataset fashion-mnist-rgb).
_MODELS = ("lenet", "vgg", "resnet", "resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1", "densenet121",
           "se_resnet18")


def _parse_shape(ctx, param, value):
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"'{value}' is not CxHxW (three positive integers, e.g. 1x28x28 or 3x32x32)")
    return shape


@click.command("train-base")
@click.option("--model", "model_name", required=True, type=click.Choice(_MODELS),
              help="Zoo model to train (resnet18 ... se_resnet18 need 3-channel data, e.g. fashion-mnist-rgb).")
@click.option("--dataset", required=True, metavar="NAME",
              help="fashion-mnist, mnist, fashion-mnist-rgb, mnist-rgb, or a path to an .npz file.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: lenet 4, vgg 3, resnet 3, the standard architectures 1].")
@click.option("--subset", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train on a deterministic class-stratified subset of N training images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and sample order.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Peak learning rate (Adam, cosine decay).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--in-shape", callback=_parse_shape, default=None, metavar="CxHxW",
              help="Input shape the model is built for; must match the dataset [default: the dataset's].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads [default: 1, the fastest on a shared 2-core machine].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def train_base(model_name, dataset, epochs, subset, seed, lr, batch_size, in_shape, threads, output, quiet):
    """Train a zoo model on a dataset and save it as ONNX.

    Writes OUTPUT (static batch 1, input `input`, output `logits`, opset 17), checked against PyTorch
    in onnxruntime, and OUTPUT.json (model, dataset, epochs, seed, test accuracy, ...).
    """
    from ..training_base import train_base as run

    if not str(output).endswith(".onnx"):
        raise UsageError(f"output {output} must be an .onnx file name")
    res = run(model_name, dataset, output, epochs=epochs, subset=subset, seed=seed, lr=lr,
              batch_size=batch_size, in_shape=in_shape, threads=threads, progress=not quiet)
    click.echo(
        f"test accuracy {res.test_accuracy:.2%} ({res.model} on {res.dataset}, {res.epochs} epoch(s), "
        f"{res.train_seconds:.0f} s) -> {output}"
    )
