"""ApplyTuningDatabase: replace PrimFuncs by their tuned schedules from a MetaSchedule database, if any."""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from .ffi_errors import register_errors

register_errors()  # our exceptions keep their type when they cross TVM's FFI


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Apply ``database`` (or the current ``ms.Database``) under the current target; no-op without one."""

    def __init__(self, database=None):
        self.database = database

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        database = self.database or ms.Database.current()
        if database is None:
            return mod
        if tvm.target.Target.current(allow_none=True) is None:
            raise ValueError("ApplyTuningDatabase needs a target: run it under `with target:`")
        with database:
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
