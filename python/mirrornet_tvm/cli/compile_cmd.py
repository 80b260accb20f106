"""`mirrornet compile`: partition a protected model, build the backbone and generate the CPM's C."""
from __future__ import annotations

import click


@click.command("compile")
@click.argument("artifact", metavar="ARTIFACT_DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("-o", "--output", "build_dir", required=True, metavar="BUILD_DIR",
              help="Build folder to write (replaced atomically; a non-build folder is never overwritten).")
@click.option("--target", default="host", show_default=True, metavar="host|rpi3|JSON",
              help='Backbone target: "host", "rpi3" (Cortex-A53, cross-compiled) or a TVM target dict '
                   'as JSON, e.g. \'{"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu"}\'.')
@click.option("--tune-trials", default=0, show_default=True, type=click.IntRange(min=0),
              help="MetaSchedule trials for the backbone (0: untuned). Skipped when --database already "
                   "holds a tuning of this backbone with at least as many trials.")
@click.option("--database", metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="MetaSchedule JSON database folder: tuned schedules are read from it (backbone and "
                   "CPM kernels) and new tuning records written to it.")
@click.option("--dump-ir", is_flag=True, help="Also write the module after each pipeline phase to BUILD_DIR/ir/.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of a summary.")
def compile_(artifact, build_dir, target, tune_trials, database, dump_ir, as_json):
    """Partition ARTIFACT_DIR (from `mirrornet protect`) and write BUILD_DIR.

    BUILD_DIR gets backbone.so (Relax VM library), cpm/ (the CPM as C), manifest.json and strategy.json.
    """
    import json

    from ..compile import compile_artifact

    result = compile_artifact(artifact, build_dir, target=target, tune_trials=tune_trials,
                              database=database, dump_ir=dump_ir)
    m = result.manifest
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    s = m["sizes"]
    click.echo(f"build      {result.build_dir}")
    click.echo(f"target     {m['target']['name']} {json.dumps(m['target']['config'])}")
    click.echo(f"backbone   {m['backbone']['file']}  {s['backbone_lib_bytes']:,} B  {m['tuning']}  "
               f"({m['backbone']['tuned_kernels']}/{m['backbone']['kernels']} kernels tuned)")
    click.echo(f"cpm        {m['cpm']['dir']}/  code {s['cpm_code_bytes']:,} B  weights "
               f"{s['cpm_weight_bytes']:,} B  arena {s['cpm_arena_bytes']:,} B")
    click.echo(f"taps       {s['tap_bytes_per_inference']:,} B per inference "
               f"({', '.join(i['name'] for i in m['cpm']['inputs'])})")
    mem = m["secure_memory"]
    if mem.get("estimate"):
        g, e = mem["generated"], mem["estimate"]
        verdict = "exact" if mem["exact"] else ("within" if mem["within_estimate"] else "OVER")
        click.echo(f"secure     {g['total']:,} B (weights + arena + taps + logits); strategy estimate "
                   f"{e['total']:,} B: {verdict}")
    else:
        click.echo(f"secure     {mem['generated']['total']:,} B (weights + arena + taps + logits); {mem['note']}")
    click.echo(f"time       {sum(m['seconds'].values()):.1f} s")
