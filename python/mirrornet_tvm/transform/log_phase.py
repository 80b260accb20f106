"""LogPhase: announce a phase of the pipeline (a progress message on stderr) without changing the module."""
from __future__ import annotations

import sys
import time

import tvm


@tvm.transform.module_pass(opt_level=0, name="LogPhase")
class LogPhase:
    """Print ``[mirrornet] <message>`` and the module's function count when ``verbose``; return the module."""

    def __init__(self, message: str, verbose: bool = True, stream=None):
        self.message = message
        self.verbose = verbose
        self.stream = stream

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if self.verbose:
            stream = self.stream or sys.stderr
            names = sorted(gv.name_hint for gv in mod.get_global_vars())
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            print(f"[mirrornet {time.strftime('%H:%M:%S')}] {self.message} [{shown}]", file=stream,
                  flush=True)
        return mod
