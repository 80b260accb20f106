"""Run the whole evaluation: every attack at every budget and seed, on the real test split.

:func:`evaluate` takes a :class:`~.victim.Victim` (artifact folder or models in memory) and an
:class:`AttackConfig`; :func:`attack_artifact` is what ``mirrornet attack`` runs (it also writes
``ARTIFACT/attack.json``). The black-box and white-box baselines depend only on the original model, the
data and the protocol, not on the protection, so they can be cached across evaluations
(``baseline_cache``: a folder of one JSON file per baseline run, keyed by all of that).

Epochs: unless given, each budget trains for ``max(MIN_EPOCHS, ceil(MIN_STEPS / steps per epoch))``
epochs (at most ``MAX_EPOCHS``), so a 60-sample budget still gets a few hundred optimiser steps. Every
attack and both baselines use the same epochs, batch size, sample order (the seed) and learning rates.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__, data
from ..errors import UsageError
from ..training_base import evaluate as accuracy_of
from ..util import read_json, write_json
from .attacks import (BLACKBOX, CONTROL_ORIGINAL, CONTROL_PIXELS, CONTROL_RANDOM, PROBE_PREFIX, STEALING, WHITEBOX,
                      TrainSpec, make_pixel_probe, make_probe, train_with_lr_search, trainable_copy)
from .report import SECURE_RATIO, AttackRun, SecurityReport
from .thief_data import budget_label, budget_samples, disjoint_pool, thief_split
from .victim import Victim, random_like

DEFAULT_BUDGETS = (0.001, 0.01, 0.1)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_BATCH_SIZE = 64
DEFAULT_VAL_FRACTION = 0.2
MIN_STEPS = 300
MIN_EPOCHS = 10
MAX_EPOCHS = 300
PROTOCOL_VERSION = 1     # bump when a change makes cached baselines incomparable


@dataclass(frozen=True)
class AttackConfig:
    """The evaluation protocol (recorded in the report)."""

    budgets: tuple = DEFAULT_BUDGETS
    seeds: tuple = DEFAULT_SEEDS
    lrs: tuple = DEFAULT_LRS
    epochs: int | None = None            # None: per budget, see the module docstring
    batch_size: int = DEFAULT_BATCH_SIZE
    val_fraction: float = DEFAULT_VAL_FRACTION
    probes: bool = True                  # linear probes on the strategy's taps
    controls: bool = False               # probes on a random backbone and on the original (see attacks.py)
    test_subset: int | None = None       # score on a stratified subset of the test split (None: all)
    floor: float = SECURE_RATIO

    def __post_init__(self):
        for name in ("budgets", "seeds", "lrs"):
            value = tuple(getattr(self, name))
            if not value:
                raise UsageError(f"give at least one value for {name}")
            if len(set(value)) != len(value):
                raise UsageError(f"{name} repeat a value: {list(value)}")
            object.__setattr__(self, name, value)
        for lr in self.lrs:
            if not (lr > 0 and math.isfinite(lr)):
                raise UsageError(f"learning rates must be positive numbers, got {lr}")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                raise UsageError(f"seeds must be non-negative integers, got {s!r}")
        if self.epochs is not None and int(self.epochs) < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.test_subset is not None and int(self.test_subset) < 1:
            raise UsageError(f"test_subset must be a positive number of images, got {self.test_subset}")
        if not (self.floor >= 1 and math.isfinite(self.floor)):
            raise UsageError(f"the security floor is a ratio to black-box of at least 1 (e.g. 1.05), got {self.floor}")

    def epochs_for(self, fit_samples: int) -> int:
        if self.epochs is not None:
            return int(self.epochs)
        steps_per_epoch = math.ceil(fit_samples / self.batch_size)
        return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))))

    def to_dict(self) -> dict:
        return asdict(self)


def _index_digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]


class _BaselineCache:
    """One JSON file per baseline run, named by a hash of everything the run depends on."""

    def __init__(self, folder, victim: Victim, dataset_id: dict, config: AttackConfig):
        self.folder = None if folder is None else Path(folder)
        original = victim.hashes.get("original.onnx")
        if original is None:  # models in memory: hash the weights
            h = hashlib.sha256()
            for k, v in victim.original.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().numpy().tobytes())
            original = h.hexdigest()
        self.base = {"protocol": PROTOCOL_VERSION, "original": original, "dataset": dataset_id,
                     "lrs": list(config.lrs), "batch_size": config.batch_size,
                     "val_fraction": config.val_fraction, "test_subset": config.test_subset}

    def _path(self, attack, samples, seed, epochs):
        key = json.dumps(dict(self.base, attack=attack, samples=samples, seed=seed, epochs=epochs), sort_keys=True)
        stem = attack.replace(":", "_")
        return self.folder / f"{stem}-{samples}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def get(self, attack, samples, seed, epochs) -> AttackRun | None:
        if self.folder is None:
            return None
        path = self._path(attack, samples, seed, epochs)
        if not path.is_file():
            return None
        try:
            return AttackRun(**read_json(path)["run"])
        except (ValueError, KeyError, TypeError):
            return None   # a foreign or torn file: recompute and overwrite it

    def put(self, run: AttackRun):
        if self.folder is not None:
            write_json(self._path(run.attack, run.samples, run.seed, run.epochs),
                       {"generated_by": f"mirrornet attack (mirrornet-tvm {__version__}): baseline cache",
                        "key": self.base, "run": run.to_dict()})


def _load_data(dataset: str, victim: Victim, config: AttackConfig):
    x_train, y_train, x_test, y_test = data.load(dataset)
    if tuple(x_train.shape[1:]) != victim.input_shape:
        want = "x".join(map(str, victim.input_shape))
        got = "x".join(map(str, x_train.shape[1:]))
        raise UsageError(f"the model takes {want} images but dataset '{dataset}' has {got}; pick the dataset the "
                         "artifact was protected on (e.g. fashion-mnist-rgb for 3x32x32)")
    classes = int(np.max(y_train)) + 1
    if classes > victim.num_classes:
        raise UsageError(f"dataset '{dataset}' has {classes} classes but the model outputs {victim.num_classes}")
    if config.test_subset is not None and config.test_subset < len(y_test):
        keep = data.stratified_subset(y_test, int(config.test_subset), seed=0)
        x_test, y_test = x_test[keep], y_test[keep]
    return x_train, y_train, x_test, y_test


def evaluate(victim: Victim, dataset: str, config: AttackConfig = AttackConfig(), *, progress: bool = True,
             baseline_cache=None, probe_taps=None) -> SecurityReport:
    """Every attack at every budget and seed (see the package docstring); returns the report.

    ``probe_taps``: tap names to probe (default: the strategy's taps).
    """
    t_start = time.perf_counter()
    x_train, y_train, x_test, y_test = _load_data(dataset, victim, config)
    pool = disjoint_pool(x_train, x_test)
    samples = {b: budget_samples(b, len(x_train)) for b in config.budgets}
    unknown = [t for t in (probe_taps or ()) if t not in victim.taps]
    if unknown:
        raise UsageError(f"cannot probe {', '.join(unknown)}: the thief sees only the strategy's taps "
                         f"({', '.join(victim.taps)})")
    taps = dict(victim.taps) if probe_taps is None else {t: victim.taps[t] for t in probe_taps}
    if not config.probes:
        taps = {}
    dataset_id = {"name": dataset, "train_images": int(len(x_train)), "test_images": int(len(x_test))}
    cache = _BaselineCache(baseline_cache, victim, dataset_id, config)

    illegal = accuracy_of(victim.backbone, x_test, y_test)
    original = accuracy_of(victim.original, x_test, y_test)
    attacks = [STEALING] + [PROBE_PREFIX + t for t in taps]
    if config.controls:
        attacks += [CONTROL_RANDOM + t for t in taps] + [CONTROL_ORIGINAL + t for t in taps] + [CONTROL_PIXELS]
    attacks += [BLACKBOX, WHITEBOX]
    unprotected = [a for a in attacks if _protection_free(a)]   # depend on the original model only: cached
    per_run = len(config.lrs) + 1
    splits = {(b, s): thief_split(y_train, pool, samples[b], s, config.val_fraction)
              for b in config.budgets for s in config.seeds}
    epochs = {b: config.epochs_for(len(splits[(b, config.seeds[0])].fit)) for b in config.budgets}
    cached = {(b, s, a): cache.get(a, samples[b], s, epochs[b])
              for b in config.budgets for s in config.seeds for a in unprotected}
    total = per_run * sum(1 for b in config.budgets for s in config.seeds for a in attacks
                          if cached.get((b, s, a)) is None)
    bar = tqdm(total=total, desc="attack", unit="training", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    runs = []
    try:
        for b in config.budgets:
            for s in config.seeds:
                split = splits[(b, s)]
                fit_xy = (x_train[split.fit], y_train[split.fit])
                val_xy = (x_train[split.val], y_train[split.val])
                all_xy = (x_train[split.all], y_train[split.all])
                spec = TrainSpec(config.lrs, epochs[b], config.batch_size, s)
                for a in attacks:
                    hit = cached.get((b, s, a))
                    if hit is not None:
                        runs.append(hit)
                        continue
                    bar.set_description(f"{budget_label(b)} ({samples[b]}) seed {s}: {a}")
                    start = _start_model(a, victim, taps, s)
                    trained = train_with_lr_search(start, fit_xy, val_xy, all_xy, spec, on_step=lambda: bar.update(1))
                    run = AttackRun(a, float(b), samples[b], int(s), accuracy_of(trained.model, x_test, y_test),
                                    trained.lr, {repr(lr): v for lr, v in trained.val_accuracy.items()},
                                    epochs[b], round(trained.seconds, 2), trained.retrained)
                    runs.append(run)
                    if a in unprotected:
                        cache.put(run)
                    if progress:
                        tqdm.write(f"{budget_label(b)} ({samples[b]} samples) seed {s}: {a} {run.accuracy:.2%} "
                                   f"(lr {run.lr:g}, {run.seconds:.0f} s"
                                   + ("" if trained.retrained else "; the retrain on the whole budget fell "
                                      "below the validated model, which is kept") + ")", file=sys.stderr)
    finally:
        bar.close()

    meta = {
        "generated_by": f"mirrornet attack (mirrornet-tvm {__version__})",
        "source": victim.source,
        "strategy": None if victim.strategy is None else victim.strategy.to_dict(),
        "hashes": victim.hashes,
        "dataset": dict(dataset_id, thief_pool=int(len(pool)),
                        excluded_test_duplicates=int(len(x_train) - len(pool)),
                        test_subset=config.test_subset,
                        thief_data="class-stratified draws from the training split, none identical to a test image"),
        "protocol": dict(config.to_dict(), epochs_per_budget={budget_label(b): epochs[b] for b in config.budgets},
                         lr_selection=f"per attack, the learning rate with the best accuracy on a held-out "
                                      f"{config.val_fraction:.0%} of the thief's own budget (never the test "
                                      "split), then retrained on the whole budget (kept unless it diverges or "
                                      "scores lower on the whole budget than the validated model)",
                         attacks=attacks),
        "thief_samples": {budget_label(b): {str(s): {"samples": splits[(b, s)].samples,
                                                     "fit": int(len(splits[(b, s)].fit)),
                                                     "held_out": int(len(splits[(b, s)].val)),
                                                     "indices_sha256": _index_digest(splits[(b, s)].all)}
                                            for s in config.seeds} for b in config.budgets},
        "reference": {"original": original, "illegal": illegal,
                      "authorized": victim.metrics.get("accuracy", {}).get("authorized"),
                      "authorized_source": "metrics.json (full test split)" if victim.metrics else None},
        "cpm": victim.metrics.get("cpm"),
        "secure_memory": victim.metrics.get("secure_memory"),
        "wall_seconds": None,
    }
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return SecurityReport(tuple(runs), illegal, config.floor, meta)


def _protection_free(attack: str) -> bool:
    return attack in (BLACKBOX, WHITEBOX, CONTROL_PIXELS) or attack.startswith((CONTROL_RANDOM, CONTROL_ORIGINAL))


def _start_model(attack: str, victim: Victim, taps: dict, seed: int) -> torch.nn.Module:
    """The model an attack starts training from (never shared with another attack)."""
    if attack == CONTROL_PIXELS:
        return make_pixel_probe(victim.input_shape, victim.num_classes, seed=20011 + seed)
    if attack.startswith(CONTROL_RANDOM):
        tap = attack[len(CONTROL_RANDOM):]
        return make_probe(random_like(victim.original, seed=30011 + seed), taps[tap], victim.num_classes,
                          seed=20011 + seed)
    if attack.startswith(CONTROL_ORIGINAL):
        from ..mirror import tap_index

        tensor = tap_index(victim.original)[attack[len(CONTROL_ORIGINAL):]][0]
        return make_probe(victim.original, tensor, victim.num_classes, seed=20011 + seed)
    if attack == STEALING:
        return trainable_copy(victim.backbone)
    if attack == BLACKBOX:
        return random_like(victim.original, seed=10007 + seed)
    if attack == WHITEBOX:
        return trainable_copy(victim.original)
    tap = attack[len(PROBE_PREFIX):]
    return make_probe(victim.backbone, taps[tap], victim.num_classes, seed=20011 + seed)


def attack_artifact(artifact_dir, dataset: str, config: AttackConfig = AttackConfig(), *, json_out=None,
                    progress: bool = True, baseline_cache=None, command: str | None = None) -> SecurityReport:
    """``mirrornet attack``: evaluate an artifact folder, write ``ARTIFACT/attack.json`` (and ``json_out``)."""
    victim = Victim.from_artifact(artifact_dir)
    protected_on = victim.metrics.get("dataset", {}).get("name")
    report = evaluate(victim, dataset, config, progress=progress, baseline_cache=baseline_cache)
    meta = dict(report.meta, command=command or "mirrornet_tvm.attack.attack_artifact(...)",
                protected_on=protected_on)
    report = SecurityReport(report.runs, report.illegal, report.floor, meta)
    doc = report.to_dict()
    write_json(Path(artifact_dir) / "attack.json", doc)
    if json_out is not None:
        write_json(json_out, doc)
    return report


def security_check(victim_or_artifact, dataset: str, *, budgets=(0.001, 0.01), seeds=(0,), floor: float = SECURE_RATIO,
                   lrs=DEFAULT_LRS, epochs: int | None = None, test_subset: int | None = None,
                   probes: bool = True, progress: bool = True, baseline_cache=None) -> SecurityReport:
    """The evaluation as a floor for strategy search or training: ``security_check(...).meets(1.05)``.

    ``victim_or_artifact``: an artifact folder, a :class:`Victim`, or a ``(mirrornet, original)`` pair of a
    trained :class:`~mirrornet_tvm.mirror.MirrorNet` and the original GraphNet. Defaults are smaller than
    ``mirrornet attack``'s (the two budgets the rule matters most at, one seed) so a search can afford it.
    """
    if isinstance(victim_or_artifact, Victim):
        victim = victim_or_artifact
    elif isinstance(victim_or_artifact, tuple) and len(victim_or_artifact) == 2:
        net, original = victim_or_artifact
        victim = Victim.from_models(net.backbone, original, net.strategy)
    else:
        victim = Victim.from_artifact(victim_or_artifact)
    config = AttackConfig(tuple(budgets), tuple(seeds), tuple(lrs), epochs, floor=floor, test_subset=test_subset,
                          probes=probes)
    return evaluate(victim, dataset, config, progress=progress, baseline_cache=baseline_cache)
