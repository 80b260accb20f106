"""The evaluation's figures: every run, the per-budget summary against the black-box baseline, the verdict.

Summary of one attack at one budget, over the seeds that ran it:

``accuracy``     mean and standard deviation (ddof 1) of its test accuracy
``ratio``        mean accuracy / mean black-box accuracy (the spread is that of the per-seed ratios)
``gap_closed``   (mean attack - mean black-box) / (mean white-box - mean black-box): the share of the
                 advantage that stealing gives the thief (0: none, 1: as good as stealing the unprotected
                 model). Undefined (None) when white-box is less than :data:`MIN_GAP` above black-box.
``secure``       ratio <= floor (the 1.05x rule of TEESlice), for the attacks on the stolen backbone

Controls (``control:...``) are reported like attacks but never judged. Illegal use (the backbone alone,
no training) takes no budget: its accuracy is compared with the
black-box baseline of each budget. A budget is secure when every attack on the stolen backbone is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .attacks import BLACKBOX, CONTROL_ORIGINAL, CONTROL_PIXELS, CONTROL_RANDOM, ILLEGAL, PROBE_PREFIX, STEALING, WHITEBOX
from .thief_data import budget_label

SECURE_RATIO = 1.05
MIN_GAP = 0.005          # white-box must beat black-box by half a point for a gap to be measured


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget and seed, scored on the test split."""

    attack: str
    budget: float
    samples: int
    seed: int
    accuracy: float
    lr: float | None = None
    val_accuracy: dict = field(default_factory=dict, hash=False)   # str(lr) -> held-out accuracy
    epochs: int | None = None
    seconds: float = 0.0
    retrained: bool | None = None   # False: the retrain on the whole budget fell below the validated model,
                                    # which was kept (mirrornet_tvm.attack.attacks); None: not recorded

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SummaryRow:
    budget: float
    samples: int
    attack: str
    seeds: int
    accuracy: float
    accuracy_std: float
    ratio: float | None
    ratio_std: float | None
    gap_closed: float | None
    gap_closed_std: float | None
    secure: bool | None           # None for the baselines

    def to_dict(self) -> dict:
        return asdict(self)


def is_stealing(attack: str) -> bool:
    """Attacks that use the stolen backbone (judged by the rule); baselines are not."""
    return attack in (STEALING, ILLEGAL) or attack.startswith(PROBE_PREFIX)


def _std(values) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _attack_order(name: str) -> tuple:
    order = {ILLEGAL: 0, STEALING: 1, CONTROL_PIXELS: 3.5, BLACKBOX: 4, WHITEBOX: 5}
    if name.startswith(CONTROL_RANDOM):
        return (3, name[len(CONTROL_RANDOM):], 0)
    if name.startswith(CONTROL_ORIGINAL):
        return (3, name[len(CONTROL_ORIGINAL):], 1)
    return (order.get(name, 2), name, 0)


@dataclass(frozen=True)
class SecurityReport:
    """Runs of one evaluation plus what they were run on; summaries and verdicts are derived."""

    runs: tuple
    illegal: float | None = None              # backbone alone on the test split
    floor: float = SECURE_RATIO
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    # -- derived figures -----------------------------------------------------------------------
    def budgets(self) -> list:
        return sorted({r.budget for r in self.runs})

    def attacks(self) -> list:
        names = {r.attack for r in self.runs}
        if self.illegal is not None:
            names.add(ILLEGAL)
        return sorted(names, key=_attack_order)

    def _by_seed(self, attack: str, budget: float) -> dict:
        if attack == ILLEGAL:
            seeds = {r.seed for r in self.runs if r.budget == budget}
            return {s: self.illegal for s in seeds} if self.illegal is not None else {}
        return {r.seed: r.accuracy for r in self.runs if r.attack == attack and r.budget == budget}

    def samples(self, budget: float) -> int:
        return next(r.samples for r in self.runs if r.budget == budget)

    def row(self, attack: str, budget: float) -> SummaryRow | None:
        acc = self._by_seed(attack, budget)
        if not acc:
            return None
        bb = self._by_seed(BLACKBOX, budget)
        wb = self._by_seed(WHITEBOX, budget)
        seeds = sorted(acc)
        a = np.array([acc[s] for s in seeds])
        ratio = ratio_std = gap = gap_std = None
        both = [s for s in seeds if s in bb]
        if both and attack != BLACKBOX:
            mean_bb = float(np.mean([bb[s] for s in both]))
            mean_a = float(np.mean([acc[s] for s in both]))
            ratio = mean_a / mean_bb if mean_bb > 0 else math.inf
            ratio_std = _std([acc[s] / bb[s] if bb[s] > 0 else math.inf for s in both])
            all3 = [s for s in both if s in wb]
            if all3 and attack != WHITEBOX:
                mean_wb = float(np.mean([wb[s] for s in all3]))
                mean_b3 = float(np.mean([bb[s] for s in all3]))
                mean_a3 = float(np.mean([acc[s] for s in all3]))
                gap = gap_closed(mean_a3, mean_b3, mean_wb)
                gap_std = _std([_nan_if_none(gap_closed(acc[s], bb[s], wb[s])) for s in all3])
        secure = (ratio <= self.floor) if (ratio is not None and is_stealing(attack)) else None
        return SummaryRow(budget, self.samples(budget), attack, len(seeds), float(a.mean()),
                          _std(a) or 0.0, ratio, ratio_std, gap, gap_std, secure)

    def summary(self) -> list:
        rows = []
        for b in self.budgets():
            for name in self.attacks():
                r = self.row(name, b)
                if r is not None:
                    rows.append(r)
        return rows

    def worst(self, budget: float) -> SummaryRow | None:
        """The attack on the stolen backbone with the highest ratio to black-box at ``budget``."""
        rows = [r for r in (self.row(a, budget) for a in self.attacks() if is_stealing(a))
                if r is not None and r.ratio is not None]
        return max(rows, key=lambda r: r.ratio) if rows else None

    def max_gap_closed(self, budget: float) -> float | None:
        gaps = [r.gap_closed for r in (self.row(a, budget) for a in self.attacks() if is_stealing(a))
                if r is not None and r.gap_closed is not None]
        return max(gaps) if gaps else None

    def failures(self, floor: float | None = None, budgets=None, max_gap_closed: float | None = None) -> list:
        """Why the evaluation misses the floor (one sentence per failed budget); empty when it meets it."""
        floor = self.floor if floor is None else floor
        out = []
        chosen = self.budgets() if budgets is None else [b for b in self.budgets() if _in(b, budgets)]
        if budgets is not None and len(chosen) < len(list(budgets)):
            have = ", ".join(budget_label(b) for b in self.budgets())
            out.append(f"budgets {', '.join(budget_label(b) for b in budgets)} were asked for but only {have} ran")
        for b in chosen:
            w = self.worst(b)
            if w is None:
                out.append(f"budget {budget_label(b)}: no attack could be compared with the black-box baseline")
                continue
            if w.ratio > floor:
                out.append(f"budget {budget_label(b)} ({w.samples} samples): {w.attack} reaches {w.accuracy:.2%}, "
                           f"{w.ratio:.3f}x black-box (floor {floor:g}x)")
            if max_gap_closed is not None:
                g = self.max_gap_closed(b)
                if g is not None and g > max_gap_closed:
                    out.append(f"budget {budget_label(b)} ({w.samples} samples): an attack closes {g:.0%} of the "
                               f"black-box-to-white-box gap (at most {max_gap_closed:.0%} allowed)")
        return out

    def meets(self, floor: float | None = None, budgets=None, max_gap_closed: float | None = None) -> bool:
        """True when at every budget (or those given) every stealing attack stays within ``floor`` x black-box
        (and, with ``max_gap_closed``, closes at most that share of the gap)."""
        return not self.failures(floor, budgets, max_gap_closed)

    def verdict(self) -> dict:
        per = {}
        for b in self.budgets():
            w = self.worst(b)
            per[budget_label(b)] = {
                "budget": b, "samples": self.samples(b),
                "worst_attack": None if w is None else w.attack,
                "worst_accuracy": None if w is None else w.accuracy,
                "worst_ratio": None if w is None else w.ratio,
                "max_gap_closed": self.max_gap_closed(b),
                "secure": None if w is None else bool(w.ratio <= self.floor)}
        return {"floor": self.floor, "rule": f"every attack on the stolen backbone <= {self.floor:g}x black-box",
                "secure": self.meets(), "per_budget": per}

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {**self.meta, "floor": self.floor, "illegal": self.illegal,
                "runs": [r.to_dict() for r in self.runs],
                "summary": [r.to_dict() for r in self.summary()],
                "verdict": self.verdict()}

    @classmethod
    def from_dict(cls, doc: dict) -> "SecurityReport":
        derived = ("floor", "illegal", "runs", "summary", "verdict")
        runs = tuple(AttackRun(**r) for r in doc["runs"])
        meta = {k: v for k, v in doc.items() if k not in derived}
        return cls(runs, doc.get("illegal"), doc.get("floor", SECURE_RATIO), meta)


def gap_closed(stolen: float, blackbox: float, whitebox: float) -> float | None:
    """(stolen - black-box) / (white-box - black-box); None when white-box is not :data:`MIN_GAP` above."""
    denom = whitebox - blackbox
    if denom < MIN_GAP:
        return None
    return (stolen - blackbox) / denom


def _nan_if_none(v):
    return math.nan if v is None else v


def _in(b: float, budgets) -> bool:
    return any(math.isclose(b, x, rel_tol=1e-9) for x in budgets)


# ---------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------

def _pm(mean, std, pct=True, digits=2):
    if mean is None:
        return "-"
    if pct:
        s = f"{100 * mean:.{digits}f}"
        return s + (f" ± {100 * std:.{digits}f}" if std else "") + "%"
    s = f"{mean:.{digits}f}"
    return s + (f" ± {std:.{digits}f}" if std else "")


_LABELS = {ILLEGAL: "illegal use (backbone alone)", STEALING: "fine-tune stolen backbone",
           BLACKBOX: "black-box (random init)", WHITEBOX: "white-box (original fine-tuned)",
           CONTROL_PIXELS: "control: linear on raw pixels"}


def attack_label(name: str) -> str:
    if name.startswith(PROBE_PREFIX):
        return f"linear probe on {name[len(PROBE_PREFIX):]}"
    if name.startswith(CONTROL_RANDOM):
        return f"control: probe {name[len(CONTROL_RANDOM):]}, random net"
    if name.startswith(CONTROL_ORIGINAL):
        return f"control: probe {name[len(CONTROL_ORIGINAL):]}, original"
    return _LABELS.get(name, name)


def format_table(report: SecurityReport) -> str:
    """The summary as a fixed-width table, one block per budget, with the verdict per budget."""
    head = f"{'budget':>8} {'samples':>7}  {'attack':<38} {'test accuracy':>17} {'x black-box':>14} " \
           f"{'gap closed':>14}  verdict"
    lines = [head, "-" * len(head)]
    for b in report.budgets():
        for r in (x for x in report.summary() if x.budget == b):
            verdict = "" if r.secure is None else ("secure" if r.secure else "NOT secure")
            gap = "-" if r.gap_closed is None else _pm(r.gap_closed, r.gap_closed_std, pct=True, digits=0)
            lines.append(f"{budget_label(b):>8} {r.samples:>7}  {attack_label(r.attack):<38} "
                         f"{_pm(r.accuracy, r.accuracy_std):>17} "
                         f"{(_pm(r.ratio, r.ratio_std, pct=False, digits=3) + 'x') if r.ratio else '-':>14} "
                         f"{gap:>14}  {verdict}")
        w = report.worst(b)
        if w is not None:
            ok = w.ratio <= report.floor
            lines.append(f"{'':>8} {'':>7}  => {'secure' if ok else 'NOT secure'} at {budget_label(b)}: worst attack "
                         f"{attack_label(w.attack)}, {w.ratio:.3f}x black-box (rule: <= {report.floor:g}x)")
        lines.append("")
    seeds = sorted({r.seed for r in report.runs})
    lines.append(f"over seeds {', '.join(map(str, seeds))} (mean ± std); ratio = mean attack / mean black-box; "
                 "gap closed = (attack - black-box) / (white-box - black-box)")
    lines.append(f"verdict: {'SECURE' if report.meets() else 'NOT SECURE'} under the {report.floor:g}x rule "
                 "at every budget")
    return "\n".join(lines)


def summary_lines(doc: dict) -> list:
    """A few lines for ``mirrornet report``: per budget the worst attack, its ratio, gap closed, verdict.

    ``doc`` is the content of ``ARTIFACT/attack.json``.
    """
    report = SecurityReport.from_dict(doc)
    seeds = sorted({r.seed for r in report.runs})
    lines = [f"security ({len(seeds)} seed(s); rule: every attack on the stolen backbone <= {report.floor:g}x black-box)"]
    for b in report.budgets():
        w = report.worst(b)
        bb = report.row(BLACKBOX, b)
        if w is None or bb is None:
            continue
        g = report.max_gap_closed(b)
        lines.append(f"  {budget_label(b):>6} ({w.samples} samples): {attack_label(w.attack)} {w.accuracy:.2%} vs "
                     f"black-box {bb.accuracy:.2%} = {w.ratio:.3f}x, gap closed "
                     f"{'-' if g is None else f'{g:.0%}'}: {'secure' if w.ratio <= report.floor else 'NOT secure'}")
    lines.append(f"  verdict: {'SECURE' if report.meets() else 'NOT SECURE'}")
    return lines
