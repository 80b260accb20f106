"""`mirrornet tune`: measure kernels on the target (locally or through TVM RPC), tune, train the cost model."""
from __future__ import annotations

import click

from ._common import input_shape_option


@click.command("tune")
@click.argument("source", type=click.Path())
@click.option("--rpc-tracker", metavar="HOST:PORT", default=None,
              help="Measure on devices registered with this TVM RPC tracker [default: on this machine].")
@click.option("--rpc-key", metavar="KEY", default=None, help="The devices' key at the tracker (with --rpc-tracker).")
@click.option("--target", default="host", show_default=True,
              help="TVM target: host, rpi3, or a JSON target dict.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: BUILD/tuning for a build folder, else <name>-tuning beside it].")
@click.option("--trials", type=click.IntRange(min=0), default=0, show_default=True,
              help="MetaSchedule trials for the backbone, measured on the device (0: measure only).")
@click.option("--corpus", type=click.IntRange(min=0), default=120, show_default=True,
              help="Random kernels measured besides the model's own.")
@click.option("--strategies", "n_strategies", type=click.IntRange(min=0), default=8, show_default=True,
              help="Strategies whose CPM kernels are measured.")
@click.option("--calibrate", type=click.IntRange(min=0), default=0, show_default=True,
              help="Strategies built and run in the host TEE simulator to calibrate the stage models.")
@click.option("--images", type=click.IntRange(min=1), default=30, show_default=True,
              help="Images per calibration run.")
@click.option("--tee", type=click.Choice(["sim", "optee"]), default="sim", show_default=True,
              help="Which TEE's C build the CPM kernels are measured as (sim: -O2, optee: -Os).")
@click.option("--repeat", type=click.IntRange(min=1), default=15, show_default=True,
              help="Timed runs per kernel (the best is kept).")
@click.option("--seed", type=int, default=0, show_default=True)
@input_shape_option
@click.option("--quiet", is_flag=True, help="No progress output.")
def tune(source, rpc_tracker, rpc_key, target, out_dir, trials, corpus, n_strategies, calibrate, images, tee,
         repeat, seed, input_shape, quiet):
    """Measure and tune SOURCE (a build folder, an artifact folder or an ONNX model) on the target.

    Writes OUT/measurements.jsonl (kernel timings, resumable), OUT/cost_model.json (the xgboost cost
    model for the target), OUT/database (MetaSchedule records, with --trials; give it to
    `mirrornet compile --database`), OUT/calibration.json (with --calibrate) and OUT/tune_report.json.
    """
    from ..emulator.harness import TimingConfig
    from ..emulator.rpc import LOCAL, rpc_device
    from ..emulator.targets import resolve_target
    from ..emulator.tuning import tune as run
    from ..errors import UsageError

    if rpc_key and not rpc_tracker:
        raise UsageError("--rpc-key needs --rpc-tracker HOST:PORT")
    device = rpc_device(rpc_tracker, rpc_key) if rpc_tracker else LOCAL
    report = run(source, out_dir, resolve_target(target), device, trials=trials, corpus=corpus,
                 strategies=n_strategies, calibrate=calibrate, images=images, tee=tee, seed=seed,
                 timing=TimingConfig(repeat=repeat), progress=not quiet, input_shape=input_shape)
    click.echo(f"tuned {report.source} for {report.target.get('kind')} "
               f"{report.target.get('mcpu') or report.target.get('mtriple') or ''} on {report.device} "
               f"in {report.seconds:.0f} s")
    kinds = ", ".join(f"{n} {f}" for f, n in report.measured.items())
    click.echo(f"  measurements: {kinds} ({report.new_measurements} new) -> {report.files['measurements']}")
    for flavour, t in report.training.items():
        click.echo(f"  cost model [{flavour}]: {t['kernels']} kernels, training RMSE {t['rmse_log']:.3f} (log s)")
    click.echo(f"  cost model -> {report.files['cost_model']}")
    if "database" in report.files:
        click.echo(f"  tuning database: {report.database_records} records -> {report.files['database']} "
                   f"(use: mirrornet compile ARTIFACT --database {report.files['database']})")
    if report.calibration:
        click.echo(f"  calibration: {report.calibration} -> {report.files['calibration']}")
    click.echo(f"  next: mirrornet strategies MODEL --tuning {report.out_dir} (ranked by predicted latency), "
               f"mirrornet protect MODEL --auto --tuning {report.out_dir} ...")
