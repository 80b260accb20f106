"""Choosing a strategy with the emulator: the rule's floors first, then the least predicted latency.

    emulator = load_tuning("out/lenet-tuning")                  # what `mirrornet tune` wrote
    ranking = rank_space(model, costs, emulator, max_flop_share=0.05)
    ranking.selected, ranking.front, ranking.estimates          # pick, Pareto front, all (fastest first)

The floors stand in for accuracy and theft resistance, which the emulator cannot predict: a strategy is
eligible when it is among the candidates the ``--auto`` rule chooses from
(:func:`mirrornet_tvm.strategy.auto_pool`: single tap, CPM completing the network, width and FLOP share
bounds, past the input's full resolution when such a tap qualifies), so the floors follow whatever that
rule says. Among the eligible strategies within the secure-memory budget the one with the least
predicted latency is selected.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, StrategyError
from .emulate import CALIBRATION_FILE, COST_MODEL_FILE, Emulator, Estimate, pareto_front, rank

TUNE_REPORT = "tune_report.json"
DATABASE_RECORDS = ("database", "database_tuning_record.json")
LATENCY_VS_MEMORY = (("total_s", -1), ("secure_bytes", -1))
FLOORS_NOTE = ("single tap whose CPM completes the network, at least 1/{width} wide (down to 1/16 when none that "
               "wide fits), at most {share:.0%} of the "
               "model's FLOPs, past the input's full resolution when such a tap qualifies, {degradation} "
               "degradation")


def load_tuning(folder, target=None) -> Emulator:
    """The emulator of a `mirrornet tune` output folder: cost model, calibration and tuning database."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"tuning folder {folder} does not exist; make it with "
                            f"`mirrornet tune MODEL -o {folder}`")
    if not (folder / COST_MODEL_FILE).is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ArtifactError(f"{folder} has no {COST_MODEL_FILE} (it holds: {present}); it is not what "
                            f"`mirrornet tune` writes: run `mirrornet tune MODEL -o {folder}`")
    database = None
    if folder.joinpath(*DATABASE_RECORDS).is_file():
        from ..build import open_database

        database = open_database(folder / DATABASE_RECORDS[0])
    return Emulator.load(folder, target=target, database=database)


def tuning_summary(emulator: Emulator) -> dict:
    """What a selection rests on, for reports: the files, target, calibration and the tuned source."""
    folder = emulator.folder
    out = dict(emulator.describe())
    if folder is not None:
        out["folder"] = str(folder)
        out["cost_model"] = str(folder / COST_MODEL_FILE)
        out["calibration_file"] = str(folder / CALIBRATION_FILE) if (folder / CALIBRATION_FILE).is_file() else None
        report = folder / TUNE_REPORT
        if report.is_file():
            try:
                out["tuned_source"] = json.loads(report.read_text()).get("source")
            except ValueError:
                out["tuned_source"] = None
    return out


def rule_pool(costs, *, max_flop_share: float, degradation: str = "uniform") -> list:
    """The strategies (``CpmCost`` items) the ``--auto`` rule chooses among: its floors."""
    from ..strategy import auto_pool

    return auto_pool(costs, max_flop_share=max_flop_share, degradation=degradation)


def _rule_min_width() -> float:
    """The least CPM width the ``--auto`` rule accepts (its default), for the floors' description."""
    import inspect

    from ..strategy import auto_select

    return float(inspect.signature(auto_select).parameters["min_width"].default)


@dataclass(frozen=True)
class Ranking:
    """Every strategy's estimate (least predicted latency first), the front, the floors and the pick."""

    estimates: tuple[Estimate, ...]
    front: tuple[Estimate, ...]        # Pareto front: predicted latency vs secure memory
    eligible: tuple[str, ...]          # names meeting the floors
    selected: Estimate | None          # least predicted latency among the eligible (None: none eligible)
    budget_bytes: int | None
    floors: str
    emulator: dict
    seconds: float                     # time spent emulating

    def on_front(self, estimate: Estimate) -> bool:
        return any(e.name == estimate.name for e in self.front)

    def to_dict(self) -> dict:
        return {"emulator": self.emulator, "budget_bytes": self.budget_bytes, "floors": self.floors,
                "eligible": list(self.eligible), "selected": self.selected.name if self.selected else None,
                "pareto_front": [e.name for e in self.front], "emulation_seconds": round(self.seconds, 3),
                "estimates": [e.to_dict() for e in self.estimates]}


def rank_space(model, costs, emulator: Emulator, *, budget_bytes: int | None = None, max_flop_share: float,
               degradation: str = "uniform", progress: bool = True) -> Ranking:
    """Emulate ``costs`` (from ``generate_strategies``) of ``model``, rank them and select under the floors."""
    costs = list(costs)
    if any(getattr(c, "flop_share", None) is None for c in costs):
        raise StrategyError("rank_space needs CpmCost items (from generate_strategies), not bare strategies: "
                            "the floors are judged on each CPM's FLOP share")
    start = time.perf_counter()
    estimates = emulator.emulate(costs, model, progress=progress)
    seconds = time.perf_counter() - start
    ranked = rank(estimates, budget_bytes)
    eligible = {c.strategy.name for c in rule_pool(costs, max_flop_share=max_flop_share, degradation=degradation)}
    pool = [e for e in ranked if e.name in eligible]
    front = pareto_front(ranked, LATENCY_VS_MEMORY) if ranked else []
    return Ranking(estimates=tuple(ranked), front=tuple(front), eligible=tuple(e.name for e in pool),
                   selected=pool[0] if pool else None, budget_bytes=budget_bytes,
                   floors=FLOORS_NOTE.format(width=round(1 / _rule_min_width()), share=max_flop_share,
                                             degradation=degradation),
                   emulator=tuning_summary(emulator), seconds=seconds)


def selection_note(ranking: Ranking) -> str:
    """How the strategy was chosen, in one sentence (for ``metrics.json`` and the printed report)."""
    e = ranking.selected
    if e is None:
        raise StrategyError(f"none of the {len(ranking.estimates)} strategies within the budget meets the floors "
                            f"({ranking.floors}); raise --budget-kib or give --strategy")
    source = ranking.emulator.get("cost_model") or "the given cost model"
    cal = "calibrated" if ranking.emulator.get("calibration_file") else "uncalibrated"
    return (f"auto: chosen by the Performance Emulator ({source}, {cal}): least predicted latency "
            f"{e.total_s * 1e3:.3f} ms (backbone {e.backbone_s * 1e3:.3f}, CPM in the TEE {e.cpm_s * 1e3:.3f}, "
            f"transfer {e.transfer_s * 1e3:.3f}) among {len(ranking.eligible)} strategies meeting the floors "
            f"({ranking.floors}) within the secure-memory budget")
