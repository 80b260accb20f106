#!/usr/bin/env python3
"""Write the ONNX Model Zoo classic forms (tests/model_zoo_forms.py) to a folder, with a manifest.

These are reconstructions of the zoo's ImageNet classifiers in their legacy exporter habits, with
random weights: not the zoo's files. Each file is checked with onnx.checker and run once in
onnxruntime (finite output) before it is listed.

    python scripts/model_zoo_forms.py --out .cache/real-models/zoo [--width 1.0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import model_zoo_forms as zoo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".cache/real-models/zoo")
    ap.add_argument("--width", type=float, default=1.0, help="channel scale (1.0: full networks)")
    ap.add_argument("--opset", type=int, default=None, help="7, 8 or 9 (default: each zoo file's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of: {' '.join(zoo.BUILDERS)}")
    args = ap.parse_args(argv)

    names = args.only or list(zoo.BUILDERS)
    unknown = [n for n in names if n not in zoo.BUILDERS]
    if unknown:
        ap.error(f"unknown zoo form(s) {unknown}; known: {', '.join(zoo.BUILDERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        t0 = time.time()
        model = zoo.build(name, width=args.width, opset=args.opset, seed=args.seed)
        onnx.checker.check_model(model)
        y = zoo.run_onnxruntime(model)
        if not np.isfinite(y).all():
            print(f"[zoo] {name}: onnxruntime output is not finite", file=sys.stderr)
            return 1
        suffix = "" if args.width == 1.0 else f"_w{args.width:g}"
        path = args.out / f"{name}{suffix}.onnx"
        onnx.save(model, path)
        entries.append(zoo.manifest_entry(
            path, "onnx.helper (reconstruction of the ONNX Model Zoo form, random weights)",
            onnx.__version__, reconstructs=zoo.BUILDERS[name][1], width=args.width,
            seed=args.seed, output_shape=list(y.shape)))
        print(f"[zoo] {path.name}: opset {entries[-1]['opset_import']['ai.onnx']}, "
              f"{sum(entries[-1]['ops'].values())} nodes, {time.time() - t0:.1f} s",
              file=sys.stderr)
    # Keep entries of files written earlier with other options (e.g. another --only).
    manifest = args.out / "manifest.json"
    if manifest.exists():
        import json
        old = json.loads(manifest.read_text()).get("files", [])
        names_new = {e["file"] for e in entries}
        entries = [e for e in old if e["file"] not in names_new
                   and (args.out / e["file"]).exists()] + entries
    zoo.write_manifest(args.out, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
