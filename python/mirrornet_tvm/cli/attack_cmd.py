"""`mirrornet attack`: security evaluation of an artifact: illegal use and model stealing vs black-box."""
import click

from ..attack.evaluate import DEFAULT_BATCH_SIZE, DEFAULT_BUDGETS, DEFAULT_LRS, DEFAULT_SEEDS
from ..attack.report import SECURE_RATIO


def _numbers(kind, cast):
    """A click callback parsing a comma-separated list."""

    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [cast(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind}, got {value!r}") from None
        if not items:
            raise click.BadParameter(f"give at least one {kind[:-1]}")
        return tuple(items)

    return parse


def _joined(values):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _command_line() -> str:
    """The command as given: the argument and every option set on the command line."""
    import shlex

    from click.core import ParameterSource

    ctx = click.get_current_context()
    words = ["mirrornet", ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params[p.name]
        if isinstance(p, click.Argument):
            words.append(str(value))
        elif ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE:
            flag = max(p.opts, key=len)
            if p.is_flag:
                words.append(flag)
            else:
                words += [flag, _joined(value) if isinstance(value, tuple) else str(value)]
    return " ".join(shlex.quote(w) for w in words)


@click.command("attack")
@click.argument("artifact_dir", type=click.Path(file_okay=False))
@click.option("--dataset", required=True, help="The dataset the artifact was protected on (fashion-mnist, ...).")
@click.option("--budgets", callback=_numbers("numbers", float), default=_joined(DEFAULT_BUDGETS), show_default=True,
              help="Thief's labelled budgets: fractions of the training split, or sample counts (>= 1).")
@click.option("--seeds", callback=_numbers("integers", int), default=_joined(DEFAULT_SEEDS), show_default=True,
              help="Seeds (data draw, initialisation, sample order); figures are mean ± std over them.")
@click.option("--lrs", callback=_numbers("numbers", float), default=_joined(DEFAULT_LRS), show_default=True,
              help="Learning rates every attack tries; it keeps the best on a held-out part of its budget.")
@click.option("--epochs", type=int, default=None,
              help="Training epochs for every attack [default: per budget, at least 300 steps and 10 epochs].")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--floor", type=float, default=SECURE_RATIO, show_default=True,
              help="Secure when every attack on the stolen backbone is within FLOOR x the black-box accuracy.")
@click.option("--no-probes", is_flag=True, help="Skip the linear probes on the tapped feature maps.")
@click.option("--controls", is_flag=True,
              help="Also probe the same taps of a random network and of the unprotected original, and train a "
                   "linear classifier on raw pixels (controls, not judged).")
@click.option("--test-subset", type=int, default=None,
              help="Score on a stratified subset of N test images (default: the whole test split).")
@click.option("--baseline-cache", type=click.Path(file_okay=False), default=None,
              help="Folder caching black-box and white-box runs across artifacts of the same model.")
@click.option("--threads", type=int, default=None, help="Torch threads (default 1: fastest on shared cores).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the report here (it is always written to ARTIFACT_DIR/attack.json).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def attack(artifact_dir, dataset, budgets, seeds, lrs, epochs, batch_size, floor, no_probes, controls, test_subset,
           baseline_cache, threads, json_out, quiet):
    """Attack ARTIFACT_DIR (from `mirrornet protect`) as a thief owning the normal world would.

    For each budget and seed: illegal use (backbone alone), fine-tuning the stolen backbone, a linear probe
    on each tapped map, against the black-box baseline (random init, same data) and the white-box reference
    (the original fine-tuned). Prints the table and the verdict; writes ARTIFACT_DIR/attack.json.
    """
    from ..attack import AttackConfig, attack_artifact, format_table
    from ..training_base import set_threads

    set_threads(threads)
    config = AttackConfig(budgets, seeds, lrs, epochs, batch_size, probes=not no_probes, controls=controls,
                          test_subset=test_subset, floor=floor)
    command = _command_line()
    report = attack_artifact(artifact_dir, dataset, config, json_out=json_out, progress=not quiet,
                             baseline_cache=baseline_cache, command=command)
    ref = report.meta["reference"]
    lines = [f"security evaluation of {artifact_dir} on {dataset} "
             f"({report.meta['dataset']['test_images']} test images)"]
    if ref.get("authorized") is not None:
        lines.append(f"  original {ref['original']:.2%}, authorized {ref['authorized']:.2%} (metrics.json), "
                     f"illegal use {ref['illegal']:.2%}")
    else:
        lines.append(f"  original {ref['original']:.2%}, illegal use {ref['illegal']:.2%}")
    lines.append("")
    click.echo("\n".join(lines) + "\n" + format_table(report))
    click.echo(f"\nwritten to {artifact_dir}/attack.json" + (f" and {json_out}" if json_out else ""))
