"""Calibration: from summed kernel predictions to the latency of each stage of protected inference.

Kernel timings leave out what only a whole run shows: the Relax VM's per-call overhead and the
copy of the taps back to the host, the TA's own work around the CPM, the TEE's slowdown of the same
C code (secure-world caches, the TA's build flags), and the transfer (world switches per invoke and
the bytes copied into and out of the TEE). Each stage gets a small linear model, fitted on protected
runs of a few strategies (:func:`fit`):

    backbone = scale * sum(kernel predictions) + per_kernel * calls + per_byte * tap bytes + fixed
    cpm      = scale * sum(kernel predictions) + per_kernel * calls + fixed
    transfer = per_invoke * invokes + per_byte * bytes moved

The backbone's stage is fitted as scale and a fixed cost together (non-negative least squares): the
Relax VM's cost per call (argument checks, allocation, handing the taps back) is a constant of more
than ten microseconds, and a fit that takes the scale first folds it into the scale, which then overstates
small backbones and understates large ones' share of it. The constant is only identifiable when the
calibration runs backbones of clearly different size (their summed predictions a factor of
``SPREAD_FOR_FIXED`` apart); when they do not, the fit falls back to the CPM's form.

The CPM's stage (and the backbone's fallback) takes the scale first, as the least-squares ratio of
measured to predicted time through the origin, and fits the overhead terms (non-negative) to what is
left. A joint fit is ill-posed when the calibration strategies run similar kernels: it can then
explain every run by a constant and predict that constant for a strategy that runs a tenth of the
work. Each calibration's ``source`` says which form its backbone stage took.

An uncalibrated model (:data:`IDENTITY`) uses the kernel sums as they are and no transfer cost.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ArtifactError, UsageError
from ..util import atomic_write

FORMAT = "mirrornet-calibration/1"
DEFAULT_SHM_LIMIT = 512 * 1024  # bytes per invoke before the taps go in LOAD_TAPS chunks


@dataclass(frozen=True)
class Stage:
    """``scale * predicted + per_kernel * calls + per_byte * bytes + fixed`` (seconds)."""

    scale: float = 1.0
    per_kernel: float = 0.0
    per_byte: float = 0.0
    fixed: float = 0.0

    def __call__(self, predicted: float, calls: int = 0, nbytes: int = 0) -> float:
        return self.scale * predicted + self.per_kernel * calls + self.per_byte * nbytes + self.fixed


@dataclass(frozen=True)
class Transfer:
    """Crossing into the TEE and back: ``per_invoke * invokes + per_byte * bytes``."""

    per_invoke: float = 0.0
    per_byte: float = 0.0
    shm_limit: int = DEFAULT_SHM_LIMIT

    def invokes(self, in_bytes: int) -> int:
        """Invokes per inference: one RUN_CPM, plus LOAD_TAPS chunks when the taps exceed the limit."""
        if in_bytes <= self.shm_limit:
            return 1
        return math.ceil(in_bytes / self.shm_limit) + 1

    def __call__(self, in_bytes: int, out_bytes: int) -> float:
        return self.per_invoke * self.invokes(in_bytes) + self.per_byte * (in_bytes + out_bytes)


@dataclass(frozen=True)
class Calibration:
    backbone: Stage = field(default_factory=Stage)
    cpm: Stage = field(default_factory=Stage)
    transfer: Transfer = field(default_factory=Transfer)
    tee: str = "sim"
    source: str = "uncalibrated: kernel sums as predicted, no transfer cost"
    samples: int = 0

    def to_dict(self) -> dict:
        return {"format": FORMAT, "generated_by": "mirrornet_tvm.emulator.calibration",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(self)}

    def save(self, path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Calibration":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ArtifactError(f"calibration {path} does not exist; create it with `mirrornet tune --calibrate N`") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"calibration {path} is unreadable: {err}") from None
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{path} is not a {FORMAT} file")
        return cls(backbone=Stage(**d["backbone"]), cpm=Stage(**d["cpm"]), transfer=Transfer(**d["transfer"]),
                   tee=d.get("tee", "sim"), source=d.get("source", ""), samples=int(d.get("samples", 0)))


IDENTITY = Calibration()


@dataclass(frozen=True)
class Sample:
    """One strategy run through protected inference: raw predictions beside measured stage times."""

    name: str
    backbone_predicted: float
    backbone_calls: int
    backbone_out_bytes: int
    cpm_predicted: float
    cpm_calls: int
    tee_in_bytes: int
    tee_out_bytes: int
    backbone_measured: float
    cpm_measured: float
    transfer_measured: float

    def to_dict(self) -> dict:
        return asdict(self)


def _scale_then_overheads(predicted: np.ndarray, columns: list[np.ndarray], y: np.ndarray):
    """(scale, overhead coefficients): the ratio through the origin, then NNLS on the remainder."""
    denom = float(np.dot(predicted, predicted))
    scale = float(np.dot(predicted, y) / denom) if denom > 0 else 1.0
    if not columns:
        return scale, np.zeros(0)
    return scale, _nnls(columns, y - scale * predicted)


def _nnls(columns: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    a = np.stack(columns, axis=1)
    # scale columns to comparable magnitudes so the solver's tolerance treats them alike
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls(a / norms, y)
    return coef / norms


def _scale_and_fixed(predicted: np.ndarray, columns: list[np.ndarray], y: np.ndarray):
    """Scale and the last column (the constant) fitted together; the other overheads zero."""
    coef = _nnls([predicted, columns[-1]], y)
    return float(coef[0]), np.concatenate([np.zeros(len(columns) - 1), coef[1:]])


SPREAD_FOR_FIXED = 2.0  # largest / smallest summed backbone prediction that makes the constant identifiable


def _fit_backbone(predicted: np.ndarray, columns: list[np.ndarray], y: np.ndarray):
    """(scale, overhead coefficients, the form taken): scale + fixed when the runs' backbones differ
    enough in size to tell the two apart, else scale first."""
    small = float(predicted.min())
    if small > 0 and float(predicted.max()) / small >= SPREAD_FOR_FIXED:
        return (*_scale_and_fixed(predicted, columns, y), "scale + fixed")
    return (*_scale_then_overheads(predicted, columns, y), "scale first (backbones too alike for a fixed cost)")


def fit(samples, tee: str = "sim", shm_limit: int = DEFAULT_SHM_LIMIT, source: str = "") -> Calibration:
    """Fit the three stage models on measured protected runs (at least 3 strategies)."""
    samples = list(samples)
    if len(samples) < 3:
        raise UsageError(f"calibration needs protected runs of at least 3 strategies, got {len(samples)}")
    col = lambda attr: np.array([float(getattr(s, attr)) for s in samples])  # noqa: E731
    ones = np.ones(len(samples))
    b_scale, b, b_form = _fit_backbone(col("backbone_predicted"), [col("backbone_calls"),
                                                                  col("backbone_out_bytes"), ones],
                                       col("backbone_measured"))
    c_scale, c = _scale_then_overheads(col("cpm_predicted"), [col("cpm_calls"), ones], col("cpm_measured"))
    transfer = Transfer(shm_limit=shm_limit)
    invokes = np.array([transfer.invokes(s.tee_in_bytes) for s in samples], dtype=float)
    t = _nnls([invokes, col("tee_in_bytes") + col("tee_out_bytes")], col("transfer_measured"))
    forms = f"backbone fit: {b_form}; CPM fit: scale first"
    return Calibration(
        backbone=Stage(scale=b_scale, per_kernel=float(b[0]), per_byte=float(b[1]), fixed=float(b[2])),
        cpm=Stage(scale=c_scale, per_kernel=float(c[0]), fixed=float(c[1])),
        transfer=Transfer(per_invoke=float(t[0]), per_byte=float(t[1]), shm_limit=shm_limit),
        tee=tee, source=f"{source or f'fitted on {len(samples)} protected runs ({tee})'} ({forms})",
        samples=len(samples))
