"""TIR pass: make every float32 literal survive the trip through C text exactly.

TVM's C code generator prints float immediates with seven significant digits (``1.234568e+05f``),
which does not round-trip for most floats. Literals that the short form does not reproduce become a
call ``mirrornet_f32(<IEEE-754 bits>)``, an inline function of the CPM's ``math.h`` that the C
compiler folds back into the exact constant.
"""
from __future__ import annotations

import struct

import tvm
import tvm_ffi
from tvm import tirx

BITS_FUNCTION = "mirrornet_f32"


def _printed_form_is_exact(value: float) -> bool:
    """Whether TVM's ``%e``-style literal denotes this float32 exactly enough to read back as it.

    Strict on purpose: the printed decimal must equal the float to double precision, so any C
    compiler's decimal-to-float rounding returns the same float.
    """
    exact = struct.unpack("<f", struct.pack("<f", value))[0]
    if exact != exact or exact in (float("inf"), float("-inf")):
        return False
    return float(f"{exact:.6e}") == exact


def _exact(imm):
    if str(imm.ty) != "float32" or _printed_form_is_exact(imm.value):
        return imm
    bits = struct.unpack("<I", struct.pack("<f", imm.value))[0]
    return tirx.call_pure_extern("float32", BITS_FUNCTION, tirx.const(bits, "uint32"))


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mirrornet.ExactFloatLiterals")
class ExactFloatLiterals:
    """Replace float32 literals whose printed form is inexact by their bit pattern."""

    def transform_function(self, func, mod, ctx):  # noqa: ARG002 - pass protocol
        return tvm_ffi.structural_map(func, [(tirx.FloatImm, _exact)])
