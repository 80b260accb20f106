"""The evaluation fed back into strategy choice: keep the first strategy whose protection meets a floor.

:func:`first_secure`: give it the candidate strategies in the order they should be tried and a function that
protects the model with one of them (returning an artifact folder, a :class:`~.victim.Victim`, or a
``(MirrorNet, original GraphNet)`` pair); each result is attacked (:func:`~.evaluate.security_check`) and the
first that meets the :class:`SecurityFloor` is returned with the reports of every strategy tried.
``mirrornet protect --security-floor 1.05`` (:func:`mirrornet_tvm.protect.protect` with ``security_floor``)
runs the same search over the ``--auto`` rule's candidates, writing each verdict into the artifact's metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StrategyError
from .evaluate import DEFAULT_LRS, security_check
from .report import SECURE_RATIO, SecurityReport
from .thief_data import budget_label


@dataclass(frozen=True)
class SecurityFloor:
    """What "secure enough" means for a search: ratio to black-box at these budgets, optionally the gap."""

    ratio: float = SECURE_RATIO
    budgets: tuple = (0.001, 0.01)
    max_gap_closed: float | None = None
    seeds: tuple = (0,)
    lrs: tuple = DEFAULT_LRS
    epochs: int | None = None
    test_subset: int | None = None

    def check(self, victim_or_artifact, dataset: str, *, progress: bool = True,
              baseline_cache=None) -> SecurityReport:
        return security_check(victim_or_artifact, dataset, budgets=self.budgets, seeds=self.seeds,
                              floor=self.ratio, lrs=self.lrs, epochs=self.epochs, test_subset=self.test_subset,
                              progress=progress, baseline_cache=baseline_cache)

    def met_by(self, report: SecurityReport) -> bool:
        return report.meets(self.ratio, self.budgets, self.max_gap_closed)

    def failures(self, report: SecurityReport) -> list:
        return report.failures(self.ratio, self.budgets, self.max_gap_closed)

    def describe(self) -> str:
        gap = f", at most {self.max_gap_closed:.0%} of the gap closed" if self.max_gap_closed is not None else ""
        return (f"every attack on the stolen backbone <= {self.ratio:g}x black-box at "
                f"{', '.join(budget_label(b) for b in self.budgets)}{gap}")


@dataclass(frozen=True)
class SecureChoice:
    """The strategy kept, its protected result and report, and every (strategy, report) tried."""

    strategy: object
    result: object
    report: SecurityReport
    tried: tuple = field(default=(), hash=False)


def first_secure(candidates, protect_one, floor: SecurityFloor, dataset: str, *, progress: bool = True,
                 baseline_cache=None, on_checked=None) -> SecureChoice:
    """Protect with each candidate in turn until one meets ``floor``; StrategyError if none does.

    ``on_checked(choice)``, if given, is called after each candidate's attack with a :class:`SecureChoice`
    of that candidate (its ``tried`` holds every candidate so far), met or not: where a caller records
    each verdict as it comes.
    """
    tried = []
    for strategy in candidates:
        result = protect_one(strategy)
        report = floor.check(result, dataset, progress=progress, baseline_cache=baseline_cache)
        tried.append((strategy, report))
        if on_checked is not None:
            on_checked(SecureChoice(strategy, result, report, tuple(tried)))
        if floor.met_by(report):
            return SecureChoice(strategy, result, report, tuple(tried))
    if not tried:
        raise StrategyError("no candidate strategy to try against the security floor")
    lines = "; ".join(f"{getattr(s, 'name', s)}: {floor.failures(r)[0]}" for s, r in tried)
    raise StrategyError(f"none of the {len(tried)} strategies tried meets the security floor ({floor.describe()}): "
                        f"{lines}. Try shallower taps with a CPM that completes the network, or the adversarial "
                        "degradation objective")
