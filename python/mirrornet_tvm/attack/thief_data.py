"""The thief's labelled data: a budget of training-split samples, disjoint from the test split.

A budget is a fraction of the training split (``0.01`` = 1%) or, when at least 1, a number of samples.
Under one seed every attack and every baseline sees exactly the same samples (:func:`thief_split`).
The samples are drawn class-stratified from the training split with every image that also occurs in
the test split removed first (byte-identical images; Fashion-MNIST has none, a user's ``.npz`` may), so
the thief never holds a test image. A held-out part of the budget (``val_fraction``) is what the thief
uses to choose its learning rate: the test split is never used to choose anything.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..data import stratified_subset
from ..errors import UsageError


def budget_samples(budget: float, train_size: int) -> int:
    """Samples in a budget: ``round(budget * train_size)`` for a fraction below 1, else ``int(budget)``."""
    if not (budget > 0 and np.isfinite(budget)):
        raise UsageError(f"budget {budget!r} must be a positive fraction of the training split (e.g. 0.01) "
                         "or a number of samples (e.g. 600)")
    if budget < 1:
        n = int(round(budget * train_size))
    else:
        if budget != int(budget):
            raise UsageError(f"budget {budget!r}: give a fraction below 1 or a whole number of samples")
        n = int(budget)
    if n < 2:
        raise UsageError(f"budget {budget!r} is {n} sample(s) of {train_size}; the thief needs at least 2 "
                         "(one to train, one to choose a learning rate)")
    return n


def budget_label(budget: float) -> str:
    """``0.001`` -> ``0.1%``; ``600`` -> ``600``."""
    if budget < 1:
        return f"{100 * budget:g}%"
    return f"{int(budget)}"


def _digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.ascontiguousarray(xi).tobytes(), digest_size=16).digest() for xi in x]


def disjoint_pool(x_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Indices of the training images that do not also occur (byte for byte) in the test split."""
    test = set(_digests(x_test))
    return np.array([i for i, d in enumerate(_digests(x_train)) if d not in test], dtype=np.int64)


@dataclass(frozen=True)
class ThiefSplit:
    """Indices into the training split: what the thief trains on and what it holds out to pick a lr.

    ``all`` (fit + val, sorted) is the whole budget; the final model of every attack is retrained on it.
    """

    fit: np.ndarray
    val: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return np.sort(np.concatenate([self.fit, self.val]))

    @property
    def samples(self) -> int:
        return len(self.fit) + len(self.val)


def thief_split(y_train: np.ndarray, pool: np.ndarray, samples: int, seed: int,
                val_fraction: float = 0.2) -> ThiefSplit:
    """``samples`` stratified draws from ``pool`` (training indices), split into fit and held-out parts.

    Deterministic in ``seed``. The held-out part has ``max(1, round(val_fraction * samples))`` samples,
    itself stratified, so the thief's learning-rate choice sees every class it can.
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if samples > len(pool):
        raise UsageError(f"a budget of {samples} samples exceeds the {len(pool)} training images available "
                         "to the thief; lower the budget")
    y_pool = np.asarray(y_train)[pool]
    chosen = pool[stratified_subset(y_pool, samples, seed=seed)]
    n_val = min(samples - 1, max(1, int(round(val_fraction * samples))))
    val_local = stratified_subset(np.asarray(y_train)[chosen], n_val, seed=seed + 1)
    mask = np.zeros(len(chosen), dtype=bool)
    mask[val_local] = True
    return ThiefSplit(fit=chosen[~mask], val=chosen[mask])
