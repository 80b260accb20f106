"""``mirrornet tune``: measure on the target (locally or through an RPC tracker), tune, train, calibrate.

    report = tune("out/build", device=rpc_device("127.0.0.1:9190", "rpi3"), trials=64)

Steps, each shown in progress output:
1. read the source: a build folder (its artifact's model and strategy), an artifact or an ONNX model;
2. optionally tune the backbone with MetaSchedule, measuring candidates on the device (``RPCRunner``),
   into ``OUT/database`` (with the trial ledger ``mirrornet compile --database`` reads);
3. gather kernels: a random corpus, the model's backbone kernels (as ``build_backbone`` schedules
   them: tuned record, else its default rule) and the CPM kernels of a sample of strategies (scheduled
   like the generated C); the corpus is scheduled both ways;
4. measure them on the device, as TVM code and as the TEE's C, into ``OUT/measurements.jsonl``
   (resumable: kernels already measured for this target are skipped);
5. train the cost model, ``OUT/cost_model.json``;
6. optionally calibrate: build and run a few strategies through the host TEE simulator and fit the
   stage models, ``OUT/calibration.json``.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ArtifactError, ModelError, UsageError
from ..util import read_json, write_json
from .harness import TEE_FLAVOUR, TimingConfig, measure, usable
from .rpc import LOCAL, Device
from .targets import is_cross, resolve_target, target_dict

MEASUREMENTS = "measurements.jsonl"
DATABASE = "database"
REPORT = "tune_report.json"


@dataclass(frozen=True)
class Source:
    """What ``mirrornet tune`` was pointed at."""

    kind: str                  # "build" | "artifact" | "onnx"
    model_path: Path           # the model whose strategies are emulated
    combined: Path | None      # combined.onnx of an artifact (None for a bare model)
    strategy: object | None    # its Strategy
    input_shape: tuple | None = None  # (C, H, W) for a model with dynamic input dimensions


def read_source(path) -> Source:
    """Resolve a build folder, an artifact folder or an ONNX file."""
    from ..strategy import Strategy

    path = Path(path)
    if path.is_file():
        if path.suffix != ".onnx":
            raise UsageError(f"{path} is not an ONNX model (.onnx), a build folder or an artifact folder")
        return Source("onnx", path, None, None)
    if not path.is_dir():
        raise UsageError(f"{path} does not exist; give a build folder (`mirrornet compile`), an artifact "
                         "folder (`mirrornet protect`) or an ONNX model")
    kind, artifact = "artifact", path
    if (path / "manifest.json").is_file():
        manifest = read_json(path / "manifest.json")
        recorded = (manifest.get("generated_from") or {}).get("artifact")
        if not recorded or not Path(recorded).is_dir():
            raise ArtifactError(f"{path}/manifest.json names the artifact {recorded!r}, which is not there; "
                                "point `mirrornet tune` at the artifact folder or the model instead")
        kind, artifact = "build", Path(recorded)
    if not (artifact / "combined.onnx").is_file() or not (artifact / "strategy.json").is_file():
        raise ArtifactError(f"{artifact} is neither a build folder nor an artifact (no combined.onnx and "
                            "strategy.json); give an ONNX model instead")
    model = next((artifact / n for n in ("original.onnx", "backbone.onnx") if (artifact / n).is_file()), None)
    if model is None:
        raise ArtifactError(f"{artifact} has neither original.onnx nor backbone.onnx to take the model from")
    return Source(kind, model, artifact / "combined.onnx", Strategy.load(artifact / "strategy.json"))


def default_out_dir(source_path, kind: str) -> Path:
    """``BUILD/tuning`` for a build folder, else ``<name>-tuning`` next to the artifact or model."""
    path = Path(source_path)
    if kind == "build":
        return path / "tuning"
    return path.parent / f"{path.stem if kind == 'onnx' else path.name}-tuning"


def sample_strategies(costs, count: int, seed: int = 0, stratify: bool = False) -> list:
    """``count`` strategies of distinct CPM structure, drawn at random (deterministic under ``seed``).

    With ``stratify``, one strategy is drawn per group of what sets the latency (the backbone the
    normal world runs: up to the deepest tap, or all of it for a ``correction`` CPM; and the CPM's
    width), groups in random order, so that the sample spans the space's latencies instead of
    piling up where most strategies are (the whole backbone).
    """
    seen, distinct = set(), []
    for c in costs:
        s = getattr(c, "strategy", c)
        key = (s.taps, s.width_ratio, s.merge, s.output)
        if key not in seen:
            seen.add(key)
            distinct.append(c)
    rng = random.Random(seed)
    rng.shuffle(distinct)
    if not stratify:
        return distinct[:count]
    groups: dict = {}
    for c in distinct:
        s = getattr(c, "strategy", c)
        groups.setdefault(("all" if s.output == "correction" else s.taps[-1], s.width_ratio), []).append(c)
    order = list(groups.values())
    rng.shuffle(order)
    picked = []
    while len(picked) < count and any(order):
        for members in order:
            if members and len(picked) < count:
                picked.append(members.pop())
    return picked


def _backbone_module(source: Source, target):
    """The backbone exactly as ``mirrornet compile`` lowers it (whole model for a bare ONNX)."""
    import tvm

    from .. import frontend
    from ..build import lower_backbone
    from ..transform import AttachMirrorNetMetadata
    from ..transform.pipeline import backbone_lowering_passes, mirrornet_pipeline

    if source.combined is None:
        mod = frontend.load_model(str(source.model_path), source.input_shape).relax()
        with target:
            mod = tvm.transform.Sequential(backbone_lowering_passes())(mod)
        return mod
    proto = frontend.check_onnx(str(source.combined))
    mod = frontend.to_relax(proto)
    mod = AttachMirrorNetMetadata(tuple(o.name for o in proto.graph.output), source.strategy.to_dict())(mod)
    with target:
        mod = mirrornet_pipeline(source.strategy)(mod)
    return lower_backbone(mod)


def tune_backbone(source: Source, target, device: Device, db_dir: Path, trials: int,
                  progress: bool = True) -> int:
    """MetaSchedule-tune the backbone's kernels, measuring on ``device``; returns records added."""
    from tvm.s_tir import meta_schedule as ms

    from ..build import (BUILDER_TIMEOUT_SEC, TuningLedger, open_database, prepare_metaschedule_logging,
                         workload_key)
    from ..build import resolve_target as build_target

    spec = build_target(target_dict(target))
    lowered = _backbone_module(source, spec.target)
    func_name = "backbone" if "backbone" in [g.name_hint for g in lowered.get_global_vars()] else "main"
    tasks = ms.relax_integration.extract_tasks(lowered, spec.target)
    if not tasks:
        return 0
    db = open_database(db_dir)
    before = len(db)
    population = max(32, min(512, 8 * trials))
    strategy = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                     init_min_unmeasured=min(50, population // 2))
    prepare_metaschedule_logging()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(db_dir), strategy=strategy, num_threads=1, seed=0)
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=BUILDER_TIMEOUT_SEC)
    if device.tracker is None:
        runner = ms.runner.LocalRunner(timeout_sec=60)
    else:
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=device.tracker.host, tracker_port=device.tracker.port,
                                           tracker_key=device.key, session_timeout_sec=120),
            max_workers=1)
    if progress:
        print(f"[mirrornet tune] tuning {len(tasks)} backbone kernels of {func_name}: {trials} trials on "
              f"{device.name}", file=sys.stderr)
    try:
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db_dir), max_trials_global=trials,
                      num_trials_per_iter=min(64, trials), builder=builder, runner=runner, database=db,
                      cost_model=ms.cost_model.XGBModel(num_tuning_cores=1, num_warmup_samples=min(100, trials)))
    finally:
        pool = getattr(runner, "pool", None)
        if pool is not None:
            pool.shutdown()
    TuningLedger(db_dir).record(workload_key(lowered, spec), trials, spec)
    return len(db) - before


@dataclass(frozen=True)
class TuneReport:
    out_dir: str
    source: str
    target: dict
    device: str
    trials: int
    database_records: int
    kernels: dict            # flavour -> kernels gathered
    measured: dict           # flavour -> successful measurements available for training
    new_measurements: int
    training: dict           # flavour -> {kernels, rmse_log}
    calibration: str | None
    seconds: float
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def tune(source_path, out_dir=None, target=None, device: Device = LOCAL, *, trials: int = 0,
         corpus: int = 120, strategies: int = 8, calibrate: int = 0, images: int = 30,
         tee: str = "sim", seed: int = 0, timing: TimingConfig = TimingConfig(),
         progress: bool = True, input_shape=None) -> TuneReport:
    """The whole of ``mirrornet tune`` (see the module docstring); ``input_shape`` (C, H, W) fixes dynamic
    input dimensions of an ONNX source."""
    from ..frontend import load_model
    from ..strategy import generate_strategies
    from . import corpus as corpus_mod
    from .cost_model import CostModel
    from .harness import RecordStore
    from .strategy_kernels import ModelKernels

    t_start = time.perf_counter()
    if trials < 0 or corpus < 0 or strategies < 0 or calibrate < 0 or images < 1:
        raise UsageError("--trials, --corpus, --strategies and --calibrate must be >= 0 and --images >= 1")
    if tee not in TEE_FLAVOUR:
        raise UsageError(f"--tee must be one of {', '.join(TEE_FLAVOUR)}, not {tee!r}")
    source = replace(read_source(source_path), input_shape=input_shape)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(source_path, source.kind)
    target = resolve_target(target)
    if is_cross(target) and device.tracker is None:
        raise UsageError(f"this machine cannot run code for {target_dict(target).get('mtriple')}: measure on "
                         "such a device through an RPC tracker (--rpc-tracker HOST:PORT --rpc-key KEY)")
    device.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda m: print(f"[mirrornet tune] {m}", file=sys.stderr)) if progress else (lambda m: None)
    say(f"source: {source.kind} {source_path}; target {target_dict(target)}; device {device.name}")

    database = None
    db_dir = out_dir / DATABASE
    if trials:
        tune_backbone(source, target, device, db_dir, trials, progress)
    if (db_dir / "database_tuning_record.json").is_file():
        from ..build import open_database

        database = open_database(db_dir)

    try:
        model = load_model(str(source.model_path), source.input_shape)
    except ModelError as err:
        raise ModelError(f"{source.model_path}: {err}") from None
    say("gathering kernels (corpus, backbone, CPMs of sampled strategies)")
    mk = ModelKernels(model, target, database)
    picked = sample_strategies(generate_strategies(mk.graph, budget_bytes=None), strategies, seed)
    if source.strategy is not None:
        picked = [source.strategy] + [c for c in picked if getattr(c, "strategy", c).name != source.strategy.name]
    cflavour = TEE_FLAVOUR[tee]
    # the corpus scheduled as the backbone's untuned kernels are (build_backbone's default rule) and as
    # the CPM's C is
    random_kernels = corpus_mod.random_kernels(corpus, seed=seed) if corpus else []
    kernels = {
        "tvm": corpus_mod.scheduled_like_backbone(random_kernels, target, mk.cache) + list(mk.full_model()),
        cflavour: corpus_mod.scheduled_like_cpm(random_kernels, target, mk.cache)
        + [k for c in picked for k in mk.cpm(getattr(c, "strategy", c))[0]],
    }
    records = out_dir / MEASUREMENTS
    before = len(RecordStore(records).load())
    all_measured = []
    for flavour, ks in kernels.items():
        all_measured += measure(ks, target, device, records=records, flavour=flavour, timing=timing,
                                progress=progress)
    new = len(RecordStore(records).load()) - before
    failed = [m for m in all_measured if not m.ok]
    if failed:
        say(f"{len(failed)} kernel(s) failed to build or run; first: {failed[0].error}")

    say("training the cost model")
    model_out = CostModel(target)
    store = RecordStore(records).load().values()
    summaries = model_out.fit_measurements(list(store))
    model_out.save(out_dir / "cost_model.json")

    cal_source = None
    if calibrate:
        cal_source = _calibrate(model_out, mk, target, database, out_dir, calibrate, images, tee, seed, progress)

    report = TuneReport(
        out_dir=str(out_dir), source=f"{source.kind}:{source_path}", target=target_dict(target),
        device=device.name, trials=trials, database_records=len(database) if database is not None else 0,
        kernels={f: len({k.key for k in ks}) for f, ks in kernels.items()},
        measured={f: sum(1 for m in usable(store) if m.flavour == f) for f in sorted({m.flavour for m in store})},
        new_measurements=new,
        training={s.flavour: {"kernels": s.kernels, "rmse_log": round(s.rmse_log, 4)} for s in summaries},
        calibration=cal_source, seconds=round(time.perf_counter() - t_start, 1),
        files={"measurements": str(records), "cost_model": str(out_dir / "cost_model.json"),
               **({"database": str(db_dir)} if database is not None else {}),
               **({"calibration": str(out_dir / "calibration.json")} if cal_source else {})})
    write_json(out_dir / REPORT, {"generated_by": "mirrornet tune", **report.to_dict()})
    return report


def _calibrate(cost_model, mk, target, database, out_dir: Path, count: int, images: int, tee: str, seed: int,
               progress: bool) -> str:
    """Build and run ``count`` strategies through the host TEE simulator; fit and save the calibration."""
    import numpy as np

    from ..strategy import generate_strategies
    from . import calibration as cal_mod
    from .emulate import Emulator
    from .protected_runs import measure_strategies

    if is_cross(target):
        raise UsageError("calibration runs protected inference on this machine's TEE simulator; it cannot "
                         "calibrate a cross target: drop --calibrate or tune for the host")
    if tee != "sim":
        raise UsageError("calibration runs in the host TEE simulator: use --tee sim with --calibrate")
    emulator = Emulator(cost_model, target, cal_mod.Calibration(tee=tee), database=database)
    # stratified: backbones of different depth, so that the stage models' constants are identifiable
    picked = sample_strategies(generate_strategies(mk.graph, budget_bytes=None), count, seed + 1, stratify=True)
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in mk.model.input_shape)  # (1, C, H, W)
    x = rng.random((images,) + shape[1:], dtype=np.float32)
    timings = measure_strategies(mk.model, picked, out_dir / "calibration_builds", x, target=target,
                                 progress=progress)
    samples = []
    for c, t in zip(picked, timings):
        s = getattr(c, "strategy", c)
        sk = mk.of(s)
        samples.append(cal_mod.Sample(
            name=s.name, backbone_predicted=emulator.kernels_total(sk.backbone, "tvm"),
            backbone_calls=sum(k.calls for k in sk.backbone), backbone_out_bytes=sk.backbone_out_bytes,
            cpm_predicted=emulator.kernels_total(sk.cpm, emulator.cpm_flavour),
            cpm_calls=sum(k.calls for k in sk.cpm), tee_in_bytes=sk.tee_in_bytes, tee_out_bytes=sk.tee_out_bytes,
            backbone_measured=t.backbone_s, cpm_measured=t.cpm_s, transfer_measured=t.transfer_s))
    cal = cal_mod.fit(samples, tee=tee, source=f"fitted on {len(samples)} protected runs in the host TEE "
                                                  f"simulator ({images} images each)")
    cal.save(out_dir / "calibration.json")
    write_json(out_dir / "calibration_samples.json", [s.to_dict() for s in samples])
    return cal.source
