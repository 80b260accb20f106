"""The CPM's arena and weights as the C emitter will plan them, predicted from a CPM plan in microseconds.

Generating the C (:func:`.emit.generate_cpm_c`) takes about a second per CPM, most of it in TVM's
legalization; choosing among hundreds of strategies needs their secure memory at once. This module
predicts, from a :class:`mirrornet_tvm.mirror.CpmPlan` alone, the kernel program the compile path
produces with the default schedules, and plans its arena with the emitter's own functions
(:func:`.memory_plan.kernel_lifetimes`, :func:`.memory_plan.plan_arena`): same liveness, same
64-byte alignment, same greedy placement. What it predicts:

- **Kernels**: TVM's ``FuseOps`` (its graph partitioner: post-dominator tree, phases 0 and 1) run
  on the CPM's operators with the patterns Relax gives their legalized forms. Convolutions
  (depthwise and grouped too), dense layers (Gemm), max and average pools, global pools and
  ReduceMean are anchors: each takes the elementwise operators that follow into its kernel while
  its post-dominator is reached over elementwise edges only (a value with a second reader that is
  not elementwise stops it), at most one anchor per kernel. Elementwise operators (activations,
  Clip, Sigmoid, HardSwish, a batch norm no convolution absorbed, Add, Sum, Mul and the other
  broadcasting arithmetic) outside an anchor's kernel fuse forward into their post-dominator when
  it is elementwise or a layout operator, anchored or not; layout operators (Concat of any number
  of inputs, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Pad) fuse forward, after the
  anchors, into a kernel without anchor (a concatenation with the batch norm and ReLU after it is
  one kernel). An LRN is the three kernels TVM's importer makes of it: the squares, their average
  over a window of channels (a pool), the scaling. A kernel runs at the position of its last
  operator.
- **Workspaces** (what :class:`.lift_workspace.LiftWorkspace` moves to the arena after
  :class:`.schedule.CpmCpuSchedule`): a padded anchor's zero-padded input (a ceil-mode pool's
  padding grows by stride - 1 at the end, as TOPI pads it); the anchor's result before its
  epilogue (a max pool or global max pool without one writes its output directly), one block of
  planes (:func:`.schedule.channel_block` output channels of the whole map) when its rows are
  register-tiled (:func:`.schedule.register_tile`), else the whole map; a Gemm's product before its
  bias; a global pool's or ReduceMean's per-channel sums. Elementwise and layout operators inline
  into each other and need none.
- **Weights**: every parameter of the plan as ``static const float`` arrays (Conv and Gemm weights
  and biases, the four vectors of a lone batch norm), and one float per distinct Clip bound: the
  importer guards each bound against NaN in a binding, and the compile's clean-up shares equal
  bindings, so all ReLU6s of a CPM read the same two floats.

The prediction is exact for CPMs made of these operators under the default schedules, which the
test suite checks against the real C generator over the zoo, a grid of strategies and CPMs of the
standard architectures (:mod:`mirrornet_tvm.architectures`). One case is an upper bound: the
clean-up shares any two equal bindings, so the vectors of lone batch norms whose statistics are
equal (an untrained network: every mean 0, every variance 1) become shared arrays that the
estimate still counts once each. Constants passed as they are (Conv and Gemm weights and biases)
are never shared. The estimate cannot see a tuning database: tuned CPM kernels may need other
workspaces. The compile manifest reports the generated sizes next to this estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory_plan import DEFAULT_ALIGNMENT, KernelStep, kernel_lifetimes, plan_arena
from .schedule import channel_block, register_tile

FLOAT_BYTES = 4
# Relax's op patterns (AnnotateTIROpPattern on the legalized operators)
ELEMWISE, INJECTIVE, ANCHOR = 0, 2, 4
ANCHORS = ("Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean")
INJECTIVE_OPS = ("Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad")


@dataclass(frozen=True)
class ArenaEstimate:
    """Predicted memory of the generated CPM C: arena and weight bytes, and the kernels behind them."""

    arena_bytes: int
    weight_bytes: int
    peak_live_bytes: int
    steps: tuple[KernelStep, ...]
    kernels: tuple[tuple[str, ...], ...]  # plan op keys of each predicted kernel, in run order


@dataclass(frozen=True)
class _Node:
    """One operator of the fusion graph: a plan op, or one of the three parts of an LRN."""

    op: object            # the plan's CpmOp
    key: str
    output: str
    inputs: tuple
    shape: tuple
    pattern: int          # as a group of its own
    edges: tuple          # pattern of the edge from each input


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _nodes(plan) -> list[_Node]:
    nodes = []
    for op in plan.ops:
        if op.op != "LRN":
            p = ANCHOR if op.op in ANCHORS else INJECTIVE if op.op in INJECTIVE_OPS else ELEMWISE
            nodes.append(_Node(op, op.key, op.output, tuple(op.inputs), tuple(op.shape), p, (p,) * len(op.inputs)))
            continue
        # x * x, expand_dims to [N, 1, C, H, W]; avg_pool3d over `size` channels; squeeze, x / (...)^beta
        (x,), (n, c, h, w) = op.inputs, op.shape
        square, window = f"{op.output}:square", f"{op.output}:window"
        nodes += [_Node(op, f"{op.key}:square", square, (x,), (n, 1, c, h, w), INJECTIVE, (ELEMWISE,)),
                  _Node(op, f"{op.key}:window", window, (square,), (n, 1, c, h, w), ANCHOR, (ANCHOR,)),
                  _Node(op, op.key, op.output, (window, x), op.shape, ELEMWISE, (INJECTIVE, ELEMWISE))]
    return nodes


class _Kernel:
    def __init__(self):
        self.anchor = None          # the anchor node (at most one per kernel), or None
        self.nodes: list = []
        self.last = -1              # position of the last node


def _post_dominators(nodes, outs, result):
    """TVM's post-dominator tree of the fusion graph: each node's parent, and the combined pattern
    of the edges from it up to its parent (a node whose value leaves the function has none)."""
    n = len(nodes)
    parent, depth, dom = [None] * n, [1] * n, [ANCHOR] * n
    for i in reversed(range(n)):
        if nodes[i].output == result or not outs[i]:
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
    nodes = _nodes(plan)
    index = {node.output: i for i, node in enumerate(nodes)}
    outs: list[list] = [[] for _ in nodes]  # (consumer, edge pattern)
    for j, node in enumerate(nodes):
        for t, edge in zip(node.inputs, node.edges):
            if t in index:
                outs[index[t]].append((j, edge))
    parent, dom = _post_dominators(nodes, outs, plan.output)
    up = list(range(len(nodes)))        # union-find of the groups
    gpat = [n.pattern for n in nodes]   # a group's pattern; a root's becomes ANCHOR when an anchor merges in

    def root(i):
        while up[i] != i:
            i = up[i]
        return i

    def path_ok(src, sink, ok):  # every node after src up to sink (its group's pattern) satisfies ok
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
                gpat[target] = ANCHOR if gpat[child] == ANCHOR else gpat[target]
            for j, _ in outs[i]:
                visit(j)
        visit(src)

    for phase in (0, 1):
        for i in range(len(nodes)):
            p, kind = parent[i], gpat[i]
            if p is None or root(i) == root(p):
                continue
            if kind == ANCHOR:  # into an elementwise post-dominator: the epilogue
                if phase == 0 and dom[i] == ELEMWISE and path_ok(i, p, lambda k, sink: k == ELEMWISE):
                    commit(i, p)
            elif kind == ELEMWISE:  # into an elementwise or layout post-dominator, anchored or not
                if dom[i] <= INJECTIVE and path_ok(i, p, lambda k, sink: sink or k <= INJECTIVE):
                    commit(i, p)
            elif phase == 1 and path_ok(i, p, lambda k, sink: k <= INJECTIVE):  # layout, after the anchors
                commit(i, p)
    kernels: dict[int, _Kernel] = {}
    for i, node in enumerate(nodes):
        k = kernels.setdefault(root(i), _Kernel())
        k.nodes.append(node)
        k.last = i
        if node.pattern == ANCHOR:
            k.anchor = node
    return sorted(kernels.values(), key=lambda k: k.last)


def _workspaces(kernel: _Kernel, in_shapes: dict) -> tuple[int, ...]:
    node = kernel.anchor
    if node is None:
        return ()  # elementwise and layout operators inline into each other
    op, epilogue = node.op, len(kernel.nodes) > 1
    if op.op == "Gemm":
        return (FLOAT_BYTES * _numel(op.shape),)
    if op.op in ("GlobalAveragePool", "ReduceMean") or (op.op == "GlobalMaxPool" and epilogue):
        return (FLOAT_BYTES * _numel(op.shape),)  # per-channel sums (maxima) before the epilogue
    if op.op == "GlobalMaxPool":
        return ()
    a = op.attrs
    if op.op == "LRN":  # the window average: channels padded by size // 2 on both sides
        n, c, h, w = op.shape
        pad = int(a.get("size", 1)) // 2
        pads, shape = [pad, 0, pad, 0], (n, 1, c + 2 * pad, h, w)
    else:
        n, c, h, w = in_shapes[op.inputs[0]]
        pads, shape = list(a.get("pads") or (0, 0, 0, 0)), None
        if a.get("ceil_mode"):  # TOPI pads the end by stride - 1 more for a ceil-mode pool
            for i, s in enumerate(a.get("strides") or (1, 1)):
                pads[2 + i] += int(s) - 1
        if any(pads):
            shape = (n, c, h + pads[0] + pads[2], w + pads[1] + pads[3])
    out = [FLOAT_BYTES * _numel(shape)] if any(pads) else []
    cout, h, w = node.shape[-3:]
    tile = register_tile(w) if h * w > 0 else None
    block = channel_block(cout, tile) if tile is not None else cout
    if op.op != "MaxPool" or epilogue:  # a max pool without epilogue writes its output directly
        out.append(FLOAT_BYTES * block * h * w)
    return tuple(out)


def _constant_bytes(plan) -> int:
    """Weights beyond the plan's parameters: one float per distinct Clip bound (module docstring)."""
    bounds = {(k, op.attrs.get(k)) for op in plan.ops if op.op == "Clip" for k in ("min", "max")}
    return FLOAT_BYTES * sum(1 for _, v in bounds if v is not None)


def estimate_arena(plan, alignment: int = DEFAULT_ALIGNMENT) -> ArenaEstimate:
    """The arena and weight bytes the C emitter will plan for ``plan``'s CPM (see the module docstring)."""
    kernels = _kernels(plan)
    shapes = {name: tuple(shape) for name, shape in plan.inputs}
    shapes.update({node.output: tuple(node.shape) for k in kernels for node in k.nodes})
    step_of = {node.output: i for i, k in enumerate(kernels) for node in k.nodes}
    result = plan.output
    readers: dict[str, set] = {}
    for i, k in enumerate(kernels):
        for node in k.nodes:
            for t in node.inputs:
                readers.setdefault(t, set()).add(i)
    steps = []
    for i, k in enumerate(kernels):
        inside = {node.output for node in k.nodes}
        inputs = list(dict.fromkeys(t for node in k.nodes for t in node.inputs if t not in inside))
        names = [f"t{step_of[t]}" if t in step_of else t for t in inputs]
        out = [n.output for n in k.nodes if n.output == result or readers.get(n.output, set()) - {i}][-1]
        name = result if out == result else f"t{i}"
        steps.append(KernelStep(tuple(names), ((name, FLOAT_BYTES * _numel(shapes[out])),),
                                _workspaces(k, shapes)))
    arena = plan_arena(kernel_lifetimes(steps, result), alignment)
    weights = FLOAT_BYTES * sum(op.params for op in plan.ops) + _constant_bytes(plan)
    return ArenaEstimate(arena.arena_bytes, weights, arena.peak_live_bytes, tuple(steps),
                         tuple(tuple(node.key for node in k.nodes) for k in kernels))
