"""Measured protected inference of whole strategies: the ground truth for calibration and the bench.

For each strategy: the MirrorNet is built from the model (untrained weights: latency does not depend
on them), exported as an artifact, compiled (``mirrornet compile``), packaged for the host TEE
simulator (``mirrornet package-ta --sim-only``) and run on images: the backbone on the Relax VM, the
CPM in the simulated TA. Each stage's time is its minimum over the images (what an idle core gives;
the same statistic as the kernel measurements) and ``total`` their sum. The backbone, which runs in
this thread, is timed by the thread's CPU time when that is less than the wall clock (another
process held the core meanwhile); the CPM by the TA's own clock; the transfer is the invoke's wall
time minus the CPM's.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import MirrorNetError
from ..util import read_json, write_json


@dataclass(frozen=True)
class ProtectedTiming:
    """Measured seconds per inference of one strategy (minimum over ``images`` runs)."""

    name: str
    backbone_s: float
    cpm_s: float
    transfer_s: float
    total_s: float
    images: int
    tee: str
    build_dir: str

    def to_dict(self) -> dict:
        return asdict(self)


def build_strategy(model, strategy, folder, target=None, progress: bool = False) -> Path:
    """Artifact + compile + simulator TA for ``strategy``; returns the build folder."""
    from ..compile import compile_artifact
    from ..frontend import load_model
    from ..mirror import MirrorNet, strip_softmax
    from ..tee.package import package_ta

    model = model if hasattr(model, "graph") and hasattr(model, "proto") else load_model(model)
    folder = Path(folder)
    art, build = folder / "artifact", folder / "build"
    if not (build / "manifest.json").is_file() or "ta" not in read_json(build / "manifest.json"):
        shutil.rmtree(folder, ignore_errors=True)
        art.mkdir(parents=True)
        net = MirrorNet(strip_softmax(model.graph()), strategy)
        net.eval()
        net.export_onnx(art / "combined.onnx", source="mirrornet_tvm.emulator (latency measurement)")
        strategy.save(art / "strategy.json")
        from .targets import target_dict

        compile_artifact(art, build, target=target_dict(target) if target is not None else None,
                         progress=progress)
        package_ta(build, sim_only=True)
    return build


def time_build(build_dir, images: np.ndarray, tee: str = "sim", warmup: int = 3) -> ProtectedTiming:
    """Run ``images`` one by one through backbone + TA and take each stage's minimum."""
    from ..tee.protected import Backbone
    from ..tee.session import TeeSession

    backbone = Backbone(build_dir)
    n = len(images)
    b_ns, c_ns, t_ns = (np.zeros(n, np.int64) for _ in range(3))
    with TeeSession(build_dir, tee=tee) as session:
        for i in range(min(warmup, n)):
            session.run(backbone.taps(images[i:i + 1]))
        for i in range(n):
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            row = backbone.taps(images[i:i + 1])
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            _, cpm = session.run(row)
            t2 = time.perf_counter_ns()
            # the backbone runs in this thread: its CPU time leaves out other processes' turns on the core
            b_ns[i], c_ns[i], t_ns[i] = min(t1 - t0, c1 - c0), cpm, max(t2 - t1 - cpm, 0)
    backbone_s, cpm_s, transfer_s = (float(a.min()) / 1e9 for a in (b_ns, c_ns, t_ns))
    return ProtectedTiming(name=Path(build_dir).parent.name, backbone_s=backbone_s, cpm_s=cpm_s,
                           transfer_s=transfer_s, total_s=backbone_s + cpm_s + transfer_s, images=n, tee=tee,
                           build_dir=str(build_dir))


def best_of(timings) -> ProtectedTiming:
    """Stage by stage, the minimum over several timings of one build."""
    timings = list(timings)
    first = timings[0]
    b, c, t = (min(getattr(x, f) for x in timings) for f in ("backbone_s", "cpm_s", "transfer_s"))
    return ProtectedTiming(name=first.name, backbone_s=b, cpm_s=c, transfer_s=t, total_s=b + c + t,
                           images=sum(x.images for x in timings), tee=first.tee, build_dir=first.build_dir)


def build_all(model, strategies, work_dir, target=None, progress: bool = True) -> list[Path]:
    """Build each strategy (kept in ``work_dir/<name>`` and reused by the next call)."""
    from tqdm import tqdm

    work_dir = Path(work_dir)
    builds = []
    bar = tqdm([getattr(s, "strategy", s) for s in strategies], desc="build strategies", unit="strategy",
               file=sys.stderr, disable=not progress)
    for strategy in bar:
        bar.set_postfix_str(strategy.name[:40])
        try:
            builds.append(build_strategy(model, strategy, work_dir / strategy.name, target=target))
        except MirrorNetError as err:
            raise MirrorNetError(f"building strategy {strategy.name} for a latency measurement failed: {err}") from err
    return builds


def time_rounds(builds, images: np.ndarray, rounds: int = 3, progress: bool = True) -> list[list[ProtectedTiming]]:
    """``rounds`` interleaved passes over all builds; result[r][i] is build i in round r.

    The machine's load drifts over minutes: interleaving exposes every build to the same quiet moments.
    """
    from tqdm import tqdm

    out = []
    with tqdm(total=rounds * len(builds), desc="protected runs", unit="run", file=sys.stderr,
              disable=not progress) as bar:
        for _ in range(rounds):
            row = []
            for build in builds:
                row.append(time_build(build, images))
                bar.update()
            out.append(row)
    return out


def measure_strategies(model, strategies, work_dir, images: np.ndarray, target=None, rounds: int = 3,
                       progress: bool = True, results_file=None) -> list[ProtectedTiming]:
    """Build and time each strategy; each stage's minimum over ``rounds`` interleaved rounds."""
    builds = build_all(model, strategies, work_dir, target, progress)
    per_round = time_rounds(builds, images, rounds, progress)
    out = [best_of(r[i] for r in per_round) for i in range(len(builds))]
    if results_file is not None:
        write_json(results_file, [t.to_dict() for t in out])
    return out
