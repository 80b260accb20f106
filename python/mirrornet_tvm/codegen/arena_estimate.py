"""The CPM's arena and weights as the C emitter will plan them, predicted from a CPM plan in microseconds.

Generating the C (:func:`.emit.generate_cpm_c`) takes about a second per CPM, most of it in TVM's
legalization; choosing among hundreds of strategies needs their secure memory at once. This module
predicts, from a :class:`mirrornet_tvm.mirror.CpmPlan` alone, the kernel program the compile path
produces with the default schedules, and plans its arena with the emitter's own functions
(:func:`.memory_plan.kernel_lifetimes`, :func:`.memory_plan.plan_arena`): same liveness, same
64-byte alignment, same greedy placement. What it predicts:

- **Kernels** (TVM's ``FuseOps`` on the CPM's operators): a convolution, a max or average pool or
  a dense layer (Gemm) anchors a kernel with its bias and absorbs the elementwise operators (ReLU,
  LeakyReLU, Clip, Add, a batch norm no convolution absorbed) that follow while the value they read
  has no other reader; an elementwise operator with two fusable producers joins the one that comes
  first; at most one anchor per kernel. Global average pools, flattens (a copy) and concatenations
  are kernels of their own; an elementwise operator no kernel absorbs starts one. A kernel runs at
  the position of its last operator.
- **Workspaces** (what :class:`.lift_workspace.LiftWorkspace` moves to the arena after
  :class:`.schedule.CpmCpuSchedule`): a padded convolution's or pool's zero-padded input; the
  anchor's result before its epilogue (a max pool without one writes its output directly), one
  block of planes (:func:`.schedule.channel_block` output channels of the whole map) when its rows
  are register-tiled (:func:`.schedule.register_tile`), else the whole map; a Gemm's product before
  its bias; a global average pool's per-channel sums.
- **Weights**: every parameter of the plan as ``static const float`` arrays (Conv and Gemm weights
  and biases, the four vectors of a lone batch norm).

The prediction is exact for CPMs made of these operators under the default schedules, which the
test suite checks against the real C generator over the zoo and a grid of strategies (the emitter
keeps one array per constant, so weights with equal values still count separately, as here). It
cannot see a tuning database: tuned CPM kernels may need other workspaces. The compile manifest
reports the generated sizes next to this estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory_plan import DEFAULT_ALIGNMENT, KernelStep, kernel_lifetimes, plan_arena
from .schedule import channel_block, register_tile

FLOAT_BYTES = 4
ANCHORS = ("Conv", "Gemm", "MaxPool", "AveragePool")
ELEMENTWISE = ("Relu", "LeakyRelu", "Clip", "Add", "BatchNormalization")


@dataclass(frozen=True)
class ArenaEstimate:
    """Predicted memory of the generated CPM C: arena and weight bytes, and the kernels behind them."""

    arena_bytes: int
    weight_bytes: int
    peak_live_bytes: int
    steps: tuple[KernelStep, ...]
    kernels: tuple[tuple[str, ...], ...]  # plan op keys of each predicted kernel, in run order


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _Kernel:
    def __init__(self, index: int, anchor):
        self.index = index          # creation order (FuseOps visits producers first)
        self.anchor = anchor        # the Conv/Gemm/pool op that anchors it, or None
        self.ops: list = []
        self.last = -1              # plan position of the last op
        self.open = True            # may still absorb elementwise consumers

    @property
    def output(self):
        return self.ops[-1]


def _kernels(plan) -> list[_Kernel]:
    readers: dict[str, int] = {}
    for op in plan.ops:
        for name in op.inputs:
            readers[name] = readers.get(name, 0) + 1
    shapes = dict(plan.inputs)
    shapes.update({op.output: op.shape for op in plan.ops})
    owner: dict[str, _Kernel] = {}
    kernels: list[_Kernel] = []

    def start(op, pos, anchor=None, open_=True):
        kernel = _Kernel(len(kernels), anchor)
        kernel.open = open_
        kernels.append(kernel)
        add(kernel, op, pos)

    def add(kernel, op, pos):
        kernel.ops.append(op)
        kernel.last = pos
        owner[op.output] = kernel

    for pos, op in enumerate(plan.ops):
        same_shapes = len({tuple(shapes[t]) for t in op.inputs}) == 1
        if op.op in ANCHORS:
            start(op, pos, anchor=op)
        elif op.op in ELEMENTWISE and same_shapes:
            # FuseOps: into the first kernel whose (sole-reader) output this op reads, if it is still open
            fusable = [owner[t] for t in op.inputs
                       if t in owner and owner[t].open and owner[t].output.output == t and readers[t] == 1]
            if fusable:
                add(min(fusable, key=lambda k: k.index), op, pos)
            else:
                start(op, pos)
        else:  # GlobalAveragePool, Flatten, Concat, a broadcasting elementwise op: kernels of their own
            start(op, pos, open_=False)
    return sorted(kernels, key=lambda k: k.last)


def _workspaces(kernel: _Kernel, in_shapes: dict) -> tuple[int, ...]:
    op = kernel.anchor
    if op is None:
        first = kernel.ops[0]
        if first.op == "GlobalAveragePool":
            return (FLOAT_BYTES * first.shape[1],)
        return ()
    if op.op == "Gemm":
        return (FLOAT_BYTES * _numel(op.shape),)
    a = op.attrs
    out = []
    pads = tuple(a.get("pads") or (0, 0, 0, 0))
    if any(pads):
        n, c, h, w = in_shapes[op.inputs[0]]
        half = len(pads) // 2
        out.append(FLOAT_BYTES * n * c * (h + pads[0] + pads[half]) * (w + pads[1] + pads[half + 1]))
    _, cout, h, w = op.shape
    tile = register_tile(w) if h * w > 0 else None
    block = channel_block(cout, tile) if tile is not None else cout
    if op.op != "MaxPool" or len(kernel.ops) > 1:  # a max pool without epilogue writes its output directly
        out.append(FLOAT_BYTES * block * h * w)
    return tuple(out)


def estimate_arena(plan, alignment: int = DEFAULT_ALIGNMENT) -> ArenaEstimate:
    """The arena and weight bytes the C emitter will plan for ``plan``'s CPM (see the module docstring)."""
    kernels = _kernels(plan)
    shapes = {name: tuple(shape) for name, shape in plan.inputs}
    shapes.update({op.output: tuple(op.shape) for op in plan.ops})
    produced = {op.output: k for k in kernels for op in k.ops}
    step_of = {id(k): i for i, k in enumerate(kernels)}
    result = plan.output
    steps = []
    for i, k in enumerate(kernels):
        inside = {op.output for op in k.ops}
        inputs = []
        for op in k.ops:
            for t in op.inputs:
                if t not in inside and t not in inputs:
                    inputs.append(t)
        names = [f"t{step_of[id(produced[t])]}" if t in produced else t for t in inputs]
        out = k.output.output
        name = result if out == result else f"t{i}"
        steps.append(KernelStep(tuple(names), ((name, FLOAT_BYTES * _numel(shapes[out])),),
                                _workspaces(k, shapes)))
    arena = plan_arena(kernel_lifetimes(steps, result), alignment)
    weights = FLOAT_BYTES * sum(op.params for op in plan.ops)  # a lone batch norm keeps its 4 vectors
    return ArenaEstimate(arena.arena_bytes, weights, arena.peak_live_bytes, tuple(steps),
                         tuple(tuple(op.key for op in k.ops) for k in kernels))
