"""The CPM as standalone C: no TVM runtime, one static arena, no libm.

``generate_cpm_c(mod, "cpm", out_dir=...)`` writes ``mirrornet_cpm.c``, ``mirrornet_cpm.h`` and
``math.h``; ``lower_cpm`` gives the scheduled TIR it is generated from (the benchmark compiles the
same module with ``tvm.compile`` for a like-for-like comparison).
"""
from .emit import CpmCode, generate_cpm_c, measure_stack  # noqa: F401
from .lower import lower_cpm, schedule_report  # noqa: F401
from .memory_plan import ArenaPlan, BufferLife, plan_arena  # noqa: F401
from .schedule import CpmCpuSchedule  # noqa: F401
