"""The cost model: xgboost on ``PerStoreFeature`` vectors, predicting seconds per kernel for one target.

One regressor per flavour (``"tvm"``: the normal-world build; ``"c"``: single-threaded C as in the
TEE), trained on :mod:`.harness` measurements. The regressor learns the log of seconds per unit of
work (FLOPs plus argument elements), not the log of seconds: trees cannot extrapolate, and the
work term carries a kernel's size while the features explain its efficiency (on held-out kernels
this halved the median error). A model is saved with the target
it was trained for and refuses to predict for any other.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ArtifactError, TargetMismatchError, UsageError
from ..util import atomic_write
from .features import FEATURE_VERSION, FeatureCache
from .harness import Measurement, usable
from .targets import resolve_target, target_key
from .workloads import Kernel, kernel_from_script

FORMAT = "mirrornet-cost-model/1"

XGB_PARAMS = {
    "objective": "reg:squarederror",
    "eta": 0.08,
    "max_depth": 5,
    "min_child_weight": 1,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "nthread": 1,
    "seed": 0,
}
ROUNDS = 400


@dataclass(frozen=True)
class TrainingSummary:
    flavour: str
    kernels: int
    rmse_log: float  # training error in log(seconds)


def _log_work(kernels) -> np.ndarray:
    """log of a kernel's work: estimated FLOPs plus the elements of its buffer arguments."""
    return np.log(np.array([
        (k.flops if np.isfinite(k.flops) and k.flops > 0 else 0.0) + k.arg_bytes / 4.0 + 1.0
        for k in kernels]))


def kernels_from_measurements(measurements) -> tuple[list[Kernel], np.ndarray]:
    """Rebuild kernels from records (their TVMScript) with their measured seconds."""
    kernels, seconds = [], []
    for m in usable(measurements):
        kernels.append(kernel_from_script(m.tir, name=m.name))
        seconds.append(m.seconds)
    return kernels, np.asarray(seconds, dtype=np.float64)


class CostModel:
    """Seconds per kernel on one target, from MetaSchedule features and xgboost."""

    def __init__(self, target):
        self.target = target_key(resolve_target(target))
        self._boosters: dict[str, object] = {}
        self._summaries: dict[str, TrainingSummary] = {}
        self._features = FeatureCache(self.target_object())

    # -- identity ------------------------------------------------------------------------------
    def target_object(self):
        return resolve_target(json.loads(self.target))

    @property
    def flavours(self) -> tuple[str, ...]:
        return tuple(sorted(self._boosters))

    def summary(self, flavour: str) -> TrainingSummary:
        return self._summaries[flavour]

    def check_target(self, target) -> None:
        """Raise :class:`TargetMismatchError` unless ``target`` is the one the model was trained for."""
        asked = target_key(resolve_target(target))
        if asked != self.target:
            raise TargetMismatchError(
                f"this cost model was trained for target {self.target} and cannot predict for {asked}; "
                "measure and train one for that target (`mirrornet tune ... --target ...`)"
            )

    # -- training ------------------------------------------------------------------------------
    def features(self, kernels) -> np.ndarray:
        return self._features(kernels)

    def fit(self, kernels, seconds, flavour: str = "tvm") -> TrainingSummary:
        """Train the ``flavour`` regressor on kernels and their measured seconds."""
        import xgboost as xgb

        seconds = np.asarray(seconds, dtype=np.float64)
        if len(kernels) != len(seconds):
            raise UsageError(f"{len(kernels)} kernels but {len(seconds)} timings")
        if len(kernels) < 4:
            raise UsageError(f"a cost model needs at least 4 measured kernels, got {len(kernels)}; measure more")
        if not np.all(np.isfinite(seconds)) or np.any(seconds <= 0):
            raise UsageError("timings must be positive, finite seconds")
        x = self.features(kernels)
        y = np.log(seconds) - _log_work(kernels)
        booster = xgb.train(dict(XGB_PARAMS), xgb.DMatrix(x, label=y), num_boost_round=ROUNDS)
        fitted = booster.predict(xgb.DMatrix(x))
        summary = TrainingSummary(flavour, len(kernels), float(np.sqrt(np.mean((fitted - y) ** 2))))
        self._boosters[flavour] = booster
        self._summaries[flavour] = summary
        return summary

    def fit_measurements(self, measurements) -> list[TrainingSummary]:
        """Train one regressor per flavour from harness records of this model's target."""
        measurements = [m for m in measurements if isinstance(m, Measurement)]
        mine = [m for m in measurements if m.target == self.target]
        if not mine:
            others = sorted({m.target for m in measurements})
            raise UsageError(
                f"no measurements for target {self.target}"
                + (f" (the records are for: {'; '.join(others)})" if others else "")
            )
        out = []
        for flavour in sorted({m.flavour for m in mine}):
            kernels, seconds = kernels_from_measurements([m for m in mine if m.flavour == flavour])
            if len(kernels) >= 4:
                out.append(self.fit(kernels, seconds, flavour))
        if not out:
            raise UsageError(f"too few successful measurements for target {self.target} to train on")
        return out

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, kernels, target, flavour: str = "tvm") -> np.ndarray:
        """Predicted seconds per call of each kernel, for ``target`` (which must be the model's)."""
        import xgboost as xgb

        self.check_target(target)
        if flavour not in self._boosters:
            raise UsageError(
                f"this cost model has no {flavour!r} regressor (it has: {', '.join(self.flavours) or 'none'}); "
                f"measure kernels with flavour {flavour!r} and train again"
            )
        kernels = list(kernels)
        if not kernels:
            return np.zeros(0)
        x = self.features(kernels)
        return np.exp(self._boosters[flavour].predict(xgb.DMatrix(x)) + _log_work(kernels))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model (target, feature version, boosters as xgboost JSON) atomically."""
        payload = {
            "format": FORMAT,
            "generated_by": "mirrornet_tvm.emulator.cost_model",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "target": json.loads(self.target),
            "feature_version": FEATURE_VERSION,
            "flavours": {
                f: {
                    "kernels": self._summaries[f].kernels,
                    "rmse_log": self._summaries[f].rmse_log,
                    "booster": base64.b64encode(bytes(b.save_raw("ubj"))).decode(),
                }
                for f, b in self._boosters.items()
            },
        }
        atomic_write(path, json.dumps(payload) + "\n")

    @classmethod
    def load(cls, path) -> "CostModel":
        import xgboost as xgb

        try:
            with open(path) as f:
                payload = json.load(f)
        except FileNotFoundError:
            raise ArtifactError(f"cost model {path} does not exist; create one with `mirrornet tune`") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"cost model {path} is unreadable: {err}") from None
        if payload.get("format") != FORMAT:
            raise ArtifactError(f"{path} is not a {FORMAT} file (format: {payload.get('format')!r})")
        if payload.get("feature_version") != FEATURE_VERSION:
            raise ArtifactError(
                f"{path} was trained on feature layout v{payload.get('feature_version')}, this version "
                f"computes v{FEATURE_VERSION}; train it again with `mirrornet tune`"
            )
        model = cls(payload["target"])
        for flavour, entry in payload["flavours"].items():
            booster = xgb.Booster(params={"nthread": 1})
            booster.load_model(bytearray(base64.b64decode(entry["booster"])))
            model._boosters[flavour] = booster
            model._summaries[flavour] = TrainingSummary(flavour, int(entry["kernels"]), float(entry["rmse_log"]))
        return model


class FlopsBaseline:
    """The naive alternative: seconds proportional to FLOPs (one rate fitted on the training kernels)."""

    def __init__(self):
        self.seconds_per_flop = None

    def fit(self, kernels, seconds) -> "FlopsBaseline":
        flops = np.array([max(k.flops, 1.0) if np.isfinite(k.flops) else 1.0 for k in kernels])
        self.seconds_per_flop = float(np.median(np.asarray(seconds) / flops))
        return self

    def predict(self, kernels) -> np.ndarray:
        flops = np.array([max(k.flops, 1.0) if np.isfinite(k.flops) else 1.0 for k in kernels])
        return flops * self.seconds_per_flop
