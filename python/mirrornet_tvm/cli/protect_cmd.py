"""`mirrornet protect`: turn a trained model into a MirrorNet (backbone + CPM) and write the artifact."""
import click

from ..strategy import DEFAULT_BUDGET_BYTES, DEGRADATIONS
from ..training import OBJECTIVE_DEFAULTS, TAILS, JointConfig
from ._common import input_shape_option

_D = JointConfig()


def _per_objective(name: str) -> str:
    """'[default: 16; adversarial: 32]': the class default and the objectives that change it."""
    others = "".join(f"; {d}: {v[name]:g}" for d, v in OBJECTIVE_DEFAULTS.items() if name in v)
    return f"[default: {getattr(_D, name):g}{others}]"


def _command_line() -> str:
    """The command as given: the arguments and every option set on the command line."""
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
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)  # --input-shape C,H,W
            words += [flag] if p.is_flag else [flag, text]
    return " ".join(shlex.quote(w) for w in words)


@click.command("protect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None,
              help="fashion-mnist, mnist, their -rgb variants, or a .npz path (required unless --epochs 0).")
@click.option("--strategy", "strategy_file", type=click.Path(dir_okay=False), default=None,
              help="Strategy JSON (see `mirrornet strategies --json`).")
@click.option("--auto", is_flag=True,
              help="Pick the strategy: by secure memory and FLOPs, or by predicted latency with --tuning.")
@click.option("--tuning", "tuning_dir", type=click.Path(file_okay=False), default=None,
              help="With --auto: output folder of `mirrornet tune`; pick the least predicted latency among "
                   "the strategies the --auto rule accepts.")
@click.option("--degradation", type=click.Choice(DEGRADATIONS), default=None,
              help="Override the strategy's backbone-degradation objective.")
@click.option("--epochs", type=int, default=None,
              help=f"Joint-training epochs {_per_objective('epochs')}; 0 builds the combined model untrained "
                   "(compile and latency work; no dataset needed).")
@click.option("--subset", type=int, default=None, help="Train on a stratified subset of N training images.")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True)
@click.option("--lr-cpm", type=float, default=_D.lr_cpm, show_default=True)
@click.option("--lr-backbone", type=float, default=None,
              help="Backbone learning rate (default: frozen for uniform with --tail reinit, else 5e-4).")
@click.option("--lam", type=float, default=_D.lam, show_default=True,
              help="Weight of the backbone's uniform-prediction term.")
@click.option("--adv", type=float, default=None,
              help="Weight of the simulated thief's term: the linear tap attacker (degradation adversarial) "
                   "or the few-shot thief of mirrornet_tvm.degradation (degradation fewshot) "
                   f"{_per_objective('adv')}.")
@click.option("--distill", type=float, default=None,
              help="Weight of distillation from the original model into the rectified output "
                   f"{_per_objective('distill')}.")
@click.option("--tail", type=click.Choice(TAILS), default=_D.tail, show_default=True,
              help="Backbone layers after the last tap: re-initialise and freeze, or train.")
@click.option("--budget-kib", type=int, default=DEFAULT_BUDGET_BYTES // 1024, show_default=True,
              help="Secure-memory budget for --auto.")
@click.option("--security-floor", type=float, default=None, metavar="RATIO",
              help="Attack the protected model (fine-tuning the stolen backbone, linear probes on the taps; "
                   "0.1%% and 1%% of the training split, one seed) and require every attack to stay within RATIO "
                   "x the black-box baseline, e.g. 1.05. With --auto, the rule's candidates are tried in order "
                   "until one meets it. The verdict goes into metrics.json and the report.")
@click.option("--floor-candidates", type=click.IntRange(1), default=3, show_default=True,
              help="With --auto --security-floor: most strategies to protect and attack.")
@input_shape_option
@click.option("--threads", type=int, default=None, help="Torch threads (default 1: fastest on shared cores).")
@click.option("--resume", is_flag=True, help="Continue from ARTIFACT_DIR/checkpoint.pt.")
@click.option("--force", is_flag=True, help="Discard an existing checkpoint and start over.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Artifact folder to write.")
def protect(model, dataset, strategy_file, auto, tuning_dir, degradation, epochs, subset, seed, batch_size, lr_cpm,
            lr_backbone, lam, adv, distill, tail, budget_kib, security_floor, floor_candidates, input_shape, threads,
            resume, force, quiet, out_dir):
    """Turn MODEL (ONNX) into a MirrorNet: joint training of backbone and CPM, artifact in -o."""
    from ..errors import UsageError
    from ..protect import protect as run

    if budget_kib < 1:
        raise UsageError(f"--budget-kib must be positive, got {budget_kib}")
    given = dict(epochs=epochs, adv=adv, distill=distill)     # unset: the strategy's objective's default
    config = dict({k: v for k, v in given.items() if v is not None}, batch_size=batch_size, lr_cpm=lr_cpm,
                  lr_backbone=lr_backbone, lam=lam, tail=tail, seed=seed)
    floor = None
    if security_floor is not None:
        from ..attack.floor import SecurityFloor

        if not security_floor >= 1:
            raise UsageError(f"--security-floor is a ratio to the black-box baseline of at least 1 (e.g. 1.05), "
                             f"got {security_floor}")
        floor = SecurityFloor(ratio=security_floor)
    result = run(model, dataset, out_dir, strategy=strategy_file, auto=auto, tuning=tuning_dir, config=config,
                 subset=subset, budget_bytes=budget_kib * 1024, degradation=degradation, resume=resume, force=force,
                 threads=threads, progress=not quiet, command=_command_line(), security_floor=floor,
                 floor_candidates=floor_candidates, input_shape=input_shape)
    from .report_cmd import format_report

    click.echo(format_report(result.metrics, str(result.out_dir)))
