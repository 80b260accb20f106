"""Regenerate every benchmark table the README quotes, with one command, printing the machine it ran on.

    .venv/bin/python bench/run_all.py              # full sizes (many hours on 2 cores: the security grid)
    .venv/bin/python bench/run_all.py --quick      # small versions of every table (tens of minutes)
    .venv/bin/python bench/run_all.py --list       # the steps and the exact commands, nothing run
    .venv/bin/python bench/run_all.py --only protected_latency,cpm_c_latency --force

Each step is one of the bench/*.py scripts (or the onnxruntime peer below), run as a subprocess with the
options of the chosen size. Its table (stdout) is kept in ``OUT/<step>.txt`` with ``OUT/<step>.json``
(command, exit code, seconds, machine); a rerun skips the steps that already succeeded, so an
interrupted run resumes (``--force`` reruns them). Scripts that cache their own work (protect_zoo,
security_table, emulator_accuracy) keep it under ``OUT/work/``. At the end every table is printed,
with the machine, into ``OUT/tables.md``; ``--publish`` also writes it to ``bench/RESULTS.md``, the
committed copy the README's figures are copied from (tests/test_docs.py checks they appear there).
``OUT`` is ``out/bench/full`` or ``out/bench/quick``.

The onnxruntime peer (step ``onnxruntime_peer``, run by this script itself, ``--peer``): the unprotected
zoo models in onnxruntime and in the Relax VM (untuned: TVM's naive loops, and the default CPU schedule
`mirrornet compile` gives), single-threaded, per image, on real test images, the reference a user compares protected inference against.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mirrornet_tvm.machine import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PUBLISHED = ROOT / "bench" / "RESULTS.md"


@dataclass(frozen=True)
class Step:
    """One table: the script that prints it and its options at each size."""

    name: str
    script: str
    what: str
    full: tuple = ()
    quick: tuple = ()
    needs_qemu: bool = False
    work_flag: str | None = None        # the script's option for its cache folder
    extra_env: dict = field(default_factory=dict)

    def command(self, quick: bool, work: Path) -> list:
        args = list(self.quick if quick else self.full)
        if self.work_flag:
            args += [self.work_flag, str(work / self.name)]
        if self.script == __file__ or self.script == "run_all.py":
            return [PY, str(Path(__file__).resolve()), "--peer", *args]
        return [PY, str(ROOT / "bench" / self.script), *args]


STEPS = [
    Step("protect_zoo", "protect_zoo.py",
         "accuracy: original / authorized / illegal use, CPM FLOP share and secure memory",
         # the adversarial objective's rows are in the security table (with what a thief gets)
         full=("--models", "lenet,vgg,resnet", "--configs", "auto-uniform,deep-uniform"),
         quick=("--models", "lenet,vgg", "--subset", "3000", "--epochs", "2"),
         work_flag="--out"),
    Step("security_table", "security_table.py",
         "model stealing against the black-box baseline, by strategy, degradation and budget",
         # full: LeNet's grid with every training recipe, and the --auto default of VGG and ResNet (their base
         # models and artifacts taken from protect_zoo's when trained with the same settings), cached in
         # out/security (the script's own default, shared with direct runs); many hours from scratch,
         # minutes when the cache holds the cells
         full=("--models", "lenet,vgg,resnet", "--only-default", "vgg,resnet", "--variants", "default,taps",
               "--budgets", "0.001,0.01", "--base-models", "out/bench/full/work/protect_zoo/base",
               "--reuse-artifacts", "out/bench/full/work/protect_zoo"),
         quick=("--quick", "--max-minutes", "45", "--out", "out/bench/quick/work/security_table")),
    Step("protected_latency", "protected_latency.py",
         "latency: original, backbone alone, protected (simulator), whole model in the TA",
         full=(), quick=("--models", "lenet,vgg", "--images", "20", "--rounds", "2")),
    Step("onnxruntime_peer", "run_all.py",
         "latency of the unprotected models: onnxruntime vs the Relax VM (naive loops, default schedules)",
         full=("--models", "lenet,vgg,resnet", "--images", "200"),
         quick=("--models", "lenet,vgg", "--images", "50")),
    Step("backbone_speed", "backbone_speed.py",
         "backbone on the Relax VM: naive loops vs the default CPU schedule (vs tuned), against onnxruntime",
         full=(), quick=("--models", "lenet,vgg", "--rounds", "3")),
    Step("cpm_c_latency", "cpm_c_latency.py",
         "CPM latency: generated C vs TVM's build of the same CPM vs naive loops",
         full=(), quick=("--quick",)),
    Step("compile_time", "compile_time.py", "compile time of `mirrornet compile`, untuned",
         full=(), quick=("--models", "lenet", "--repeat", "1")),
    Step("real_networks", "real_networks.py",
         "ImageNet-size networks through every `mirrornet` step: outcome and time of each",
         # full: every network (project architectures, zoo-form reconstructions, the Keras tf2onnx exports
         # when .cache/real-models/keras exists) and two of them under QEMU. Not needs_qemu: that would skip
         # the whole step without QEMU; the script runs the other steps and says why table 3 is empty.
         full=("--qemu", "resnet50,mobilenet_v2"),
         quick=("--networks", "resnet18,mobilenet_v2,shufflenet_v1", "--random", "3"),
         work_flag="--work"),
    Step("emulator_accuracy", "emulator_accuracy.py",
         "Performance Emulator: predicted vs measured latency on held-out strategies",
         full=(), quick=("--quick",), work_flag="--work"),
    Step("qemu_measurements", "qemu_measurements.py",
         "secure memory of the TA as OP-TEE reports it under QEMU", full=(), quick=("--images", "4"),
         needs_qemu=True),
]


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("mirrornet-tvm", "apache-tvm", "torch", "onnxruntime"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "versions": versions}


def machine_line(m: dict) -> str:
    v = m["versions"]
    return (f"{m['platform']} | {m['cpu']} | {m['cores']} cores | Python {m['python']} | "
            f"apache-tvm {v['apache-tvm']}, torch {v['torch']}, onnxruntime {v['onnxruntime']} | "
            f"load average {', '.join(str(x) for x in m['load_average'])}")


def qemu_available() -> tuple[bool, str]:
    try:
        from mirrornet_tvm.tee.qemu import environment_paths

        environment_paths()
        return True, ""
    except Exception as err:  # noqa: BLE001 - any reason makes the step unavailable; say which
        return False, str(err).splitlines()[0]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_step(step: Step, quick: bool, out: Path, force: bool, timeout: float | None) -> dict:
    """Run one step unless it already succeeded; return its record."""
    record_path = out / f"{step.name}.json"
    if record_path.is_file() and not force:
        record = json.loads(record_path.read_text())
        if record.get("exit_code") == 0 and (out / f"{step.name}.txt").is_file():
            print(f"[bench] {step.name}: done earlier ({record['seconds']:.0f} s), kept; --force reruns it",
                  file=sys.stderr)
            return record
    cmd = step.command(quick, out / "work")
    shown = " ".join(shlex.quote(str(c)) for c in cmd).replace(str(ROOT) + "/", "")
    if step.needs_qemu:
        ok, why = qemu_available()
        if not ok:
            print(f"[bench] {step.name}: skipped, OP-TEE under QEMU is not set up ({why})", file=sys.stderr)
            return {"step": step.name, "command": shown, "exit_code": None, "seconds": 0,
                    "skipped": f"OP-TEE under QEMU not set up: {why}"}
    print(f"[bench] {step.name}: {shown}", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.extra_env)
    started = time.perf_counter()
    with open(out / f".{step.name}.stdout.tmp", "w") as stdout:
        try:
            # stderr (progress bars) passes through to the terminal; stdout is the table
            code = subprocess.run(cmd, stdout=stdout, cwd=ROOT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = round(time.perf_counter() - started, 1)
    table = (out / f".{step.name}.stdout.tmp").read_text()
    record = {"step": step.name, "what": step.what, "command": shown, "exit_code": code, "seconds": seconds,
              "size": "quick" if quick else "full", "machine": machine(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if code == 0:
        os.replace(out / f".{step.name}.stdout.tmp", out / f"{step.name}.txt")
    else:
        os.replace(out / f".{step.name}.stdout.tmp", out / f"{step.name}.failed.txt")
        print(f"[bench] {step.name}: FAILED ({code}) after {seconds:.0f} s; its output is in "
              f"{out / (step.name + '.failed.txt')}", file=sys.stderr)
        print(table[-2000:], file=sys.stderr)
    write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return record


def table_of(stdout: str) -> str:
    """A script's table: its output from the last line that names the machine or starts a markdown title
    (the scripts print either first, then the table; reports of the commands they run come before it);
    everything when there is no such line."""
    lines = stdout.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lower().startswith("machine") or line.startswith("# ")]
    return "\n".join(lines[starts[-1]:] if starts else lines)


def render_tables(records: list, out: Path, quick: bool) -> str:
    m = machine()
    lines = ["<!-- Generated by bench/run_all.py from the bench/*.py scripts' output; rerun it to regenerate. -->",
             f"# Benchmark tables ({'quick' if quick else 'full'} sizes)", "",
             f"Collected on: {machine_line(m)}", ""]
    for step, record in records:
        lines += [f"## {step.name}: {step.what}", ""]
        if record.get("skipped"):
            lines += [f"not measured: {record['skipped']}", ""]
            continue
        lines.append(f"command: `{record['command']}`  ")
        lines.append(f"finished {record.get('finished', '?')} after {record['seconds']:.0f} s; exit code "
                     f"{record['exit_code']}; machine at the time: {machine_line(record['machine'])}")
        lines.append("")
        txt = out / f"{step.name}.txt"
        body = table_of(txt.read_text()) if txt.is_file() else "(no table: the step failed, see its .failed.txt)"
        lines += ["```", body.rstrip(), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The onnxruntime peer (run as a subprocess of this script with --peer)
# --------------------------------------------------------------------------------------------------

def peer_main(argv) -> int:
    """Per-image latency of the unprotected zoo models: onnxruntime vs the Relax VM, one thread."""
    os.environ["TVM_NUM_THREADS"] = "1"
    ap = argparse.ArgumentParser(prog="run_all.py --peer")
    ap.add_argument("--models", default="lenet,vgg,resnet")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import io
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import tvm
    from tvm import relax

    from mirrornet_tvm import data, zoo
    from mirrornet_tvm.build import apply_default_schedules, resolve_target
    from mirrornet_tvm.transform.pipeline import backbone_lowering_passes
    from mirrornet_tvm.frontend import to_relax

    torch.set_num_threads(1)
    x = np.ascontiguousarray(data.load("fashion-mnist")[2][:args.images])
    target = resolve_target("host")
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = zoo.build(name).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, input_names=["input"],
                              output_names=["logits"], dynamo=False)
        proto = onnx.load_from_string(buf.getvalue())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        # The Relax VM twice, both for the host preset `mirrornet compile` uses (mcpu = this CPU): TVM's
        # naive loops (its default pipeline, no schedule), and as `mirrornet compile` builds kernels
        # without a tuning record (the default CPU schedule).
        with target.target:
            lowered = tvm.transform.Sequential(list(backbone_lowering_passes()))(to_relax(proto))
        scheduled, _ = apply_default_schedules(lowered, target.target)
        vms = [relax.VirtualMachine(tvm.compile(m, target.target), tvm.cpu())
               for m in (to_relax(proto), scheduled)]
        images = [x[i:i + 1] for i in range(len(x))]
        tensors = [tvm.runtime.tensor(im) for im in images]
        a = sess.run(None, {"input": images[0]})[0]
        for vm in vms:
            b = vm["main"](tensors[0]).numpy()
            if float(np.abs(a - b).max()) > 1e-4:
                raise SystemExit(f"{name}: onnxruntime and the Relax VM disagree by {float(np.abs(a - b).max()):g}")

        def per_image(fn, items):
            best = float("inf")
            for _ in range(args.rounds):
                times = []
                for it in items:
                    t0 = time.perf_counter()
                    fn(it)
                    times.append(time.perf_counter() - t0)
                best = min(best, float(np.median(times)))
            return best * 1e3

        ort_ms = per_image(lambda im: sess.run(None, {"input": im}), images)
        naive_ms, sched_ms = (per_image(lambda t, vm=vm: vm["main"](t), tensors) for vm in vms)
        rows.append((name, ort_ms, naive_ms, sched_ms))
        print(f"[onnxruntime_peer] {name}: onnxruntime {ort_ms:.3f} ms, Relax VM {naive_ms:.3f} ms "
              f"(naive loops), {sched_ms:.3f} ms (default schedules)", file=sys.stderr)

    print(f"machine: {machine_line(machine())}")
    print(f"per image, ms (min over {args.rounds} rounds of the median over {args.images} Fashion-MNIST test "
          "images), one thread; zoo models with untrained weights (latency does not depend on them); "
          "Relax VM untuned, for the host preset of `mirrornet compile` "
          f"({json.dumps(target.config)}): 'VM naive' = TVM's naive loops (its default pipeline, no "
          "schedule), 'VM default' = as `mirrornet compile` builds kernels without a tuning record "
          "(the default CPU schedule)")
    head = (f"{'model':<8}{'onnxruntime':>13}{'VM naive':>10}{'VM default':>12}{'naive/ort':>11}"
            f"{'default/ort':>13}{'naive/default':>15}")
    print(head)
    print("-" * len(head))
    for name, ort_ms, naive_ms, sched_ms in rows:
        print(f"{name:<8}{ort_ms:>13.3f}{naive_ms:>10.3f}{sched_ms:>12.3f}{naive_ms / ort_ms:>10.1f}x"
              f"{sched_ms / ort_ms:>12.1f}x{naive_ms / sched_ms:>14.1f}x")
    return 0


# --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--peer"]:
        return peer_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small versions of every table")
    ap.add_argument("--only", help="comma-separated steps to run (default: all)")
    ap.add_argument("--skip", help="comma-separated steps not to run")
    ap.add_argument("--force", action="store_true", help="rerun steps that already succeeded")
    ap.add_argument("--out", type=Path, default=None, help="results folder [default: out/bench/full|quick]")
    ap.add_argument("--step-timeout", type=float, default=None, metavar="MINUTES",
                    help="stop a step that runs longer than this")
    ap.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    ap.add_argument("--tables-only", action="store_true", help="print the tables collected so far, run nothing")
    ap.add_argument("--publish", action="store_true",
                    help="also write the tables to bench/RESULTS.md, the file the README's figures come from")
    args = ap.parse_args(argv)

    names = [s.name for s in STEPS]
    only = set(args.only.split(",")) if args.only else set(names)
    skip = set(args.skip.split(",")) if args.skip else set()
    unknown = (only | skip) - set(names)
    if unknown:
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(names)}")
    out = args.out or ROOT / "out" / "bench" / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STEPS if s.name in only and s.name not in skip]

    m = machine()
    print(f"machine: {machine_line(m)}", file=sys.stderr)
    if args.list:
        for s in chosen:
            cmd = " ".join(shlex.quote(str(c)) for c in s.command(args.quick, out / "work"))
            print(f"{s.name:<20} {s.what}\n{'':<20} {cmd.replace(str(ROOT) + '/', '')}")
        return 0
    if not shutil.which("gcc"):
        print("[bench] gcc is missing: run `make setup`", file=sys.stderr)
        return 1

    records = []
    for step in STEPS:      # every table collected so far goes into tables.md, not only this run's
        if step in chosen and not args.tables_only:
            record = run_step(step, args.quick, out, args.force,
                              args.step_timeout * 60 if args.step_timeout else None)
        else:
            path = out / f"{step.name}.json"
            record = json.loads(path.read_text()) if path.is_file() else {
                "step": step.name, "skipped": "not run yet", "seconds": 0, "exit_code": None}
        records.append((step, record))
    text = render_tables(records, out, args.quick)
    write_atomic(out / "tables.md", text)
    if args.publish:
        write_atomic(PUBLISHED, text)
    print(text)
    ran = [(s, r) for s, r in records if s in chosen]
    failed = [s.name for s, r in ran if r.get("exit_code") not in (0, None)]
    print(f"[bench] tables in {out / 'tables.md'}" + (f" and {PUBLISHED.relative_to(ROOT)}" if args.publish else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
