"""MirrorNet on the zoo: protect VGG and ResNet on Fashion-MNIST (full training split), print the figures.

For each model: train the base model with `mirrornet train-base` if it is not there yet, then run
`mirrornet protect` once per configuration, each as a new user would type it: the default strategy
(`--auto`) with each degradation objective, and for contrast a "deep" strategy whose CPM reads the last
convolutional stage's output (the paper-style small CPM: cheap and accurate, but a thief who steals the
backbone holds the whole feature extractor). It prints one table: original / authorized / illegal-use accuracy on the
real test split, the CPM's share of FLOPs and parameters, its secure memory, the training time, and
whether the targets are met (authorized within 1 point of original, illegal use at most 15%, CPM at
most 5% of FLOPs and under 1 MiB of secure memory). Ratios are within this one run.

    .venv/bin/python bench/protect_zoo.py                         # full size (tens of minutes on 2 cores)
    .venv/bin/python bench/protect_zoo.py --models vgg --subset 3000 --epochs 1 --out out/bench-quick
    .venv/bin/python bench/protect_zoo.py --table-only            # re-print from the artifacts

An artifact that already holds metrics.json is reused, not retrained, as long as it was made with the strategy
and training configuration the same command gives today (the current defaults included); otherwise it is
recomputed. Delete an artifact to force a rerun.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRRORNET = str(Path(sys.executable).parent / "mirrornet")
CONFIGS = ("auto-uniform", "auto-adversarial", "deep-uniform")
sys.path.insert(0, str(ROOT / "python"))
from mirrornet_tvm.machine import describe  # noqa: E402


def run(cmd: list) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)   # stdout carries only the table


def base_model(out: Path, model: str, args) -> Path:
    path = out / "base" / f"{model}.onnx"
    if not path.is_file():
        cmd = [MIRRORNET, "train-base", "--model", model, "--dataset", args.dataset, "-o", str(path)]
        if args.subset:
            cmd += ["--subset", str(args.subset)]
        run(cmd)
    return path


def deep_strategy(base: Path, path: Path) -> Path:
    """The deepest tap before the global pooling, CPM 1/4 wide, written as a strategy file."""
    sys.path.insert(0, str(ROOT / "python"))
    from mirrornet_tvm.analysis import candidate_taps
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.strategy import Strategy

    taps = [t for t in candidate_taps(load_model(base)) if t.op != "GlobalAveragePool"]
    return Strategy((taps[-1].name,), 0.25).save(path)


def expected_run(base: Path, config: str, args, deep_file: Path) -> tuple[dict, dict]:
    """(strategy, training config) that `mirrornet protect` would use now for this configuration."""
    sys.path.insert(0, str(ROOT / "python"))
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.mirror import strip_softmax
    from mirrornet_tvm.protect import choose_strategy
    from mirrornet_tvm.strategy import Strategy
    from mirrornet_tvm.training import JointConfig

    variant, degradation = config.split("-")
    if variant == "auto":
        graph = strip_softmax(load_model(base).graph())
        strategy = choose_strategy(graph, auto=True, degradation=degradation).strategy
    else:
        strategy = Strategy.load(deep_strategy(base, deep_file)).replace(degradation=degradation)
    kw = {"seed": args.seed} | ({"epochs": args.epochs} if args.epochs else {})
    as_json = lambda d: json.loads(json.dumps(d))  # noqa: E731 - compare as the metrics file holds them
    return as_json(strategy.to_dict()), as_json(JointConfig.for_degradation(degradation, **kw).to_dict())


def stale_reason(art: Path, model: str, base: Path, config: str, args) -> str | None:
    """Why the artifact's metrics no longer describe what the command gives today (None: still valid).

    An artifact is reused only if it was made from the same strategy, training configuration (the current
    defaults included) and training subset: a changed default must be measured again, not reprinted.
    """
    m = json.loads((art / "metrics.json").read_text())
    strategy, cfg = expected_run(base, config, args, art.parent / f"{model}-deep.json")
    if m.get("strategy") != strategy:
        return f"strategy {m.get('strategy', {}).get('name')} -> {strategy['name']}"
    got = m.get("training", {}).get("config", {})
    diff = sorted(k for k in set(cfg) | set(got) if cfg.get(k) != got.get(k))
    if diff:
        return "training " + ", ".join(f"{k} {got.get(k)} -> {cfg.get(k)}" for k in diff)
    if m.get("dataset", {}).get("subset") != args.subset:
        return f"subset {m.get('dataset', {}).get('subset')} -> {args.subset}"
    return None


def protect(out: Path, model: str, base: Path, config: str, args) -> Path:
    art = out / f"{model}-{config}"
    if (art / "metrics.json").is_file():
        why = stale_reason(art, model, base, config, args)
        if why is None:
            return art
        print(f"{art.name}: recomputing ({why})", file=sys.stderr, flush=True)
        (art / "metrics.json").unlink()
        (art / "checkpoint.pt").unlink(missing_ok=True)
    variant, degradation = config.split("-")
    cmd = [MIRRORNET, "protect", str(base), "--dataset", args.dataset, "--degradation", degradation,
           "--seed", str(args.seed), "-o", str(art)]
    if variant == "auto":
        cmd.append("--auto")
    else:
        cmd += ["--strategy", str(deep_strategy(base, out / f"{model}-deep.json"))]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    if (art / "checkpoint.pt").is_file():
        cmd.append("--resume")
    run(cmd)
    return art


def row(model: str, config: str, art: Path) -> dict | None:
    path = art / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    a, c, mem = m["accuracy"], m["cpm"], m["secure_memory"]
    return {
        "model": model, "config": config, "strategy": m["strategy"]["name"],
        "train": m["dataset"]["train_images"], "epochs": m["training"]["epochs"],
        "original": a["original"], "authorized": a["authorized"], "illegal": a["illegal"],
        "drop": a["authorized_drop_points"], "gap": a["gap_points"],
        "auth_ratio": a["authorized"] / a["original"], "illegal_ratio": a["illegal"] / a["original"],
        "flop_share": c["flop_share"], "param_share": c["param_share"], "secure_kib": mem["total"] / 1024,
        "train_s": m["training"]["seconds"], "met": sum(t["met"] for t in m["targets"].values()),
        "targets": len(m["targets"]), "command": m["command"],
    }


def print_table(rows: list) -> None:
    print(f"machine: {describe()}")
    print("dataset: Fashion-MNIST, accuracies on the official 10,000-image test split\n")
    head = (f"{'model':<7} {'configuration':<17} {'train':>6} {'ep':>2} {'original':>8} {'authorized':>10} "
            f"{'drop pt':>7} {'illegal':>7} {'gap pt':>6} {'auth/orig':>9} {'ill/orig':>8} {'CPM FLOPs':>9} "
            f"{'CPM params':>10} {'secure KiB':>10} {'train s':>7} {'targets':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        config = r["config"] + ("*" if r.get("stale") else "")
        print(f"{r['model']:<7} {config:<17} {r['train']:>6} {r['epochs']:>2} {r['original']:>8.2%} "
              f"{r['authorized']:>10.2%} {r['drop']:>7.2f} {r['illegal']:>7.2%} {r['gap']:>6.1f} "
              f"{r['auth_ratio']:>9.3f} {r['illegal_ratio']:>8.3f} {r['flop_share']:>9.2%} "
              f"{r['param_share']:>10.2%} {r['secure_kib']:>10.1f} {r['train_s']:>7.0f} "
              f"{r['met']:>3}/{r['targets']}")
    print("\nstrategies and commands:")
    for r in rows:
        print(f"  {r['model']}/{r['config']}: {r['strategy']}\n    {r['command']}")
    stale = [r for r in rows if r.get("stale")]
    if stale:
        print("\n* made with other settings than the command gives today (rerun without --table-only):")
        for r in stale:
            print(f"  {r['model']}/{r['config']}: {r['stale']}")
    print("\ntargets: authorized within 1 point of original, illegal use <= 15%, CPM <= 5% of FLOPs, "
          "secure memory < 1 MiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vgg,resnet")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=None, help="joint-training epochs (default: protect's)")
    p.add_argument("--subset", type=int, default=None, help="training images (default: the full split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "out" / "bench-protect"))
    p.add_argument("--table-only", action="store_true", help="only print the table of existing artifacts")
    args = p.parse_args(argv)
    out = Path(args.out)
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    rows = []
    for model in models:
        for config in configs:
            art = out / f"{model}-{config}"
            if not args.table_only:
                base = base_model(out, model, args)
                protect(out, model, base, config, args)
            r = row(model, config, art)
            if r:
                base = out / "base" / f"{model}.onnx"
                r["stale"] = stale_reason(art, model, base, config, args) if base.is_file() else None
                rows.append(r)
    if not rows:
        print(f"no artifacts under {out}; run without --table-only", file=sys.stderr)
        return 1
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
