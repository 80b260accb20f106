"""TIR pass: run parallel loops serially.

A tuned schedule may mark loops ``parallel`` for the host's thread pool. The CPM runs on one core
inside a trusted application with no thread pool, so those loops become ordinary serial loops (same
iteration space, same results).
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from ..errors import CompileError


def _serialize(loop):
    if loop.kind == tirx.ForKind.PARALLEL:
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body,
                        None, loop.annotations, loop.step, loop.span)
    if loop.kind == tirx.ForKind.THREAD_BINDING:
        raise CompileError(
            f"CPM kernel loop '{loop.loop_var.name}' is bound to a GPU thread axis; the CPM needs "
            "schedules for a CPU target (tune it for an 'llvm' target)."
        )
    return loop


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mirrornet.SerialLoops")
class SerialLoops:
    """Turn every ``parallel`` loop into a serial loop; reject GPU thread bindings."""

    def transform_function(self, func, mod, ctx):  # noqa: ARG002 - pass protocol
        return tvm_ffi.structural_map(func, [(tirx.For, _serialize)])
