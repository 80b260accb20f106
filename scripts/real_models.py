#!/usr/bin/env python3
"""Export real architectures to ONNX with the exporters users use, each file checked in onnxruntime.

Run by scripts/real-models.sh, each part in its own virtual environment:

    keras   (needs tensorflow-cpu + tf2onnx)  Keras applications with random weights
            (weights=None) through tf2onnx.convert.from_keras at opsets 13 and 17
    torch   (needs torch + onnxscript)         small CNNs written with torch.nn through
            torch.onnx.export: TorchScript path (dynamo=False) at opsets 9, 11, 13, 17, with and
            without a dynamic batch (one with residual blocks as ONNX local functions), and the
            dynamo path (dynamo=True, opset 18; weights in an external <file>.onnx.data)
    inspect (the project's environment)       `mirrornet inspect` on every file written; the
            outcomes (accepted, or the error line) go to inspect.tsv and inspect.json

Every file is checked with onnx.checker, run in onnxruntime on a random input and compared with
the framework's own output; the folder's manifest.json lists each file's exporter and version,
opsets, true inputs and outputs, sha256 and ops with counts (tests/model_zoo_forms.manifest_entry).
A model or opset that fails to export is recorded in the manifest's "failed" list with its error,
and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from model_zoo_forms import manifest_entry, write_manifest  # noqa: E402


def say(msg: str) -> None:
    print(f"[real-models] {msg}", file=sys.stderr, flush=True)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_file(path: Path, x: np.ndarray, ref: np.ndarray) -> float:
    """checker + onnxruntime; returns max |onnxruntime - framework|."""
    onnx.checker.check_model(str(path))
    y = ort_run(path, x)
    if not np.isfinite(y).all():
        raise RuntimeError(f"{path.name}: onnxruntime output is not finite")
    return float(np.max(np.abs(y - ref)))


def finish(out: Path, entries: list[dict], failed: list[dict]) -> int:
    write_manifest(out, entries)
    if failed:
        m = json.loads((out / "manifest.json").read_text())
        m["failed"] = failed
        (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    say(f"{out}: {len(entries)} files, {len(failed)} failed")
    return 0 if entries else 1


# -- Keras applications through tf2onnx ----------------------------------------------------------
KERAS_MODELS = [  # (application, input size)
    ("MobileNetV2", 224), ("ResNet50", 224), ("DenseNet121", 224), ("EfficientNetB0", 224),
    ("MobileNetV2", 32),
]
KERAS_OPSETS = (13, 17)


def _randomize_keras(model, seed: int) -> None:
    """He-scaled kernels and BN statistics of realistic size.

    Keras's default initializers leave a deep application's output nearly uniform (MobileNetV2's
    softmax is 0.001 everywhere), which would make the onnxruntime comparison vacuous.
    """
    import keras

    rng = np.random.default_rng(seed)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            # ResNet50's last BN of a residual branch (conv<s>_block<b>_3_bn) gets a small scale,
            # as trained ResNets have; otherwise the 16 residual sums saturate the softmax.
            small = layer.name.endswith("_3_bn") and "_block" in layer.name
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(*((0.1, 0.3) if small else (0.8, 1.2)), c)
                                   .astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.05, c).astype(np.float32))
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            k = getattr(layer, "depthwise_kernel", None) or layer.kernel  # Keras 2 / Keras 3
            fan_in = k.shape[0] * k.shape[1]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            k = layer.kernel
            fan_in = int(np.prod(k.shape[:-1]))
        else:
            continue
        gain = 1.0 if dense and layer is dense[-1] else 2.0
        k.assign((rng.standard_normal(k.shape) * np.sqrt(gain / fan_in)).astype(np.float32))


def export_keras(out: Path, only: list[str] | None) -> int:
    import keras
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    exporter = (f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__}, "
                f"keras {keras.__version__})")
    out.mkdir(parents=True, exist_ok=True)
    entries, failed = [], []
    for app, size in KERAS_MODELS:
        if only and app not in only:
            continue
        keras.utils.set_random_seed(0)
        try:
            model = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3))
        except Exception as e:  # e.g. a minimum input size
            failed.append({"model": f"{app}@{size}", "stage": "keras", "error": repr(e)})
            say(f"{app} {size}x{size}: {e!r}")
            continue
        _randomize_keras(model, 0)
        # Keras applications take images in [0, 255] (EfficientNet rescales inside the model).
        x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        if app != "EfficientNetB0":
            x = x / 127.5 - 1.0
        ref = np.asarray(model(x, training=False))
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
        for opset in KERAS_OPSETS:
            path = out / f"{app.lower()}_{size}_tf2onnx_op{opset}.onnx"
            t0 = time.time()
            try:
                tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                           output_path=str(path))
                diff = check_file(path, x, ref)
            except Exception as e:
                failed.append({"model": f"{app}@{size}", "opset": opset, "error": repr(e)[:2000]})
                say(f"{path.name}: FAILED {e!r}"[:400])
                continue
            entries.append(manifest_entry(path, "tf2onnx.convert.from_keras", exporter,
                                          source=f"keras.applications.{app}(weights=None)",
                                          max_abs_diff_vs_framework=diff, requested_opset=opset,
                                          framework_output_max=float(ref.max())))
            say(f"{path.name}: {sum(entries[-1]['ops'].values())} nodes, max|ort-keras| "
                f"{diff:.2e}, {time.time() - t0:.1f} s")
        keras.backend.clear_session()
    return finish(out, entries, failed)


# -- small CNNs through torch.onnx.export --------------------------------------------------------
TS_OPSETS = (9, 11, 13, 17)
DYNAMO_OPSET = 18


def torch_nets():
    """Three small ImageNet-style CNNs written with torch.nn alone (no torchvision)."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + idt)

    class ResNetish(nn.Module):
        """ResNet-18-style stem, 4 stages of basic blocks, avgpool, flatten by view(), Linear."""

        def __init__(self, widths=(16, 32, 64, 128), num_classes=1000):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], widths[0]
            for i, w in enumerate(widths):
                blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.pool(self.blocks(self.stem(x)))
            return self.fc(x.view(x.size(0), -1))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = []
            if expand != 1:
                layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
            layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                       nn.BatchNorm2d(mid), nn.ReLU6(),
                       nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetish(nn.Module):
        """MobileNetV2-style: ReLU6, depthwise convs, inverted residuals, Dropout, Linear."""

        def __init__(self, num_classes=1000):
            super().__init__()
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)]
            layers, cin = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                           nn.ReLU6()], 16
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += [nn.Conv2d(cin, 320, 1, bias=False), nn.BatchNorm2d(320), nn.ReLU6()]
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(320, num_classes))

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    class SameConv2d(nn.Conv2d):
        """TensorFlow 'SAME' padding computed from the input size in forward (EfficientNet)."""

        def forward(self, x):
            ih, iw = x.size()[-2:]
            kh, kw = self.weight.size()[-2:]
            sh, sw = self.stride
            ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
            if ph > 0 or pw > 0:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, stride, expand, k):
            super().__init__()
            mid = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.expand = (nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                         nn.SiLU()) if expand != 1 else nn.Identity())
            self.dw = nn.Sequential(SameConv2d(mid, mid, k, stride, groups=mid, bias=False),
                                    nn.BatchNorm2d(mid), nn.SiLU())
            se = max(1, cin // 4)
            self.se_reduce = nn.Conv2d(mid, se, 1)
            self.se_expand = nn.Conv2d(se, mid, 1)
            self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.dw(self.expand(x))
            s = F.adaptive_avg_pool2d(y, 1)
            s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
            y = self.project(y * s)
            return x + y if self.use_res else y

    class EfficientNetish(nn.Module):
        """EfficientNet-B0-style: same-padding convs via computed F.pad, SiLU, squeeze-excite."""

        def __init__(self, num_classes=1000):
            super().__init__()
            self.stem = nn.Sequential(SameConv2d(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16),
                                      nn.SiLU())
            cfg = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 1, 2, 3),
                   (6, 112, 1, 1, 5)]
            blocks, cin = [], 16
            for t, c, n, s, k in cfg:
                for i in range(n):
                    blocks.append(MBConv(cin, c, s if i == 0 else 1, t, k))
                    cin = c
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Sequential(nn.Conv2d(cin, 320, 1, bias=False), nn.BatchNorm2d(320),
                                      nn.SiLU())
            self.fc = nn.Linear(320, num_classes)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1)
            return self.fc(torch.flatten(x, 1))

    return {"resnetish": ResNetish, "mobilenetish": MobileNetish,
            "efficientnetish_same_pad": EfficientNetish}, BasicBlock


def _randomize_bn(model, seed: int) -> None:
    """Running statistics of realistic size, so the exported BN is not the identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.8, 1.2, generator=g)
                m.bias.normal_(0.0, 0.05, generator=g)


def export_torch(out: Path, only: list[str] | None, size: int = 224) -> int:
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import onnxscript
        dynamo_ok, osv = True, onnxscript.__version__
    except ImportError as e:
        dynamo_ok, osv = False, repr(e)
    entries, failed = [], []
    nets, basic_block = torch_nets()
    for name, cls in nets.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        model = cls().eval()
        _randomize_bn(model, 0)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(x).numpy()
        variants = [(op, dyn, False, False) for op in TS_OPSETS for dyn in (False, True)]
        variants += [(DYNAMO_OPSET, False, True, False), (DYNAMO_OPSET, True, True, False)]
        if name == "resnetish":  # residual blocks as ONNX local functions (TorchScript, opset 15+)
            variants.append((17, False, False, True))
        for opset, dyn, dynamo, funcs in variants:
            path = out / (f"{name}_{'dynamo' if dynamo else 'ts'}_op{opset}"
                          f"{'_dynbatch' if dyn else ''}{'_functions' if funcs else ''}.onnx")
            t0 = time.time()
            if dynamo and not dynamo_ok:
                failed.append({"model": name, "dynamo": True, "error": f"no onnxscript: {osv}"})
                continue
            kw = dict(input_names=["input"], output_names=["output"], opset_version=opset,
                      dynamo=dynamo)
            if dyn and dynamo:
                kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
            elif dyn:
                kw["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            if funcs:
                kw["export_modules_as_functions"] = {basic_block}
            try:
                with torch.no_grad():
                    torch.onnx.export(model, (x,), str(path), **kw)
                diff = check_file(path, x.numpy(), ref)
            except Exception as e:
                failed.append({"model": name, "opset": opset, "dynamo": dynamo,
                               "dynamic_batch": dyn, "error": repr(e)[:2000]})
                say(f"{path.name}: FAILED {e!r}"[:400])
                if os.environ.get("REAL_MODELS_TRACEBACK"):
                    traceback.print_exc()
                continue
            exporter = (f"torch.onnx.export(dynamo={dynamo}) torch {torch.__version__}"
                        + (f", onnxscript {osv}" if dynamo else ""))
            entries.append(manifest_entry(
                path, "torch.onnx.export (dynamo)" if dynamo else "torch.onnx.export (TorchScript)",
                exporter, source=f"{name} (torch.nn, random weights)", requested_opset=opset,
                dynamic_batch=dyn, max_abs_diff_vs_framework=diff))
            say(f"{path.name}: {sum(entries[-1]['ops'].values())} nodes, max|ort-torch| "
                f"{diff:.2e}, {time.time() - t0:.1f} s")
    return finish(out, entries, failed)


# -- the project's front end on every file (outside the test suite) ------------------------------
def inspect_all(root: Path, mirrornet: str, timeout: int = 600) -> int:
    """``mirrornet inspect --json`` on every file under ``root``/*/; outcomes to inspect.tsv/json.

    A refusal is an outcome to record, not a failure of this run.
    """
    import subprocess

    rows = []
    for path in sorted(root.glob("*/*.onnx")):
        rel = str(path.relative_to(root))
        t0 = time.time()
        try:
            p = subprocess.run([mirrornet, "inspect", "--json", str(path)], capture_output=True,
                               text=True, timeout=timeout)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            rc, stdout, stderr = -1, "", f"timed out after {timeout} s"
        notes = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        if rc == 0:
            try:
                rep = json.loads(stdout)
                taps = rep.get("taps", 0)
                taps = len(taps) if isinstance(taps, list) else taps
                params = rep.get("totals", {}).get("params", "?")
                outcome = (f"ok: {len(rep.get('layers', []))} layers, {taps} taps, "
                           f"{params:,} params" if isinstance(params, int) else
                           f"ok: {len(rep.get('layers', []))} layers, {taps} taps")
            except ValueError:
                outcome = "ok (output is not JSON)"
            if notes:
                outcome += f" [notice: {notes[-1]}]"
        else:
            outcome = notes[-1] if notes else (stdout.strip().splitlines() or ["(no message)"])[-1]
        rows.append({"file": rel, "exit": rc, "outcome": outcome,
                     "seconds": round(time.time() - t0, 1)})
        say(f"inspect {rel}: {outcome}"[:300])
    def git(*a):
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    meta = {"mirrornet": mirrornet, "commit": git("rev-parse", "HEAD"),
            "python_tree_modified": bool(git("status", "--porcelain", "--", "python")),
            "PYTHONPATH": os.environ.get("PYTHONPATH")}  # set: the front end may come from there
    (root / "inspect.json").write_text(json.dumps({**meta, "files": rows}, indent=1) + "\n")
    with open(root / "inspect.tsv", "w") as f:
        f.write(f"# commit {meta['commit']}, python/ modified: {meta['python_tree_modified']}, "
                f"PYTHONPATH: {meta['PYTHONPATH']}\n")
        f.write("file\texit\toutcome\n")
        for r in rows:
            f.write(f"{r['file']}\t{r['exit']}\t{r['outcome'].replace(chr(9), ' ')}\n")
    ok = sum(r["exit"] == 0 for r in rows)
    say(f"mirrornet inspect: {ok} accepted, {len(rows) - ok} refused; see {root}/inspect.tsv")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["keras", "torch", "inspect"])
    ap.add_argument("--mirrornet", default=str(ROOT / ".venv/bin/mirrornet"),
                    help="the mirrornet command (inspect part)")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder (default .cache/real-models/<part>)")
    ap.add_argument("--only", nargs="*", default=None, help="Keras application or torch net names")
    args = ap.parse_args(argv)
    if args.part == "inspect":
        return inspect_all(args.out or ROOT / ".cache/real-models", args.mirrornet)
    out = args.out or ROOT / ".cache/real-models" / args.part
    return export_keras(out, args.only) if args.part == "keras" else export_torch(out, args.only)


if __name__ == "__main__":
    sys.exit(main())
