"""Kernel features from MetaSchedule's ``PerStoreFeature``, aggregated to one vector per kernel.

``PerStoreFeature`` yields 164 features per buffer store (arithmetic counts, vectorization, loop and
buffer-access statistics, arithmetic-intensity curve), log-scaled as ``sign(x) * log2(|x| + 1)``.
A kernel's vector is: the store-wise sum of the un-logged features (totals over the kernel, logged
again), the store-wise maximum, the number of stores, and two whole-kernel figures (estimated FLOPs
and bytes of the buffer arguments, both logged).
"""
from __future__ import annotations

import numpy as np
import tvm
import tvm.s_tir.meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.logging import get_logging_func

from .targets import resolve_target
from .workloads import Kernel

#: Bump when the layout of :func:`kernel_features` changes: cost models record it and refuse others.
FEATURE_VERSION = 1
PER_STORE = 164
LENGTH = 2 * PER_STORE + 3


def _slog(x):
    return np.sign(x) * np.log2(np.abs(x) + 1.0)


def _unslog(x):
    return np.sign(x) * (np.exp2(np.abs(x)) - 1.0)


def _feature_context(mod: tvm.IRModule, target) -> ms.TuneContext:
    """A TuneContext for feature extraction only.

    ``TuneContext.__init__`` imports every tensor intrinsic (tens of seconds) for the sake of schedule
    rules; extraction needs none of them, so the object is built directly from its FFI constructor.
    """
    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(
        _ffi_api.TuneContext,  # pylint: disable=no-member
        mod, target, None, None, "main", 1, 1, get_logging_func(None),
    )
    return ctx


def per_store_features(kernel: Kernel, target) -> np.ndarray:
    """The raw ``PerStoreFeature`` matrix of a kernel, shape (stores, 164)."""
    mod = kernel.module()
    ctx = _feature_context(mod, resolve_target(target))
    cand = ms.MeasureCandidate(tvm.s_tir.Schedule(mod), ArgInfo.from_prim_func(kernel.func))
    extractor = ms.feature_extractor.PerStoreFeature(extract_workload=False)
    return extractor.extract_from(ctx, [cand])[0].numpy()


def aggregate(per_store: np.ndarray, flops: float, arg_bytes: int) -> np.ndarray:
    """One fixed-length vector from a per-store matrix plus whole-kernel figures."""
    out = np.zeros(LENGTH, dtype=np.float64)
    if per_store.size:
        out[:PER_STORE] = _slog(_unslog(per_store.astype(np.float64)).sum(axis=0))
        out[PER_STORE:2 * PER_STORE] = per_store.max(axis=0)
    out[-3] = per_store.shape[0]
    out[-2] = _slog(flops if np.isfinite(flops) else 0.0)
    out[-1] = _slog(float(arg_bytes))
    return out


class FeatureCache:
    """Kernel features for one target, memoised by kernel key (extraction is ~5 ms a kernel)."""

    def __init__(self, target):
        self.target = resolve_target(target)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, kernels) -> np.ndarray:
        rows = []
        for k in kernels:
            vec = self._cache.get(k.key)
            if vec is None:
                vec = aggregate(per_store_features(k, self.target), k.flops, k.arg_bytes)
                self._cache[k.key] = vec
            rows.append(vec)
        return np.stack(rows) if rows else np.zeros((0, LENGTH))


def kernel_features(kernels, target) -> np.ndarray:
    """Feature matrix (kernels x :data:`LENGTH`) for ``kernels`` on ``target``."""
    return FeatureCache(target)(kernels)
