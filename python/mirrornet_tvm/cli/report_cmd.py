"""`mirrornet report`: print an artifact's metrics readably."""
import json

import click


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def format_report(m: dict, where: str = "") -> str:
    """The metrics of one artifact as a readable block of text."""
    a, c, mem, s = m["accuracy"], m["cpm"], m["secure_memory"], m["strategy"]
    tr = m.get("training", {})
    ds = m.get("dataset", {})
    lines = [f"MirrorNet artifact {where}".rstrip(),
             f"  model       {m.get('model', {}).get('source', '?')}  "
             f"({m.get('model', {}).get('flops', 0):,} FLOPs, {m.get('model', {}).get('params', 0):,} params)",
             "  dataset     none: built untrained (--epochs 0), for compile and latency work; NOT protected"
             if ds is None else
             f"  dataset     {ds.get('name', '?')}: {ds.get('train_images', '?')} training images, "
             f"{ds.get('test_images', '?')} test images ({ds.get('split', '')})",
             f"  strategy    {s['name']}",
             f"              taps {', '.join(s['taps'])}; width 1/{round(1 / s['width_ratio'])}; merge {s['merge']}; "
             f"output {s['output']}; degradation {s['degradation']}",
             f"              {m.get('strategy_selection', '')}",
             ""]
    if a is not None:
        d = a["authorized_drop_points"]
        drop = f"{d:.2f} points below original" if d >= 0 else f"{-d:.2f} points above original"
        lines += ["  accuracy (test split)",
                  f"    original    {_pct(a['original'])}",
                  f"    authorized  {_pct(a['authorized'])}   (backbone + CPM; {drop})",
                  f"    illegal use {_pct(a['illegal'])}   (backbone alone; gap {a['gap_points']:.2f} points)",
                  ""]
    lines += [f"  CPM         {_pct(c['flop_share'])} of FLOPs ({c['flops']:,}), {_pct(c['param_share'])} of "
             f"parameters ({c['params']:,}), {c['ops']} ops",
             f"  secure mem  {mem['total'] / 1024:.1f} KiB = weights {mem['weights'] / 1024:.1f} + activations "
             f"{mem['activations'] / 1024:.1f} + taps {mem['taps'] / 1024:.1f} + logits {mem['logits']} B "
             f"(budget {mem.get('budget', 0) / 1024:.0f} KiB)"]
    if tr:
        cfg = tr.get("config", {})
        lines += ["",
                  f"  training    {tr.get('epochs')} epoch(s), seed {tr.get('seed')}, {tr.get('seconds', 0):.0f} s, "
                  f"tail {cfg.get('tail')}, backbone lr {tr.get('lr_backbone', cfg.get('lr_backbone'))}, "
                  f"lam {cfg.get('lam')}, adv {cfg.get('adv')}, distill {cfg.get('distill')}"
                  + (f", resumed after epoch {tr['resumed_from_epoch']}" if tr.get("resumed_from_epoch") else "")]
    targets = m.get("targets")
    if targets:
        lines += ["", "  targets"]
        for name, t in targets.items():
            mark = "n/a    " if t["met"] is None else "met    " if t["met"] else "NOT met"
            lines.append(f"    {mark}  {name.replace('_', ' ')}")
    sec = m.get("security")
    if sec:
        from ..attack.report import summary_lines

        lines += ["", f"  security floor ({sec['floor']}): {'met' if sec['met'] else 'NOT met'}"]
        lines += ["  " + line for line in summary_lines(sec["report"])]
        for d in sec.get("strategies_tried", [])[:-1]:
            lines.append(f"  tried before: {d['strategy']}: {d['failures'][0] if d['failures'] else 'met'}")
    if m.get("onnx_check"):
        lines.append(f"\n  combined.onnx vs PyTorch in onnxruntime: max |diff| {m['onnx_check']['max_abs_diff']:.1e} "
                     f"over {m['onnx_check']['images']} {m['onnx_check'].get('inputs', 'test images')}")
    if m.get("command"):
        lines.append(f"  command     {m['command']}")
    if m.get("wall_seconds") is not None:
        lines.append(f"  wall time   {m['wall_seconds']:.0f} s")
    return "\n".join(lines)


@click.command("report")
@click.argument("artifact_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json as is.")
def report(artifact_dir, as_json):
    """Print the metrics of ARTIFACT_DIR (written by `mirrornet protect`)."""
    from ..protect import load_metrics

    metrics = load_metrics(artifact_dir)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_report(metrics, artifact_dir))
