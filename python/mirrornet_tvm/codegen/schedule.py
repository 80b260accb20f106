"""Default CPU schedules for CPM kernels that the tuning database has no record for.

TVM's legalized kernels are naive loop nests: a convolution loops over every output pixel and,
innermost, over the 3x3 window of one input channel, re-reading the same weights for each pixel and
leaving nothing for a C compiler to vectorize. ``CpmCpuSchedule`` gives each reduction a
register-blocked order with one output row innermost::

    for co, y, x:                            for co in blocks of C, y:
      for ci, ky, kx:                ->        acc[0:C, 0:W] = 0                (registers)
        out[co,y,x] += in * w                  for ky, kx, ci:
                                                 acc[c, 0:W] += in[ci, y+ky, kx:kx+W] * w[co+c, ci, ky, kx]
                                               plane[0:C, y, 0:W] = acc
                                             out[co:co+C] = epilogue(plane)

- The accumulator tile, C output channels x one row with at most ``MAX_TILE`` floats, is a small
  ``local`` buffer that the C compiler keeps in vector registers; the tile loops are unrolled into
  straight-line code that gcc's SLP vectorizer and LLVM's alike turn into SIMD, and each input row
  load serves C output channels.
- The longest reduction loop (the input channels) is innermost: gcc fully unrolls a tiny innermost
  loop (kx, extent 3) into overlapping rows it cannot vectorize. If every reduction loop is tiny
  (a 2x2 pool window), they are fused into one.
- The elementwise epilogue (bias, ReLU, residual add) runs per block of planes in a loop of its
  own: gcc gives up vectorizing a tile whose basic block also holds the epilogue's float compares.
- Elementwise chains are inlined, and so are plain copies (a convolution's zero padding); a real
  padding block stays, or its bounds test would sit in the innermost loop.
- Rows wider than ``MAX_ROW`` are tiled by a divisor of their width. A reduction whose inputs are
  not contiguous along the output row (a global average pool, a product with an [N, K] weight)
  keeps its order: there the reduction axis is the contiguous one.

It is a ``dlight`` ScheduleRule: ``dlight.ApplyDefaultSchedule(CpmCpuSchedule())``; the same
scheduled TIR feeds both the C emitter and, in the benchmark, ``tvm.compile``.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

_DATA_PAR = 0
_COMM_REDUCE = 2
MIN_ROW = 4  # a shorter innermost row is not worth moving inside the reduction
MAX_ROW = 16  # widest row kept in registers and unrolled (16 floats: four 128-bit vectors)
MAX_TILE = 32  # floats accumulated in registers: output channels x row


def _is_spatial(sch, block_rv) -> bool:
    return all(int(iv.iter_type) == _DATA_PAR for iv in sch.get(block_rv).iter_vars)


def _uses(expr, var) -> bool:
    hits = []
    tvm_ffi.structural_walk(expr, [(type(var), lambda node: hits.append(node.same_as(var)))])
    return any(hits)


def _is_copy(sch, block_rv) -> bool:
    """A block that only copies (e.g. a convolution's padding when the padding is zero)."""
    body = sch.get(block_rv).body
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, tvm.ir.TensorLoad)


def _inline_elementwise(sch, root) -> None:
    """Inline spatial blocks into spatial consumers, and plain copies into any consumer.

    A real padding block (with its bounds test) stays: inlined into a reduction, it would put a
    branch into the innermost loop.
    """
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    changed = True
    while changed:
        changed = False
        for block_rv in sch.get_child_blocks(root):
            if sch.get(block_rv).name_hint in outputs or not _is_spatial(sch, block_rv):
                continue
            consumers = sch.get_consumers(block_rv)
            if not consumers:
                continue
            if not _is_copy(sch, block_rv) and not all(_is_spatial(sch, c) for c in consumers):
                continue
            try:
                sch.compute_inline(block_rv)
            except Exception:  # noqa: BLE001 - not inlinable: keep the block
                continue
            changed = True
            break


def _loops_by_iter(sch, block_rv):
    """The block's loops and, per block iter var, the index of the loop binding it (or None)."""
    loops = sch.get_loops(block_rv)
    loop_vars = [sch.get(loop).loop_var for loop in loops]
    realize = s_tir.schedule.schedule._ffi_api.GetSBlockRealize(sch, block_rv)  # noqa: SLF001
    bound = [next((i for i, lv in enumerate(loop_vars) if value.same_as(lv)), None)
             for value in realize.iter_values]
    return loops, bound


def _row_tile(width: int, max_row: int = MAX_ROW) -> int | None:
    """Columns per register tile: the whole row if it fits, else the largest divisor <= max_row."""
    if width <= max_row:
        return width
    best = max((d for d in range(MIN_ROW, max_row + 1) if width % d == 0), default=None)
    return best


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def register_tile(width: int, max_row: int = MAX_ROW) -> int | None:
    """Columns of one register tile for an output row of ``width``, or None when the row is not
    moved inside the reduction (shorter than ``MIN_ROW``, or no divisor up to ``MAX_ROW``).

    Shared with the secure-memory estimate (:mod:`.arena_estimate`), which predicts the workspace a
    blocked reduction leaves in the arena.
    """
    return _row_tile(width, max_row) if width >= MIN_ROW else None


def channel_block(channels: int, tile: int, max_tile: int = MAX_TILE) -> int:
    """Output channels that share each input row load, for register tiles of ``tile`` columns."""
    return _largest_divisor(channels, max_tile // tile)


def _unroll_below(sch, block_rv, loop_rv, skip=(), max_tile: int = MAX_TILE) -> None:
    """Unroll every loop of ``block_rv`` nested inside ``loop_rv`` (except the loops in ``skip``)."""
    anchor = sch.get(loop_rv).loop_var
    skip_vars = [sch.get(loop).loop_var for loop in skip]
    below = False
    for loop in sch.get_loops(block_rv):
        var = sch.get(loop).loop_var
        if below and not any(var.same_as(v) for v in skip_vars) and int(sch.get(loop).extent) <= max_tile:
            sch.unroll(loop)
        below = below or var.same_as(anchor)


def _schedule_reduction(sch, block_rv, max_row: int = MAX_ROW, max_tile: int = MAX_TILE) -> None:
    block = sch.get(block_rv)
    loops, bound = _loops_by_iter(sch, block_rv)
    if any(b is None for b in bound) or len(set(bound)) != len(bound) or len(bound) != len(loops):
        return
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    order = sorted(range(len(bound)), key=lambda i: bound[i])  # iter vars in loop order
    first_r = next((k for k, i in enumerate(order) if kinds[i] == _COMM_REDUCE), None)
    if first_r is None or any(kinds[i] != _COMM_REDUCE for i in order[first_r:]) or len(block.writes) != 1:
        return
    spatial, reductions = order[:first_r], order[first_r:]
    write = block.writes[0].region
    var = lambda i: block.iter_vars[i].var  # noqa: E731
    extent = lambda i: int(block.iter_vars[i].dom.extent)  # noqa: E731
    row = spatial[-1] if spatial else None
    width = extent(row) if row is not None else 0
    movable = (
        row is not None and len(spatial) >= 2
        and register_tile(width, max_row) is not None
        and write[-1].min.same_as(var(row))
        and all(not any(_uses(r.min, var(row)) for r in read.region) or _uses(read.region[-1].min, var(row))
                for read in block.reads)
    )
    tile = register_tile(width, max_row) if movable else None
    if tile is None:
        sch.decompose_reduction(block_rv, loops[bound[reductions[0]]])
        return
    # innermost reduction loop: the longest one (input channels rather than the 3x3 window). gcc
    # fully unrolls a tiny innermost loop (kx of extent 3) into overlapping rows that its SLP
    # vectorizer cannot pack; if every reduction loop is tiny, they are fused into one.
    longest = max(reductions, key=extent)
    if len(reductions) > 1 and extent(longest) >= MIN_ROW:
        reductions = [i for i in reductions if i != longest] + [longest]
        r_loops = [loops[bound[i]] for i in reductions]
    elif len(reductions) > 1:
        r_loops = [sch.fuse(*[loops[bound[i]] for i in reductions])]
    else:
        r_loops = [loops[bound[reductions[0]]]]
    r_loop = r_loops[0]
    row_loop = loops[bound[row]]
    outer = [loops[bound[i]] for i in spatial[:-1]]
    tail = []
    if tile < width:
        row_outer, row_loop = sch.split(row_loop, factors=[None, tile])
        tail = [row_outer]
    # channel blocking: several output channels share each input row load
    chan = spatial[-3] if len(spatial) >= 3 else None
    inner = [row_loop]
    plane = None
    if chan is not None and write[-3].min.same_as(var(chan)) and write[-2].min.same_as(var(spatial[-2])):
        block_c = channel_block(extent(chan), tile, max_tile)
        c_loop = loops[bound[chan]]
        if block_c > 1:
            c_outer, c_inner = sch.split(c_loop, factors=[None, block_c])
            outer = [c_outer if lp is c_loop else lp for lp in outer]
            inner = [c_inner, row_loop]
            plane = c_outer
        else:
            plane = c_loop
    sch.reorder(*outer, *tail, *r_loops, *inner)
    tile_root = (tail or outer)[-1]
    # register tile: accumulate channels x row in a local buffer inside tile_root
    writeback = sch.cache_write(block_rv, 0, "local")
    sch.reverse_compute_at(writeback, tile_root, preserve_unit_loops=True)
    init = sch.decompose_reduction(block_rv, r_loop)
    _unroll_below(sch, init, tile_root, max_tile=max_tile)
    _unroll_below(sch, block_rv, tile_root, skip=r_loops, max_tile=max_tile)
    _unroll_below(sch, writeback, tile_root, max_tile=max_tile)
    # the elementwise epilogue runs per block of planes, in its own loop after the tiles: gcc's SLP
    # vectorizer gives up on a tile whose basic block also holds the epilogue's float compares
    consumers = sch.get_consumers(writeback)
    if plane is not None and len(consumers) == 1 and _is_spatial(sch, consumers[0]):
        try:
            sch.reverse_compute_at(consumers[0], plane, preserve_unit_loops=True)
        except Exception:  # noqa: BLE001 - epilogue reads across planes: leave it at the end
            pass


class CpmCpuSchedule(ScheduleRule):
    """Register-blocked rows for reductions, inlined elementwise chains: see the module docstring.

    ``max_row`` and ``max_tile`` bound the register tile (defaults: ``MAX_ROW``, ``MAX_TILE``, what
    the CPM's C uses); a target with more vector registers can take larger tiles.
    """

    def __init__(self, max_row: int = MAX_ROW, max_tile: int = MAX_TILE):
        self.max_row = max_row
        self.max_tile = max_tile

    def apply(self, func, target, tunable):  # noqa: ARG002 - ScheduleRule protocol
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        try:
            root = sch.get_sblock("root")
        except Exception:  # noqa: BLE001 - no root block: not a schedulable kernel
            return None
        _inline_elementwise(sch, root)
        for block_rv in sch.get_child_blocks(root):
            if _is_spatial(sch, block_rv):
                continue
            try:
                _schedule_reduction(sch, block_rv, self.max_row, self.max_tile)
            except Exception:  # noqa: BLE001 - a pattern this rule does not handle: keep it as is
                continue
        return sch
