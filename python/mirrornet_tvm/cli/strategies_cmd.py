"""`mirrornet strategies`: enumerate CPM strategies with their secure memory and FLOP share."""
import json

import click


@click.command("strategies")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--budget-kib", type=int, default=1024, show_default=True,
              help="Secure-memory budget: strategies above it are pruned.")
@click.option("--max-taps", type=int, default=2, show_default=True, help="Most taps per strategy.")
@click.option("--json", "as_json", is_flag=True, help="JSON: one object per strategy, plus the --auto pick.")
def strategies(model, budget_kib, max_taps, as_json):
    """List the CPM strategies for MODEL (ONNX) that fit the secure-memory budget."""
    from ..errors import StrategyError, UsageError
    from ..frontend import load_model
    from ..mirror import strip_softmax
    from ..protect import AUTO_FLOP_SHARE
    from ..strategy import auto_select, generate_strategies

    if budget_kib < 1:
        raise UsageError(f"--budget-kib must be positive, got {budget_kib}")
    graph = strip_softmax(load_model(model).graph())
    costs = generate_strategies(graph, budget_kib * 1024, max_taps=max_taps)
    try:
        pick = auto_select(costs, max_flop_share=AUTO_FLOP_SHARE)
    except StrategyError:
        pick = None
    if as_json:
        click.echo(json.dumps({"model": model, "budget_bytes": budget_kib * 1024,
                               "auto": pick.strategy.to_dict() if pick else None,
                               "auto_rule": "secure memory and FLOPs alone (no performance emulator yet)",
                               "strategies": [c.to_dict() for c in costs]}, indent=2))
        return
    if not costs:
        click.echo(f"no strategy fits {budget_kib} KiB of secure memory; raise --budget-kib")
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
    if pick:
        click.echo(f"--auto would pick {pick.strategy.name} (by secure memory and FLOPs alone: "
                   "no performance emulator yet)")
