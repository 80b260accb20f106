"""TIR pass: give each kernel a plain C signature, one raw pointer per buffer parameter.

TVM's default CPU lowering (MakePackedAPI) turns a PrimFunc into a packed-FFI function that unpacks
DLTensors and needs the TVM runtime. The CPM kernels are called from our own generated entry point
instead, so each buffer parameter becomes a typed pointer (``float *x``) and the buffer is declared
over it in the body (``DeclBuffer``); the later lowering passes and the C code generator then print
an ordinary C function.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.tirx.buffer import buffer_data_pointer_type, is_buffer_var

from ..errors import CompileError


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mirrornet.PlainCParams")
class PlainCParams:
    """Replace every buffer parameter of a PrimFunc by a raw data pointer plus a DeclBuffer."""

    def transform_function(self, func, mod, ctx):  # noqa: ARG002 - pass protocol
        params, decls = [], []
        for param in func.params:
            if not is_buffer_var(param):
                raise CompileError(
                    f"CPM kernel parameter '{param.name}' is a scalar ({param.ty}); only tensor "
                    "parameters with static shapes can become plain C. Give the CPM static shapes."
                )
            for dim in param.ty.shape:
                if not isinstance(dim, tvm.tirx.IntImm):
                    raise CompileError(
                        f"CPM kernel parameter '{param.name}' has a symbolic shape; the CPM needs "
                        "static shapes (export the model with a fixed batch of 1)."
                    )
            pointer = tirx.Var(param.name, buffer_data_pointer_type(param))
            decls.append(tirx.DeclBuffer(param, data=pointer))
            params.append(pointer)
        body = tirx.SeqStmt([*decls, func.body])
        return tirx.PrimFunc(params, body, func.ret_type, func.attrs)
