"""The Performance Emulator: measure kernels, learn their cost, predict each strategy's latency.

Modules, in the order the work flows:
  ``targets``     target resolution and the identity a cost model is bound to
  ``workloads``   Relax function -> TIR kernels, as the CPU build lowers them
  ``rpc``         where kernels run: this process or a TVM RPC tracker fleet
  ``harness``     compile and time kernels; JSON-lines records, resumable
  ``corpus``      random small CNNs as a training corpus
  ``features``    MetaSchedule ``PerStoreFeature`` vectors per kernel
  ``cost_model``  xgboost regressor: seconds per kernel for one target
  ``emulate``     per-strategy estimates, selection, Pareto front
"""
