"""Backbone build: the partitioned module's ``backbone`` -> a shared library the Relax VM loads.

    build = build_backbone(mod, target="rpi3", database="tuning_db", tune_trials=64, out="backbone.so")
    lib = tvm.runtime.load_module("backbone.so")                 # on the device (host: same call)
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu()); taps = vm["backbone"](image)

Targets are TVM target dicts. ``"host"`` is this machine's CPU (``GetHostCPUName``); ``"rpi3"`` is a
Raspberry Pi 3 (Cortex-A53, AArch64 Linux), cross-compiled and linked with ``aarch64-linux-gnu-gcc``.
Optional MetaSchedule tuning writes its records to a JSON database folder; the folder also keeps
``mirrornet_tuning.json``, the trial budget each backbone workload was tuned with, so a second build with
the same or a smaller budget reuses the records without measuring anything. Every build says whether it
is "untuned" or "tuned (N trials)", N being the valid measurements the database holds for the
backbone's kernels.

Kernels without a tuning record get the default CPU schedule of ``codegen.schedule.CpmCpuSchedule``
(register-blocked output rows, inlined elementwise chains: the rule the CPM's C code uses) instead of
the naive loop nests ``LegalizeOps`` writes, with register tiles sized for the target's vector
registers (``default_rule``). ``default_schedules=False`` keeps the naive loops. Measured on the zoo
backbones (bench/backbone_speed.py, AVX-512 host, one thread): 14-69x faster than the naive loops.
When the target is this machine, a kernel whose tuning record runs slower than its default schedule
(a tuning of a few trials) is built with the default one (``keep_faster_schedules``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir import dlight
from tvm.s_tir import meta_schedule as ms
from tqdm import tqdm

from .codegen.schedule import CpmCpuSchedule
from .errors import CompileError, UsageError
from .transform.apply_database import ApplyTuningDatabase
from .transform.extract_functions import ExtractFunctions
from .transform.lower_function import LowerFunction
from .transform.pipeline import backbone_lowering_passes
from .util import atomic_write, read_json

ENTRY = "backbone"
TARGET_PRESETS = {
    "rpi3": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "num-cores": 4},
}
TUNING_LEDGER = "mirrornet_tuning.json"
# LocalBuilder workers import tvm.s_tir.tensor_intrin first: ~15 s on an idle machine, over 2 min on a
# loaded 2-core one, where a 120 s timeout failed every build. The timeouts only stop hung workers.
BUILDER_TIMEOUT_SEC = 600
RUNNER_TIMEOUT_SEC = 300
# Relax ops that remain once a function is lowered (everything else is a high-level op to legalize).
_LOWERED_OPS = ("relax.call_tir", "relax.call_tir_inplace", "relax.call_dps_packed", "relax.call_pure_packed")


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: its preset name (``host``, ``rpi3`` or ``custom``) and TVM target dict."""

    name: str
    config: dict

    @property
    def target(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)

    @property
    def cross_compiler(self) -> str | None:
        """The gcc that links the library when the target is not this machine, else None."""
        triple = self.config.get("mtriple")
        if not triple:
            return None
        arch = triple.split("-")[0]
        if arch in (platform.machine(), {"AMD64": "x86_64"}.get(platform.machine())):
            return None
        return f"{triple}-gcc"


@dataclass(frozen=True)
class BackboneBuild:
    """What ``build_backbone`` produced."""

    path: str
    entry: str
    target_name: str
    target: dict
    tuning: str  # "untuned" | "tuned (N trials)"
    tune_trials: int  # valid measurements the database holds for the backbone's kernels (0: untuned)
    new_trials: int  # measurements made by this build (0 when it reused the database)
    tuned_kernels: int  # PrimFuncs that got a schedule from the database
    default_kernels: int  # PrimFuncs built with the default CPU schedule
    default_over_tuned: int  # of those, kernels whose tuning record measured slower than the default
    kernels: int  # PrimFuncs of the backbone
    lib_bytes: int
    cross_compiler: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def physical_cores() -> int:
    """Physical cores of this machine (MetaSchedule wants ``num-cores`` in a target it tunes for)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def host_cpu() -> str:
    return tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()


def resolve_target(target=None) -> TargetSpec:
    """``None``/``"host"``, a preset name, a target dict or its JSON text -> ``TargetSpec`` (validated)."""
    if target is None or target == "host":
        spec = TargetSpec("host", {"kind": "llvm", "mcpu": host_cpu(), "num-cores": physical_cores()})
    elif isinstance(target, TargetSpec):
        spec = target
    elif isinstance(target, str) and target in TARGET_PRESETS:
        spec = TargetSpec(target, dict(TARGET_PRESETS[target]))
    elif isinstance(target, (str, dict)):
        config = target
        if isinstance(target, str):
            try:
                config = json.loads(target)
            except ValueError:
                raise UsageError(f"target {target!r} is neither a preset (host, {', '.join(TARGET_PRESETS)}) "
                                 'nor a JSON target dict such as {"kind": "llvm", "mcpu": "cortex-a72"}') from None
        if not isinstance(config, dict) or "kind" not in config:
            raise UsageError(f"a target dict needs a 'kind' (e.g. \"llvm\"), got {config!r}")
        spec = TargetSpec("custom", dict(config))
        if spec.config.get("kind") == "llvm" and "num-cores" not in spec.config and not spec.cross_compiler:
            spec.config["num-cores"] = physical_cores()
    else:
        raise UsageError(f"target must be 'host', a preset ({', '.join(TARGET_PRESETS)}) or a dict, "
                         f"got {type(target).__name__}")
    try:
        spec.target  # noqa: B018  (validate now)
    except Exception as err:
        raise UsageError(f"TVM rejects the target {spec.config}: {err}") from None
    if spec.config.get("kind") != "llvm":
        raise UsageError(f"the backbone is built for CPU targets (kind 'llvm'), not {spec.config.get('kind')!r}")
    return spec


def open_database(database) -> ms.database.Database | None:
    """``None``, an ``ms.Database`` or a folder (created if missing) -> a database (JSON in the folder)."""
    if database is None or isinstance(database, ms.database.Database):
        return database
    path = Path(database)
    if path.exists() and not path.is_dir():
        raise UsageError(f"the tuning database {path} is a file; give a folder (it holds "
                         "database_workload.json and database_tuning_record.json)")
    path.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=str(path), allow_missing=True)
    except Exception as err:
        raise CompileError(f"cannot read the tuning database in {path} ({err}); "
                           "move it away and tune again") from None


def lower_backbone(mod: tvm.IRModule) -> tvm.IRModule:
    """The ``backbone`` function and its PrimFuncs alone, lowered to TIR unless the pipeline already did."""
    part = ExtractFunctions([ENTRY])(mod)
    if not isinstance(part[ENTRY], relax.Function):
        raise CompileError(f"'{ENTRY}' is not a Relax function; run MirrorNetPartition on the combined model")
    if not _is_lowered(part[ENTRY]):
        part = LowerFunction(ENTRY, backbone_lowering_passes())(part)
    return part


def build_backbone(mod: tvm.IRModule, target=None, database=None, out="backbone.so", *,
                   tune_trials: int = 0, default_schedules: bool = True, log=None) -> BackboneBuild:
    """Compile ``mod["backbone"]`` for ``target`` and export it atomically as a shared library at ``out``.

    ``database``: a MetaSchedule database or a folder; its tuned schedules are applied. With
    ``tune_trials > 0`` the backbone is tuned first (records go to ``database``, or to a temporary
    folder when none is given) unless the database already holds a tuning of this workload with at
    least that many trials. Kernels the database has no record for get the default CPU schedule
    (``default_schedules=False``: TVM's naive loop nests, for comparison).
    """
    log = log or (lambda msg: None)
    if tune_trials < 0:
        raise UsageError(f"--tune-trials must be >= 0, got {tune_trials}")
    spec = resolve_target(target)
    out = Path(out)
    lowered = lower_backbone(mod)
    kernels = sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in lowered.functions_items())
    db_dir = None if database is None or isinstance(database, ms.database.Database) else Path(database)
    scratch = None
    if tune_trials and db_dir is None and database is None:
        scratch = Path(tempfile.mkdtemp(prefix="mirrornet-tuning-"))
        db_dir = scratch
    try:
        db = open_database(db_dir if db_dir is not None else database)
        ledger = TuningLedger(db_dir)
        key = workload_key(lowered, spec)
        new_trials = 0
        tuning_now = bool(tune_trials) and ledger.trials(key) < tune_trials
        if tuning_now:
            if spec.cross_compiler:
                raise UsageError(f"tuning measures kernels on this machine, which cannot run {spec.name} "
                                 "code; tune on the device over RPC (`mirrornet tune`) and compile with "
                                 "--database pointing at its records, or use --tune-trials 0")
            if db_dir is None:
                raise UsageError("tuning records go to a database folder; pass database=<folder>")
            log(f"tuning the backbone: {tune_trials} trials ({kernels} kernels)")
            before = len(db)
            _tune(lowered, spec.target, db, db_dir, tune_trials, log)
            new_trials = len(db) - before
        with spec.target:
            applied = ApplyTuningDatabase(db)(lowered) if db is not None else lowered
        tuned_kernels = sum(bool(f.attrs and f.attrs.get("tirx.is_scheduled", False))
                            for _, f in applied.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
        if tuning_now and tuned_kernels:
            ledger.record(key, tune_trials, spec)
        elif tuning_now:
            log(f"tuning produced no valid schedule ({new_trials} measurements failed; see "
                f"{db_dir / 'logs'}): the backbone is built untuned")
        tuned_trials = _measured_trials(db, lowered, spec.target) if tuned_kernels else 0
        default_kernels = default_over_tuned = 0
        if default_schedules and tuned_kernels and not spec.cross_compiler:
            applied, replaced = keep_faster_schedules(applied, lowered, spec.target)
            default_over_tuned = len(replaced)
            if replaced:
                log(f"the default schedule measured faster than the tuned one for {', '.join(replaced)}: kept")
        if default_schedules:
            applied, default_kernels = apply_default_schedules(applied, spec.target)
            default_kernels += default_over_tuned
        log(f"compiling the backbone for {spec.name} ({'tuned' if tuned_trials else 'untuned'}; "
            f"{tuned_kernels} tuned, {default_kernels} default-scheduled, "
            f"{kernels - tuned_kernels - default_kernels} naive kernels)")
        try:
            executable = tvm.compile(applied, spec.target)
        except Exception as err:
            raise CompileError(f"TVM could not compile the backbone for {spec.config}: {err}") from None
        size = _export(executable, out, spec)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return BackboneBuild(
        path=str(out), entry=ENTRY, target_name=spec.name, target=spec.config,
        tuning=f"tuned ({tuned_trials} trials)" if tuned_trials else "untuned",
        tune_trials=tuned_trials, new_trials=new_trials, tuned_kernels=tuned_kernels, kernels=kernels,
        default_kernels=default_kernels, default_over_tuned=default_over_tuned, lib_bytes=size, cross_compiler=spec.cross_compiler)


# Register tile bounds (row floats, tile floats) by vector registers. AVX-512 has 32 registers of 16
# floats; measured on the zoo backbones (Relax VM, one thread), (32, 128) ran 1.7-1.9x faster than the
# CPM's C defaults (16, 32), and larger tiles were slower again. Other targets (AVX2: 16 registers of 8
# floats; NEON: 32 of 4) keep the defaults.
AVX512_TILE = (32, 128)


def default_rule(target: tvm.target.Target) -> CpmCpuSchedule:
    """The default schedule rule for the backbone's kernels on ``target``."""
    from tvm.target.codegen import target_has_features

    try:
        wide = target_has_features("avx512f", target)
    except Exception:  # noqa: BLE001 - not an LLVM x86 target
        wide = False
    return CpmCpuSchedule(*AVX512_TILE) if wide else CpmCpuSchedule()


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, int]:
    """Give every PrimFunc not yet scheduled (no tuning record) the default CPU schedule.

    Returns a new module (``mod`` is left as it was) and how many kernels the rule scheduled.
    """
    copy = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    before = {gv.name_hint: f for gv, f in copy.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    try:
        with target:
            scheduled = dlight.ApplyDefaultSchedule(default_rule(target))(copy)
    except Exception as err:  # noqa: BLE001 - TVM raises several error types from schedule primitives
        raise CompileError(f"the default CPU schedule failed on the backbone ({err}); build with "
                           "default_schedules=False to keep TVM's naive loops") from None
    changed = sum(not before[gv.name_hint].same_as(f) for gv, f in scheduled.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint in before)
    return scheduled, changed


def keep_faster_schedules(tuned: tvm.IRModule, lowered: tvm.IRModule, target: tvm.target.Target,
                          *, min_repeat_ms: int = 5) -> tuple[tvm.IRModule, list[str]]:
    """Time each kernel that has a tuning record against its default schedule here; keep the faster.

    A tuning of a few trials can leave a kernel slower than the default rule gives it; this never lets
    tuning make the backbone slower. ``lowered`` holds the kernels before any schedule. Runs the
    kernels on this machine, so only for a target this machine runs. Returns the module and the names
    of the kernels that got their default schedule back.
    """
    scheduled, _ = apply_default_schedules(lowered, target)
    defaults = {gv.name_hint: f for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    result = tvm.IRModule(dict(tuned.functions_items()), attrs=tuned.attrs)
    replaced = []
    for gv, func in tuned.functions_items():
        if not (isinstance(func, tvm.tirx.PrimFunc) and func.attrs and func.attrs.get("tirx.is_scheduled", False)):
            continue
        default = defaults.get(gv.name_hint)
        if default is None or default.same_as(func):
            continue
        try:
            faster = _kernel_seconds(default, target, min_repeat_ms) < _kernel_seconds(func, target, min_repeat_ms)
        except Exception:  # noqa: BLE001 - a kernel that cannot be timed alone keeps its tuned schedule
            continue
        if faster:
            result[result.get_global_var(gv.name_hint)] = default
            replaced.append(gv.name_hint)
    return result, replaced


def _kernel_seconds(func: tvm.tirx.PrimFunc, target: tvm.target.Target, min_repeat_ms: int) -> float:
    """Best of five timings of one kernel alone on zero-filled arguments, in seconds."""
    import numpy as np

    executable = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    module = executable.jit() if hasattr(executable, "jit") else executable
    args = [tvm.runtime.tensor(np.zeros([int(d) for d in info.shape], str(info.dtype)))
            for info in ms.arg_info.ArgInfo.from_prim_func(func)]
    timer = module.time_evaluator("main", tvm.cpu(), number=1, repeat=5, min_repeat_ms=min_repeat_ms)
    return min(timer(*args).results)


# ---- helpers -------------------------------------------------------------------------------------------

def _is_lowered(func: relax.Function) -> bool:
    ops = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ops.add(expr.op.name)

    relax.analysis.post_order_visit(func.body, visit)
    return all(op in _LOWERED_OPS or op.startswith(("relax.builtin.", "relax.memory.", "relax.vm."))
               for op in ops)


def _export(executable, out: Path, spec: TargetSpec) -> int:
    """Export to a temporary folder next to ``out``, then rename: never a half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp = tmp_dir / out.name
        if spec.cross_compiler:
            if shutil.which(spec.cross_compiler) is None:
                raise CompileError(f"{spec.cross_compiler} is not installed; install the cross toolchain "
                                   "(Debian: apt-get install gcc-aarch64-linux-gnu) to build for "
                                   f"{spec.name}")
            fcompile = tvm.support.cc.cross_compiler(spec.cross_compiler)
            executable.export_library(str(tmp), fcompile=fcompile)
        else:
            executable.export_library(str(tmp))
        os.replace(tmp, out)
    except CompileError:
        raise
    except Exception as err:
        raise CompileError(f"exporting the backbone library {out} failed: {err}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out.stat().st_size


def workload_key(lowered: tvm.IRModule, spec: TargetSpec) -> str:
    """Identifies the backbone's kernels and the target (weights do not change the tuning)."""
    hashes = sorted(int(tvm_ffi.structural_hash(f)) & 0xFFFFFFFFFFFFFFFF
                    for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    text = json.dumps({"kernels": hashes, "target": str(spec.target)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _measured_trials(db, lowered: tvm.IRModule, target) -> int:
    """Valid tuning records (measured trials) the database holds for the backbone's kernels."""
    total = 0
    for task in ms.relax_integration.extract_tasks(lowered, target):
        workload_mod = task.dispatched[0]
        if db.has_workload(workload_mod):  # (commit_workload would add a missing one to the files)
            total += len(db.get_top_k(db.commit_workload(workload_mod), 1 << 20))
    return total


class TuningLedger:
    """``mirrornet_tuning.json`` in the database folder: the trial budget each workload was tuned with."""

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else Path(folder) / TUNING_LEDGER
        self.entries = {}
        if self.path is not None and self.path.exists():
            try:
                self.entries = dict(read_json(self.path).get("workloads", {}))
            except (ValueError, AttributeError, OSError):
                raise CompileError(f"{self.path} is not valid JSON; delete it and tune again") from None

    def trials(self, key: str) -> int:
        return int(self.entries.get(key, {}).get("trials", 0))

    def record(self, key: str, trials: int, spec: TargetSpec) -> None:
        self.entries[key] = {"trials": max(trials, self.trials(key)), "target": spec.config,
                             "target_name": spec.name}
        if self.path is not None:
            atomic_write(self.path, json.dumps({
                "generated_by": "mirrornet_tvm.build (MetaSchedule tuning of the backbone)",
                "workloads": self.entries}, indent=2) + "\n")


@derived_object
class _TrialProgress(ms.measure_callback.PyMeasureCallback):
    """Advance a progress bar (stderr) by the candidates MetaSchedule has just measured."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        self.bar.update(len(measure_candidates))


def prepare_metaschedule_logging() -> None:
    """Make MetaSchedule's logger ready for another tuning run in this process.

    MetaSchedule (re)configures its logger with ``logging.config.dictConfig`` on every run and refers
    to the handlers already attached by name; a handler without a name (attached by anything else in
    the process) makes that configuration fail with ``'NoneType' object has no attribute 'format'``.
    Such handlers are detached here. The console level defaults to WARNING so stdout stays ours.
    """
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        if handler.get_name() is None:
            ms_logger.removeHandler(handler)
    if ms_logger.level == logging.NOTSET:
        ms_logger.setLevel(logging.WARNING)


def _tune(lowered: tvm.IRModule, target: tvm.target.Target, db, work_dir: Path, trials: int, log) -> None:
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    if not tasks:
        return
    # MetaSchedule logs every step to stdout (and to work_dir/logs); keep stdout for our own output
    # and show a progress bar on stderr instead. The log files keep everything.
    prepare_metaschedule_logging()
    # A population far beyond what the budget can measure only costs time (MetaSchedule's default of
    # 512 candidates takes minutes per kernel on a loaded machine for a handful of trials).
    population = max(32, min(512, 8 * trials))
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(work_dir), strategy=strategy, num_threads=1, seed=0)
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=BUILDER_TIMEOUT_SEC)
    runner = ms.runner.LocalRunner(timeout_sec=RUNNER_TIMEOUT_SEC)
    with tqdm(total=trials, desc="MetaSchedule", unit="trial", file=sys.stderr, disable=None) as bar:
        try:
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                num_trials_per_iter=min(64, trials), builder=builder, runner=runner, database=db,
                cost_model=ms.cost_model.XGBModel(num_tuning_cores=1, num_warmup_samples=min(100, trials)),
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   _TrialProgress(bar)])
        except Exception as err:
            raise CompileError(f"MetaSchedule tuning of the backbone failed: {err} "
                               f"(logs: {work_dir}/logs)") from None
        finally:
            runner.pool.shutdown()
    log(f"MetaSchedule: {trials} trials over {len(tasks)} kernels; records and logs in {work_dir}")
