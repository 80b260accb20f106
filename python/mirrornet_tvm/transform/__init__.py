"""Relax passes of mirrornet-tvm, one per file, and the ``mirrornet`` compilation pipeline.

    MirrorNetPartition(strategy)      combined ``main`` -> ``backbone`` + ``cpm``  (mirrornet_partition.py)
    AttachMirrorNetMetadata(names)    record the combined model's output names     (attach_metadata.py)
    ExtractFunctions(names)           keep some functions and what they call      (extract_functions.py)
    FoldWeightLayout()                fold weight transposes/reshapes in numpy     (fold_weight_layout.py)
    ApplyTuningDatabase(db)           tuned schedules from a MetaSchedule database (apply_database.py)
    LowerFunction(name, passes)       lower one function, leave the others as is   (lower_function.py)
    LogPhase / DumpIR                 make the pipeline observable                 (log_phase.py, dump_ir.py)
    mirrornet_pipeline(...)           the registered pipeline "mirrornet"          (pipeline.py)

Importing this package does not import TVM: the names above load on first use. Once TVM is imported
(before or after this package), ``tvm.relax.transform.MirrorNetPartition`` is this package's pass and
``tvm.relax.get_pipeline("mirrornet", ...)`` is this package's pipeline, so compile scripts read like
TVM's own.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_EXPORTS = {
    "MirrorNetPartition": "mirrornet_partition",
    "PartitionSpec": "mirrornet_partition",
    "partition_spec": "mirrornet_partition",
    "AttachMirrorNetMetadata": "attach_metadata",
    "ExtractFunctions": "extract_functions",
    "FoldWeightLayout": "fold_weight_layout",
    "ApplyTuningDatabase": "apply_database",
    "LowerFunction": "lower_function",
    "LogPhase": "log_phase",
    "DumpIR": "dump_ir",
    "mirrornet_pipeline": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _partition_proxy(strategy):
    """Stands in for ``MirrorNetPartition`` until its module is loaded (then the class replaces it)."""
    return __getattr__("MirrorNetPartition")(strategy)


def _pipeline_proxy(*args, **kwargs):
    """Stands in for ``mirrornet_pipeline`` until its module is loaded (then the function replaces it)."""
    return __getattr__("mirrornet_pipeline")(*args, **kwargs)


def register_with_tvm() -> None:
    """Make ``tvm.relax.transform.MirrorNetPartition`` and the "mirrornet" pipeline available.

    Imports none of the pass modules (they may be half-imported when this runs): it installs small
    stand-ins, which the pass modules replace by the real objects when they load.
    """
    import tvm.relax.pipeline
    import tvm.relax.transform

    if not hasattr(tvm.relax.transform, "MirrorNetPartition"):
        tvm.relax.transform.MirrorNetPartition = _partition_proxy
    tvm.relax.pipeline.PIPELINE_MAP.setdefault("mirrornet", _pipeline_proxy)


class _RegisterWhenTvmLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """One-shot import hook: run ``register_with_tvm`` right after ``import tvm`` has finished."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tvm":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = importlib.util.find_spec("tvm")
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            register_with_tvm()
        except Exception as err:  # never break `import tvm` for the user
            warnings.warn(f"mirrornet_tvm could not register its passes with TVM: {err}", stacklevel=2)


def _install() -> None:
    if "tvm" in sys.modules and hasattr(sys.modules["tvm"], "relax"):
        register_with_tvm()
    elif not any(isinstance(f, _RegisterWhenTvmLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenTvmLoads())


_install()
