"""Fast, faithful lowering for emulation: the compile path's passes with the slow parts cached.

Emulating hundreds of strategies means lowering hundreds of CPMs. Two steps of the compile path
dominate its time and neither changes what the kernels are:

- ``FoldConstant`` compiles and runs every constant subexpression (bias reshapes, weight
  transposes). Kernel *structure* does not depend on weight values, so :class:`ZeroFoldConstants`
  replaces each call on constants by a zero constant of its type, without compiling anything.
- ``LegalizeOps`` builds a TE compute for every operator call. :class:`LoweringCache` wraps each
  operator's registered legalization so that an operator seen before with the same attributes and
  argument types reuses the PrimFunc it produced.

``FuseOps`` and ``FuseTIR`` run unchanged (fusion is TVM's), and kernel schedules (tuning database,
the CPM's default CPU rule) are applied once per distinct fused kernel. A test checks that the
kernels match those of the real compile path.
"""
from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import Op

_CALL_TIR = "relax.call_tir"


def _is_const(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def _static_tensor_type(ty):
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        shape = [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):
        return None
    return shape, str(ty.dtype)


@relax.expr_functor.mutator
class _ZeroFolder(relax.PyExprMutator):
    def visit_call_(self, call):  # noqa: D401 - visitor protocol
        call = super().visit_call_(call)
        if not isinstance(call.op, Op):
            return call
        if call.op.name == _CALL_TIR:
            args = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
        else:
            args = list(call.args)
        if not args or not all(_is_const(a) for a in args):
            return call
        static = _static_tensor_type(call.ty)
        if static is None:
            return call
        shape, dtype = static
        return relax.const(np.zeros(shape, dtype=dtype))


@tvm.transform.module_pass(opt_level=0, name="ZeroFoldConstants")
class ZeroFoldConstants:
    """Replace every operator call whose arguments are all constants by a zero constant of its type."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        folder = _ZeroFolder(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gv] = folder.visit_expr(func)
        return mod


class LoweringCache:
    """Legalized operators and scheduled kernels, remembered across calls (one per emulation)."""

    def __init__(self):
        self._legal: dict[str, tuple] = {}
        self._uncacheable: set[str] = set()
        self._scheduled: dict[tuple, tvm.tirx.PrimFunc] = {}
        self.hits = 0
        self.misses = 0

    # -- LegalizeOps with a memo ----------------------------------------------------------------
    @staticmethod
    def _signature(call) -> str:
        parts = [call.op.name, str(tvm_ffi.structural_hash(call.attrs)) if call.attrs is not None else "-"]
        for arg in call.args:
            if _is_const(arg):
                value = arg.value.numpy()
                parts.append(f"s{value.dtype}:{value.tolist()}" if value.ndim == 0
                             else f"c{list(value.shape)}{value.dtype}")
            else:
                parts.append(str(arg.ty))
        return "|".join(parts)

    def _wrap(self, default):
        def legalize(bb, call):
            key = self._signature(call)
            entry = self._legal.get(key)
            if entry is not None:
                self.hits += 1
                prim, name, index, out_ty = entry
                gv = bb.add_func(prim, name)
                return relax.call_tir(gv, relax.Tuple([call.args[i] for i in index]), out_ty)
            self.misses += 1
            result = default(bb, call)
            if key not in self._uncacheable:
                entry = self._entry(bb, call, result)
                if entry is None:
                    self._uncacheable.add(key)
                else:
                    self._legal[key] = entry
            return result

        return legalize

    @staticmethod
    def _entry(bb, call, result):
        """What to reuse: the PrimFunc and which of the call's arguments it takes, in order."""
        if not (isinstance(result, relax.Call) and isinstance(result.op, Op)
                and result.op.name == _CALL_TIR and len(result.args) == 2):
            return None
        gv, args = result.args
        if not isinstance(gv, tvm.ir.GlobalVar) or not isinstance(args, relax.Tuple):
            return None
        if not isinstance(call.ty, relax.TensorType):
            return None
        index = []
        for a in args.fields:
            pos = [i for i, c in enumerate(call.args) if c.same_as(a)]
            if not pos:
                return None
            index.append(pos[0])
        prim = bb.get()[gv]
        return prim, gv.name_hint, tuple(index), call.ty

    def legalize(self):
        """A ``LegalizeOps`` pass whose operator legalizations are memoised in this cache."""
        custom = {}
        for op_name in _legalizable_ops():
            default = Op.get(op_name).get_attr("FLegalize")
            if default is not None:
                custom[op_name] = self._wrap(default)
        return relax.transform.LegalizeOps(custom)

    # -- kernel schedules, once per distinct kernel ----------------------------------------------
    def schedule(self, funcs: dict, target, database=None, rule=None) -> dict:
        """Schedule PrimFuncs (name -> func): the database's record where it has one, else ``rule``."""
        target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
        out, todo = {}, {}
        tag = (str(target), id(database), _rule_tag(rule))
        keys = {}
        for name, func in funcs.items():
            key = (int(tvm_ffi.structural_hash(func)), tag)
            keys[name] = key
            if key in self._scheduled and tvm_ffi.structural_equal(self._scheduled[key][0], func):
                out[name] = self._scheduled[key][1]
            else:
                todo[name] = func
        if todo:
            mod = tvm.IRModule({tvm.ir.GlobalVar(n): f for n, f in todo.items()})
            with target:
                if database is not None:
                    with database:
                        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
                if rule is not None:
                    from tvm.s_tir import dlight

                    mod = dlight.ApplyDefaultSchedule(rule)(mod)
            for name, before in todo.items():
                after = mod[name]
                self._scheduled[keys[name]] = (before, after)
                out[name] = after
        return out


def _rule_tag(rule) -> tuple | None:
    """What tells schedule rules apart: the class and its plain settings (e.g. a tile size)."""
    if rule is None:
        return None
    settings = sorted((k, v) for k, v in vars(rule).items() if isinstance(v, (int, float, str, bool, tuple)))
    return (type(rule).__name__, tuple(settings))


_OPS: list[str] | None = None


def _legalizable_ops() -> list[str]:
    """Names of every registered Relax operator that has a legalization."""
    global _OPS
    if _OPS is None:
        names = tvm.get_global_func("ir.ListOpNames")()
        _OPS = [str(n) for n in names if str(n).startswith("relax.")
                and Op.get(str(n)).get_attr("FLegalize") is not None]
    return _OPS


def lowering_passes(cache: LoweringCache) -> list:
    """Phase 1 of the compile pipeline and the backbone/CPM legalization, with the slow parts cached."""
    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        ZeroFoldConstants(),
        cache.legalize(),
        relax.transform.AnnotateTIROpPattern(),
        ZeroFoldConstants(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
