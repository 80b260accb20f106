"""Measurement harness: compile TIR kernels and time them on a device.

Kernels are built for the target either by TVM's LLVM backend (flavour ``"tvm"``, what the normal
world runs) or by TVM's C backend compiled with gcc at a TEE's optimisation level (flavours
``"c-O2"``/``"c-Os"``: single-threaded, like the CPM's generated C in the simulator / in OP-TEE).
The library is uploaded to a :class:`~.rpc.Device` (this process or an RPC server, cross-compiled
for a board) and timed with ``time_evaluator``.

Results are appended, one JSON object a line, to a records file. A run skips kernels already in
the file, so an interrupted measurement resumes where it stopped; a torn last line is ignored.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tvm
from tqdm import tqdm

from ..errors import CompileError, UsageError
from .rpc import LOCAL, Device
from .targets import compiler_for, resolve_target, target_key
from .workloads import Kernel

FORMAT = "mirrornet-measurements/2"
_READABLE = ("mirrornet-measurements/1", FORMAT)  # /1 had no CPU-time timings
#: How a kernel is built for timing: ``"tvm"`` is TVM's LLVM code (the normal world); the ``"c-*"``
#: flavours are TVM's C code compiled by gcc single-threaded with the flags of a TEE environment:
#: ``"c-O2"`` as the host TEE simulator builds its TA, ``"c-Os"`` as the OP-TEE TA dev kit does.
FLAVOURS = ("tvm", "c-O2", "c-Os")
C_FLAGS = {"c-O2": ("-O2", "-fno-math-errno"), "c-Os": ("-Os", "-fno-math-errno")}
#: The C flavour that matches each TEE a CPM runs in.
TEE_FLAVOUR = {"sim": "c-O2", "optee": "c-Os", "qemu": "c-Os"}


@dataclass(frozen=True)
class Measurement:
    """One timed kernel. ``seconds`` is the best of the timings (noise only ever adds time):
    wall-clock ``results`` from ``time_evaluator`` and, on this machine, thread CPU ``cpu_results``."""

    key: str
    kernel: str
    name: str
    flavour: str
    target: str
    device: str
    seconds: float | None
    results: tuple[float, ...]
    flops: float
    arg_bytes: int
    tir: str
    measured_at: str
    error: str | None = None
    cpu_results: tuple[float, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        d["results"] = list(self.results)
        d["cpu_results"] = list(self.cpu_results)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Measurement":
        d = dict(d)
        d["results"] = tuple(d.get("results", ()))
        d["cpu_results"] = tuple(d.get("cpu_results", ()))
        d.setdefault("error", None)
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None and self.seconds > 0


def record_key(kernel_key: str, flavour: str, target) -> str:
    import hashlib

    return hashlib.sha256(f"{kernel_key}|{flavour}|{target_key(target)}".encode()).hexdigest()[:24]


class RecordStore:
    """A JSON-lines file of :class:`Measurement` s, appended to one whole line at a time."""

    def __init__(self, path):
        self.path = Path(path)

    def load(self) -> dict[str, Measurement]:
        out: dict[str, Measurement] = {}
        if not self.path.exists():
            return out
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    print(f"[harness] {self.path}:{lineno}: ignoring a torn line (interrupted write)",
                          file=sys.stderr)
                    continue
                if obj.get("format"):
                    if obj["format"] not in _READABLE:
                        raise UsageError(f"{self.path} holds {obj['format']!r} records, expected {FORMAT!r}")
                    continue
                m = Measurement.from_json(obj)
                out[m.key] = m
        return out

    def append(self, measurement: Measurement) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        lines = []
        if new:
            lines.append(json.dumps({"format": FORMAT, "generated_by": "mirrornet_tvm.emulator.harness",
                                     "note": "one kernel timing per line; see Measurement"}))
        lines.append(json.dumps(measurement.to_json()))
        data = ("\n".join(lines) + "\n").encode()
        # One write() of whole lines on an O_APPEND descriptor: an interruption leaves at most a torn
        # last line, which load() skips.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class TimingConfig:
    """How to time: best of ``repeat`` runs, each looping until ``min_repeat_ms`` has passed.

    Many short runs and their minimum: on a shared machine a run longer than a scheduler slice is
    often preempted, and the minimum over short runs is what the kernel costs on an idle core
    (measured here: spread between repeated measurements under load fell from ~2x to <1%).
    """

    repeat: int = 15
    min_repeat_ms: int = 1
    number: int = 1

    def __post_init__(self):
        if self.repeat < 1 or self.number < 1 or self.min_repeat_ms < 0:
            raise UsageError("timing needs repeat >= 1, number >= 1 and min_repeat_ms >= 0")


def _fcompile(target, flavour):
    from tvm.support import cc

    compiler = compiler_for(target)
    options = list(C_FLAGS.get(flavour, ("-O2",)))
    fcompile = cc.cross_compiler(compiler, options=options)
    return fcompile


def build_kernel(kernel: Kernel, target, flavour: str, out_dir: Path) -> Path:
    """Compile one kernel into a shared library in ``out_dir``; return its path."""
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown flavour {flavour!r}; use one of {', '.join(FLAVOURS)}")
    target = resolve_target(target)
    build_target = target if flavour == "tvm" else tvm.target.Target({"kind": "c"})
    path = out_dir / f"k_{kernel.key}_{flavour}.so"
    try:
        exe = tvm.compile(kernel.module(), target=build_target)
        exe.export_library(str(path), fcompile=_fcompile(target, flavour))
    except Exception as err:
        raise CompileError(f"building kernel {kernel.name} ({kernel.key}) as {flavour} failed: {err}") from err
    return path


def _time_library(session, path: Path, kernel: Kernel, timing: TimingConfig) -> list[float]:
    """Wall-clock timings by ``time_evaluator`` on the session's device."""
    session.upload(str(path))
    lib = session.load_module(path.name)
    dev = session.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in kernel.random_args()]
    evaluator = lib.time_evaluator("main", dev, number=timing.number, repeat=timing.repeat,
                                   min_repeat_ms=timing.min_repeat_ms)
    return [float(r) for r in evaluator(*args).results]


def _time_cpu_local(path: Path, kernel: Kernel, timing: TimingConfig) -> list[float]:
    """CPU time of this thread per call, for a kernel run in this process.

    On a shared machine a long kernel is rarely left alone for its whole run, so its wall-clock
    minimum overstates what an idle core takes; the thread's CPU time does not count the time other
    processes held the core. (It does count the Python call, ~1 us, which is why the wall-clock
    minimum of ``time_evaluator`` is kept as well and the smaller of the two is used.)
    """
    lib = tvm.runtime.load_module(str(path))
    func = lib["main"]
    args = [tvm.runtime.tensor(a) for a in kernel.random_args()]
    func(*args)
    number, budget_ns = 1, max(timing.min_repeat_ms, 1) * 1_000_000
    while True:
        start = time.thread_time_ns()
        for _ in range(number):
            func(*args)
        spent = time.thread_time_ns() - start
        if spent >= budget_ns or number >= 1 << 16:
            break
        number = min(1 << 16, max(number * 2, int(number * budget_ns / max(spent, 1)) + 1))
    out = []
    for _ in range(timing.repeat):
        start = time.thread_time_ns()
        for _ in range(number):
            func(*args)
        out.append((time.thread_time_ns() - start) / number / 1e9)
    return out


def measure(kernels, target=None, device: Device = LOCAL, records=None, flavour: str = "tvm",
            timing: TimingConfig = TimingConfig(), progress: bool = True) -> list[Measurement]:
    """Time each kernel (skipping those already in ``records``); return the measurements, in order.

    ``records`` is a path to a JSON-lines file (created if missing) or ``None`` to keep nothing.
    """
    target = resolve_target(target)
    store = RecordStore(records) if records is not None else None
    known = store.load() if store else {}
    todo, result_keys, queued = [], [], set()
    for k in kernels:
        rk = record_key(k.key, flavour, target)
        result_keys.append(rk)
        if rk not in known and rk not in queued:
            queued.add(rk)
            todo.append(k)
    tkey = target_key(target)
    if todo:
        session = device.connect()
        with tempfile.TemporaryDirectory(prefix="mirrornet-measure-") as tmp:
            bar = tqdm(todo, desc=f"measure {flavour} on {device.name}", unit="kernel",
                       file=sys.stderr, disable=not progress)
            for k in bar:
                bar.set_postfix_str(k.name[:30])
                error, results, cpu = None, [], []
                try:
                    path = build_kernel(k, target, flavour, Path(tmp))
                    results = _time_library(session, path, k, timing)
                    if device.tracker is None:
                        cpu = _time_cpu_local(path, k, timing)
                except CompileError as err:
                    error = str(err)
                except Exception as err:  # a remote failure on one kernel must not lose the others
                    error = f"running {k.name} on {device.name} failed: {err}"
                m = Measurement(
                    key=record_key(k.key, flavour, target), kernel=k.key, name=k.name, flavour=flavour,
                    target=tkey, device=device.name, seconds=min(results + cpu) if results else None,
                    results=tuple(results), cpu_results=tuple(cpu), flops=k.flops, arg_bytes=k.arg_bytes, tir=k.script,
                    measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"), error=error)
                known[m.key] = m
                if store:
                    store.append(m)
            bar.close()
    return [known[rk] for rk in result_keys]


def usable(measurements) -> list[Measurement]:
    """Measurements that succeeded (errors and zero timings dropped)."""
    return [m for m in measurements if m.ok and math.isfinite(m.seconds)]
