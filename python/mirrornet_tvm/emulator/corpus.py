"""A training corpus for the cost model: random small CNNs built in Relax, lowered to kernels.

The networks use what the supported models and their CPMs lower to after ONNX import: convolutions
(1x1, 3x3, 5x5; stride 1 or 2) with bias and ReLU fused, residual adds, tap-merge adds and concats,
max/average pooling, global pooling and dense heads. Sizes are drawn around Fashion-MNIST shapes,
with the work per kernel bounded so that untuned kernels time in milliseconds.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .workloads import Kernel, kernels_of

CHANNELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SIDES = (4, 6, 7, 8, 12, 14, 16, 28, 32)
MAX_MACS = 6_000_000
MIN_MACS = 20_000


class _Net:
    """Emit random layers into a BlockBuilder while tracking the current tensor's shape."""

    def __init__(self, bb: relax.BlockBuilder, rng: np.random.Generator, x, shape):
        self.bb, self.rng, self.x, self.shape = bb, rng, x, shape

    def const(self, shape):
        return relax.const(self.rng.standard_normal(shape).astype("float32") * 0.1)

    def conv(self, x, shape, out_ch, k, stride, relu=True, residual=None):
        n, c, h, w = shape
        pad = k // 2
        y = self.bb.emit(relax.op.nn.conv2d(x, self.const((out_ch, c, k, k)), strides=stride, padding=pad))
        y = self.bb.emit(relax.op.add(y, self.const((1, out_ch, 1, 1))))
        if residual is not None:
            y = self.bb.emit(relax.op.add(y, residual))
        if relu:
            y = self.bb.emit(relax.op.nn.relu(y))
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return y, (n, out_ch, oh, ow)

    def step(self):
        rng, (n, c, h, w) = self.rng, self.shape
        kind = rng.choice(["conv"] * 5 + ["pool", "residual", "residual", "merge", "concat", "eltwise"])
        if kind == "pool" and h >= 4:
            op = rng.choice(["max2", "avg2", "max3"])
            if op == "max2":
                y = self.bb.emit(relax.op.nn.max_pool2d(self.x, pool_size=2, strides=2))
                self.x, self.shape = y, (n, c, h // 2, w // 2)
            elif op == "avg2":
                y = self.bb.emit(relax.op.nn.avg_pool2d(self.x, pool_size=2, strides=2))
                self.x, self.shape = y, (n, c, h // 2, w // 2)
            else:
                y = self.bb.emit(relax.op.nn.max_pool2d(self.x, pool_size=3, strides=1, padding=1))
                self.x = y
            return
        if kind == "residual":
            k = int(rng.choice([1, 3]))
            if c * c * k * k * h * w <= MAX_MACS:
                self.x, self.shape = self.conv(self.x, self.shape, c, k, 1, residual=self.x)
                return
        if kind == "merge":  # a tap projected by a 1x1 convolution and added (CPM merge "add")
            out_ch = int(rng.choice([ch for ch in CHANNELS if ch <= 32]))
            proj, _ = self.conv(self.x, self.shape, out_ch, 1, 1, relu=False)
            other, _ = self.conv(self.x, self.shape, out_ch, int(rng.choice([1, 3])), 1)
            self.x = self.bb.emit(relax.op.add(proj, other))
            self.shape = (n, out_ch, h, w)
            return
        if kind == "concat":
            out_ch = int(rng.choice([ch for ch in CHANNELS if ch <= 32]))
            other, _ = self.conv(self.x, self.shape, out_ch, 1, 1)
            self.x = self.bb.emit(relax.op.concat([self.x, other], axis=1))
            self.shape = (n, c + out_ch, h, w)
            return
        if kind == "eltwise":
            self.x = self.bb.emit(relax.op.nn.relu(relax.op.multiply(self.x, self.const((1, c, 1, 1)))))
            return
        for _ in range(20):
            out_ch = int(rng.choice(CHANNELS))
            k = int(rng.choice([1, 3, 3, 5]))
            stride = int(rng.choice([1, 1, 2])) if h >= 4 else 1
            macs = c * out_ch * k * k * (h // stride) * (w // stride)
            if MIN_MACS <= macs <= MAX_MACS or (macs <= MAX_MACS and _ > 10):
                self.x, self.shape = self.conv(self.x, self.shape, out_ch, k, stride, relu=rng.random() < 0.85)
                return

    def head(self, classes):
        n, c, h, w = self.shape
        if self.rng.random() < 0.5:
            x = self.bb.emit(relax.op.mean(self.x, axis=[2, 3], keepdims=False))
            feat = c
        else:
            x = self.bb.emit(relax.op.reshape(self.x, (n, c * h * w)))
            feat = c * h * w
        y = self.bb.emit(relax.op.matmul(x, self.const((feat, classes))))
        return self.bb.emit(relax.op.add(y, self.const((classes,))))


def random_network(seed: int, layers: int | None = None) -> tvm.IRModule:
    """One random CNN as a Relax module with a single ``main(input)``."""
    rng = np.random.default_rng(seed)
    c, side = int(rng.choice([1, 1, 3, 4, 8, 16])), int(rng.choice(SIDES))
    layers = int(layers or rng.integers(3, 9))
    bb = relax.BlockBuilder()
    x = relax.Var("input", relax.TensorType((1, c, side, side), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            net = _Net(bb, rng, x, (1, c, side, side))
            for _ in range(layers):
                net.step()
            out = bb.emit_output(net.head(int(rng.choice([10, 10, 16, 32]))))
        bb.emit_func_output(out)
    return bb.get()


def random_kernels(count: int, seed: int = 0, exclude=()) -> list[Kernel]:
    """``count`` distinct kernels from random networks (none whose key is in ``exclude``)."""
    seen = set(exclude)
    out: list[Kernel] = []
    net_seed = seed * 100_003
    while len(out) < count:
        for k in kernels_of(random_network(net_seed)):
            if k.key not in seen:
                seen.add(k.key)
                out.append(k)
                if len(out) == count:
                    break
        net_seed += 1
    return out


def scheduled_like_cpm(kernels, target=None, cache=None) -> list[Kernel]:
    """The same kernels with the CPM's default CPU schedule applied (what the generated C runs)."""
    from ..codegen.schedule import CpmCpuSchedule

    return _scheduled(kernels, CpmCpuSchedule(), target, cache)


def scheduled_like_backbone(kernels, target=None, cache=None) -> list[Kernel]:
    """The same kernels with ``build_backbone``'s default schedule for ``target`` (untuned backbone kernels)."""
    from ..build import default_rule
    from .targets import resolve_target

    return _scheduled(kernels, default_rule(resolve_target(target)), target, cache)


def _scheduled(kernels, rule, target=None, cache=None) -> list[Kernel]:
    from .lowering import LoweringCache
    from .targets import resolve_target
    from .workloads import make_kernel

    cache = cache or LoweringCache()
    funcs = {f"k{i}": k.func for i, k in enumerate(kernels)}
    done = cache.schedule(funcs, resolve_target(target), None, rule)
    return [make_kernel(done[f"k{i}"], name=k.name, calls=k.calls) for i, k in enumerate(kernels)]
