"""Protected inference latency: backbone alone vs backbone + TEE round trip + CPM vs the whole model in the TA.

For each zoo model (LeNet, VGG, ResNet at 1x28x28; weights untrained, which does not change latency) a
MirrorNet is made the way `mirrornet protect` makes it (a middle tap, CPM width 1/8), compiled with
`mirrornet compile` (host target; untuned unless --tune-trials) and packaged with `mirrornet package-ta`
for the host TEE simulator. Per image, on real Fashion-MNIST test images:

  original    the unprotected model, built as `mirrornet compile` builds a backbone (Relax VM, host
              target, default CPU schedules, plus the tuning records of the same database if any)
  backbone    BUILD/backbone.so as a user gets it by default (or tuned, with --tune-trials) on the
              Relax VM, taps out as numpy: what the normal world runs anyway
  protected   backbone + the simulator round trip (one RUN_CPM invoke through TeeSession) + the CPM in
              the TA (target: at most 1.15x backbone)
  whole-TA    the DarkneTZ approach: the whole model as C (the same code generator and default
              schedules as the CPM), in the same simulated TA, single-threaded as in a TEE, fed the
              image through the same kind of invoke

and the split of `protected` into transfer (round trip minus CPM) and CPM (the TA's clock), and the
round trip of invokes sent back to back (no backbone in between: the simulator's own cost), plus the
secure memory (weights + static arena) each approach needs in the TA. Every figure is the smallest,
over rounds, of the median per-image time of that round; within a round original, backbone and
protected run in turn on each image, so they see the same background load (the machine may be shared),
and the whole model in the TA runs in a pass of its own. The Relax VM
runs single-threaded (TVM_NUM_THREADS=1), like the TA: on a board the TA runs on the core that invoked
it.

The simulator's round trip is two process wake-ups on this machine; OP-TEE's is an SMC world switch and
back on the calling core, which these figures do not measure (see bench/qemu_measurements.py for the
real secure world).

    .venv/bin/python bench/protected_latency.py [--models lenet,vgg,resnet] [--images 50] [--rounds 3]
                                                [--tune-trials N]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mirrornet_tvm.machine import cpu_model  # noqa: E402

TARGET_RATIO = 1.15


def machine_line() -> str:
    """The table's first line: platform, CPU, cores and the load average now."""
    return (f"machine: {platform.platform()}; CPU {cpu_model()}; {os.cpu_count()} cores; load average "
            f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def write_rows(path, rows) -> None:
    """The table's rows with the machine, as JSON (atomically)."""
    from mirrornet_tvm.util import write_json

    write_json(path, {"machine": {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count()},
                      "rows": rows})


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


def original_build(original_proto, database=None):
    """The unprotected model as `mirrornet compile` would build it: host target, tuned records where the
    database has them (the backbone's kernels are the original's first kernels), default schedules."""
    import tvm

    from mirrornet_tvm import frontend
    from mirrornet_tvm.build import apply_default_schedules, open_database, resolve_target
    from mirrornet_tvm.transform.apply_database import ApplyTuningDatabase
    from mirrornet_tvm.transform.pipeline import backbone_lowering_passes

    target = resolve_target("host").target
    db = open_database(database) if database is not None else None
    with target:
        lowered = tvm.transform.Sequential([*backbone_lowering_passes(), ApplyTuningDatabase(db)])(
            frontend.to_relax(original_proto))
    scheduled, _ = apply_default_schedules(lowered, target)
    return tvm.compile(scheduled, target)


def _time_ns(fn, x) -> int:
    t0 = time.perf_counter_ns()
    fn(x)
    return time.perf_counter_ns() - t0


def bench_model(name: str, work: Path, x: np.ndarray, rounds: int, tune_trials: int = 0) -> dict:
    import tvm
    from tvm import relax

    from mirrornet_tvm.compile import compile_artifact
    from mirrornet_tvm.tee.package import package_ta
    from mirrornet_tvm.tee.protected import Backbone
    from mirrornet_tvm.tee.session import TeeSession

    original, strategy = make_artifact(name, work / "artifact")
    compile_artifact(work / "artifact", work / "build", target="host", progress=False, tune_trials=tune_trials,
                     database=(work / "db") if tune_trials else None)
    package_ta(work / "build", sim_only=True, progress=False)
    whole = whole_model_build(original, work / "whole")

    vm_orig = relax.VirtualMachine(original_build(original, (work / "db") if tune_trials else None), tvm.cpu())
    run_original = vm_orig["main"]

    original_input = tvm.runtime.tensor(np.ascontiguousarray(x[:1]))

    def original_logits(im):  # as backbone.taps does it: input tensor reused, outputs through DLPack
        original_input.copyfrom(im)
        out = run_original(original_input)
        return [np.from_dlpack(t) for t in ([out] if hasattr(out, "numpy") else out)]

    manifest = json.loads((work / "build" / "manifest.json").read_text())["backbone"]
    backbone = Backbone(work / "build")
    images = [x[i:i + 1] for i in range(len(x))]
    flat = [im.reshape(-1) for im in images]
    best = {k: float("inf") for k in ("original", "backbone", "protected", "whole", "transfer", "cpm", "trip")}
    with TeeSession(work / "build") as tee, TeeSession(work / "whole") as whole_tee:
        for _ in range(rounds):
            # original, backbone and protected in turn on each image, so that they see the same background
            # load; the whole model in the TA (milliseconds of CPU per image) in a pass of its own
            times = {k: [] for k in best}
            for im in images:
                times["original"].append(_time_ns(original_logits, im))
                times["backbone"].append(_time_ns(backbone.taps, im))
                t0 = time.perf_counter_ns()
                taps = backbone.taps(im)
                t1 = time.perf_counter_ns()
                _, cpm_ns = tee.run(taps)
                t2 = time.perf_counter_ns()
                times["protected"].append(t2 - t0)
                times["transfer"].append(t2 - t1 - cpm_ns)
                times["cpm"].append(cpm_ns)
                times["trip"].append(_time_ns(tee.run, taps))  # the same invoke again, back to back
            for fl in flat:
                times["whole"].append(_time_ns(whole_tee.run, fl))
            for k, v in times.items():
                best[k] = min(best[k], float(np.median(v)))
        cpm_info = tee.info
    return {
        "model": name, "tap": strategy.taps[0], "tap_bytes": cpm_info.tap_bytes,
        "backbone_tuning": manifest["tuning"], "backbone_kernels": manifest["kernels"],
        "backbone_tuned_kernels": manifest["tuned_kernels"],
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

    print(machine_line())
    tuning = "; ".join(f"{r['model']} {r['backbone_tuning']} ({r['backbone_tuned_kernels']}/{r['backbone_kernels']} "
                       "kernels tuned, the rest default-scheduled)" for r in rows)
    print(f"per image, ms (min over {args.rounds} rounds of the median of {args.images} Fashion-MNIST test "
          "images). original and backbone: Relax VM as `mirrornet compile` builds them (host target), "
          "single-threaded; protected = backbone + host-simulator TEE round trip + CPM; whole-TA = the whole "
          "model as C in the simulated TA (single thread); CPM and whole-model C with default schedules, gcc -O2")
    print(f"backbone builds: {tuning}")
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
          "minus CPM after the backbone ran (Python TeeSession included); b2b trip = the same invoke "
          "repeated back to back. Both are two process wake-ups: on a loaded machine (load average above) "
          "a wake-up after CPU-bound work waits for other processes' time slices")
    if args.json:
        write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
