"""Protected inference latency: backbone alone vs backbone + TEE round trip + CPM vs the whole model in the TA.

For each zoo model (LeNet, VGG, ResNet at 1x28x28; weights untrained, which does not change latency) a
MirrorNet is made the way `mirrornet protect` makes it (a middle tap, CPM width 1/8), compiled with
`mirrornet compile` (host, untuned) and packaged with `mirrornet package-ta` for the host TEE simulator.
Per image, on real Fashion-MNIST test images:

  original       the unprotected model on the Relax VM (same compile path, untuned)
  backbone       backbone.so on the Relax VM, taps out as numpy: what the normal world runs anyway
  protected      backbone + the simulator round trip (one RUN_CPM invoke) + the CPM in the TA
                 (target: at most 1.15x backbone)
  whole in TA    the DarkneTZ approach: the whole model as C (the same code generator), in the same
                 simulated TA, fed the image

and the split of `protected` into transfer (round trip minus CPM) and CPM (the TA's clock), and the
round trip of invokes sent back to back (no backbone in between: the simulator's own cost). Every
figure is the smallest, over interleaved rounds, of the median per-image time of that round (the
machine may be shared: rounds damp other processes' load). The Relax VM runs single-threaded
(TVM_NUM_THREADS=1), like the TA: on a board the TA runs on the core that invoked it.

The simulator's round trip is two process wake-ups on this machine; OP-TEE's is an SMC world switch and
back, which these figures do not measure (see bench/qemu_measurements.py for the real secure world).

    .venv/bin/python bench/protected_latency.py [--models lenet,vgg,resnet] [--images 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm is imported

import numpy as np  # noqa: E402

TARGET_RATIO = 1.15


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_artifact(name: str, folder: Path):
    """combined.onnx + strategy.json for zoo model ``name``, and the original model's ONNX."""
    import torch

    from mirrornet_tvm import zoo
    from mirrornet_tvm.analysis import candidate_taps
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.mirror import MirrorNet
    from mirrornet_tvm.strategy import Strategy

    torch.manual_seed(0)
    graph = load_model(zoo.build(name), input_shape=(1, 28, 28)).graph()
    taps = candidate_taps(graph)
    strategy = Strategy(taps=(taps[len(taps) // 2].name,), width_ratio=1 / 8, name=f"{name}-bench")
    folder.mkdir(parents=True, exist_ok=True)
    net = MirrorNet(graph, strategy)
    net.export_onnx(folder / "combined.onnx", source=f"zoo.build({name!r})")
    strategy.save(folder / "strategy.json")
    return net.backbone.export_onnx(None, output_name="logits"), strategy


def whole_model_build(original_proto, folder: Path):
    """A build folder whose 'CPM' is the whole model (input image -> logits), packaged for the simulator."""
    from mirrornet_tvm import frontend
    from mirrornet_tvm.codegen import generate_cpm_c
    from mirrornet_tvm.tee.package import package_ta
    from mirrornet_tvm.util import write_json

    mod = frontend.to_relax(original_proto)
    code = generate_cpm_c(mod, "main", out_dir=folder / "cpm", source_desc="the whole model (DarkneTZ-style baseline)")
    write_json(folder / "manifest.json", {
        "generated_by": "bench/protected_latency.py (whole model in the TA)",
        "cpm": {"max_stack_bytes": code.max_stack_bytes, "weight_bytes": code.weight_bytes,
                "arena_bytes": code.arena_bytes},
    })
    package_ta(folder, sim_only=True, progress=False, ta_budget=1 << 40)
    return code


def _median_ns(fn, xs) -> float:
    times = []
    for x in xs:
        t0 = time.perf_counter_ns()
        fn(x)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times))


def bench_model(name: str, work: Path, x: np.ndarray, rounds: int, tune_trials: int = 0) -> dict:
    import tvm
    from tvm import relax

    from mirrornet_tvm import frontend
    from mirrornet_tvm.compile import compile_artifact
    from mirrornet_tvm.tee.package import package_ta
    from mirrornet_tvm.tee.protected import Backbone
    from mirrornet_tvm.tee.session import TeeSession

    original, strategy = make_artifact(name, work / "artifact")
    compile_artifact(work / "artifact", work / "build", target="host", progress=False, tune_trials=tune_trials,
                     database=(work / "db") if tune_trials else None)
    package_ta(work / "build", sim_only=True, progress=False)
    whole = whole_model_build(original, work / "whole")

    vm_orig = relax.VirtualMachine(tvm.compile(frontend.to_relax(original), "llvm"), tvm.cpu())
    backbone = Backbone(work / "build")
    images = [x[i:i + 1] for i in range(len(x))]
    flat = [im.reshape(-1) for im in images]
    best = {k: float("inf") for k in ("original", "backbone", "protected", "whole", "transfer", "cpm", "trip")}
    with TeeSession(work / "build") as tee, TeeSession(work / "whole") as whole_tee:
        for _ in range(rounds):
            best["original"] = min(best["original"], _median_ns(
                lambda im: vm_orig["main"](tvm.runtime.tensor(im)), images))
            best["backbone"] = min(best["backbone"], _median_ns(backbone.taps, images))
            split = []

            def protected(im):
                taps = backbone.taps(im)
                t1 = time.perf_counter_ns()
                _, cpm_ns = tee.run(taps)
                split.append((time.perf_counter_ns() - t1 - cpm_ns, cpm_ns))

            best["protected"] = min(best["protected"], _median_ns(protected, images))
            best["transfer"] = min(best["transfer"], float(np.median([s[0] for s in split])))
            best["cpm"] = min(best["cpm"], float(np.median([s[1] for s in split])))
            best["whole"] = min(best["whole"], _median_ns(whole_tee.run, flat))
            all_taps = [backbone.taps(im) for im in images]
            best["trip"] = min(best["trip"], _median_ns(tee.run, all_taps))   # invokes back to back
        cpm_info = tee.info
    return {
        "model": name, "tap": strategy.taps[0], "tap_bytes": cpm_info.tap_bytes,
        "cpm_weight_bytes": cpm_info.weight_bytes, "cpm_arena_bytes": cpm_info.arena_bytes,
        "whole_weight_bytes": whole.weight_bytes,
        "whole_arena_bytes": whole.arena_bytes,
        **{f"{k}_ms": v / 1e6 for k, v in best.items()},
        "protected_over_backbone": best["protected"] / best["backbone"],
        "protected_over_original": best["protected"] / best["original"],
        "whole_over_protected": best["whole"] / best["protected"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,vgg,resnet")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tune-trials", type=int, default=0,
                    help="MetaSchedule trials for the backbone (default 0: untuned, as labelled)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from mirrornet_tvm import data

    x = np.ascontiguousarray(data.load("fashion-mnist")[2][:args.images])
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"mirrornet-bench-{name}-") as tmp:
            print(f"[protected_latency] {name} ...", file=sys.stderr)
            rows.append(bench_model(name, Path(tmp), x, args.rounds, args.tune_trials))

    print(f"machine: {platform.platform()}; CPU {cpu_model()}; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    tuning = f"backbone tuned ({args.tune_trials} MetaSchedule trials)" if args.tune_trials else "backbone untuned"
    print(f"per image, ms (min over {args.rounds} rounds of the median of {args.images} Fashion-MNIST test "
          f"images); {tuning}; CPM / whole-model C with default schedules; Relax VM single-threaded; "
          "TEE = host simulator")
    head = (f"{'model':<8}{'original':>10}{'backbone':>10}{'protected':>11}{'prot/bb':>9}{'target':>8}"
            f"{'transfer':>10}{'CPM':>8}{'b2b trip':>10}{'whole-TA':>10}{'whole/prot':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = "met" if r["protected_over_backbone"] <= TARGET_RATIO else "NOT met"
        print(f"{r['model']:<8}{r['original_ms']:>10.3f}{r['backbone_ms']:>10.3f}{r['protected_ms']:>11.3f}"
              f"{r['protected_over_backbone']:>8.2f}x{ok:>8}{r['transfer_ms']:>10.3f}{r['cpm_ms']:>8.3f}"
              f"{r['trip_ms']:>10.3f}"
              f"{r['whole_ms']:>10.3f}{r['whole_over_protected']:>10.1f}x")
    print()
    print("secure memory of the TA's data (weights + static arena), KiB")
    print(f"{'model':<8}{'CPM':>10}{'whole model':>13}{'ratio':>8}")
    for r in rows:
        cpm = (r["cpm_weight_bytes"] + r["cpm_arena_bytes"]) / 1024
        whole = (r["whole_weight_bytes"] + r["whole_arena_bytes"]) / 1024
        print(f"{r['model']:<8}{cpm:>10.1f}{whole:>13.1f}{whole / cpm:>7.1f}x")
    print(f"target: protected <= {TARGET_RATIO:.2f}x backbone. whole-TA is the DarkneTZ approach (every layer "
          "in the TEE) with the same C code generator and simulated TA as the CPM; it runs on the same host "
          "core here, so it shows the code's speed, not a TEE's cost. transfer = simulator round trip "
          "minus CPM after the backbone ran; b2b trip = the same invoke repeated back to back. Both are "
          "two process wake-ups: on a loaded machine (load average above) a wake-up after CPU-bound work "
          "waits for other processes' time slices")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": {"platform": platform.platform(), "cpu": cpu_model(),
                                                            "cores": os.cpu_count()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
