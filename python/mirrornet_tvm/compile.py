"""`mirrornet compile`: a protected artifact in, a build folder out (docs/architecture.md, "Build folder").

    ARTIFACT/combined.onnx + strategy.json
      -> import to Relax (frontend.to_relax)
      -> the "mirrornet" pipeline (transform.pipeline): partition, lower the backbone
      -> build.build_backbone                       BUILD/backbone.so
      -> codegen.generate_cpm_c                     BUILD/cpm/mirrornet_cpm.{c,h}, BUILD/cpm/math.h
      -> BUILD/manifest.json, BUILD/strategy.json

Everything is written into a temporary folder next to BUILD and renamed into place at the end, so an
interrupted or failed compile leaves either the previous build or nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from . import __version__
from .errors import ArtifactError, StrategyError, UsageError
from .util import sha256_file, write_json

COMBINED = "combined.onnx"
STRATEGY = "strategy.json"
MANIFEST = "manifest.json"
BACKBONE_LIB = "backbone.so"
CPM_DIR = "cpm"
FLOAT_BYTES = 4
_STRUCTURAL_FIELDS = ("taps", "width_ratio", "merge", "output")


@dataclass(frozen=True)
class Artifact:
    """A protected model as ``mirrornet compile`` reads it."""

    folder: Path
    proto: onnx.ModelProto
    strategy: object  # mirrornet_tvm.strategy.Strategy
    output_names: tuple[str, ...]

    @property
    def combined_path(self) -> Path:
        return self.folder / COMBINED

    @property
    def strategy_path(self) -> Path:
        return self.folder / STRATEGY


@dataclass(frozen=True)
class CompileResult:
    build_dir: Path
    manifest: dict


def read_artifact(folder) -> Artifact:
    """Read and cross-check ``combined.onnx`` and ``strategy.json``; ArtifactError says what to do."""
    from .strategy import Strategy

    folder = Path(folder)
    redo = f"re-create it with `mirrornet protect MODEL -o {folder}`"
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist; {redo}")
    for name in (COMBINED, STRATEGY):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder} has no {name}, so it is not a complete artifact; {redo}")
    try:
        strategy = Strategy.load(folder / STRATEGY)
    except StrategyError as err:
        raise ArtifactError(f"invalid strategy in the artifact: {err}; fix it or {redo}") from None
    try:
        proto = onnx.load(str(folder / COMBINED))
    except Exception as err:
        raise ArtifactError(f"{folder / COMBINED} is not a readable ONNX model ({err}); {redo}") from None
    names = tuple(o.name for o in proto.graph.output)
    expected = ("logits", "backbone_logits") + tuple(f"tap:{t}" for t in strategy.taps)
    if names != expected:
        raise ArtifactError(f"{folder / COMBINED} has outputs {list(names)} but strategy.json expects "
                            f"{list(expected)}; the two files are from different runs, {redo}")
    meta = {p.key: p.value for p in proto.metadata_props}
    if "mirrornet.strategy" not in meta:
        raise ArtifactError(f"{folder / COMBINED} carries no mirrornet.strategy metadata, so it was not "
                            f"written by `mirrornet protect`; {redo}")
    try:
        recorded = json.loads(meta["mirrornet.strategy"])
    except ValueError:
        raise ArtifactError(f"{folder / COMBINED} has unreadable mirrornet.strategy metadata; {redo}") from None
    mine = strategy.to_dict()
    for key in _STRUCTURAL_FIELDS:
        have = recorded.get(key)
        if (list(have) if key == "taps" and have is not None else have) != mine[key]:
            raise ArtifactError(f"strategy.json and {COMBINED} disagree on '{key}' ({mine[key]!r} vs "
                                f"{have!r}); they are from different runs, {redo}")
    return Artifact(folder, proto, strategy, names)


def compile_artifact(artifact_dir, out_dir, *, target=None, tune_trials: int = 0, database=None,
                     dump_ir: bool = False, progress: bool = True) -> CompileResult:
    """Partition, build the backbone, generate the CPM's C and write the build folder atomically."""
    from tqdm import tqdm

    from . import frontend
    from .build import build_backbone, open_database, resolve_target
    from .codegen import generate_cpm_c
    from .transform import AttachMirrorNetMetadata
    from .transform.extract_functions import ExtractFunctions
    from .transform.pipeline import mirrornet_pipeline

    out_dir = Path(out_dir)
    _check_out_dir(out_dir, Path(artifact_dir))
    spec = resolve_target(target)
    timings = {}
    bar = tqdm(total=5, desc="mirrornet compile", unit="phase", file=sys.stderr,
               disable=None if progress else True, leave=False)

    def phase(name):
        bar.set_postfix_str(name)
        if progress:
            tqdm.write(f"[mirrornet compile] {name}", file=sys.stderr)
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = round(time.perf_counter() - timings[name], 3)
        bar.update()

    with bar, _staging(out_dir) as stage:
        phase("read artifact")
        artifact = read_artifact(artifact_dir)
        done("read artifact")

        phase("import to Relax")
        mod = frontend.to_relax(artifact.proto)
        mod = AttachMirrorNetMetadata(artifact.output_names, artifact.strategy.to_dict())(mod)
        done("import to Relax")

        phase("partition + lower backbone")
        with spec.target:
            mod = mirrornet_pipeline(artifact.strategy, dump_dir=stage / "ir" if dump_ir else None)(mod)
        done("partition + lower backbone")

        phase("build backbone")
        backbone = build_backbone(mod, spec, database=database, out=stage / BACKBONE_LIB,
                                  tune_trials=tune_trials,
                                  log=(lambda m: tqdm.write(f"[mirrornet compile]   {m}", file=sys.stderr))
                                  if progress else None)
        done("build backbone")

        phase("generate CPM C")
        db = open_database(database) if database is not None else None  # with any records just tuned
        cpm = generate_cpm_c(ExtractFunctions(["cpm"])(mod), "cpm", out_dir=stage / CPM_DIR,
                             target=spec.target, database=db,
                             source_desc=f"cpm of {artifact.combined_path.name} ({artifact.strategy.name})")
        done("generate CPM C")

        artifact.strategy.save(stage / STRATEGY)
        manifest = _manifest(artifact, mod, spec, backbone, cpm, stage, timings)
        write_json(stage / MANIFEST, manifest)
    return CompileResult(out_dir, manifest)


# ---- manifest ------------------------------------------------------------------------------------------

def _shape_of(ty) -> list[int]:
    return [int(d) for d in ty.shape]


def _manifest(artifact, mod, spec, backbone, cpm, stage: Path, timings) -> dict:
    bfunc = mod["backbone"]
    cfunc = mod["cpm"]
    backbone_out_names = [f"tap:{t}" for t in artifact.strategy.taps]
    if artifact.strategy.output == "correction":
        backbone_out_names.append("backbone_logits")
    out_types = list(bfunc.ret_ty.fields)
    cpm_inputs = [{"name": p.name, "shape": _shape_of(p.ty),
                   "bytes": FLOAT_BYTES * _numel(_shape_of(p.ty))} for p in cfunc.params]
    files = {}
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if path.is_file() and rel.parts[0] not in (MANIFEST, "ir"):
            files[str(rel)] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    tuning = backbone.tuning
    return {
        "generated_by": f"mirrornet compile (mirrornet-tvm {__version__})",
        "generated_from": {
            "artifact": str(artifact.folder.resolve()),
            COMBINED: sha256_file(artifact.combined_path),
            STRATEGY: sha256_file(artifact.strategy_path),
        },
        "strategy": artifact.strategy.to_dict(),
        "target": {"name": spec.name, "config": spec.config, "cross_compiler": spec.cross_compiler},
        "tuning": tuning,
        "backbone": {
            "file": BACKBONE_LIB,
            "entry": backbone.entry,
            "loader": "tvm.runtime.load_module + tvm.relax.VirtualMachine",
            "input": {"name": bfunc.params[0].name, "shape": _shape_of(bfunc.params[0].ty)},
            "outputs": [{"name": n, "shape": _shape_of(t)} for n, t in zip(backbone_out_names, out_types)],
            "lib_bytes": backbone.lib_bytes,
            "kernels": backbone.kernels,
            "tuned_kernels": backbone.tuned_kernels,
            "tuning": tuning,
        },
        "cpm": {
            "dir": CPM_DIR,
            "entry": "mirrornet_cpm_run",
            "code_bytes": cpm.code_bytes,
            "weight_bytes": cpm.weight_bytes,
            "arena_bytes": cpm.arena_bytes,
            "peak_live_bytes": cpm.peak_live_bytes,
            "max_stack_bytes": cpm.max_stack_bytes,
            "heap_bytes": 0,  # the CPM never allocates: its arena is a static array (.bss), sized above
            "kernels": cpm.num_kernels,
            "schedules": dict(cpm.schedules),
            "source_sha256": cpm.sha256,
            "inputs": cpm_inputs,
            "num_classes": cpm.num_classes,
        },
        "sizes": {
            "backbone_lib_bytes": backbone.lib_bytes,
            "cpm_code_bytes": cpm.code_bytes,
            "cpm_weight_bytes": cpm.weight_bytes,
            "cpm_arena_bytes": cpm.arena_bytes,
            "tap_bytes_per_inference": sum(i["bytes"] for i in cpm_inputs),
        },
        "secure_memory": _secure_memory(artifact, cpm, cpm_inputs),
        "files": files,
        "seconds": timings,
    }


MEMORY_TOLERANCE_BYTES = 0  # the estimate models the emitter's plan exactly (default CPM schedules)


def _secure_memory(artifact, cpm, cpm_inputs) -> dict:
    """The generated CPM's secure-memory bytes next to the strategy's estimate (strategy.secure_memory).

    ``generated``: what the TA holds for this build: the C's weight arrays and static arena, its
    copy of the taps and its logits buffer (``code`` is the generated C source, outside the estimate).
    ``estimate``: :func:`mirrornet_tvm.strategy.secure_memory` of the artifact's strategy, the figure
    strategy selection and the emulator used. ``within_estimate``: every component of the build is
    at most its estimate plus ``tolerance_bytes`` (0: the estimate predicts the emitter's plan);
    ``exact``: they are equal. Tuned CPM kernels (other workspaces) or an operator the estimate does
    not model can make the build differ; ``note`` says which applies.
    """
    generated = {"weights": cpm.weight_bytes, "arena": cpm.arena_bytes,
                 "taps": sum(i["bytes"] for i in cpm_inputs), "logits": FLOAT_BYTES * cpm.num_classes}
    generated["total"] = sum(generated.values())
    generated["code"] = cpm.code_bytes
    try:
        from .analysis import as_graph
        from .strategy import secure_memory

        mem = secure_memory(artifact.strategy, as_graph(artifact.proto))
    except Exception as err:  # a combined model not mirrored by `mirrornet protect` has no plan
        return {"generated": generated, "estimate": None, "within_estimate": None,
                "note": f"no estimate: the strategy's CPM plan does not apply to this model ({err})"}
    estimate = {"weights": mem.weights, "arena": mem.arena, "taps": mem.taps, "logits": mem.logits,
                "total": mem.total}
    parts = ("weights", "arena", "taps", "logits")
    difference = {k: estimate[k] - generated[k] for k in (*parts, "total")}
    within = all(generated[k] <= estimate[k] + MEMORY_TOLERANCE_BYTES for k in parts)
    exact = all(difference[k] == 0 for k in parts)
    tuned = sorted(k for k, how in cpm.schedules if how == "tuned")
    if exact:
        note = "the build matches the estimate byte for byte"
    else:
        causes = []
        if difference["arena"] and tuned:
            causes.append(f"{len(tuned)} CPM kernel(s) use tuned schedules, the estimate assumes the default ones")
        if difference["weights"] > 0 and not difference["arena"]:
            causes.append("the build stores weight vectors with equal values (e.g. untrained batch norms) once, "
                          "the estimate counts each; or the CPM has an operator the estimate does not model exactly")
        elif difference["weights"] or (difference["arena"] and not tuned):
            causes.append("the CPM has an operator the estimate does not model exactly")
        note = f"the build differs from the estimate: {'; '.join(causes)}"
    return {"generated": generated, "estimate": estimate, "difference": difference,
            "tolerance_bytes": MEMORY_TOLERANCE_BYTES, "within_estimate": within, "exact": exact,
            "note": note}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- atomic build folder -------------------------------------------------------------------------------

def _check_out_dir(out_dir: Path, artifact_dir: Path) -> None:
    with contextlib.suppress(OSError):
        if artifact_dir.exists() and out_dir.resolve() == artifact_dir.resolve():
            raise UsageError("the build folder must not be the artifact folder; pass another -o")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir} is a file; give a folder for the build (-o BUILD_DIR)")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise UsageError(f"{out_dir} exists and is not a previous build (no {MANIFEST}); choose an "
                             "empty or new folder so nothing of yours is overwritten")


@contextlib.contextmanager
def _staging(out_dir: Path):
    """Yield a temporary folder next to ``out_dir``; on success it replaces ``out_dir`` (else is deleted)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield stage
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "build")
        os.replace(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
