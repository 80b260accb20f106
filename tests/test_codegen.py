"""The CPM as standalone C (mirrornet_tvm.codegen): correctness against the Relax VM natively and
under qemu-aarch64, no undefined symbols beyond memcpy/memset, no libm, static arena, small stack,
bit-exact weights, reproducible output, and clear errors."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tvm
from tvm import relax
from tvm.relax.frontend import onnx as rx_onnx

from mirrornet_tvm import __version__
from mirrornet_tvm.codegen import generate_cpm_c, harness, lower_cpm
from mirrornet_tvm.codegen.emit import _hex_float
from mirrornet_tvm.codegen.exact_floats import BITS_FUNCTION, ExactFloatLiterals
from mirrornet_tvm.codegen.kernel_graph import read_program
from mirrornet_tvm.codegen.memory_plan import BufferLife, plan_arena
from mirrornet_tvm.errors import CompileError, UsageError

torch.set_num_threads(1)
TOL = 1e-5
HOST_TARGET = {"kind": "llvm"}
AARCH64 = harness.aarch64("-Os")
needs_aarch64 = pytest.mark.skipif(
    not harness.available(AARCH64), reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (make setup)")


# ---- test CPMs: small torch nets exported through ONNX into Relax ------------------------------------

class TwoTapCpm(torch.nn.Module):
    """conv/bn/relu/maxpool, residual adds with a second tap, a stand-alone bn, avgpool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 3 * 3, 10)

    def forward(self, tap0, tap1):
        x = torch.relu(self.bn1(self.conv1(tap0)))
        x = torch.nn.functional.max_pool2d(x, 2) + tap1
        y = self.bn2(torch.relu(self.conv2(x)) + x)  # bn after an add: not folded into a conv
        y = torch.nn.functional.avg_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


class ConcatCpm(torch.nn.Module):
    """1x1 and 3x3 branches, concat, swish (expf), tanh, global average pool, linear, softmax."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(6, 8, 1)
        self.b = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, tap0):
        c = torch.cat([torch.relu(self.a(tap0)), torch.tanh(self.b(tap0))], dim=1)
        c = torch.sigmoid(c) * c
        g = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(c, 1), 1)
        return torch.softmax(self.fc(g), dim=1)


MODELS = {
    "two_taps": (TwoTapCpm, [(1, 4, 14, 14), (1, 8, 7, 7)]),
    "concat": (ConcatCpm, [(1, 6, 8, 8)]),
}


def _relax_from_torch(net, shapes, tmp_path):
    torch.manual_seed(0)
    net = net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    args = tuple(torch.randn(*s) for s in shapes)
    path = tmp_path / "cpm.onnx"
    names = [f"tap{i}" for i in range(len(shapes))]
    torch.onnx.export(net, args, str(path), input_names=names, output_names=["logits"], dynamo=False)
    import onnx

    return rx_onnx.from_onnx(onnx.load(str(path)), keep_params_in_input=False)


def _vm_reference(mod, taps):
    ex = tvm.compile(mod, target=tvm.target.Target(HOST_TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(t) for t in taps]).numpy().reshape(-1)


class Built:
    def __init__(self, name, tmp_path_factory):
        net, shapes = MODELS[name]
        self.name, self.shapes = name, shapes
        root = tmp_path_factory.mktemp(name)
        self.mod = _relax_from_torch(net, shapes, root)
        self.out = root / "cpm"
        self.code = generate_cpm_c(self.mod, "main", out_dir=self.out, target=HOST_TARGET,
                                   source_desc=f"test CPM {name}")
        rng = np.random.default_rng(1)
        self.taps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        self.reference = _vm_reference(self.mod, self.taps)
        self.root = root


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request, tmp_path_factory):
    return Built(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def two_taps(tmp_path_factory):
    return Built("two_taps", tmp_path_factory)


# ---- correctness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["-O2", "-Os"])
def test_native_gcc_matches_relax_vm(built, opt):
    toolchain = harness.native(opt)
    exe = harness.build(built.out, toolchain, built.root / f"native{opt}")
    logits, _ = harness.run(exe, built.taps, built.code.num_classes, toolchain)
    np.testing.assert_allclose(logits, built.reference, rtol=TOL, atol=TOL)


@needs_aarch64
def test_aarch64_freestanding_under_qemu_matches_relax_vm(built):
    exe = harness.build(built.out, AARCH64, built.root / "aarch64")
    logits, _ = harness.run(exe, built.taps, built.code.num_classes, AARCH64)
    np.testing.assert_allclose(logits, built.reference, rtol=TOL, atol=TOL)


@needs_aarch64
def test_cpm_object_needs_nothing_beyond_memcpy_memset(built):
    obj = harness.compile_cpm_object(built.out, AARCH64, built.root / "nm.o")
    undefined = subprocess.run(["aarch64-linux-gnu-nm", "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    symbols = {s for s in undefined if s not in ("U", "w")}
    assert symbols <= {"memcpy", "memset"}, symbols
    defined = subprocess.run(["aarch64-linux-gnu-nm", "-g", "--defined-only", str(obj)], capture_output=True,
                             text=True, check=True).stdout
    assert re.findall(r" T (\w+)", defined) == ["mirrornet_cpm_run"]  # kernels and math are static


def test_default_schedule_beats_nothing_but_keeps_results(two_taps, tmp_path):
    """Naive (unscheduled) kernels give the same logits: the schedules only reorder loops."""
    code = generate_cpm_c(two_taps.mod, "main", out_dir=tmp_path, default_schedules=False,
                          measure_stack_usage=False)
    assert {how for _, how in code.schedules} == {"naive"}
    assert {how for _, how in two_taps.code.schedules} == {"default"}
    toolchain = harness.native("-O2")
    logits, _ = harness.run(harness.build(tmp_path, toolchain, tmp_path / "naive"), two_taps.taps,
                            code.num_classes, toolchain)
    np.testing.assert_allclose(logits, two_taps.reference, rtol=TOL, atol=TOL)


def test_tuning_database_schedules_apply_to_cpm_kernels(two_taps, tmp_path):
    """A MetaSchedule record (split, parallel, unroll) is applied, the parallel loop runs serially."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target(HOST_TARGET)
    lowered = lower_cpm(two_taps.mod, "main", target=target, default_schedules=False)
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    task = next(t for t in tasks if "matmul" in t.task_name)
    workload_mod = task.dispatched[0]
    sch = s_tir.Schedule(workload_mod)
    i0, i1, k = sch.get_loops(sch.get_sblock("matmul"))
    _, k_inner = sch.split(k, factors=[None, 8])
    sch.parallel(i1)
    sch.unroll(k_inner)
    db = ms.database.MemoryDatabase()
    record = ms.database.TuningRecord(sch.trace, db.commit_workload(workload_mod), [1e-3], target,
                                      ms.arg_info.ArgInfo.from_prim_func(workload_mod["main"]))
    db.commit_tuning_record(record)
    code = generate_cpm_c(two_taps.mod, "main", out_dir=tmp_path, target=target, database=db,
                          measure_stack_usage=False)
    schedules = dict(code.schedules)
    assert schedules[task.task_name] == "tuned"
    assert sum(how == "default" for how in schedules.values()) == len(schedules) - 1
    toolchain = harness.native("-O2")
    logits, _ = harness.run(harness.build(tmp_path, toolchain, tmp_path / "tuned"), two_taps.taps,
                            code.num_classes, toolchain)
    np.testing.assert_allclose(logits, two_taps.reference, rtol=TOL, atol=TOL)


# ---- the generated files -----------------------------------------------------------------------------

def _macros(header: str) -> dict[str, str]:
    return dict(re.findall(r"#define (MIRRORNET_CPM_\w+)\s+(.+?)(?:\s+/\*.*)?$", header, re.M))


def test_header_is_the_documented_api(built):
    header = built.code.header.read_text()
    source = built.code.source.read_bytes()
    macros = _macros(header)
    shapes = built.shapes
    sizes = [int(np.prod(s)) for s in shapes]
    assert int(macros["MIRRORNET_CPM_NUM_TAPS"]) == len(shapes)
    assert macros["MIRRORNET_CPM_TAP_SIZES"] == "{ " + ", ".join(map(str, sizes)) + " }"
    assert int(macros["MIRRORNET_CPM_TAP_FLOATS"]) == sum(sizes) == built.code.tap_floats
    assert int(macros["MIRRORNET_CPM_NUM_CLASSES"]) == 10 == built.code.num_classes
    assert int(macros["MIRRORNET_CPM_ARENA_BYTES"]) == built.code.arena_bytes > 0
    assert int(macros["MIRRORNET_CPM_WEIGHT_BYTES"]) == built.code.weight_bytes
    import hashlib

    assert macros["MIRRORNET_CPM_SOURCE_SHA256"] == f'"{hashlib.sha256(source).hexdigest()}"' \
        == f'"{built.code.sha256}"'
    assert "int mirrornet_cpm_run(const float *const taps[], float *logits);" in header
    assert built.code.code_bytes == len(source)
    for path in (built.code.source, built.code.header, built.code.math_header):
        assert f"mirrornet-tvm {__version__}" in path.read_text()[:600]
    for path in (built.code.source, built.code.header):
        assert "test CPM" in path.read_text()[:600]


def test_weights_are_bit_exact_hex_floats(built):
    source = built.code.source.read_text()
    program = read_program(lower_cpm(built.mod, "main", target=HOST_TARGET), "main")
    weights = [v for v in program.values if v.kind == "weight"]
    assert weights and built.code.weight_bytes == sum(w.nbytes for w in weights)
    for w in weights:
        body = re.search(rf"static const float mirrornet_{w.name}\[(\d+)\] = {{(.*?)}};", source, re.S)
        assert body and int(body.group(1)) == w.floats
        parsed = np.array([float.fromhex(t.strip().rstrip("f")) for t in body.group(2).split(",")], np.float32)
        assert parsed.tobytes() == program.weights[w.index].astype(np.float32).tobytes()


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -2.5, 0.1, 3.4028235e38, -1.1754944e-38, 1e-45, 123456.789])
def test_hex_float_literal_round_trips(value):
    f32 = np.float32(value)
    text = _hex_float(f32)
    assert text.endswith("f") and text.startswith(("0x", "-0x"))
    assert np.float32(float.fromhex(text[:-1])).tobytes() == f32.tobytes()


def test_static_arena_small_stack_no_heap(built):
    source = built.code.source.read_text()
    assert "malloc" not in source and "TVMBackend" not in source and "TVMFFI" not in source
    assert "#include <math.h>" not in source and '#include "math.h"' in source
    local_arrays = re.findall(r"^\s+(?:float|double|u?int\d+_t)\s+\w+\[(\d+)\];", source, re.M)
    assert all(4 * int(n) <= 256 for n in local_arrays), local_arrays
    assert re.search(rf"static _Alignas\(64\) float mirrornet_arena\[{built.code.arena_bytes // 4}\];", source)
    assert built.code.arena_bytes >= built.code.peak_live_bytes > 0
    assert built.code.max_stack_bytes is not None and built.code.max_stack_bytes < 1024


def test_output_is_reproducible(two_taps, tmp_path):
    again = generate_cpm_c(two_taps.mod, "main", out_dir=tmp_path, target=HOST_TARGET,
                           source_desc="test CPM two_taps", measure_stack_usage=False)
    for name in ("mirrornet_cpm.c", "mirrornet_cpm.h", "math.h"):
        assert (tmp_path / name).read_bytes() == (two_taps.out / name).read_bytes(), name
    assert again.sha256 == two_taps.code.sha256
    assert not re.search(r"20\d\d-\d\d-\d\d|\d\d:\d\d:\d\d", (tmp_path / "mirrornet_cpm.c").read_text())
    other = generate_cpm_c(two_taps.mod, "main", out_dir=tmp_path / "other", target=HOST_TARGET,
                           source_desc="another source", measure_stack_usage=False)
    assert "another source" in other.source.read_text()[:600]


# ---- our math.h ------------------------------------------------------------------------------------

MATH_SWEEP = r"""
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "MATH_H"
static int64_t ord(float f) { int32_t i; memcpy(&i, &f, 4); return i < 0 ? (int64_t)INT32_MIN - i : i; }
static int64_t ulps(float a, float b) {
  if (a != a && b != b) return 0; if (a != a || b != b) return 1 << 30;
  int64_t d = ord(a) - ord(b); return d < 0 ? -d : d; }
#define SWEEP(name, mine, ref, lo, hi) do { int64_t worst = 0; long wrong = 0; \
  for (long i = 0; i < N; ++i) { float x = (lo) + ((hi) - (lo)) * (float)((double)i / (N - 1)); \
    int64_t u = ulps(mine(x), (float)ref((double)x)); if (u) ++wrong; if (u > worst) worst = u; } \
  printf("%s %lld %ld\n", name, (long long)worst, wrong); } while (0)
#define N 200000
int main(void) {
  SWEEP("expf", mirrornet_expf, exp, -104.0f, 89.0f);
  SWEEP("logf", mirrornet_logf, log, 1e-38f, 3e38f);
  SWEEP("logf_small", mirrornet_logf, log, 1e-45f, 1e-37f);
  SWEEP("tanhf", mirrornet_tanhf, tanh, -21.0f, 21.0f);
  SWEEP("erff", mirrornet_erff, erf, -5.0f, 5.0f);
  SWEEP("sqrtf", mirrornet_sqrtf, sqrt, 0.0f, 1e6f);
  printf("special %g %g %g %g %g %g\n", mirrornet_expf(-INFINITY), mirrornet_logf(0.0f),
         mirrornet_tanhf(INFINITY), mirrornet_floorf(-2.5f), mirrornet_roundf(-2.5f), mirrornet_nearbyintf(2.5f));
  return 0;
}
"""


def test_math_h_is_accurate_to_one_ulp(tmp_path):
    from mirrornet_tvm.codegen.emit import MATH_TEMPLATE

    source = tmp_path / "sweep.c"
    source.write_text(MATH_SWEEP.replace("MATH_H", str(MATH_TEMPLATE)))
    exe = tmp_path / "sweep"
    subprocess.run(["gcc", "-O2", str(source), "-o", str(exe), "-lm"], check=True)  # software sqrtf path
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    results = {line.split()[0]: line.split()[1:] for line in out}
    for name in ("expf", "logf", "logf_small", "tanhf", "erff", "sqrtf"):
        worst, wrong = map(int, results[name])
        assert worst <= 1, (name, worst)
        assert wrong <= 200, (name, wrong)  # at most 0.1% not correctly rounded
    for name in ("logf", "logf_small", "sqrtf", "expf", "tanhf"):
        assert int(results[name][0]) == 0, name  # correctly rounded on this sweep
    assert results["special"] == ["0", "-inf", "1", "-3", "-3", "2"]


@needs_aarch64
def test_math_h_needs_no_libm_when_freestanding(tmp_path):
    from mirrornet_tvm.codegen.emit import MATH_TEMPLATE

    shutil.copy(MATH_TEMPLATE, tmp_path / "math.h")
    (tmp_path / "use.c").write_text(
        '#include "math.h"\n'
        "float use(float x, float y);\n"
        "float use(float x, float y) { return expf(x) + logf(y) + tanhf(x) + erff(y) + sqrtf(y) + powf(y, x)"
        " + floorf(x) + ceilf(y) + roundf(x) + truncf(y) + nearbyintf(x) + fabsf(x) + fmaxf(x, y) + fminf(x, y); }\n")
    flags = list(AARCH64.cpm_flags)
    subprocess.run([AARCH64.cc, *flags, "-I", str(tmp_path), "-c", str(tmp_path / "use.c"), "-o",
                    str(tmp_path / "use.o")], check=True)
    undefined = subprocess.run(["aarch64-linux-gnu-nm", "-u", str(tmp_path / "use.o")], capture_output=True,
                               text=True, check=True).stdout.split()
    assert [s for s in undefined if s not in ("U", "w")] == []


# ---- passes and planning -----------------------------------------------------------------------------

def test_exact_float_literals_pass():
    from tvm.script import tirx as T

    @T.prim_func
    def func(a: T.handle("float32"), b: T.handle("float32")):
        A = T.decl_buffer((2,), data=a)
        B = T.decl_buffer((2,), data=b)
        B[0] = A[0] * T.float32(0.1) + T.float32(123456.789)
        B[1] = A[1] * T.float32(3.0)

    text = ExactFloatLiterals()(tvm.IRModule({"func": func}))["func"].script()
    bits = {struct.unpack("<I", struct.pack("<f", v))[0] for v in (0.1, 123456.789)}
    found = {int(x) for x in re.findall(rf'"{BITS_FUNCTION}", T\.uint32\((\d+)\)', text)}
    assert found == bits
    assert "T.float32(3.0)" in text  # short literals that C reads back exactly stay as they are


lifetimes = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 20), st.integers(0, 6)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(lifetimes)
def test_arena_plan_never_overlaps_live_buffers(spec):
    buffers = [BufferLife(f"b{i}", size, first, first + extra) for i, (size, first, extra) in enumerate(spec)]
    plan = plan_arena(buffers, alignment=64)
    where = dict(plan.offsets)
    for b in buffers:
        assert where[b.name] % 64 == 0 and where[b.name] + b.size <= plan.arena_bytes
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert where[a.name] + a.size <= where[b.name] or where[b.name] + b.size <= where[a.name]
    assert plan.arena_bytes >= plan.peak_live_bytes
    assert plan.arena_bytes <= sum((b.size + 63) // 64 * 64 for b in buffers)


def test_arena_plan_of_a_chain_reuses_memory():
    chain = [BufferLife(f"t{i}", 4096, i, i + 1) for i in range(6)]  # each read by the next step only
    plan = plan_arena(chain)
    assert plan.arena_bytes == plan.peak_live_bytes == 2 * 4096


# ---- errors ----------------------------------------------------------------------------------------

def _relax(build):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("cpm", [x]):
        bb.emit_func_output(bb.emit(build(x)))
    return bb.get()


def test_errors_say_what_is_wrong(tmp_path, two_taps):
    with pytest.raises(CompileError, match="no function 'cpm'.*main"):
        generate_cpm_c(two_taps.mod, "cpm", out_dir=tmp_path)
    with pytest.raises(UsageError, match="out_dir"):
        generate_cpm_c(two_taps.mod, "main")
    with pytest.raises(UsageError, match="one line"):
        generate_cpm_c(two_taps.mod, "main", out_dir=tmp_path, source_desc="a */ b")
    with pytest.raises(CompileError, match="sinf"):
        generate_cpm_c(_relax(relax.op.sin), "cpm", out_dir=tmp_path, measure_stack_usage=False)
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, 4), "float32"))
    with bb.function("cpm", [x]):
        bb.emit_func_output(bb.emit(relax.op.nn.relu(x)))
    with pytest.raises(CompileError, match="symbolic shape"):
        generate_cpm_c(bb.get(), "cpm", out_dir=tmp_path)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "int32"))
    with bb.function("cpm", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(CompileError, match="int32.*float32"):
        generate_cpm_c(bb.get(), "cpm", out_dir=tmp_path)
    assert not (tmp_path / "mirrornet_cpm.c").exists()  # nothing half-written


@pytest.mark.parametrize("body", ["identity", "relu"])
def test_degenerate_cpms_still_run(tmp_path, body):
    """A CPM that returns a tap unchanged (copied out) or needs no intermediate (no arena)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 10), "float32"))
    with bb.function("cpm", [x]):
        bb.emit_func_output(x if body == "identity" else bb.emit(relax.op.nn.relu(x)))
    code = generate_cpm_c(bb.get(), "cpm", out_dir=tmp_path, measure_stack_usage=False)
    assert code.arena_bytes == 0 and code.num_kernels == (0 if body == "identity" else 1)
    tap = np.linspace(-1, 1, 10).astype(np.float32)
    toolchain = harness.native("-O2")
    logits, _ = harness.run(harness.build(tmp_path, toolchain, tmp_path / "exe"), [tap], 10, toolchain)
    np.testing.assert_array_equal(logits, tap if body == "identity" else np.maximum(tap, 0))


def test_large_local_arrays_fail_the_build():
    from mirrornet_tvm.codegen.c_kernels import STACK_ARRAY_LIMIT, _stack_arrays

    assert _stack_arrays("k", ["  float acc[16];", "  float x = 1.0f;"]) == 64
    with pytest.raises(CompileError, match=f"{4 * 4096} bytes of local arrays.*limit {STACK_ARRAY_LIMIT}"):
        _stack_arrays("k", ["  float pad_temp[4096];"])
