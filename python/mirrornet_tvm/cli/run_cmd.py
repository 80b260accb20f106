"""`mirrornet run`: protected inference on a dataset split (backbone on the Relax VM, CPM in the TA)."""
from __future__ import annotations

import click


@click.command("run")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--dataset", default=None, metavar="NAME",
              help="fashion-mnist, mnist, fashion-mnist-rgb, mnist-rgb, or a path to an .npz file.")
@click.option("--random", "random_images", type=click.IntRange(min=1), default=None, metavar="N",
              help="Instead of a dataset: N seeded random images of the model's input shape (networks with no "
                   "dataset at their size). No accuracy: the outputs are compared with combined.onnx in "
                   "onnxruntime.")
@click.option("--tee", type=click.Choice(["sim", "qemu", "optee"]), default="sim", show_default=True,
              help="Where the TA runs: host simulator, OP-TEE under QEMU, or this board's OP-TEE.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N test images [default: the whole test split].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def run(build_dir, dataset, random_images, tee, limit, json_out, quiet):
    """Protected inference over the test split of a dataset with BUILD_DIR's backbone and TA.

    Prints the authorized accuracy and the latency per image (mean and p95) of the backbone, the
    transfer into the TEE and back, and the CPM (by the TA's own clock).
    """
    from .. import data
    from ..errors import UsageError
    from ..tee.protected import protected_inference, random_images as make_random, reference_agreement
    from ..util import write_json

    if (dataset is None) == (random_images is None):
        raise UsageError("give exactly one of --dataset NAME or --random N")
    if dataset is not None:
        _, _, x_test, y_test = data.load(dataset)
        source = f"{dataset} test split"
    else:
        x_test, y_test = make_random(build_dir, random_images), None
        source = "seeded random images"
    if limit is not None:
        x_test, y_test = x_test[:limit], None if y_test is None else y_test[:limit]
    res = protected_inference(build_dir, x_test, y_test, tee=tee, progress=not quiet)
    click.echo(f"protected inference: {source}, {res.images} images, TEE {tee}, policy {res.policy}")
    agreement = None
    if y_test is not None:
        click.echo(f"authorized accuracy: {res.accuracy:.2%} ({res.correct}/{res.images})")
    else:
        agreement = reference_agreement(build_dir, x_test, res)
        diff = ("" if agreement["max_abs_diff"] is None else
                f"max |diff| {agreement['max_abs_diff']:.2e} ({agreement['max_rel_diff']:.1e} of the largest "
                f"logit, {agreement['reference_scale']:.2e}), ")
        click.echo(f"against combined.onnx in onnxruntime: {diff}same top-1 on {agreement['same_top1']}/"
                   f"{res.images} images")
    click.echo(f"{'latency per image':<22}{'mean ms':>10}{'p95 ms':>10}")
    names = {"backbone": "backbone (Relax VM)", "transfer": "transfer (TEE trip)", "cpm": "CPM (TA clock)",
             "total": "total"}
    for key, stats in res.latency.items():
        click.echo(f"  {names.get(key, key):<20}{stats.mean_ms:>10.3f}{stats.p95_ms:>10.3f}")
    if res.note:
        click.echo(f"note: {res.note}")
    if json_out:
        write_json(json_out, {"dataset": dataset or f"random:{random_images}", **res.to_dict(),
                              "reference": agreement})
