"""`mirrornet run`: protected inference on a dataset split (backbone on the Relax VM, CPM in the TA)."""
from __future__ import annotations

import click


@click.command("run")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--dataset", required=True, metavar="NAME",
              help="fashion-mnist, mnist, fashion-mnist-rgb, mnist-rgb, or a path to an .npz file.")
@click.option("--tee", type=click.Choice(["sim", "qemu", "optee"]), default="sim", show_default=True,
              help="Where the TA runs: host simulator, OP-TEE under QEMU, or this board's OP-TEE.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N test images [default: the whole test split].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def run(build_dir, dataset, tee, limit, json_out, quiet):
    """Protected inference over the test split of a dataset with BUILD_DIR's backbone and TA.

    Prints the authorized accuracy and the latency per image (mean and p95) of the backbone, the
    transfer into the TEE and back, and the CPM (by the TA's own clock).
    """
    from .. import data
    from ..tee.protected import protected_inference
    from ..util import write_json

    _, _, x_test, y_test = data.load(dataset)
    if limit is not None:
        x_test, y_test = x_test[:limit], y_test[:limit]
    res = protected_inference(build_dir, x_test, y_test, tee=tee, progress=not quiet)
    click.echo(f"protected inference: {dataset} test split, {res.images} images, TEE {tee}, "
               f"policy {res.policy}")
    click.echo(f"authorized accuracy: {res.accuracy:.2%} ({res.correct}/{res.images})")
    click.echo(f"{'latency per image':<22}{'mean ms':>10}{'p95 ms':>10}")
    names = {"backbone": "backbone (Relax VM)", "transfer": "transfer (TEE trip)", "cpm": "CPM (TA clock)",
             "total": "total"}
    for key, stats in res.latency.items():
        click.echo(f"  {names.get(key, key):<20}{stats.mean_ms:>10.3f}{stats.p95_ms:>10.3f}")
    if res.note:
        click.echo(f"note: {res.note}")
    if json_out:
        write_json(json_out, {"dataset": dataset, **res.to_dict()})
