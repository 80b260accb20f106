"""Generate the CPM as standalone C: ``mirrornet_cpm.c``, ``mirrornet_cpm.h`` and ``math.h``.

``generate_cpm_c`` is the entry point the compile step calls. It lowers the CPM's Relax function to
scheduled TIR (:mod:`.lower`), reads it as a program of kernel calls (:mod:`.kernel_graph`), turns
the kernels into plain C through TVM's C code generator (:mod:`.c_kernels`), plans one static arena
for every intermediate and workspace (:mod:`.memory_plan`), and writes:

- ``mirrornet_cpm.c``: weights as ``static const float`` arrays of hex-float literals (bit-exact),
  the arena, the kernels and the entry point ``mirrornet_cpm_run``;
- ``mirrornet_cpm.h``: the API of docs/architecture.md ("The CPM C API");
- ``math.h``: our libm-free math header for the TA include path.

Every file starts with a comment naming the mirrornet-tvm version and the source it was generated
from, and carries no date: the same input gives the same bytes.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm

from .. import __version__
from ..errors import CompileError, UsageError
from ..util import atomic_write
from .c_kernels import KernelSource, kernels_to_c
from .kernel_graph import CpmProgram, read_program
from .lower import lower_cpm, schedule_report
from .memory_plan import ArenaPlan, BufferLife, KernelStep, kernel_lifetimes, plan_arena

SOURCE_NAME = "mirrornet_cpm.c"
HEADER_NAME = "mirrornet_cpm.h"
MATH_NAME = "math.h"
MATH_TEMPLATE = Path(__file__).with_name("runtime") / "math.h"


@dataclass(frozen=True)
class CpmCode:
    """What ``generate_cpm_c`` wrote, and the sizes the manifest and the TA need."""

    out_dir: Path
    source: Path
    header: Path
    math_header: Path
    code_bytes: int  # size of mirrornet_cpm.c
    weight_bytes: int
    arena_bytes: int
    peak_live_bytes: int  # lower bound for the arena (most bytes live at one step)
    max_stack_bytes: int | None  # entry point + deepest kernel frame, by gcc -fstack-usage
    stack_measured_with: str | None  # compiler and flags of that measurement
    local_array_bytes: int  # largest local-array total of any kernel (kept on the stack)
    tap_shapes: tuple[tuple[int, ...], ...]
    tap_sizes: tuple[int, ...]  # floats per tap
    num_classes: int
    num_kernels: int
    schedules: tuple[tuple[str, str], ...]  # (kernel, "tuned" | "default" | "naive")
    sha256: str  # of mirrornet_cpm.c

    @property
    def tap_floats(self) -> int:
        return sum(self.tap_sizes)

    @property
    def tuned(self) -> bool:
        return any(how == "tuned" for _, how in self.schedules)

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("out_dir", "source", "header", "math_header"):
            data[key] = str(data[key])
        data["tap_shapes"] = [list(s) for s in self.tap_shapes]
        data["tap_sizes"] = list(self.tap_sizes)
        data["schedules"] = dict(self.schedules)
        data["tap_floats"] = self.tap_floats
        return data


def _hex_float(value: np.float32) -> str:
    text = float(value).hex()  # exact: every float32 is a double
    mantissa, exponent = text.split("p")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}f"


def _weight_array(name: str, array: np.ndarray, comment: str) -> str:
    flat = array.reshape(-1).astype(np.float32)
    if not np.all(np.isfinite(flat)):
        raise CompileError(f"weight {name} ({comment}) holds NaN or infinity; retrain or check the model.")
    literals = [_hex_float(v) for v in flat]
    rows = [", ".join(literals[i:i + 6]) for i in range(0, len(literals), 6)]
    body = ",\n    ".join(rows)
    return f"/* {comment} */\nstatic const float mirrornet_{name}[{flat.size}] = {{\n    {body}\n}};\n"


def _lifetimes(program: CpmProgram, kernels: dict[str, KernelSource]) -> list[BufferLife]:
    steps = [KernelStep(call.inputs, tuple((n, program.value(n).nbytes) for n in call.outputs),
                        tuple(kernels[call.kernel].workspace_bytes)) for call in program.calls]
    return kernel_lifetimes(steps, program.result)


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _entry_point(program: CpmProgram, kernels: dict[str, KernelSource], plan: ArenaPlan) -> str:
    taps = [v for v in program.values if v.kind == "tap"]

    def pointer(name: str, result_is_logits: bool = True) -> str:
        value = program.value(name)
        if name == program.result and result_is_logits:
            return "logits"
        if value.kind == "tap":
            return f"taps[{value.index}]"
        if value.kind == "weight":
            return f"mirrornet_{name}"
        return f"mirrornet_arena + {plan.offset(name) // 4}"

    lines = [
        "int mirrornet_cpm_run(const float *const taps[], float *logits)",
        "{",
        "    if (taps == NULL || logits == NULL) return -1;",
        "    if (" + " || ".join(f"taps[{t.index}] == NULL" for t in taps) + ") return -1;",
    ]
    for step, call in enumerate(program.calls):
        kernel = kernels[call.kernel]
        if kernel.num_params != len(call.inputs) + len(call.outputs):
            raise CompileError(f"kernel '{kernel.c_name}' has {kernel.num_params} buffer parameters but is "
                               f"called with {len(call.inputs) + len(call.outputs)} tensors.")
        args = [pointer(n) for n in (*call.inputs, *call.outputs)]
        args += [f"mirrornet_arena + {plan.offset(f'ws{step}_{k}') // 4}"
                 for k in range(len(kernel.workspace_bytes))]
        outs = ", ".join(f"{n} [{_shape_text(program.value(n).shape)}]" for n in call.outputs)
        lines.append(f"    /* {outs} = {call.kernel}({', '.join(call.inputs)}) */")
        lines.append(f"    {kernel.c_name}({', '.join(args)});")
    if not any(program.result in call.outputs for call in program.calls):
        result = program.value(program.result)
        lines.append(f"    /* the result is {result.kind} {result.name}: copy it out */")
        source = pointer(result.name, result_is_logits=False)
        lines.append(f"    for (int i = 0; i < {result.floats}; ++i) logits[i] = {source}[i];")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _banner(title: str, source_desc: str, extra: list[str]) -> str:
    lines = [
        "/*",
        f" * {title}",
        f" * Generated by mirrornet-tvm {__version__} (Apache TVM {tvm.__version__} C codegen) "
        f"from {source_desc}.",
        " * Do not edit: regenerate with mirrornet_tvm.codegen.generate_cpm_c (mirrornet compile).",
        *[f" * {line}" if line else " *" for line in extra],
        " */",
    ]
    return "\n".join(lines) + "\n"


def _source_text(program, kernels, plan, schedules, source_desc) -> str:
    taps = [v for v in program.values if v.kind == "tap"]
    weights = [v for v in program.values if v.kind == "weight"]
    counts = {how: sum(1 for _, h in schedules if h == how) for how in ("tuned", "default", "naive")}
    banner = _banner("mirrornet_cpm.c: the CPM (Companion Partial Monitor) as standalone C.", source_desc, [
        "",
        f"Taps: {len(taps)} ({', '.join(_shape_text(t.shape) for t in taps)}); "
        f"output: {_shape_text(program.value(program.result).shape)}.",
        f"Kernels: {len(kernels)} (schedules: {counts['tuned']} tuned, {counts['default']} default, "
        f"{counts['naive']} naive).",
        f"Weights: {sum(w.nbytes for w in weights)} bytes; arena: {plan.arena_bytes} bytes "
        "(every intermediate and workspace, statically planned).",
        "No TVM runtime, no heap, no libm. Build with -I<this folder> (for math.h) and",
        "-fno-math-errno. mirrornet_cpm_run is not reentrant: the arena is static.",
    ])
    parts = [
        banner,
        "#include <stddef.h>\n#include <stdint.h>\n#include <stdbool.h>\n"
        '#include "math.h"\n#include "mirrornet_cpm.h"\n',
        "/* ---- weights: IEEE-754 float32 as hex-float literals (bit-exact) ---- */\n",
    ]
    users: dict[str, list[str]] = {}
    for call in program.calls:
        for name in call.inputs:
            users.setdefault(name, []).append(call.kernel)
    for w in weights:
        comment = f"{w.name}: {_shape_text(w.shape)}, read by {', '.join(dict.fromkeys(users.get(w.name, ['-'])))}"
        parts.append(_weight_array(w.name, program.weights[w.index], comment))
    if plan.arena_bytes:
        parts.append("/* ---- arena: intermediates and kernel workspaces (offsets in floats) ---- */\n")
        parts.append("\n".join(f"/*   {name}: +{off // 4} */" for name, off in plan.offsets) + "\n")
        parts.append(f"static _Alignas({plan.alignment}) float mirrornet_arena[{plan.arena_bytes // 4}];\n")
    parts.append("/* ---- kernels: TVM C codegen over plain pointers ---- */\n")
    order = list(dict.fromkeys(call.kernel for call in program.calls))
    parts.extend(kernels[name].definition + "\n" for name in order)
    parts.append("/* ---- entry point ---- */\n")
    parts.append(_entry_point(program, kernels, plan))
    return "\n".join(parts)


def _header_text(program, plan, weight_bytes, sha, source_desc) -> str:
    taps = [v for v in program.values if v.kind == "tap"]
    sizes = [t.floats for t in taps]
    banner = _banner("mirrornet_cpm.h: interface of the generated CPM C code (mirrornet_cpm.c).",
                     source_desc, ["", *(f"tap {t.index}: {_shape_text(t.shape)} float32 (NCHW)" for t in taps)])
    return banner + "\n".join([
        "#ifndef MIRRORNET_CPM_H",
        "#define MIRRORNET_CPM_H",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define MIRRORNET_CPM_NUM_TAPS      {len(taps)}",
        f"#define MIRRORNET_CPM_TAP_SIZES     {{ {', '.join(map(str, sizes))} }}   /* floats per tap, strategy order */",
        f"#define MIRRORNET_CPM_TAP_FLOATS    {sum(sizes)}   /* sum of the above */",
        f"#define MIRRORNET_CPM_NUM_CLASSES   {program.value(program.result).floats}",
        f"#define MIRRORNET_CPM_ARENA_BYTES   {plan.arena_bytes}   /* static arena for every intermediate */",
        f"#define MIRRORNET_CPM_WEIGHT_BYTES  {weight_bytes}",
        f'#define MIRRORNET_CPM_SOURCE_SHA256 "{sha}"   /* hash of the generated .c */',
        "",
        "/* Returns 0 on success, -1 if taps, one of the tap pointers or logits is NULL.",
        " * taps[i] points at MIRRORNET_CPM_TAP_SIZES[i] floats (NCHW, batch 1); logits receives",
        " * MIRRORNET_CPM_NUM_CLASSES floats and must not overlap the taps. */",
        "int mirrornet_cpm_run(const float *const taps[], float *logits);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        "#endif /* MIRRORNET_CPM_H */",
        "",
    ])


def _math_text(source_desc: str) -> str:
    template = MATH_TEMPLATE.read_text()
    note = (f"/* Copied by mirrornet-tvm {__version__} from mirrornet_tvm/codegen/runtime/math.h for the "
            f"CPM generated from {source_desc}. */\n")
    return note + template


def _find_stack_compiler() -> str | None:
    for name in ("aarch64-linux-gnu-gcc", "gcc", "cc"):
        path = shutil.which(name)
        if path:
            return name
    return None


STACK_FLAGS = ("-Os", "-ffreestanding", "-fno-math-errno", "-fstack-usage")


def measure_stack(out_dir: Path, compiler: str | None = None) -> tuple[int | None, str | None]:
    """Worst stack depth of ``mirrornet_cpm_run``: its frame plus the largest kernel frame.

    Compiles the generated C with ``-fstack-usage`` (the kernels call nothing but inlined math, so
    the call depth is two). Returns (bytes, "compiler flags"), or (None, None) without a compiler.
    """
    compiler = compiler or _find_stack_compiler()
    if compiler is None:
        return None, None
    with tempfile.TemporaryDirectory(prefix="mirrornet-stack-") as tmp:
        obj = Path(tmp) / "cpm.o"
        cmd = [compiler, *STACK_FLAGS, "-I", str(out_dir), "-c", str(Path(out_dir) / SOURCE_NAME), "-o", str(obj)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise CompileError(f"the generated CPM C does not compile with {compiler}:\n{run.stderr[-2000:]}")
        frames = {}
        for line in obj.with_suffix(".su").read_text().splitlines():
            where, size, kind = line.rsplit("\t", 2)
            function = where.rsplit(":", 1)[-1]
            if "dynamic" in kind and "bounded" not in kind:
                raise CompileError(f"{function} in the generated CPM C allocates stack at run time; "
                                   "the CPM must have a fixed, small stack.")
            frames[function] = int(size)
    entry = frames.pop("mirrornet_cpm_run", 0)
    return entry + max(frames.values(), default=0), f"{compiler} {' '.join(STACK_FLAGS)}"


@dataclass(frozen=True)
class CpmMemory:
    """The arena and weights :func:`generate_cpm_c` plans for a CPM, without writing any C."""

    arena_bytes: int
    weight_bytes: int
    peak_live_bytes: int
    buffers: tuple[BufferLife, ...]  # every arena buffer (intermediates, workspaces) and its lifetime
    schedules: tuple[tuple[str, str], ...]  # (kernel, "tuned" | "default" | "naive")


def cpm_memory(mod: tvm.IRModule, func_name: str = "cpm", target=None, database=None, *,
               default_schedules: bool = True) -> CpmMemory:
    """Lower ``mod[func_name]`` exactly as :func:`generate_cpm_c` does and plan its arena."""
    lowered = lower_cpm(mod, func_name, target=target, database=database, default_schedules=default_schedules)
    program = read_program(lowered, func_name)
    kernels = kernels_to_c(lowered, {call.kernel: len(call.inputs) for call in program.calls})
    lives = _lifetimes(program, kernels)
    plan = plan_arena(lives)
    report = schedule_report(lowered)
    return CpmMemory(plan.arena_bytes, sum(v.nbytes for v in program.values if v.kind == "weight"),
                     plan.peak_live_bytes, tuple(lives),
                     tuple((name, report.get(name, "naive")) for name in
                           dict.fromkeys(call.kernel for call in program.calls)))


def generate_cpm_c(mod: tvm.IRModule, func_name: str = "cpm", out_dir: Path | None = None, target=None,
                   database=None, source_desc: str = "a Relax CPM function", *,
                   default_schedules: bool = True, stack_compiler: str | None = None,
                   measure_stack_usage: bool = True) -> CpmCode:
    """Write the CPM ``mod[func_name]`` as standalone C into ``out_dir``; see the module docstring.

    ``mod[func_name]`` takes the tap tensors (float32, static shapes) and returns the logits;
    weights are Relax constants. ``target`` (a TVM target or dict, default: host LLVM) selects the
    tuning records of ``database`` (a MetaSchedule database); kernels without a record get the
    default CPU schedule, or stay naive loops with ``default_schedules=False``.
    """
    if out_dir is None:
        raise UsageError("generate_cpm_c needs out_dir, the folder to write the CPM C files into.")
    out_dir = Path(out_dir)
    if "\n" in source_desc or "*/" in source_desc:
        raise UsageError("source_desc must be one line without '*/' (it goes into a C comment).")
    steps = 5 if measure_stack_usage else 4
    with tqdm(total=steps, desc="CPM C", unit="step", file=sys.stderr, disable=None) as bar:
        bar.set_postfix_str("lower + schedule")
        lowered = lower_cpm(mod, func_name, target=target, database=database,
                            default_schedules=default_schedules)
        program = read_program(lowered, func_name)
        bar.update()
        bar.set_postfix_str("kernels to C")
        kernels = kernels_to_c(lowered, {call.kernel: len(call.inputs) for call in program.calls})
        bar.update()
        bar.set_postfix_str("arena plan")
        plan = plan_arena(_lifetimes(program, kernels))
        bar.update()
        bar.set_postfix_str("emit")
        report = schedule_report(lowered)
        schedules = tuple((name, report.get(name, "naive")) for name in
                          dict.fromkeys(call.kernel for call in program.calls))
        weight_bytes = sum(v.nbytes for v in program.values if v.kind == "weight")
        source = _source_text(program, kernels, plan, schedules, source_desc)
        sha = hashlib.sha256(source.encode()).hexdigest()
        files = {
            MATH_NAME: _math_text(source_desc),
            HEADER_NAME: _header_text(program, plan, weight_bytes, sha, source_desc),
            SOURCE_NAME: source,
        }
        bar.update()
        stack, how = None, None
        if measure_stack_usage:  # before anything is written: a C file that does not compile stays out
            bar.set_postfix_str("stack usage")
            with tempfile.TemporaryDirectory(prefix="mirrornet-cpm-") as tmp:
                for name, text in files.items():
                    (Path(tmp) / name).write_text(text)
                stack, how = measure_stack(Path(tmp), stack_compiler)
            bar.update()
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            atomic_write(out_dir / name, text)
    taps = [v for v in program.values if v.kind == "tap"]
    return CpmCode(
        out_dir=out_dir,
        source=out_dir / SOURCE_NAME,
        header=out_dir / HEADER_NAME,
        math_header=out_dir / MATH_NAME,
        code_bytes=len(source.encode()),
        weight_bytes=weight_bytes,
        arena_bytes=plan.arena_bytes,
        peak_live_bytes=plan.peak_live_bytes,
        max_stack_bytes=stack,
        stack_measured_with=how,
        local_array_bytes=max((k.stack_array_bytes for k in kernels.values()), default=0),
        tap_shapes=tuple(t.shape for t in taps),
        tap_sizes=tuple(t.floats for t in taps),
        num_classes=program.value(program.result).floats,
        num_kernels=len(kernels),
        schedules=schedules,
        sha256=sha,
    )
