"""The op set of classification CNNs, op by op and opset form by form (tests/onnx_op_cases.py): each
case imported with ``frontend.to_relax`` matches onnxruntime within 1e-4 on the Relax VM and as the
CPM's generated C, natively and (for the transcendental ops) freestanding under qemu-aarch64.

The C cases are batched: one generated program per group of cases, each case (after the compile
pipeline's clean-up phase, as the CPM gets it) a tap of its own and its output copied, flattened,
into the program's result. The copies are opaque kernels, so no case's kernels fuse with the glue:
each op is generated as it would be as the last op of a CPM.
"""
from __future__ import annotations

import functools
import subprocess

import numpy as np
import pytest
import torch

import tvm
from tvm import relax, topi

from mirrornet_tvm.codegen import generate_cpm_c, harness
from mirrornet_tvm.frontend import to_relax
from mirrornet_tvm.transform import FoldWeightLayout
from onnx_op_cases import CASES, ort_run

torch.set_num_threads(1)
TOL = 1e-4
SEEDS = (1, 2)
GROUPS = 4  # generated C programs for all cases (gcc start-up per program, not per case)
OPAQUE = 8  # relax's kOpaque op pattern: FuseOps fuses nothing into or out of such a kernel
TRANSCENDENTAL = ("Sigmoid", "Tanh", "HardSwish", "LRN", "Softmax")
AARCH64 = harness.aarch64("-Os")
needs_aarch64 = pytest.mark.skipif(
    not harness.available(AARCH64), reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (make setup)")
IDS = [c.id for c in CASES]
GROUP_OF = {c.id: i * GROUPS // len(CASES) for i, c in enumerate(CASES)}


def _close(actual, expected, what):
    if expected.ndim == 4 and expected.shape[2:] == (1, 1) and actual.shape == expected.shape[:2]:
        expected = expected.reshape(actual.shape)   # [1, C, 1, 1] outputs are flattened to logits on load
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


@functools.cache
def _relax(case_id):
    return to_relax(next(c for c in CASES if c.id == case_id).build())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_relax_vm_matches_onnxruntime(case):
    model = case.build()
    ex = tvm.compile(_relax(case.id), tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for seed in SEEDS:
        x = case.random_input(seed)
        _close(vm["main"](tvm.runtime.tensor(x)).numpy(), ort_run(model, x), f"{case.id} seed {seed}")


# ---- generated C ---------------------------------------------------------------------------------------

@relax.expr_functor.mutator
class _RenameGlobals(relax.PyExprMutator):
    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, op):
        return self.mapping.get(op.name_hint, op)


def batched_cpm(mods) -> tvm.IRModule:
    """One CPM ``cpm(tap0, tap1, ...)``: case k's ``main`` on tap k, its output copied (an opaque
    kernel) into a flat slice of the result, in order."""
    clean_up = tvm.transform.Sequential([  # phase 1 of the "mirrornet" pipeline, before the partition
        relax.transform.DecomposeOpsForInference(), FoldWeightLayout(), relax.transform.CanonicalizeBindings()])
    bb = relax.BlockBuilder()
    mains = []
    for k, mod in enumerate(map(clean_up, mods)):
        renamed = {gv.name_hint: bb.add_func(f, f"case{k}_{gv.name_hint}")
                   for gv, f in mod.functions_items() if gv.name_hint != "main"}
        mains.append(bb.add_func(_RenameGlobals(renamed).visit_expr(mod["main"]).without_attr("global_symbol"),
                                 f"case{k}"))
    taps = [relax.Var(f"tap{k}", mod["main"].params[0].ty) for k, mod in enumerate(mods)]
    with bb.function("cpm", taps):
        with bb.dataflow():
            flat = []
            for k, (main, tap) in enumerate(zip(mains, taps)):
                out = bb.emit(relax.Call(main, [tap]))
                size = int(np.prod([int(d) for d in out.ty.shape.values]))
                flat.append(bb.emit(bb.call_te(topi.reshape, out, (size,), primfunc_name_hint=f"flat_out{k}")))
            result = bb.emit_output(relax.op.concat(flat, axis=0))
        bb.emit_func_output(result)
    mod = bb.get()
    for gv, func in list(mod.functions_items()):
        if gv.name_hint.startswith("flat_out"):
            mod[gv] = func.with_attr("op_pattern", OPAQUE)
    mod = relax.transform.InlinePrivateFunctions()(mod)
    return relax.transform.DeadCodeElimination(["cpm"])(mod)


def _run_c(cases, out_dir, toolchain):
    """The cases' outputs from one generated program, per seed."""
    code = generate_cpm_c(batched_cpm([_relax(c.id) for c in cases]), "cpm", out_dir=out_dir,
                          source_desc="op-set test cases")
    exe = harness.build(out_dir, toolchain, out_dir / "cases")
    sizes = np.cumsum([0] + [int(np.prod(ort_run(c.build(), c.random_input()).shape)) for c in cases])
    outputs = {}
    for seed in SEEDS:
        flat, _ = harness.run(exe, [c.random_input(seed) for c in cases], code.num_classes, toolchain)
        outputs[seed] = [flat[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
    return code, outputs


def _undefined_in_ta_object(out_dir):
    """Undefined symbols of the generated C compiled as the TA compiles it (freestanding aarch64)."""
    obj = harness.compile_cpm_object(out_dir, AARCH64, out_dir / "ta.o")
    undefined = subprocess.run(["aarch64-linux-gnu-nm", "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    return {s for s in undefined if s not in ("U", "w")}


def _group(g):
    return [c for c in CASES if GROUP_OF[c.id] == g]


@pytest.fixture(scope="module")
def c_group(tmp_path_factory):
    """Group g's (out_dir, CpmCode, outputs per seed), generated and run once; a failure is kept too."""
    results = {}

    def run(g):
        if g not in results:
            out_dir = tmp_path_factory.mktemp(f"group{g}")
            try:
                results[g] = (out_dir, *_run_c(_group(g), out_dir, harness.native("-O2")))
            except Exception as err:  # noqa: BLE001 - reported by every case of the group
                results[g] = err
        if isinstance(results[g], Exception):
            raise results[g]
        return results[g]

    return run


def _check_outputs(cases, outputs):
    for seed, flats in outputs.items():
        for case, flat in zip(cases, flats):
            x = case.random_input(seed)
            expected = ort_run(case.build(), x)
            _close(flat.reshape(expected.shape), expected, f"{case.id} seed {seed}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_generated_c_matches_onnxruntime(case, c_group):
    group = _group(GROUP_OF[case.id])
    _, code, outputs = c_group(GROUP_OF[case.id])
    k = group.index(case)
    _check_outputs([case], {seed: [flats[k]] for seed, flats in outputs.items()})
    assert code.max_stack_bytes is not None and code.max_stack_bytes < 1024


@needs_aarch64
@pytest.mark.parametrize("group", range(GROUPS))
def test_generated_c_needs_nothing_beyond_memcpy_memset(group, c_group):
    out_dir, code, _ = c_group(group)
    assert _undefined_in_ta_object(out_dir) <= {"memcpy", "memset"}
    assert "#include <math.h>" not in code.source.read_text()


SANITIZED = harness.Toolchain("gcc", ("-O1", "-fno-math-errno", "-fsanitize=address,undefined",
                                     "-fno-sanitize-recover=all"), ("-O1", "-fsanitize=address,undefined"),
                              ("-fsanitize=address,undefined",))


@pytest.mark.parametrize("group", range(GROUPS))
def test_generated_c_stays_inside_its_arena(group, c_group, tmp_path):
    """AddressSanitizer: no kernel reads or writes past the planned arena, a weight or a tap."""
    out_dir, code, outputs = c_group(group)
    cases = _group(group)
    exe = harness.build(out_dir, SANITIZED, tmp_path / "sanitized")
    flat, _ = harness.run(exe, [c.random_input(SEEDS[0]) for c in cases], code.num_classes, SANITIZED)
    np.testing.assert_allclose(flat, np.concatenate(outputs[SEEDS[0]]), rtol=TOL, atol=TOL)


@needs_aarch64
def test_transcendental_ops_under_qemu_aarch64(tmp_path):
    cases = [c for c in CASES if set(c.ops) & set(TRANSCENDENTAL)]
    assert {op for c in cases for op in c.ops} >= set(TRANSCENDENTAL)
    _, outputs = _run_c(cases, tmp_path, AARCH64)
    _check_outputs(cases, outputs)


def test_batched_cpm_keeps_each_case_its_own_kernels():
    """The opaque copies keep the glue out of the cases' kernels: a lone elementwise op stays a kernel."""
    from mirrornet_tvm.codegen import lower_cpm
    from mirrornet_tvm.codegen.kernel_graph import read_program

    cases = [c for c in CASES if c.id in ("Tanh-21", "Pad-21-reflect")]
    program = read_program(lower_cpm(batched_cpm([_relax(c.id) for c in cases]), "cpm"), "cpm")
    kernels = [call.kernel for call in program.calls]
    assert len(kernels) == 5, kernels  # mul+tanh, pad, two copies, concat
    assert sum(k.startswith("flat_out") for k in kernels) == 2


# ---- math.h for the op set: powf (LRN), expf (Sigmoid, Softmax), tanhf ------------------------------------

POWF_SWEEP = r"""
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "MATH_H"
static int64_t ord(float f) { int32_t i; memcpy(&i, &f, 4); return i < 0 ? (int64_t)INT32_MIN - i : i; }
static int64_t ulps(float a, float b) {
  if (a != a && b != b) return 0; if (a != a || b != b) return 1 << 30;
  int64_t d = ord(a) - ord(b); return d < 0 ? -d : d; }
int main(void) {
  static const float ys[] = {-0.75f, 0.75f, -0.5f, 0.5f, 1.5f, -2.25f, 0.0001f, 3.0f, -1.0f, 7.3f};
  for (unsigned k = 0; k < sizeof ys / sizeof ys[0]; ++k) {
    int64_t worst = 0; long wrong = 0;
    for (long i = 0; i < 100000; ++i) {  /* bases 1e-6 .. 1e6, log-spaced: LRN's bias + alpha/size * sum x^2 */
      float x = (float)exp(-13.8 + 27.6 * (double)i / 99999);
      float want = (float)pow((double)x, (double)ys[k]);
      if (!isfinite(want) || want == 0.0f) continue;
      int64_t u = ulps(mirrornet_powf(x, ys[k]), want); if (u) ++wrong; if (u > worst) worst = u; }
    printf("%g %lld %ld\n", ys[k], (long long)worst, wrong); }
  printf("special %g %g %g %g\n", mirrornet_powf(0.0f, 0.75f), mirrornet_powf(-8.0f, 3.0f),
         mirrornet_powf(2.0f, -1.0f), mirrornet_powf(-2.0f, 0.5f));
  return 0;
}
"""


def test_powf_is_accurate_to_one_ulp(tmp_path):
    """LRN divides by (bias + alpha/size * sum x^2)^beta: powf with a fractional exponent."""
    from mirrornet_tvm.codegen.emit import MATH_TEMPLATE

    source = tmp_path / "powf.c"
    source.write_text(POWF_SWEEP.replace("MATH_H", str(MATH_TEMPLATE)))
    subprocess.run(["gcc", "-O2", str(source), "-o", str(tmp_path / "powf"), "-lm"], check=True)
    lines = subprocess.run([str(tmp_path / "powf")], capture_output=True, text=True, check=True).stdout.splitlines()
    special = lines.pop()
    assert len(lines) == 10
    for line in lines:
        y, worst, wrong = line.split()
        assert int(worst) <= 1, (y, worst)
        assert int(wrong) <= 100, (y, wrong)  # at most 0.1% not correctly rounded
    zero, cube, inverse, root = special.split()[1:]
    assert (zero, cube, inverse) == ("0", "-512", "0.5") and root.lstrip("-") == "nan"
