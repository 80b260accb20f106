"""The Performance Emulator: measure kernels, learn their cost, predict each strategy's latency.

    from mirrornet_tvm.emulator import Emulator, select, pareto_front
    emulator = Emulator.load("out/build/tuning")              # written by `mirrornet tune`
    estimates = emulator.emulate(generate_strategies(graph), model)
    best = select(estimates, budget_bytes=1 << 20)
    ranking = rank_space(model, generate_strategies(graph), load_tuning("out/build/tuning"),
                         max_flop_share=0.05)                 # what `mirrornet strategies --tuning` prints

Modules, in the order the work flows:
  ``targets``          target resolution and the identity a cost model is bound to
  ``workloads``        Relax function -> TIR kernels, as the CPU build lowers them
  ``lowering``         the compile path's lowering with its slow steps cached (for many strategies)
  ``strategy_kernels`` per strategy: the backbone slice and the CPM kernels it runs
  ``rpc``              where kernels run: this process or a TVM RPC tracker fleet
  ``harness``          compile and time kernels; JSON-lines records, resumable
  ``corpus``           random small CNNs as a training corpus
  ``features``         MetaSchedule ``PerStoreFeature`` vectors per kernel
  ``cost_model``       xgboost regressor: seconds per kernel for one target
  ``protected_runs``   measured protected inference of whole strategies (TEE simulator)
  ``calibration``      stage models fitted on protected runs (VM overhead, TEE factor, transfer)
  ``emulate``          per-strategy estimates, selection, Pareto front
  ``selection``        a tuning folder's emulator choosing under the ``--auto`` rule's floors
  ``report``           JSON and plot of the ranking
  ``tuning``           `mirrornet tune`: measure, tune, train, calibrate

Importing this package does not import TVM; the names below load on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Emulator": "emulate", "Estimate": "emulate", "Floors": "emulate",
    "select": "emulate", "rank": "emulate", "rank_strategies": "emulate", "pareto_front": "emulate",
    "feasible": "emulate", "attach_metrics": "emulate", "table": "emulate",
    "CostModel": "cost_model", "TargetMismatchError": "cost_model",  # defined in mirrornet_tvm.errors
    "Calibration": "calibration",
    "measure": "harness", "TimingConfig": "harness",
    "local_fleet": "rpc", "rpc_device": "rpc", "LOCAL": "rpc",
    "ModelKernels": "strategy_kernels",
    "tune": "tuning",
    "load_tuning": "selection", "rank_space": "selection", "Ranking": "selection", "rule_pool": "selection",
    "plot_pareto": "report", "write_json_report": "report", "write_ranking_json": "report",
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
