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
# Relax's op patterns (AnnotateTIROpPattern on the legalized operators): convolutions, dense layers,
# pools and reductions are "out-elementwise fusable" anchors; layout operators are injective; the
# rest (activations, batch norms, broadcasting arithmetic) elementwise
ELEMWISE, INJECTIVE, ANCHOR, OPAQUE = 0, 2, 4, 8
ANCHORS = ("Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean")
INJECTIVE_OPS = ("Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad")
UNMODELLED = ("LRN",)  # an upper bound only (see the module docstring)
_PATTERN = {**{k: ANCHOR for k in ANCHORS}, **{k: INJECTIVE for k in INJECTIVE_OPS},
            **{k: OPAQUE for k in UNMODELLED}}


@dataclass(frozen=True)
class ArenaEstimate:
    """Predicted memory of the generated CPM C: arena and weight bytes, and the kernels behind them."""

    arena_bytes: int
    weight_bytes: int
    peak_live_bytes: int
    steps: tuple[KernelStep, ...]
    kernels: tuple[tuple[str, ...], ...]  # plan op keys of each predicted kernel, in run order
    exact: bool = True  # False: the plan has an operator the estimate only bounds (UNMODELLED)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _Kernel:
    def __init__(self, index: int):
        self.index = index
        self.anchor = None          # the anchor op (at most one per kernel), or None
        self.ops: list = []
        self.last = -1              # plan position of the last op


def _post_dominators(plan, pattern, outs):
    """TVM's post-dominator tree of the operator graph: parent, and the combined pattern of the
    edges from an operator up to it (an operator whose value leaves the function has none)."""
    n = len(plan.ops)
    parent, depth, dom = [None] * n, [1] * n, [OPAQUE] * n
    for i in reversed(range(n)):
        if plan.ops[i].output == plan.output or not outs[i]:
            continue
        p, pat = outs[i][0]
        for j, edge in outs[i][1:]:
            while p != j and p is not None and j is not None:
                if depth[p] < depth[j]:
                    pat, j = max(pat, dom[j]), parent[j]
                elif depth[j] < depth[p]:
                    pat, p = max(pat, dom[p]), parent[p]
                else:
                    pat, p, j = max(pat, dom[p], dom[j]), parent[p], parent[j]
            p = p if p == j else None
            pat = max(pat, edge)
        parent[i], dom[i] = p, pat
        depth[i] = depth[p] + 1 if p is not None else 1
    return parent, dom


def _kernels(plan) -> list[_Kernel]:
    """The kernels of ``FuseOps`` (TVM's graph partitioner, phases 0 and 1) over the plan's operators."""
    ops = plan.ops
    pattern = [_PATTERN.get(op.op, ELEMWISE) for op in ops]
    index = {op.output: i for i, op in enumerate(ops)}
    outs: list[list] = [[] for _ in ops]  # (consumer, edge pattern: the consumer's)
    for j, op in enumerate(ops):
        for t in op.inputs:
            if t in index:
                outs[index[t]].append((j, pattern[j]))
    parent, dom = _post_dominators(plan, pattern, outs)
    up = list(range(len(ops)))   # union-find of the groups
    gpat = list(pattern)         # a group's pattern; a root's becomes its anchor's when one merges in
    anchored = [p == ANCHOR for p in pattern]

    def root(i):
        while up[i] != i:
            i = up[i]
        return i

    def path_ok(src, sink, ok):  # every operator from src to sink (its group's pattern) satisfies ok
        seen = set()

        def visit(i):
            if i in seen:
                return True
            seen.add(i)
            return ok(gpat[root(i)], i == sink) and (i == sink or all(visit(j) for j, _ in outs[i]))
        return all(visit(j) for j, _ in outs[src])

    def commit(src, sink):  # merge every group from src up to sink into sink's
        seen, target = set(), root(sink)

        def visit(i):
            if i == sink or i in seen:
                return
            seen.add(i)
            child = root(i)
            if child != target:
                up[child] = target
                if anchored[child]:
                    anchored[target], gpat[target] = True, max(gpat[target], gpat[child])
            for j, _ in outs[i]:
                visit(j)
        visit(src)

    for phase in (0, 1):
        for i in range(len(ops)):
            p, kind = parent[i], gpat[i]
            if kind == OPAQUE or p is None or root(i) == root(p):
                continue
            if kind == ANCHOR:  # into an elementwise post-dominator: the epilogue
                if phase == 0 and dom[i] == ELEMWISE and path_ok(i, p, lambda k, sink: k <= ELEMWISE):
                    commit(i, p)
            elif kind == ELEMWISE:  # into an injective or elementwise post-dominator, anchored or not
                if dom[i] <= INJECTIVE and path_ok(i, p, lambda k, sink: k <= (ANCHOR if sink else INJECTIVE)):
                    commit(i, p)
            elif phase == 1 and path_ok(i, p, lambda k, sink: k <= INJECTIVE):  # injective, after anchors
                commit(i, p)
    kernels: dict[int, _Kernel] = {}
    for i, op in enumerate(ops):
        k = kernels.setdefault(root(i), _Kernel(len(kernels)))
        k.ops.append(op)
        k.last = i
        if pattern[i] == ANCHOR:
            k.anchor = op
    return sorted(kernels.values(), key=lambda k: k.last)


def _workspaces(kernel: _Kernel, in_shapes: dict) -> tuple[int, ...]:
    op = kernel.anchor
    if op is None:
        if kernel.ops[0].op in UNMODELLED:
            return _unmodelled_workspaces(kernel.ops[0], in_shapes)
        return ()  # elementwise and layout blocks inline into each other
    epilogue = len(kernel.ops) > 1
    if op.op == "Gemm":
        return (FLOAT_BYTES * _numel(op.shape),)
    if op.op in ("GlobalAveragePool", "ReduceMean") or (op.op == "GlobalMaxPool" and epilogue):
        return (FLOAT_BYTES * _numel(op.shape),)  # per-channel sums (maxima) before the division (epilogue)
    if op.op == "GlobalMaxPool":
        return ()
    a = op.attrs
    out = []
    pads = list(a.get("pads") or (0, 0, 0, 0))
    half = len(pads) // 2
    if a.get("ceil_mode"):  # TOPI pads the end by stride - 1 more for a ceil-mode pool
        for i, s in enumerate(a.get("strides") or (1,) * half):
            pads[half + i] += int(s) - 1
    if any(pads):
        n, c, h, w = in_shapes[op.inputs[0]]
        out.append(FLOAT_BYTES * n * c * (h + pads[0] + pads[half]) * (w + pads[1] + pads[half + 1]))
    _, cout, h, w = op.shape
    tile = register_tile(w) if h * w > 0 else None
    block = channel_block(cout, tile) if tile is not None else cout
    if op.op != "MaxPool" or epilogue:  # a max pool without epilogue writes its output directly
        out.append(FLOAT_BYTES * block * h * w)
    return tuple(out)


def _unmodelled_workspaces(op, in_shapes) -> tuple[int, ...]:
    """An upper bound for LRN (squares, zero-padded along the channels, window averages, powers)."""
    n, c, h, w = in_shapes[op.inputs[0]]
    size = int(op.attrs.get("size", 1))
    return tuple(FLOAT_BYTES * x for x in (n * c * h * w, n * (c + size - 1) * h * w, n * c * h * w,
                                            n * c * h * w))


def _constant_bytes(plan) -> int:
    """Weights the plan's parameters do not count: each distinct Clip bound is one float (the
    importer's NaN guard on it is a binding the compile's clean-up shares between equal bounds)."""
    bounds = {(k, op.attrs.get(k)) for op in plan.ops if op.op == "Clip" for k in ("min", "max")}
    return FLOAT_BYTES * sum(1 for _, v in bounds if v is not None)


def estimate_arena(plan, alignment: int = DEFAULT_ALIGNMENT) -> ArenaEstimate:
    """The arena and weight bytes the C emitter will plan for ``plan``'s CPM (see the module docstring)."""
    kernels = _kernels(plan)
    shapes = {name: tuple(shape) for name, shape in plan.inputs}
    shapes.update({op.output: tuple(op.shape) for op in plan.ops})
    produced = {op.output: k for k in kernels for op in k.ops}
    step_of = {id(k): i for i, k in enumerate(kernels)}
    result = plan.output
    read_by = {}
    for k in kernels:
        for op in k.ops:
            for t in op.inputs:
                read_by.setdefault(t, set()).add(id(k))
    steps = []
    for i, k in enumerate(kernels):
        inside = {op.output for op in k.ops}
        inputs = []
        for op in k.ops:
            for t in op.inputs:
                if t not in inside and t not in inputs:
                    inputs.append(t)
        names = [f"t{step_of[id(produced[t])]}" if t in produced else t for t in inputs]
        out = [op.output for op in k.ops if op.output == result or read_by.get(op.output, set()) - {id(k)}][-1]
        name = result if out == result else f"t{i}"
        steps.append(KernelStep(tuple(names), ((name, FLOAT_BYTES * _numel(shapes[out])),),
                                _workspaces(k, shapes)))
    arena = plan_arena(kernel_lifetimes(steps, result), alignment)
    weights = FLOAT_BYTES * sum(op.params for op in plan.ops) + _constant_bytes(plan)
    return ArenaEstimate(arena.arena_bytes, weights, arena.peak_live_bytes, tuple(steps),
                         tuple(tuple(op.key for op in k.ops) for k in kernels),
                         not any(op.op in UNMODELLED for op in plan.ops))
