"""Per-strategy estimates, selection under a budget and floors, and the Pareto front.

    emulator = Emulator.load("out/tuning")                 # cost model (+ calibration) from `mirrornet tune`
    estimates = emulate(strategies, model, emulator)       # one Estimate per strategy, in order
    best = select(estimates, budget_bytes=1 << 20)         # least predicted latency that fits
    front = pareto_front(estimates)                        # latency vs secure memory (vs security)

An :class:`Estimate` is plain data: predicted backbone latency (normal world, TVM), CPM latency
(single-threaded C in the TEE), transfer (world switches and bytes), their total, and the CPM's
secure memory (weights + activation arena + tap and logit buffers).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import StrategyError, UsageError
from .calibration import IDENTITY, Calibration
from .cost_model import CostModel
from .harness import TEE_FLAVOUR
from .targets import resolve_target, target_dict
from .workloads import as_kernels

COST_MODEL_FILE = "cost_model.json"
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Estimate:
    """What the emulator predicts for one strategy (seconds, bytes)."""

    name: str
    strategy: dict
    backbone_s: float
    cpm_s: float
    transfer_s: float
    total_s: float
    invokes: int
    tee_bytes: int
    secure_bytes: int
    secure: dict
    backbone_kernels: int
    cpm_kernels: int
    tuned: bool
    flop_share: float | None = None
    accuracy: float | None = None
    security: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Floors:
    """Lower bounds a selected strategy must meet; ``None`` means no bound."""

    min_accuracy: float | None = None
    min_security: float | None = None


class Emulator:
    """Predicts strategy latencies for one target from a cost model and a calibration."""

    def __init__(self, cost_model: CostModel, target=None, calibration: Calibration = IDENTITY,
                 database=None, folder=None):
        self.cost_model = cost_model
        self.folder = Path(folder) if folder is not None else None  # where it was loaded from, if anywhere
        self.target = resolve_target(target if target is not None else cost_model.target_object())
        cost_model.check_target(self.target)
        self.calibration = calibration
        self.database = database
        self.cpm_flavour = TEE_FLAVOUR.get(calibration.tee, "c-O2")
        if self.cpm_flavour not in cost_model.flavours:
            fallback = [f for f in cost_model.flavours if f.startswith("c-")]
            if not fallback:
                raise UsageError(f"the cost model has no C regressor ({', '.join(cost_model.flavours)}): the "
                                 "CPM runs as C in the TEE; measure C kernels (`mirrornet tune`) and train again")
            self.cpm_flavour = fallback[0]
        self._seconds: dict[tuple[str, str], float] = {}
        self._models: dict[int, object] = {}

    @classmethod
    def load(cls, folder, target=None, database=None) -> "Emulator":
        """The cost model and (if present) calibration that `mirrornet tune` wrote to ``folder``."""
        folder = Path(folder)
        model = CostModel.load(folder / COST_MODEL_FILE)
        cal = Calibration.load(folder / CALIBRATION_FILE) if (folder / CALIBRATION_FILE).is_file() else IDENTITY
        return cls(model, target=target, calibration=cal, database=database, folder=folder)

    # -- kernels -----------------------------------------------------------------------------------
    def kernel_seconds(self, kernels, flavour: str = "tvm") -> np.ndarray:
        """Predicted seconds per call of each kernel (memoised by kernel key)."""
        kernels = list(kernels)
        todo = {}
        for k in kernels:
            if (k.key, flavour) not in self._seconds:
                todo.setdefault(k.key, k)
        if todo:
            pred = self.cost_model.predict(list(todo.values()), self.target, flavour)
            for key, s in zip(todo, pred):
                self._seconds[(key, flavour)] = float(s)
        return np.array([self._seconds[(k.key, flavour)] for k in kernels])

    def kernels_total(self, kernels, flavour: str = "tvm") -> float:
        kernels = list(kernels)
        if not kernels:
            return 0.0
        return float(np.dot(self.kernel_seconds(kernels, flavour), [k.calls for k in kernels]))

    def predict(self, obj, function: str = "main", flavour: str = "tvm") -> float:
        """Predicted seconds to run a Relax function / PrimFuncs / kernels once (sum over its kernels)."""
        return self.kernels_total(as_kernels(obj, function=function, target=self.target,
                                             database=self.database), flavour)

    # -- strategies ----------------------------------------------------------------------------------
    def model_kernels(self, model):
        from .strategy_kernels import ModelKernels

        if hasattr(model, "backbone") and hasattr(model, "cpm") and hasattr(model, "of"):
            return model
        key = id(model)
        if key not in self._models:
            self._models[key] = ModelKernels(model, self.target, self.database)
        return self._models[key]

    def estimate(self, strategy, model) -> Estimate:
        """The estimate for one strategy (a ``Strategy`` or a ``CpmCost``) of ``model``."""
        return self.emulate([strategy], model, progress=False)[0]

    def emulate(self, strategies, model, progress: bool = True) -> list[Estimate]:
        """One :class:`Estimate` per strategy (``Strategy`` or ``CpmCost`` items), in order."""
        from tqdm import tqdm

        mk = self.model_kernels(model)
        items = list(strategies)
        parts = []
        for item in tqdm(items, desc="emulate", unit="strategy", file=sys.stderr, disable=not progress,
                         leave=False):
            strategy = getattr(item, "strategy", item)
            parts.append((item, strategy, mk.of(strategy)))
        # one batched prediction for every distinct kernel
        self.kernel_seconds({k.key: k for _, _, sk in parts for k in sk.backbone}.values(), "tvm")
        self.kernel_seconds({k.key: k for _, _, sk in parts for k in sk.cpm}.values(), self.cpm_flavour)
        cal = self.calibration
        tuned = self.database is not None
        out = []
        for item, strategy, sk in parts:
            b_raw = self.kernels_total(sk.backbone, "tvm")
            c_raw = self.kernels_total(sk.cpm, self.cpm_flavour)
            b_calls = sum(k.calls for k in sk.backbone)
            c_calls = sum(k.calls for k in sk.cpm)
            backbone = cal.backbone(b_raw, b_calls, sk.backbone_out_bytes)
            cpm = cal.cpm(c_raw, c_calls)
            transfer = cal.transfer(sk.tee_in_bytes, sk.tee_out_bytes)
            mem = sk.secure_memory
            share = getattr(item, "flop_share", None)
            out.append(Estimate(
                name=strategy.name, strategy=strategy.to_dict(), backbone_s=backbone, cpm_s=cpm,
                transfer_s=transfer, total_s=backbone + cpm + transfer,
                invokes=cal.transfer.invokes(sk.tee_in_bytes), tee_bytes=sk.tee_in_bytes + sk.tee_out_bytes,
                secure_bytes=mem.total, secure=mem.to_dict(), backbone_kernels=b_calls, cpm_kernels=c_calls,
                tuned=tuned, flop_share=float(share) if share is not None else None))
        return out

    def describe(self) -> dict:
        """What the estimates rest on (for reports)."""
        return {"target": target_dict(self.target), "cost_model_flavours": list(self.cost_model.flavours),
                "cpm_flavour": self.cpm_flavour, "calibration": self.calibration.source,
                "tuned": self.database is not None}


def emulate(strategies, model, emulator: Emulator, progress: bool = True) -> list[Estimate]:
    """Estimates for ``strategies`` of ``model`` (see :meth:`Emulator.emulate`)."""
    return emulator.emulate(strategies, model, progress=progress)


def attach_metrics(estimates, metrics: dict) -> list[Estimate]:
    """Attach measured ``accuracy``/``security`` per strategy name (e.g. from protected artifacts)."""
    out = []
    for e in estimates:
        m = metrics.get(e.name, {})
        out.append(replace(e, accuracy=m.get("accuracy", e.accuracy), security=m.get("security", e.security)))
    return out


def feasible(estimates, budget_bytes: int | None = None, floors: Floors = Floors()) -> list[Estimate]:
    """Estimates within the secure-memory budget and meeting the floors (unknown values fail a floor)."""
    out = []
    for e in estimates:
        if budget_bytes is not None and e.secure_bytes > budget_bytes:
            continue
        if floors.min_accuracy is not None and (e.accuracy is None or e.accuracy < floors.min_accuracy):
            continue
        if floors.min_security is not None and (e.security is None or e.security < floors.min_security):
            continue
        out.append(e)
    return out


def rank(estimates, budget_bytes: int | None = None, floors: Floors = Floors()) -> list[Estimate]:
    """Feasible estimates, least predicted latency first (ties: less secure memory)."""
    return sorted(feasible(estimates, budget_bytes, floors), key=lambda e: (e.total_s, e.secure_bytes, e.name))


def select(estimates, budget_bytes: int | None = None, floors: Floors = Floors()) -> Estimate:
    """The strategy with the least predicted latency that fits the budget and meets the floors."""
    estimates = list(estimates)
    ranked = rank(estimates, budget_bytes, floors)
    if not ranked:
        bits = []
        if budget_bytes is not None:
            bits.append(f"{budget_bytes} bytes of secure memory")
        if floors.min_accuracy is not None:
            bits.append(f"accuracy >= {floors.min_accuracy}")
        if floors.min_security is not None:
            bits.append(f"security >= {floors.min_security}")
        raise StrategyError(f"none of {len(estimates)} strategies meets {' and '.join(bits) or 'the constraints'}; "
                            "raise the budget or lower the floors")
    return ranked[0]


_OBJECTIVES = (("total_s", -1), ("secure_bytes", -1), ("security", 1), ("accuracy", 1))


def pareto_front(estimates, objectives=None) -> list[Estimate]:
    """Estimates no other beats in every objective (default: latency and secure memory, lower is
    better; security and accuracy, higher is better, when every estimate has them). Sorted by latency."""
    estimates = list(estimates)
    if objectives is None:
        objectives = [(f, s) for f, s in _OBJECTIVES
                      if estimates and all(getattr(e, f) is not None for e in estimates)]
    if not objectives:
        raise UsageError("no objective to build a Pareto front on")
    pts = np.array([[s * float(getattr(e, f)) for f, s in objectives] for e in estimates])  # higher = better
    front = []
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts >= p, axis=1) & np.any(pts > p, axis=1))
        if not dominated:
            front.append(estimates[i])
    return sorted(front, key=lambda e: (e.total_s, e.secure_bytes))


def table(estimates, limit: int | None = None) -> str:
    """A text table of estimates (as ``mirrornet strategies`` prints them)."""
    rows = list(estimates)[:limit] if limit else list(estimates)
    if not rows:
        return "(no strategies)"
    w = max(len("strategy"), *(len(e.name) for e in rows))
    lines = [f"{'strategy':<{w}}  {'total ms':>9}  {'backbone':>9}  {'CPM (TEE)':>9}  {'transfer':>9}  "
             f"{'invokes':>7}  {'secure KiB':>10}"]
    for e in rows:
        lines.append(f"{e.name:<{w}}  {e.total_s * 1e3:>9.3f}  {e.backbone_s * 1e3:>9.3f}  {e.cpm_s * 1e3:>9.3f}  "
                     f"{e.transfer_s * 1e3:>9.3f}  {e.invokes:>7d}  {e.secure_bytes / 1024:>10.1f}")
    return "\n".join(lines)


def rank_strategies(model, costs, emulator: Emulator, budget_bytes: int | None = None,
                    floors: Floors = Floors(), progress: bool = True) -> list[Estimate]:
    """For ``mirrornet strategies``: emulate ``costs`` (from ``generate_strategies``) and rank them."""
    return rank(emulator.emulate(costs, model, progress=progress), budget_bytes, floors)
