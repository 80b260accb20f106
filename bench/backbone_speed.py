"""Backbone speed on the Relax VM: what each build choice buys, against onnxruntime, one thread.

For each zoo model (LeNet, VGG, ResNet at 1x28x28, untrained weights: latency does not depend on their
values) a MirrorNet is made as bench/protected_latency.py makes it (a middle tap, CPM width 1/8) and its
backbone (input -> tap) is built several ways:

  naive generic   LegalizeOps' loop nests, no schedule, LLVM for a generic x86-64 ({"kind": "llvm"})
  naive host      the same loops, LLVM with mcpu = this machine's CPU (what `mirrornet compile` gave
                  before kernels without a tuning record got a default schedule)
  default generic the default CPU schedule (codegen.schedule.CpmCpuSchedule) on every kernel, generic
  default host    the default CPU schedule, mcpu = host: what `mirrornet compile` builds untuned
  tuned host      with --tune-trials N: MetaSchedule records for the kernels, default schedule for any
                  kernel without one (`mirrornet compile --tune-trials N`)
  onnxruntime     the same backbone (combined.onnx cut at the tap) in onnxruntime, one intra-op thread

Each figure is the smallest, over interleaved rounds, of the median time of one call on the same real
Fashion-MNIST image (the VM call alone, input already on the device; onnxruntime's run likewise).
Ratios are to "default host". The Relax VM runs single-threaded (TVM_NUM_THREADS=1), as the TA does.

    .venv/bin/python bench/backbone_speed.py [--models lenet,vgg,resnet] [--rounds 5] [--tune-trials N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TVM_NUM_THREADS"] = "1"  # before tvm is imported

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protected_latency import machine_line, make_artifact, write_rows  # noqa: E402

CALLS = 30  # calls per round and variant


def _median_ns(fn, calls: int = CALLS) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times))


def _vm_callable(module, target):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(module, target), tvm.cpu())
    return vm["backbone"]


def bench_model(name: str, work: Path, image: np.ndarray, rounds: int, tune_trials: int) -> dict:
    import onnx
    import onnxruntime as ort
    import tvm

    from mirrornet_tvm import frontend
    from mirrornet_tvm.build import apply_default_schedules, build_backbone, lower_backbone, resolve_target
    from mirrornet_tvm.compile import read_artifact
    from mirrornet_tvm.transform import AttachMirrorNetMetadata
    from mirrornet_tvm.transform.pipeline import mirrornet_pipeline

    _, strategy = make_artifact(name, work / "artifact")
    artifact = read_artifact(work / "artifact")
    mod = AttachMirrorNetMetadata(artifact.output_names, artifact.strategy.to_dict())(frontend.to_relax(artifact.proto))
    host = resolve_target("host").target
    generic = tvm.target.Target({"kind": "llvm"})
    with host:
        mod = mirrornet_pipeline(artifact.strategy)(mod)
    lowered = lower_backbone(mod)
    default_host, _ = apply_default_schedules(lowered, host)
    default_generic, _ = apply_default_schedules(lowered, generic)
    fns = {
        "naive generic": _vm_callable(lowered, generic),
        "naive host": _vm_callable(lowered, host),
        "default generic": _vm_callable(default_generic, generic),
        "default host": _vm_callable(default_host, host),
    }
    outputs = {}
    if tune_trials:
        from tvm import relax

        build = build_backbone(mod, "host", database=work / "db", tune_trials=tune_trials, out=work / "tuned.so")
        vm = relax.VirtualMachine(tvm.runtime.load_module(build.path), tvm.cpu())
        fns[f"tuned host ({build.tuned_kernels}/{build.kernels})"] = vm["backbone"]
    x = tvm.runtime.tensor(image)
    for key, fn in fns.items():
        out = fn(x)
        outputs[key] = [t.numpy() for t in ([out] if hasattr(out, "numpy") else out)]

    taps = [f"tap:{t}" for t in strategy.taps]
    cut = work / "backbone_cut.onnx"
    onnx.utils.extract_model(str(artifact.combined_path), str(cut), ["input"], taps)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(cut), opts, providers=["CPUExecutionProvider"])
    feed = {"input": image}
    reference = sess.run(None, feed)
    worst = max(float(np.abs(a - b).max()) for outs in outputs.values() for a, b in zip(outs, reference))
    fns["onnxruntime"] = lambda: sess.run(None, feed)

    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            call = fn if key == "onnxruntime" else (lambda f=fn: f(x))
            best[key] = min(best[key], _median_ns(call))
    return {"model": name, "tap": strategy.taps[0], "ms": {k: v / 1e6 for k, v in best.items()},
            "max_abs_diff_vs_onnxruntime": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,vgg,resnet")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tune-trials", type=int, default=0, help="also build the backbone tuned (MetaSchedule)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import torch

    from mirrornet_tvm import data

    torch.set_num_threads(1)
    image = np.ascontiguousarray(data.load("fashion-mnist")[2][:1])
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"mirrornet-bbspeed-{name}-") as tmp:
            print(f"[backbone_speed] {name} ...", file=sys.stderr)
            rows.append(bench_model(name, Path(tmp), image, args.rounds, args.tune_trials))

    print(machine_line())
    print(f"backbone (input -> middle tap) per call, ms: min over {args.rounds} interleaved rounds of the median of "
          f"{CALLS} calls; Relax VM and onnxruntime single-threaded; (x) = time / 'default host'")
    keys = list(rows[0]["ms"])
    width = max(12, *(len(k) + 2 for k in keys))
    print(f"{'model':<8}" + "".join(f"{k:>{width}}" for k in keys) + f"{'max|diff|':>11}")
    for r in rows:
        base = r["ms"]["default host"]
        cells = []
        for k in keys:
            ms = r["ms"].get(k, float("nan"))
            cells.append(f"{ms:.3f} ({ms / base:.2f}x)".rjust(width))
        print(f"{r['model']:<8}" + "".join(cells) + f"{r['max_abs_diff_vs_onnxruntime']:>11.1e}")
    print("max|diff| = largest difference of any TVM build's taps from onnxruntime's. 'default host' is what "
          "`mirrornet compile` builds when no tuning record exists.")
    if args.json:
        write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
