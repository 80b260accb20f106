"""ImageNet-size networks through every `mirrornet` step, as a user runs them: outcome and time of each step.

Networks (``--networks`` picks some by name; default all):

  project    the standard architectures of ``mirrornet_tvm.architectures`` at 3x224x224 (resnet18,
             resnet50, mobilenet_v2, squeezenet1_1, densenet121, se_resnet18), random weights given a
             realistic logit scale (BatchNorm running statistics and affine parameters randomised, the
             last layer scaled so that the logits of a random image have standard deviation ~1, as
             tests/test_architectures.py does), exported with ``torch.onnx.export`` (TorchScript
             exporter, opset 17, dynamic batch) as a user would;
  zoo-form   the reconstructions of the ONNX Model Zoo's legacy ImageNet files in
             tests/model_zoo_forms.py (IR 3/4, opsets 7-9, Caffe2/MXNet exporter habits), with random
             weights: the zoo's files themselves are not used. A name the project also uses gets the
             suffix ``_zoo`` (densenet121_zoo);
  file       any ONNX files given with ``--files DIR_OR_FILE...``; the full run adds the tf2onnx exports
             of Keras applications that ``scripts/real-models.sh`` writes to .cache/real-models/keras/
             when that folder exists.

Per network, each step is the `mirrornet` command run as a subprocess (wall time from start to exit,
Python start-up and imports included, as a user waits for it):

  1. ``inspect FILE --json``: taps offered, model GFLOPs and parameters;
  2. ``strategies FILE --json``: strategies kept within the default secure-memory budget, structures
     pruned, the ``--auto`` pick (target: inspect + strategies under 30 s);
  3. ``protect FILE --auto --epochs 0``: the combined model, untrained (no dataset): the CPM's FLOP share
     and secure memory from metrics.json;
  4. ``compile ART`` for the host (target: under 60 s, untuned) and ``compile ART --target rpi3``;
  5. ``package-ta BUILD``: the TA and its secure-memory footprint;
  6. ``run BUILD --random N --tee sim``: latency per image (mean) of the backbone and of protected
     inference (backbone + simulator round trip + CPM), and the outputs against combined.onnx in
     onnxruntime (same top-1, largest difference relative to the largest logit);
  7. the whole model in the TA (the DarkneTZ approach): ``whole_model_build`` of
     bench/protected_latency.py (the whole model as C, packaged for the host simulator), a few random
     images timed through ``TeeSession``; only for networks with at most ``--whole-max-mib`` of weights,
     and whether it would fit the CPM TA's Raspberry Pi 3 budget (``mirrornet_tvm.tee.budget``);
  8. with ``--qemu NAMES``: ``run BUILD --random 2 --tee qemu`` (the backbone on the host, the CPM in
     OP-TEE under QEMU), when the OP-TEE environment of ``make setup`` is there.

A failing step is recorded with its error line (its whole stderr is kept next to its output) and the
network goes on with the steps that do not depend on it. Work is cached per network under ``--work``
(default out/real_networks): a step that succeeded and whose output is there is not rerun unless
``--force``, so an interrupted run resumes. The subprocesses run with TVM_NUM_THREADS=1 and one torch
thread. Rows are written to WORK/rows.json.

    .venv/bin/python bench/real_networks.py [--networks resnet18,mobilenet_v2,shufflenet_v1] [--random 20]
        [--files DIR...] [--qemu resnet50,mobilenet_v2] [--whole-max-mib 32] [--work out/real_networks]
        [--force]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mirrornet_tvm.machine import cpu_model  # noqa: E402

PY = sys.executable
KERAS_DIR = ROOT / ".cache" / "real-models" / "keras"
PROJECT_NAMES = ("resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1", "densenet121", "se_resnet18")
IMAGENET = (3, 224, 224)
FRONT_TARGET_S = 30.0      # inspect + strategies
COMPILE_TARGET_S = 60.0    # compile, host, untuned
STEP_NAMES = ("export", "inspect", "strategies", "protect", "compile", "compile_rpi3", "package_ta", "run",
              "whole_ta", "qemu")
CHILD_ENV = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def mirrornet_cmd() -> list:
    """The `mirrornet` console script of this interpreter's environment (`python -m mirrornet_tvm.cli`
    does not run: the package has no __main__)."""
    script = Path(PY).parent / "mirrornet"
    if script.is_file():
        return [str(script)]
    return [PY, "-c", "import sys; from mirrornet_tvm.cli import main; sys.argv[0] = 'mirrornet'; main()"]


def machine_line() -> str:
    return (f"machine: {platform.platform()}; CPU {cpu_model()}; {os.cpu_count()} cores; load average "
            f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def load_zoo_forms():
    spec = importlib.util.spec_from_file_location("model_zoo_forms", ROOT / "tests" / "model_zoo_forms.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Network:
    name: str
    source: str           # project | zoo-form | file
    detail: str           # what it is (zoo file reconstructed, file path)
    path: Path | None = None   # for source "file": the user's ONNX file


def networks(files: list) -> list:
    nets = [Network(n, "project", f"architectures.build({n!r}, (3, 224, 224))") for n in PROJECT_NAMES]
    for key, (_, zoo_file) in load_zoo_forms().BUILDERS.items():
        name = f"{key}_zoo" if key in PROJECT_NAMES else key
        nets.append(Network(name, "zoo-form", f"reconstruction of {zoo_file}, random weights"))
    taken = {n.name for n in nets}
    for f in files:
        stem = f.stem if f.stem not in taken else f"{f.stem}_file"
        taken.add(stem)
        nets.append(Network(stem, "file", str(f), f))
    return nets


def onnx_files(items) -> list:
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(p.glob("*.onnx"))
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"--files: {item} is neither an ONNX file nor a folder")
    return out


def export_project(name: str, path: Path, seed: int = 0) -> None:
    """architectures.build(name, 3x224x224) with BN statistics and a logit scale of ~1, exported as a user
    would (TorchScript exporter, opset 17, dynamic batch)."""
    import torch

    from mirrornet_tvm import architectures

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = architectures.build(name, IMAGENET).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        std = model(torch.rand(2, *IMAGENET, generator=g)).std()
        last.weight /= std
        if last.bias is not None:
            last.bias /= std
    x = torch.rand(1, *IMAGENET, generator=g)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), x, str(tmp), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, path)


def export_zoo_form(name: str, path: Path) -> None:
    import onnx

    zf = load_zoo_forms()
    key = name[:-4] if name.endswith("_zoo") else name
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(zf.build(key), str(tmp))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------

def error_line(stderr: str) -> str:
    """The CLI's one-line error (``error: ...``); else the last line of a traceback; else the first line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]
    return lines[0] if lines else "(no message on stderr)"


class NetworkWork:
    """One network's folder and the records of its steps (WORK/<name>/steps.json)."""

    def __init__(self, net: Network, work: Path, force: bool, timeout: float | None):
        self.net, self.dir, self.force, self.timeout = net, work / net.name, force, timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records_path = self.dir / "steps.json"
        self.records = json.loads(self.records_path.read_text()) if self.records_path.is_file() else {}
        self.ran = set()   # steps run (not kept) in this invocation: what depends on them runs again


    @property
    def model(self) -> Path:
        return self.net.path if self.net.source == "file" else self.dir / "model.onnx"

    def save(self) -> None:
        from mirrornet_tvm.util import write_json

        write_json(self.records_path, self.records)

    def cached(self, step: str, output: Path, *deps: str) -> bool:
        rec = self.records.get(step)
        if self.force or not rec or not rec.get("ok") or not output.exists() or self.ran & set(deps):
            self.ran.add(step)
            return False
        print(f"[real_networks] {self.net.name}: {step} done earlier ({rec['seconds']:.1f} s), kept",
              file=sys.stderr)
        return True

    def blocked(self, step: str, *needs: str) -> bool:
        failed = [n for n in needs if not (self.records.get(n) or {}).get("ok")]
        if failed:
            self.records[step] = {"ok": False, "seconds": None, "blocked": True,
                                  "error": f"not run: {', '.join(failed)} did not succeed"}
            self.save()
            return True
        return False

    def cli(self, step: str, args: list, stdout_to: Path | None = None, extract=None) -> dict:
        """Run `mirrornet ARGS`, time it, record the outcome (and what ``extract()`` reads of its output)."""
        cmd = mirrornet_cmd() + [str(a) for a in args]
        shown = "mirrornet " + " ".join(shlex.quote(str(a)) for a in args).replace(str(ROOT) + "/", "")
        print(f"[real_networks] {self.net.name}: {shown}", file=sys.stderr, flush=True)
        env = dict(os.environ, **CHILD_ENV)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=self.timeout)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = "timeout"
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) + \
                f"\nerror: stopped after {self.timeout:.0f} s (--step-timeout)"
        seconds = round(time.perf_counter() - t0, 2)
        (self.dir / f"{step}.stderr.txt").write_text(err)
        (self.dir / f"{step}.stdout.txt").write_text(out)
        rec = {"ok": code == 0, "seconds": seconds, "exit_code": code, "command": shown}
        if code == 0:
            if stdout_to is not None:
                stdout_to.write_text(out)
            if extract is not None:
                try:
                    rec.update(extract())
                except Exception as exc:  # noqa: BLE001 - the step ran; what it wrote is not as expected
                    rec.update(ok=False, error=f"output not as expected: {type(exc).__name__}: {exc}")
        else:
            rec["error"] = error_line(err)
            print(f"[real_networks] {self.net.name}: {step} FAILED ({code}): {rec['error']}", file=sys.stderr)
        self.records[step] = rec
        self.save()
        return rec


def step_export(w: NetworkWork) -> None:
    if w.net.source == "file":
        ok = w.model.is_file()
        w.records["export"] = {"ok": ok, "seconds": 0.0, "file": str(w.model),
                               **({} if ok else {"error": f"{w.model} is missing"})}
        w.save()
        return
    if w.cached("export", w.model):
        return
    print(f"[real_networks] {w.net.name}: writing {w.model.relative_to(ROOT) if w.model.is_relative_to(ROOT) else w.model}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        (export_project if w.net.source == "project" else export_zoo_form)(w.net.name, w.model)
        rec = {"ok": True, "seconds": round(time.perf_counter() - t0, 2)}
    except Exception as exc:  # noqa: BLE001 - recorded; the network's other steps are then blocked
        rec = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
               "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    w.records["export"] = rec
    w.save()


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of the float initializers of an ONNX file (external data included)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                   if np.issubdtype(numpy_helper.to_array(t).dtype, np.floating)))


def run_network(net: Network, args, qemu_names: set, qemu_ok: tuple) -> dict:
    w = NetworkWork(net, args.work, args.force, args.step_timeout * 60 if args.step_timeout else None)
    d = w.dir
    step_export(w)

    def inspect_extract():
        doc = json.loads((d / "inspect.json").read_text())
        return {"input": doc["input"]["shape"], "flops": doc["totals"]["flops"],
                "params": doc["totals"]["params"], "taps": len(doc["taps"])}

    def strategies_extract():
        doc = json.loads((d / "strategies.json").read_text())
        auto = doc.get("auto")
        return {"kept": len(doc["strategies"]), "pruned": len(doc["pruned"]),
                "auto": auto["name"] if auto else None}

    def protect_extract():
        m = json.loads((d / "art" / "metrics.json").read_text())
        return {"flop_share": m["cpm"]["flop_share"], "secure_bytes": m["secure_memory"]["total"]}

    def compile_extract(build):
        def get():
            m = json.loads((build / "manifest.json").read_text())
            secs = m.get("seconds")
            return {"manifest_seconds": round(sum(secs.values()), 2) if isinstance(secs, dict) else secs}
        return get

    def package_extract():
        ta = json.loads((d / "build" / "manifest.json").read_text()).get("ta") or {}
        fp = ta.get("footprint") or {}
        return {"footprint_bytes": fp.get("total"), "fits_rpi3": fp.get("fits_rpi3")}

    def run_extract(path):
        def get():
            r = json.loads(path.read_text())
            lat, ref = r["latency_ms"], r.get("reference") or {}
            # under QEMU only the backbone's latency is reported (TCG emulation): no total
            return {"backbone_ms": lat["backbone"]["mean_ms"],
                    "total_ms": (lat.get("total") or {}).get("mean_ms"),
                    "transfer_ms": (lat.get("transfer") or {}).get("mean_ms"),
                    "cpm_ms": (lat.get("cpm") or {}).get("mean_ms"), "images": r["images"],
                    "same_top1": ref.get("same_top1"), "max_rel_diff": ref.get("max_rel_diff")}
        return get

    if not w.blocked("inspect", "export") and not w.cached("inspect", d / "inspect.json", "export"):
        w.cli("inspect", ["inspect", w.model, "--json"], d / "inspect.json", inspect_extract)
    if not w.blocked("strategies", "export") and not w.cached("strategies", d / "strategies.json", "export"):
        w.cli("strategies", ["strategies", w.model, "--json", "-q"], d / "strategies.json", strategies_extract)
    if not w.blocked("protect", "export") and not w.cached("protect", d / "art" / "metrics.json", "export"):
        w.cli("protect", ["protect", w.model, "--auto", "--epochs", "0", "-o", d / "art", "-q"],
              extract=protect_extract)
    if not w.blocked("compile", "protect") and not w.cached("compile", d / "build" / "manifest.json", "protect"):
        w.cli("compile", ["compile", d / "art", "-o", d / "build"], extract=compile_extract(d / "build"))
    if not w.blocked("compile_rpi3", "protect") and not w.cached("compile_rpi3", d / "build-rpi3" / "manifest.json",
                                                                   "protect"):
        w.cli("compile_rpi3", ["compile", d / "art", "-o", d / "build-rpi3", "--target", "rpi3"],
              extract=compile_extract(d / "build-rpi3"))
    if not w.blocked("package_ta", "compile") and not w.cached("package_ta", d / "build" / "sim", "compile"):
        w.cli("package_ta", ["package-ta", d / "build"], extract=package_extract)
    if (w.records.get("run") or {}).get("images") not in (None, args.random):
        w.records.pop("run")      # measured on another number of images
    if not w.blocked("run", "package_ta") and not w.cached("run", d / "run.json", "package_ta"):
        w.cli("run", ["run", d / "build", "--random", args.random, "--tee", "sim", "--json", d / "run.json", "-q"],
              extract=run_extract(d / "run.json"))
    whole_ta(w, args)
    if net.name in qemu_names:
        if not qemu_ok[0]:
            w.records["qemu"] = {"ok": False, "seconds": None, "skipped": True,
                                 "error": f"skipped: OP-TEE under QEMU is not set up ({qemu_ok[1]})"}
            w.save()
        elif not w.blocked("qemu", "package_ta") and not w.cached("qemu", d / "qemu.json", "package_ta"):
            w.cli("qemu", ["run", d / "build", "--random", 2, "--tee", "qemu", "--json", d / "qemu.json", "-q"],
                  extract=run_extract(d / "qemu.json"))
    else:
        w.records.pop("qemu", None)
        w.save()
    return {"network": net.name, "source": net.source, "detail": net.detail, "model": str(w.model),
            "steps": w.records}


def whole_ta(w: NetworkWork, args) -> None:
    """Step 7: the whole model in the simulated TA, when its weights are small enough."""
    from mirrornet_tvm.tee import budget

    out = w.dir / "whole.json"
    if w.blocked("whole_ta", "export"):
        return
    params = (w.records.get("inspect") or {}).get("params")
    weight_bytes = params * 4 if params else onnx_weight_bytes(w.model)
    ta_budget = int(budget.RPI3_TA_RAM * budget.DEFAULT_TA_SHARE)
    if weight_bytes > args.whole_max_mib * 2**20:
        w.records["whole_ta"] = {
            "ok": True, "seconds": None, "skipped": f"skipped ({weight_bytes / 2**20:.0f} MiB of weights)",
            "weight_bytes": weight_bytes, "fits_rpi3": False, "rpi3_budget_bytes": ta_budget}
        w.save()
        return
    if w.cached("whole_ta", out, "export"):
        return
    cmd = [PY, str(Path(__file__).resolve()), "--whole-worker", str(w.model), str(w.dir / "whole"),
           "--images", str(args.whole_images), "--json", str(out)]
    print(f"[real_networks] {w.net.name}: whole model in the TA (C generation, TA build, "
          f"{args.whole_images} images)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, **CHILD_ENV),
                              timeout=w.timeout)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = "timeout", f"error: stopped after {w.timeout:.0f} s (--step-timeout)"
    seconds = round(time.perf_counter() - t0, 2)
    (w.dir / "whole_ta.stderr.txt").write_text(err or "")
    rec = {"ok": code == 0, "seconds": seconds, "exit_code": code, "weight_bytes": weight_bytes,
           "rpi3_budget_bytes": ta_budget}
    if code == 0:
        r = json.loads(out.read_text())
        rec.update({k: r[k] for k in ("whole_ms", "images", "footprint_bytes", "generated_weight_bytes",
                                      "arena_bytes", "max_rel_diff", "same_top1", "input_renamed")})
        # the simulator-only TA has no ELF footprint; then weights + arena, a lower bound of it
        rec["secure_bytes"] = r["footprint_bytes"] or (r["generated_weight_bytes"] + r["arena_bytes"])
        rec["secure_is"] = "TA footprint" if r["footprint_bytes"] else "weights + arena"
        rec["fits_rpi3"] = rec["secure_bytes"] <= ta_budget
    else:
        rec["error"] = error_line(err or "")
        print(f"[real_networks] {w.net.name}: whole_ta FAILED ({code}): {rec['error']}", file=sys.stderr)
    w.records["whole_ta"] = rec
    w.save()


def whole_worker(argv) -> int:
    """Subprocess of step 7: build the whole model as the TA's 'CPM' and time images through TeeSession."""
    os.environ["TVM_NUM_THREADS"] = "1"
    ap = argparse.ArgumentParser(prog="real_networks.py --whole-worker")
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "bench"))
    from protected_latency import whole_model_build

    from mirrornet_tvm.frontend import check_onnx
    from mirrornet_tvm.tee.session import TeeSession
    from mirrornet_tvm.util import read_json, write_json

    proto = check_onnx(args.model)
    inits = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    renamed = None
    if not inp.name.isidentifier():
        # generate_cpm_c takes the Relax function's parameter name as the C parameter's name, and fails on
        # one that is not a C identifier (Caffe2's 'gpu_0/data_0'); the baseline renames the input
        old, renamed = inp.name, "input_" + "".join(c if c.isalnum() else "_" for c in inp.name)
        inp.name = renamed
        for node in proto.graph.node:
            node.input[:] = [renamed if x == old else x for x in node.input]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    folder = Path(args.folder)
    code = whole_model_build(proto, folder)
    fp = (read_json(folder / "manifest.json").get("ta") or {}).get("footprint") or {}
    x = np.random.default_rng(0).standard_normal((args.images + 1, *shape[1:])).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    times, rel, same = [], 0.0, 0
    with TeeSession(folder) as tee:
        tee.run(x[0].reshape(-1))      # warm-up (first touch of the TA's weights)
        for i in range(1, args.images + 1):
            t0 = time.perf_counter_ns()
            out, _ = tee.run(x[i].reshape(-1))
            times.append(time.perf_counter_ns() - t0)
            ref = sess.run(None, {inp.name: x[i:i + 1]})[0].reshape(-1)
            got = np.asarray(out).reshape(-1)
            rel = max(rel, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)))
            same += int(got.argmax() == ref.argmax())
    write_json(args.json, {"whole_ms": float(np.median(times)) / 1e6, "images": args.images,
                           "footprint_bytes": fp.get("total"), "generated_weight_bytes": code.weight_bytes,
                           "arena_bytes": code.arena_bytes, "max_rel_diff": rel, "same_top1": same,
                           "input_renamed": renamed})
    return 0


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

def _table(rows, right_from: int = 1) -> list:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(wd) if i < right_from else str(c).rjust(wd)
                             for i, (c, wd) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * wd for wd in widths))
    return out


def _fail(rec) -> str | None:
    """'FAILED: <error>' (or the reason it did not run) for a step that did not succeed; None if it did."""
    if rec is None:
        return "-"
    if rec.get("ok"):
        return None
    if rec.get("blocked") or rec.get("skipped"):
        return "-"
    return "FAILED"


def _no_pick(rec) -> bool:
    """A protect --auto that stopped because no strategy meets the --auto rule (an outcome, not a crash)."""
    return bool(rec) and not rec.get("ok") and "no single-tap strategy" in (rec.get("error") or "")


def _num(rec, key, fmt, scale=1.0) -> str:
    if _no_pick(rec):
        return "no pick"
    f = _fail(rec)
    if f is not None:
        return f
    v = rec.get(key)
    return "?" if v is None else format(v * scale if scale != 1.0 else v, fmt)


def render(rows, args, qemu_names, qemu_ok, files_note) -> str:
    out = [machine_line(),
           f"`mirrornet` steps as subprocesses, wall seconds (Python start-up and imports included); "
           f"TVM_NUM_THREADS=1, one torch thread; run --random {args.random}; whole-TA: median of "
           f"{args.whole_images} images after a warm-up, networks with at most {args.whole_max_mib} MiB "
           "of weights",
           "networks: project = mirrornet_tvm.architectures at 3x224x224, random weights with BN statistics "
           "and logit std ~1, torch.onnx.export opset 17; zoo-form = reconstructions of ONNX Model Zoo "
           "files (tests/model_zoo_forms.py: IR 3/4, opsets 7-9) with RANDOM weights, not the zoo's files; "
           "file = ONNX files given with --files",
           files_note, ""]
    out.append("table 1: front end and strategies (default secure-memory budget)")
    t = [("network", "source", "input", "GFLOPs", "params", "taps", "kept", "pruned", "auto pick",
          "inspect s", "strategies s")]
    for r in rows:
        s = r["steps"]
        i, st = s.get("inspect"), s.get("strategies")
        shape = "x".join(map(str, i["input"][1:])) if i and i.get("ok") else _fail(i)
        pick = (st.get("auto") or "none") if st and st.get("ok") else _fail(st)
        t.append((r["network"], r["source"], shape, _num(i, "flops", ".2f", 1e-9),
                  _num(i, "params", ",d") if _fail(i) else f"{i['params'] / 1e6:.2f}M",
                  _num(i, "taps", "d"), _num(st, "kept", "d"), _num(st, "pruned", "d"), pick,
                  _num(i, "seconds", ".1f"), _num(st, "seconds", ".1f")))
    out += _table(t, right_from=2)
    out.append("kept: strategies within the budget; pruned: strategy structures left out (over the budget); "
               "auto pick: what `protect --auto` takes (secure memory and FLOPs alone)")
    out.append("")
    out.append("table 2: protected build (protect --auto --epochs 0: untrained CPM; latency per image, mean ms)")
    t = [("network", "CPM FLOPs", "secure KiB", "compile s (phases)", "rpi3 s", "package-ta s", "TA KiB", "backbone ms",
          "protected ms", "prot/bb", "whole-TA ms", "whole fits RPi3", "same top-1", "max rel diff")]
    for r in rows:
        s = r["steps"]
        p, c, c3, pk, rn, wh = (s.get(k) for k in ("protect", "compile", "compile_rpi3", "package_ta", "run",
                                                     "whole_ta"))
        ratio = _fail(rn) or f"{rn['total_ms'] / rn['backbone_ms']:.2f}x"
        if wh is None:
            whole, fits = "-", "-"
        elif wh.get("skipped"):
            whole, fits = wh["skipped"], "no" if not wh.get("fits_rpi3") else "yes"
        elif wh.get("ok"):
            whole = f"{wh['whole_ms']:.1f}" + (" (r)" if wh.get("input_renamed") else "")
            fits = ("yes" if wh["fits_rpi3"] else "no") + f" ({wh['secure_bytes'] / 2**20:.1f} MiB)"
        else:
            whole, fits = _fail(wh), "?"
        same = (_fail(rn) or f"{rn['same_top1']}/{rn['images']}")
        t.append((r["network"], _num(p, "flop_share", ".2%"), _num(p, "secure_bytes", ".1f", 1 / 1024),
                  _fail(c) or f"{c['seconds']:.1f} ({c.get('manifest_seconds') or 0:.1f})",
                  _num(c3, "seconds", ".1f"), _num(pk, "seconds", ".1f"),
                  _num(pk, "footprint_bytes", ".0f", 1 / 1024), _num(rn, "backbone_ms", ".2f"),
                  _num(rn, "total_ms", ".2f"), ratio, whole, fits, same, _num(rn, "max_rel_diff", ".1e")))
    out += _table(t)
    out.append("CPM FLOPs / secure KiB: artifact's metrics.json; compile s: the command's wall time (phases: "
               "the sum of the phases in the build's manifest.json, without start-up and imports); TA KiB: package-ta's footprint estimate "
               "(code, data, stack, overhead) against the RPi3 budget of 4 MiB; protected = backbone + "
               "simulator round trip + CPM; same top-1 / max rel diff: `run`'s check against combined.onnx "
               "in onnxruntime (difference relative to the largest logit); whole fits RPi3: the whole "
               "model's weights + arena in the TA (skipped: its weights alone) within the CPM TA's 4 MiB; (r): the "
               "model's input renamed to a C identifier for the whole-model C (the code generator takes the "
               "input's name as a C parameter name)")
    no_pick = [r["network"] for r in rows if _no_pick(r["steps"].get("protect"))]
    failures = [(r["network"], k, v) for r in rows for k, v in r["steps"].items()
                if not v.get("ok") and not v.get("blocked") and not v.get("skipped") and not
                (k == "protect" and _no_pick(v))]
    if no_pick:
        err = next(r["steps"]["protect"]["error"] for r in rows if r["network"] == no_pick[0])
        out.append("")
        out.append(f"no pick: `protect --auto` stopped, no strategy meets the --auto rule ({err}): "
                   f"{', '.join(no_pick)}; their later steps were not run")
    if failures:
        out.append("")
        out.append("failures (command: error line; the whole stderr is in WORK/<network>/<step>.stderr.txt)")
        for name, k, v in failures:
            out.append(f"  {name} {k}: `{v.get('command', k)}`: {v.get('error')}")
    blocked = [(r["network"], [k for k, v in r["steps"].items() if v.get("blocked")]) for r in rows
               if r["network"] not in no_pick]
    blocked = [(n, ks) for n, ks in blocked if ks]
    if blocked:
        out.append("not run (a step they depend on did not succeed): "
                   + "; ".join(f"{n}: {', '.join(ks)}" for n, ks in blocked))
    out.append("")
    out.append("table 3: OP-TEE under QEMU (`run BUILD --random 2 --tee qemu`: backbone on the host, CPM in "
               "the secure world)")
    if not qemu_names:
        out.append("not run: no --qemu networks given")
    else:
        t = [("network", "outcome", "backbone ms", "same top-1", "max rel diff")]
        for r in rows:
            q = r["steps"].get("qemu")
            if r["network"] not in qemu_names or q is None:
                continue
            if _no_pick(r["steps"].get("protect")):
                outcome = "not run: protect --auto found no strategy"
            else:
                outcome = "ok" if q.get("ok") else (q["error"] if q.get("skipped") or q.get("blocked")
                                                     else f"FAILED: {q.get('error')}")
            t.append((r["network"], outcome, _num(q, "backbone_ms", ".1f"),
                      (f"{q['same_top1']}/{q['images']}" if q.get("ok") else "-"), _num(q, "max_rel_diff", ".1e")))
        out += _table(t, right_from=2) if len(t) > 1 else ["(none of the --qemu networks was run)"]
        out.append("the TEE's latency under QEMU is not reported (TCG emulation); same top-1 / max rel diff: "
                   "the protected outputs from the real secure world against combined.onnx in onnxruntime")
    out.append("")
    out.append(f"targets: inspect + strategies < {FRONT_TARGET_S:.0f} s; compile (host, untuned) < "
               f"{COMPILE_TARGET_S:.0f} s")
    for r in rows:
        s = r["steps"]
        i, st, c = s.get("inspect"), s.get("strategies"), s.get("compile")
        if i and st and i.get("ok") and st.get("ok"):
            front = i["seconds"] + st["seconds"]
            f1 = f"{front:.1f} s {'met' if front < FRONT_TARGET_S else 'NOT met'}"
        else:
            f1 = "not measured (a step failed)"
        if c and c.get("ok"):
            f2 = f"{c['seconds']:.1f} s {'met' if c['seconds'] < COMPILE_TARGET_S else 'NOT met'}"
        else:
            f2 = "not measured (" + ("failed" if c and not c.get("blocked") else
                                     "no --auto pick" if _no_pick(s.get("protect")) else "not run") + ")"
        out.append(f"  {r['network']:<20} inspect+strategies {f1:<28} compile {f2}")
    return "\n".join(out)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--whole-worker"]:
        return whole_worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--networks", help="comma-separated networks (default: all; --list-networks shows them)")
    ap.add_argument("--files", nargs="+", default=None, metavar="DIR_OR_FILE",
                    help=f"ONNX files or folders of them [default with no --networks: {KERAS_DIR} if present]")
    ap.add_argument("--random", type=int, default=20, help="random images for `run --tee sim` [default 20]")
    ap.add_argument("--qemu", default="", help="comma-separated networks also run under QEMU")
    ap.add_argument("--whole-max-mib", type=float, default=32.0,
                    help="whole model in the TA only for networks with at most this many MiB of weights")
    ap.add_argument("--whole-images", type=int, default=3, help="images timed through the whole-model TA")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "real_networks", help="cache folder")
    ap.add_argument("--force", action="store_true", help="rerun steps that succeeded before")
    ap.add_argument("--step-timeout", type=float, default=90.0, metavar="MINUTES",
                    help="stop a step that runs longer [default 90]")
    ap.add_argument("--list-networks", action="store_true", help="print the networks and exit")
    ap.add_argument("--tables-only", action="store_true",
                    help="print the tables of what WORK holds for these networks, run nothing")
    args = ap.parse_args(argv)

    files_note = ""
    if args.files is not None:
        files = onnx_files(args.files)
        files_note = f"files: {len(files)} ONNX file(s) from {', '.join(args.files)}"
    elif args.networks is None and KERAS_DIR.is_dir():
        files = onnx_files([KERAS_DIR])
        files_note = (f"files: the {len(files)} tf2onnx exports of Keras applications in "
                      f"{KERAS_DIR.relative_to(ROOT)} (scripts/real-models.sh)")
    else:
        files = []
        files_note = ("files: none given" + ("" if args.networks else
                      f"; {KERAS_DIR.relative_to(ROOT)} is not there (scripts/real-models.sh writes it)"))
    nets = networks(files)
    if args.list_networks:
        for n in nets:
            print(f"{n.name:<40} {n.source:<9} {n.detail}")
        return 0
    by_name = {n.name: n for n in nets}
    if args.networks:
        wanted = [x.strip() for x in args.networks.split(",") if x.strip()]
        unknown = [x for x in wanted if x not in by_name]
        if unknown:
            ap.error(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        nets = [by_name[x] for x in wanted] + [n for n in nets if n.source == "file" and n.name not in wanted]
    qemu_names = {x.strip() for x in args.qemu.split(",") if x.strip()}
    unknown = qemu_names - {n.name for n in nets}
    if unknown:
        ap.error(f"--qemu names network(s) not in this run: {', '.join(sorted(unknown))}")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    qemu_ok = (False, "")
    if qemu_names:
        try:
            from mirrornet_tvm.tee.qemu import environment_paths

            environment_paths()
            qemu_ok = (True, "")
        except Exception as err:  # noqa: BLE001 - any reason makes QEMU unavailable; say which
            qemu_ok = (False, str(err).splitlines()[0])

    from mirrornet_tvm.util import write_json

    if args.tables_only:
        rows = [{"network": n.name, "source": n.source, "detail": n.detail,
                 "steps": json.loads((args.work / n.name / "steps.json").read_text())}
                for n in nets if (args.work / n.name / "steps.json").is_file()]
        print(render(rows, args, qemu_names, qemu_ok, files_note))
        return 0
    print(machine_line(), file=sys.stderr)
    rows = []
    for net in nets:
        t0 = time.perf_counter()
        rows.append(run_network(net, args, qemu_names, qemu_ok))
        print(f"[real_networks] {net.name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        write_json(args.work / "rows.json", {"machine": {"platform": platform.platform(), "cpu": cpu_model(),
                                                         "cores": os.cpu_count(),
                                                         "load_average": list(os.getloadavg())},
                                             "random_images": args.random, "rows": rows})
    print(render(rows, args, qemu_names, qemu_ok, files_note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
