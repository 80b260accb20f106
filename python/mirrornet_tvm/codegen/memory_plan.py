"""Static arena planning: one byte offset per buffer, fixed at compile time.

Every intermediate tensor and every kernel workspace of the CPM lives in one static arena. A buffer
is live from the step that writes it to the last step that reads it (inclusive); two buffers may
share bytes only when their lifetimes do not overlap. Offsets come from the greedy-by-size
strategy TensorFlow Lite Micro and TVM's static planner use: place the largest buffers first, each
at the lowest aligned offset that does not collide with an already placed buffer whose lifetime
overlaps its own. The result is never below the peak of simultaneously live bytes and usually equal
to it for the chain-shaped CPMs.

The same two functions serve the C emitter (over the kernels TVM produced) and the strategy's
secure-memory estimate (over the kernels :mod:`.arena_estimate` predicts from a CPM plan), so the
two apply one set of liveness and alignment rules: :func:`kernel_lifetimes` turns a sequence of
kernel steps into buffer lifetimes, :func:`plan_arena` places them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError

DEFAULT_ALIGNMENT = 64  # bytes: a cache line, and enough for any SIMD load


@dataclass(frozen=True)
class BufferLife:
    """A buffer to place: ``size`` bytes, live during steps ``first`` .. ``last`` inclusive."""

    name: str
    size: int
    first: int
    last: int


@dataclass(frozen=True)
class ArenaPlan:
    offsets: tuple[tuple[str, int], ...]  # (buffer name, byte offset), in input order
    arena_bytes: int
    peak_live_bytes: int  # lower bound: the most bytes live at any one step
    alignment: int

    def offset(self, name: str) -> int:
        for n, off in self.offsets:
            if n == name:
                return off
        raise KeyError(name)


@dataclass(frozen=True)
class KernelStep:
    """One kernel call as the arena sees it: the values it reads, the values it writes (name, bytes),
    and the bytes of each workspace it needs while it runs (in parameter order)."""

    inputs: tuple[str, ...]
    outputs: tuple[tuple[str, int], ...]
    workspaces: tuple[int, ...] = ()


def kernel_lifetimes(steps, result: str) -> list[BufferLife]:
    """Arena buffers of a straight-line kernel program, in the order the emitter names them.

    Every output except ``result`` (the logits, written straight to the caller's buffer) lives from
    its step to the last step that reads it; workspace ``k`` of step ``s`` is ``ws<s>_<k>`` and
    lives during its step only. Names of values that are not outputs (taps, weights) are ignored.
    """
    steps = list(steps)
    last_read: dict[str, int] = {}
    for step, call in enumerate(steps):
        for name in call.inputs:
            last_read[name] = step
    lives = []
    for step, call in enumerate(steps):
        for name, size in call.outputs:
            if name != result:
                lives.append(BufferLife(name, int(size), step, max(step, last_read.get(name, step))))
        for k, size in enumerate(call.workspaces):
            lives.append(BufferLife(f"ws{step}_{k}", int(size), step, step))
    return lives


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def peak_live_bytes(buffers) -> int:
    """The largest total size of buffers live at the same step (aligned sizes)."""
    steps = sorted({b.first for b in buffers})
    return max((sum(b.size for b in buffers if b.first <= s <= b.last) for s in steps), default=0)


def plan_arena(buffers, alignment: int = DEFAULT_ALIGNMENT) -> ArenaPlan:
    """Assign each buffer an aligned offset; buffers with overlapping lifetimes never overlap."""
    buffers = list(buffers)
    if alignment <= 0 or alignment & (alignment - 1):
        raise CompileError(f"arena alignment must be a power of two, got {alignment}.")
    seen = set()
    for b in buffers:
        if b.name in seen:
            raise CompileError(f"buffer '{b.name}' appears twice in the arena plan.")
        seen.add(b.name)
        if b.size < 0 or b.first > b.last:
            raise CompileError(f"buffer '{b.name}' has size {b.size} and lifetime {b.first}..{b.last}; "
                               "sizes must be >= 0 and a lifetime must not end before it starts.")
    placed: list[tuple[BufferLife, int]] = []
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.last, b.name))
    for buf in order:
        size = _align(max(buf.size, 1), alignment)
        conflicts = sorted(
            (off, off + _align(max(other.size, 1), alignment))
            for other, off in placed
            if other.first <= buf.last and buf.first <= other.last
        )
        offset = 0
        for start, end in conflicts:
            if offset + size <= start:
                break
            offset = max(offset, end)
        placed.append((buf, offset))
    where = {b.name: off for b, off in placed}
    arena = max((off + _align(max(b.size, 1), alignment) for b, off in placed), default=0)
    aligned = [BufferLife(b.name, _align(max(b.size, 1), alignment), b.first, b.last) for b in buffers]
    return ArenaPlan(
        offsets=tuple((b.name, where[b.name]) for b in buffers),
        arena_bytes=arena,
        peak_live_bytes=peak_live_bytes(aligned),
        alignment=alignment,
    )
