"""The CPM as standalone C: no TVM runtime, one static arena, no libm.

``generate_cpm_c(mod, "cpm", out_dir=...)`` writes ``mirrornet_cpm.c``, ``mirrornet_cpm.h`` and
``math.h``; ``lower_cpm`` gives the scheduled TIR it is generated from (the benchmark compiles the
same module with ``tvm.compile`` for a like-for-like comparison). ``estimate_arena(plan)`` predicts
the arena and weights the generator will plan for a CPM plan without running TVM (the strategy's
secure-memory estimate); ``cpm_memory`` computes them from the lowered CPM without writing C.
"""
from .arena_estimate import ArenaEstimate, estimate_arena  # noqa: F401
from .emit import CpmCode, CpmMemory, cpm_memory, generate_cpm_c, measure_stack  # noqa: F401
from .lower import lower_cpm, schedule_report  # noqa: F401
from .memory_plan import ArenaPlan, BufferLife, KernelStep, kernel_lifetimes, plan_arena  # noqa: F401
from .schedule import CpmCpuSchedule  # noqa: F401
