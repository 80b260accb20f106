"""CPM latency: the generated standalone C against TVM's own build of the same CPM, one thread.

For CPMs mirrored from the zoo models (mirrornet_tvm.mirror, untrained weights: latency does not
depend on their values) this prints, per inference:

  C -O2        the generated C (mirrornet_tvm.codegen, default schedules), gcc -O2, plain x86-64
  TVM          the same lowered module (same schedules) built by tvm.compile for LLVM, plain x86-64
  C native     the generated C, gcc -O2 -march=native
  TVM native   the same module, LLVM with mcpu = the host CPU
  naive C      the generated C without schedules (TVM's legalized loop nests), gcc -O2
  naive TVM    tvm.compile of the CPM function with TVM's default pipeline (untuned, no schedules)

Targets (issue "CPM as standalone C"): C/TVM <= 2, the generated C against TVM's build of the very
same scheduled kernels; and naive C/C >= 5, the generated C against "the untuned naive loops": the
CPM's loop nests with no schedule applied, through the same C generator and the same gcc -O2, so the
ratio is what the schedules buy. naive TVM/C is context, not a target: TVM's own untuned build, whose
LLVM vectorizes even unscheduled loops. The memory columns check the secure-memory target on the
same CPMs: the strategy's estimate (mirrornet_tvm.strategy.cpm_secure_memory) against the arena and
weights the generated C holds. All figures come from one run on one
machine. Each program is timed in ROUNDS interleaved rounds of seven short batches (the programs of a
case take turns, so they see the same background load); the table shows the fastest batch mean
(best case, the least disturbed by other processes on a shared machine) and, in --json, also the
median over all batches. Single-threaded throughout: TVM_NUM_THREADS=1, and the C is
single-threaded by construction.

    .venv/bin/python bench/cpm_c_latency.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["TVM_NUM_THREADS"] = "1"  # before tvm is imported

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend import onnx as rx_onnx  # noqa: E402

from mirrornet_tvm import analysis, mirror, zoo  # noqa: E402
from mirrornet_tvm.codegen import generate_cpm_c, harness, lower_cpm  # noqa: E402
from mirrornet_tvm.strategy import Strategy, cpm_secure_memory  # noqa: E402

torch.set_num_threads(1)

# (zoo model, tap picks as fractions of the candidate list, width ratio)
CASES = [
    ("lenet", (0.5,), 0.25),
    ("lenet", (0.2, 0.5), 0.5),
    ("vgg", (0.5,), 0.25),
    ("vgg", (0.2, 0.5), 0.125),
    ("resnet", (0.5,), 0.25),
    ("resnet", (0.2, 0.6), 0.125),
]
QUICK = [CASES[0], CASES[2]]
BATCH_SECONDS = 0.02  # each timed batch runs about this long
ROUNDS = 6


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "llvm_host_cpu": tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")(),
            "gcc": gcc, "tvm": tvm.__version__, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def cpm_module(model_name: str, picks, width: float):
    """The CPM of a zoo model for a strategy, as a Relax module whose ``main`` takes the taps."""
    model = zoo.build(model_name).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, input_names=["input"],
                          output_names=["logits"], dynamo=False)
    graph = analysis.as_graph(onnx.load_from_string(buf.getvalue()))
    candidates = [t for t in analysis.candidate_taps(graph) if len(t.shape) == 4]
    taps = sorted({min(int(p * len(candidates)), len(candidates) - 1) for p in picks})
    strategy = Strategy(taps=tuple(candidates[i].name for i in taps), width_ratio=width, merge="add",
                        name=f"{model_name}-bench")
    plan = mirror.plan_cpm(graph, strategy)
    torch.manual_seed(0)
    cpm = mirror.CPM(plan, graph, init="slice").eval()
    nodes, inits = cpm.onnx_nodes()  # the deployed form: batch norm folded, as `mirrornet compile` sees it
    shapes = [shape for _, shape in plan.inputs]
    names = [name for name, _ in plan.inputs]
    proto = onnx.helper.make_model(onnx.helper.make_graph(
        nodes, "cpm", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s))
                       for n, s in plan.inputs],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, plan.num_classes])], inits),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    args = tuple(torch.randn(*s) for s in shapes)
    mod = rx_onnx.from_onnx(proto, shape_dict=dict(zip(names, map(list, shapes))), keep_params_in_input=False)
    label = f"{model_name} {'+'.join(strategy.taps)} w={width}"
    return label, mod, [a.numpy() for a in args], plan


def _iterations(seconds_per_run: float) -> int:
    return max(1, int(BATCH_SECONDS / max(seconds_per_run, 1e-7)))


class CProgram:
    def __init__(self, out: Path, flags: tuple[str, ...], taps, num_classes: int):
        self.toolchain = harness.Toolchain("gcc", flags + ("-fno-math-errno",))
        self.exe = harness.build(out, self.toolchain, out / ("cpm" + "".join(f.strip("-") for f in flags)))
        self.taps, self.num_classes = taps, num_classes
        self.logits, timing = harness.run(self.exe, taps, num_classes, self.toolchain, iterations=3)
        self.n = _iterations(timing.best)

    def measure(self) -> list[float]:
        """Seconds per inference: the fastest and the median of 7 batches."""
        _, timing = harness.run(self.exe, self.taps, self.num_classes, self.toolchain, iterations=self.n)
        return [timing.best, timing.median]


class TvmProgram:
    def __init__(self, mod, target: dict, taps):
        ex = tvm.compile(mod, target=tvm.target.Target(target))
        self.vm = relax.VirtualMachine(ex, tvm.cpu())
        self.args = [tvm.runtime.tensor(t) for t in taps]
        self.logits = self.vm["main"](*self.args).numpy().reshape(-1)
        once = self.vm.time_evaluator("main", tvm.cpu(), number=3, repeat=3)(*self.args).min
        self.n = _iterations(once)

    def measure(self) -> list[float]:
        """Seconds per inference: the fastest and the median of 7 batches."""
        result = self.vm.time_evaluator("main", tvm.cpu(), number=self.n, repeat=7)(*self.args)
        return [float(np.min(result.results)), float(np.median(result.results))]


def run_case(model_name, picks, width, work: Path) -> dict:
    label, mod, taps, plan = cpm_module(model_name, picks, width)
    generic, native = {"kind": "llvm"}, {"kind": "llvm", "mcpu": machine()["llvm_host_cpu"]}
    code = generate_cpm_c(mod, "main", out_dir=work / "c", target=generic, source_desc=label,
                          measure_stack_usage=False)
    naive_code = generate_cpm_c(mod, "main", out_dir=work / "naive", target=generic, default_schedules=False,
                                source_desc=label, measure_stack_usage=False)
    programs = {
        "C -O2": CProgram(work / "c", ("-O2",), taps, code.num_classes),
        "TVM": TvmProgram(lower_cpm(mod, "main", target=generic), generic, taps),
        "C native": CProgram(work / "c", ("-O2", "-march=native"), taps, code.num_classes),
        "TVM native": TvmProgram(lower_cpm(mod, "main", target=native), native, taps),
        "naive C": CProgram(work / "naive", ("-O2",), taps, naive_code.num_classes),
        "naive TVM": TvmProgram(mod, generic, taps),
    }
    reference = programs["naive TVM"].logits
    for name, prog in programs.items():
        err = float(np.max(np.abs(prog.logits - reference)))
        if err > 1e-4:
            raise SystemExit(f"{label}: {name} disagrees with the Relax VM by {err:g}")
    best = {name: float("inf") for name in programs}
    medians = {name: [] for name in programs}
    for _ in range(ROUNDS):
        for name, prog in programs.items():
            fastest, median = prog.measure()
            best[name] = min(best[name], fastest)
            medians[name].append(median)
    estimate = cpm_secure_memory(plan)
    return {"case": label, "cpm_flops": plan.flops, "kernels": code.num_kernels,
            "weight_bytes": code.weight_bytes, "arena_bytes": code.arena_bytes,
            "estimate": {"weight_bytes": estimate.weights, "arena_bytes": estimate.arena},
            "memory_agrees": (estimate.weights, estimate.arena) == (code.weight_bytes, code.arena_bytes),
            "seconds": best,
            "median_seconds": {name: float(np.median(v)) for name, v in medians.items()},
            "c_over_tvm": best["C -O2"] / best["TVM"],
            "c_over_tvm_native": best["C native"] / best["TVM native"],
            "naive_c_over_c": best["naive C"] / best["C -O2"],
            "naive_tvm_over_c": best["naive TVM"] / best["C -O2"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two cases only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mirrornet-bench-") as tmp:
        for i, (model_name, picks, width) in enumerate(QUICK if args.quick else CASES):
            work = Path(tmp) / f"case{i}"
            rows.append(run_case(model_name, picks, width, work))
            print(f"  measured {rows[-1]['case']}", file=sys.stderr)
    cols = ["C -O2", "TVM", "C native", "TVM native", "naive C", "naive TVM"]
    head = f"{'CPM':44} {'MFLOP':>6} " + " ".join(f"{c:>10}" for c in cols)
    head += f" {'C/TVM':>6} {'Cn/TVMn':>7} {'naiveC/C':>8} {'naiveT/C':>8} {'arena+weights B':>15} {'estimate':>8}"
    print("\nper-inference latency, microseconds (single thread; fastest batch mean)")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['case'][:44]:44} {r['cpm_flops'] / 1e6:6.2f} "
        line += " ".join(f"{r['seconds'][c] * 1e6:10.1f}" for c in cols)
        line += (f" {r['c_over_tvm']:6.2f} {r['c_over_tvm_native']:7.2f} {r['naive_c_over_c']:8.1f}"
                 f" {r['naive_tvm_over_c']:8.1f} {r['arena_bytes'] + r['weight_bytes']:15,}"
                 f" {'equal' if r['memory_agrees'] else 'DIFFERS':>8}")
        print(line)
    geo = lambda key: float(np.exp(np.mean([np.log(r[key]) for r in rows])))  # noqa: E731
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    c_tvm, naive = geo("c_over_tvm"), geo("naive_c_over_c")
    print("\ntargets (geometric means over the CPMs above):")
    span = lambda key, fmt: f"per CPM {min(r[key] for r in rows):{fmt}}..{max(r[key] for r in rows):{fmt}}"  # noqa: E731
    print(f"  C/TVM            {c_tvm:5.2f}  target <= 2  {verdict(c_tvm <= 2)}   ({span('c_over_tvm', '.2f')}) "
          "generated C vs TVM's build of the same scheduled kernels")
    print(f"  naive C/C        {naive:5.1f}  target >= 5  {verdict(naive >= 5)}   ({span('naive_c_over_c', '.1f')}) "
          "the untuned naive loops (the CPM's loops, no schedule applied; same C generator, same gcc) vs the C")
    print(f"  secure memory    {sum(r['memory_agrees'] for r in rows)}/{len(rows)} CPMs: estimate == generated "
          f"arena and weights  {verdict(all(r['memory_agrees'] for r in rows))}")
    print(f"  context, no target: C native/TVM native {geo('c_over_tvm_native'):.2f}; naive TVM/C "
          f"{geo('naive_tvm_over_c'):.1f} (TVM's own untuned build: LLVM vectorizes the unscheduled loops)")
    print(f"load average after the run: {os.getloadavg()[0]:.2f}; {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
