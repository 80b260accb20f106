"""Compile time of `mirrornet compile` on the zoo models, untuned: the target is under 10 s per model.

For each zoo model (LeNet, VGG, ResNet at 1x28x28) a combined model is made the way `mirrornet protect`
makes it (MirrorNet: backbone + a CPM mirrored at width 1/8 from a middle tap; weights untrained, which
does not change the compile time) and compiled with ``compile_artifact``. The table gives each phase,
the wall time and the CPU time (this process plus its children: gcc), the best of ``--repeat`` runs,
and the ratio to the 10 s target. The one-off cost of importing TVM is shown on its own line: it is
paid once per process, not per model.

Two more tables check the secure-memory target on the same machine and run: each build's arena and
weights against the strategy's estimate (the manifest's ``secure_memory``), and the time
``generate_strategies`` takes to enumerate every strategy of each model with its estimate (the
figure strategy selection and the emulator use), against generating one CPM's C.

    .venv/bin/python bench/compile_time.py [--models lenet,vgg,resnet] [--repeat 2] [--target host]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mirrornet_tvm.machine import cpu_model  # noqa: E402

TARGET_SECONDS = 10.0
PHASES = ("read artifact", "import to Relax", "partition + lower backbone", "build backbone", "generate CPM C")


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_artifact(name: str, folder: Path):
    """combined.onnx + strategy.json for zoo model ``name`` (a middle candidate tap, width 1/8)."""
    import torch

    from mirrornet_tvm import zoo
    from mirrornet_tvm.analysis import candidate_taps
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.mirror import MirrorNet
    from mirrornet_tvm.strategy import Strategy

    torch.manual_seed(0)
    graph = load_model(zoo.build(name), input_shape=(1, 28, 28)).graph()
    taps = candidate_taps(graph)
    strategy = Strategy(taps=(taps[len(taps) // 2].name,), width_ratio=1 / 8)
    folder.mkdir(parents=True, exist_ok=True)
    MirrorNet(graph, strategy).export_onnx(folder / "combined.onnx", source=f"zoo.build({name!r})")
    strategy.save(folder / "strategy.json")
    params = sum(p.numel() for p in graph.parameters())
    return strategy, params


def enumerate_strategies(name: str) -> tuple[int, int, float]:
    """(strategies, distinct plans, seconds) of generate_strategies over zoo model ``name``."""
    from mirrornet_tvm import zoo
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.strategy import generate_strategies

    graph = load_model(zoo.build(name), input_shape=(1, 28, 28)).graph()
    t0 = time.perf_counter()
    costs = generate_strategies(graph, None)
    seconds = time.perf_counter() - t0
    plans = len({(c.strategy.taps, c.strategy.width_ratio, c.strategy.merge, c.strategy.output) for c in costs})
    return len(costs), plans, seconds


def _print_table(table) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for j, r in enumerate(table):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,vgg,resnet")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--target", default="host")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), cpu_seconds()
    import tvm  # noqa: F401  (the one-off import, measured on its own)

    from mirrornet_tvm import codegen, compile as compile_mod, frontend  # noqa: F401
    import_wall, import_cpu = time.perf_counter() - t0, cpu_seconds() - c0

    rows, memory, enum = [], [], []
    with tempfile.TemporaryDirectory(prefix="mirrornet-bench-compile-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            strategy, params = make_artifact(name, Path(tmp) / name / "artifact")
            best = None
            for i in range(args.repeat):
                print(f"[bench] {name}: compile {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
                t0, c0 = time.perf_counter(), cpu_seconds()
                result = compile_mod.compile_artifact(Path(tmp) / name / "artifact", Path(tmp) / name / "build",
                                                      target=args.target, progress=False)
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                if best is None or wall < best[0]:
                    best = (wall, cpu, result.manifest)
            wall, cpu, m = best
            rows.append((name, params, strategy.taps[0], m["backbone"]["kernels"], m["cpm"]["kernels"],
                         [m["seconds"][p] for p in PHASES], wall, cpu, m["tuning"]))
            memory.append((name, m["secure_memory"]))
            enum.append((name, *enumerate_strategies(name), m["seconds"]["generate CPM C"]))

    print(f"machine  {platform.platform()}  |  {cpu_model()}  |  {os.cpu_count()} cores  |  "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"target   {args.target}   (best of {args.repeat} per model; CPU = this process + children)")
    print(f"one-off: import tvm + mirrornet_tvm  {import_wall:.1f} s wall, {import_cpu:.1f} s CPU\n")
    head = ("model", "params", "tap", "bb kernels", "cpm kernels", "read", "import", "partition+lower",
            "build bb", "CPM C", "wall s", "CPU s", "wall/10s", "backbone")
    table = [head]
    for name, params, tap, bk, ck, phases, wall, cpu, tuning in rows:
        table.append((name, f"{params:,}", tap, str(bk), str(ck), *[f"{p:.2f}" for p in phases],
                      f"{wall:.2f}", f"{cpu:.2f}", f"{wall / TARGET_SECONDS:.2f}", tuning))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for j, r in enumerate(table):
        cells = zip(r, widths)
        print("  ".join(c.rjust(w) if 0 < i < len(r) - 1 else c.ljust(w) for i, (c, w) in enumerate(cells)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    worst = max(r[6] for r in rows)
    print(f"\nslowest model: {worst:.2f} s = {worst / TARGET_SECONDS:.2f} x the {TARGET_SECONDS:.0f} s target "
          f"({'met' if worst < TARGET_SECONDS else 'NOT met'})")

    print("\nsecure memory of each build (bytes): generated C and TA buffers vs the strategy's estimate")
    _print_table([("model", "weights", "est.", "arena", "est.", "taps", "est.", "logits", "est.", "total",
                   "est.", "agreement")] + [
        (name, *[f"{mem[side][k]:,}" for k in ("weights", "arena", "taps", "logits", "total")
                 for side in ("generated", "estimate")],
         "exact" if mem["exact"] else ("within" if mem["within_estimate"] else "OVER"))
        for name, mem in memory])
    agree = all(mem["exact"] for _, mem in memory)
    print(f"target: arena + weights within the estimate (tolerance {memory[0][1]['tolerance_bytes']} B): "
          f"{'met, byte for byte' if agree else 'NOT met exactly'}")

    print("\nstrategy enumeration: generate_strategies(model, budget=None), every strategy with its estimate")
    _print_table([("model", "strategies", "plans", "seconds", "us/plan", "one CPM C s", "C/estimate")] + [
        (name, str(n), str(plans), f"{sec:.3f}", f"{1e6 * sec / plans:.0f}", f"{cpm_c:.2f}",
         f"{cpm_c / (sec / plans):,.0f}x")
        for name, n, plans, sec, cpm_c in enum])
    print("(plans: distinct CPMs; the two degradation objectives share one. C/estimate: generating one CPM's C "
          "vs estimating one plan)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
