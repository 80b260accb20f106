"""`mirrornet strategies`: the CPM strategy space, ranked by predicted latency when a tuning folder is given."""
import json

import click

from ..strategy import DEFAULT_BUDGET_BYTES, DEGRADATIONS
from ._common import input_shape_option


@click.command("strategies")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--tuning", "tuning_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder of `mirrornet tune`: rank by the Performance Emulator's predicted latency.")
@click.option("--budget-kib", type=int, default=DEFAULT_BUDGET_BYTES // 1024, show_default=True,
              help="Secure-memory budget: strategies above it are pruned.")
@click.option("--max-taps", type=int, default=2, show_default=True, help="Most taps per strategy.")
@click.option("--degradation", type=click.Choice(DEGRADATIONS), default="uniform", show_default=True,
              help="Degradation objective of the strategy --auto would select.")
@click.option("--top", type=click.IntRange(min=0), default=30, show_default=True,
              help="Rows of the ranked table (with --tuning; 0: all). Pareto-front rows are always shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON to this file (atomically).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="With --tuning: plot predicted latency vs secure memory and the Pareto front (.png).")
@input_shape_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def strategies(model, tuning_dir, budget_kib, max_taps, degradation, top, as_json, json_out, plot, input_shape,
               quiet):
    """List the CPM strategies for MODEL (ONNX) that fit the secure-memory budget.

    With --tuning DIR (what `mirrornet tune MODEL -o DIR` wrote), every strategy is emulated: predicted
    backbone, CPM (in the TEE) and transfer latency, ranked fastest first, with the Pareto front of
    latency vs secure memory and the strategy `mirrornet protect --auto --tuning DIR` would select.
    """
    from ..errors import StrategyError, UsageError
    from ..frontend import load_model
    from ..mirror import strip_softmax
    from ..protect import AUTO_FLOP_SHARE
    from ..strategy import auto_select, degradations_with, generate_strategies

    if budget_kib < 1:
        raise UsageError(f"--budget-kib must be positive, got {budget_kib}")
    if max_taps < 1:
        raise UsageError(f"--max-taps must be at least 1, got {max_taps}")
    if plot and not tuning_dir:
        raise UsageError("--plot draws predicted latency: give --tuning DIR (from `mirrornet tune MODEL -o DIR`)")
    if plot and not plot.lower().endswith(".png"):
        raise UsageError(f"--plot writes a PNG image; give a file name ending in .png, not {plot}")
    budget = budget_kib * 1024
    loaded = load_model(model, input_shape)
    graph = strip_softmax(loaded.graph())
    pruned = []
    costs = generate_strategies(graph, budget, max_taps=max_taps, degradations=degradations_with(degradation),
                                pruned=pruned)
    if tuning_dir:
        _ranked(loaded, model, costs, tuning_dir, budget, degradation, top, as_json, json_out, plot, quiet)
        return
    try:
        pick = auto_select(costs, max_flop_share=AUTO_FLOP_SHARE, degradation=degradation)
    except StrategyError:
        pick = None
    report = {"generated_by": "mirrornet strategies", "model": model, "budget_bytes": budget,
              "auto": pick.strategy.to_dict() if pick else None,
              "auto_rule": "secure memory and FLOPs alone (give --tuning DIR to rank by predicted latency)",
              "strategies": [c.to_dict() for c in costs],
              "pruned": [{"structure": name, "reason": why} for name, why in pruned]}
    _write_json(json_out, report)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not costs:
        click.echo(f"no strategy fits {budget_kib} KiB of secure memory; raise --budget-kib")
        _echo_pruned(pruned)
        return
    w = max(len(c.strategy.name) for c in costs)
    click.echo(f"{'strategy':<{w}}  {'secure KiB':>10}  {'weights':>8}  {'activ.':>8}  {'taps':>8}  "
               f"{'FLOPs':>7}  {'params':>7}")
    for c in costs:
        m = c.memory
        click.echo(f"{c.strategy.name:<{w}}  {m.total / 1024:>10.1f}  {m.weights / 1024:>8.1f}  "
                   f"{m.activations / 1024:>8.1f}  {m.taps / 1024:>8.1f}  {100 * c.flop_share:>6.2f}%  "
                   f"{100 * c.param_share:>6.2f}%")
    click.echo(f"\n{len(costs)} strategies within {budget_kib} KiB (KiB columns: secure memory and its parts; "
               "FLOPs/params: the CPM's share of the model)")
    _echo_pruned(pruned)
    if pick:
        click.echo(f"--auto would pick {pick.strategy.name} (by secure memory and FLOPs alone)")
    click.echo("For predicted latencies: `mirrornet tune MODEL -o DIR`, then `mirrornet strategies MODEL "
               "--tuning DIR`")


def _echo_pruned(pruned, shown: int = 3):
    """How many structures the budget left out, and why, for the first few of them."""
    if not pruned:
        return
    click.echo(f"{len(pruned)} strategy structures pruned (each with every degradation objective); first "
               f"{min(shown, len(pruned))} (all with --json):")
    for name, why in pruned[:shown]:
        click.echo(f"  {name}: {why}")


def _write_json(path, report):
    if path:
        from ..util import write_json

        write_json(path, report)


def _ranked(loaded, model, costs, tuning_dir, budget, degradation, top, as_json, json_out, plot, quiet):
    """The emulator's ranking: table (or JSON), JSON file and Pareto plot."""
    from ..emulator.report import plot_pareto, write_ranking_json
    from ..emulator.selection import load_tuning, rank_space
    from ..protect import AUTO_FLOP_SHARE

    if not costs:
        click.echo(f"no strategy fits {budget // 1024} KiB of secure memory; raise --budget-kib")
        return
    emulator = load_tuning(tuning_dir)
    ranking = rank_space(loaded, costs, emulator, budget_bytes=budget, max_flop_share=AUTO_FLOP_SHARE,
                         degradation=degradation, progress=not quiet)
    if json_out:
        write_ranking_json(json_out, ranking, model=model)
    if plot:
        plot_pareto(plot, ranking.estimates, ranking.front, selected=ranking.selected,
                    title=f"{model}: predicted latency vs secure memory")
    if as_json:
        click.echo(json.dumps({"generated_by": "mirrornet strategies", "model": model, **ranking.to_dict()},
                              indent=2))
        return
    click.echo(ranking_table(ranking, top))
    e = ranking.emulator
    cal = (f"calibrated: {e['calibration']}" if e.get("calibration_file") else
           "uncalibrated: kernel sums, no transfer cost; `mirrornet tune --calibrate N` fits whole runs")
    t = e.get("target", {})
    where = " ".join(str(t[k]) for k in ("kind", "mtriple", "mcpu") if t.get(k))
    click.echo(f"\n{len(ranking.estimates)} strategies within {budget // 1024} KiB emulated in "
               f"{ranking.seconds:.1f} s with {e.get('cost_model')} for {where} ({cal}); "
               f"{len(ranking.front)} on the Pareto front (latency vs secure memory)")
    if ranking.selected is not None:
        s = ranking.selected
        click.echo(f"--auto --tuning would select {s.name}: {s.total_s * 1e3:.3f} ms predicted, the least among "
                   f"{len(ranking.eligible)} strategies meeting the floors ({ranking.floors})")
    else:
        click.echo(f"no strategy within the budget meets the floors of --auto ({ranking.floors})")
    for path, what in ((json_out, "JSON"), (plot, "plot")):
        if path:
            click.echo(f"{what} -> {path}")


def ranking_table(ranking, top: int = 0) -> str:
    """Ranked rows: predicted latencies (ms), secure memory, FLOP share, and marks for the front and pick."""
    rows = list(ranking.estimates)
    shown = [(i, e) for i, e in enumerate(rows, 1)
             if not top or i <= top or ranking.on_front(e) or e is ranking.selected]
    w = max(len("strategy"), *(len(e.name) for _, e in shown))
    lines = [f"{'#':>4}  {'strategy':<{w}}  {'total ms':>9}  {'backbone':>9}  {'CPM (TEE)':>9}  {'transfer':>9}  "
             f"{'secure KiB':>10}  {'FLOPs':>6}  mark"]
    eligible = set(ranking.eligible)
    previous = 0
    for i, e in shown:
        if i != previous + 1:
            lines.append(f"{'...':>4}")
        previous = i
        mark = ("*" if e is ranking.selected else "") + ("P" if ranking.on_front(e) else "") \
            + ("f" if e.name in eligible else "")
        lines.append(f"{i:>4}  {e.name:<{w}}  {e.total_s * 1e3:>9.3f}  {e.backbone_s * 1e3:>9.3f}  "
                     f"{e.cpm_s * 1e3:>9.3f}  {e.transfer_s * 1e3:>9.3f}  {e.secure_bytes / 1024:>10.1f}  "
                     f"{100 * e.flop_share:>5.2f}%  {mark}".rstrip())
    if shown and shown[-1][0] != len(rows):
        lines.append(f"{'...':>4}  ({len(rows) - len(shown)} more rows: --top 0 shows all)")
    lines.append("mark: * selected by --auto --tuning, P on the Pareto front (latency vs secure memory), "
                 "f meets the floors of --auto")
    return "\n".join(lines)
