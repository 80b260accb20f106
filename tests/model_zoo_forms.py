"""ImageNet classifiers in the legacy forms of the ONNX Model Zoo, rebuilt with ``onnx.helper``.

These are reconstructions of the zoo's graphs with random weights, not the zoo's files: the zoo's
downloads are not reachable from this machine. Each builder follows the topology and the exporter
habits of one classic zoo file (Caffe2 or MXNet exports, opsets 7-9); the weights are random with a
fixed seed and carry no accuracy.

Habits kept from the zoo's files:

- IR version 3 (4 for opset 9, as ONNX 1.4 wrote it) and every initializer ALSO listed in
  ``graph.input``;
- Caffe2 value names (``conv1_w_0``, ``conv1_1``, ``conv1_2`` after the in-place ReLU), ``gpu_0/``
  prefixes where the zoo file has them, MXNet's ``resnetv17_*_fwd`` names for the MXNet ResNet-50;
- the zoo's input/output names and shapes: ``data_0`` / ``gpu_0/data_0`` [1,3,224,224] (``N``
  for a dynamic batch where the zoo file declares one), ``prob_1`` / ``gpu_0/softmax_1`` through
  ``Softmax``; ``softmaxout_1`` [1,1000,1,1] for SqueezeNet; ``fc6_1`` [1,1000,1,1] (a 1x1 Conv,
  no Softmax) for DenseNet-121; ``resnetv17_dense0_fwd`` [N,1000] for the MXNet ResNet-50;
- ``LRN``; ``Dropout`` with a ``ratio`` attribute and its mask output; ``Sum`` for residuals
  (Caffe2); ``Reshape`` with a shape initializer before ``Gemm`` (transB=1); grouped convs
  (AlexNet's group=2, ShuffleNet's group=3); Caffe's ceil-mode pooling as asymmetric pads
  ``[0,0,1,1]``; Caffe's ``Scale`` layer as ``Mul``/``Add`` of ``Unsqueeze``d per-channel vectors
  (DenseNet-121); ShuffleNet's channel shuffle as ``Reshape -> Transpose -> Reshape`` with shape
  initializers; ``BatchNormalization`` with ``epsilon`` and ``momentum`` only (valid in opsets
  7, 8 and 9).

The input/output names and shapes, and at full width the parameter counts that the files' sizes
imply (within 4%, ShuffleNet aside), match the zoo's published metadata. The op-level habits
follow the Caffe2 and MXNet exporters of the time as far as they are known; where a choice was
made, the builder's docstring says so. Known difference: ShuffleNet v1 is built as the paper's 1x,
g=3 network (1.9M parameters) while the zoo's file holds about 1.4M, so its widths differ.

Weights: He-normal convolutions (so activations stay finite through 50+ layers), BatchNorm with
running statistics of realistic size, the last BN of each residual branch with a small scale. A
``width`` argument scales every channel count (groups kept divisible) so tests can build small
versions of the same topology; ``width=1.0`` gives the full networks.

Usable as a module (``BUILDERS``, ``build``, ``manifest_entry``) and through
``scripts/model_zoo_forms.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_CLASSES = 1000


class _Net:
    """A Caffe2-style graph under construction: blob names are versioned as ``<name>_<k>``."""

    def __init__(self, name: str, *, opset: int, width: float, seed: int, prefix: str = ""):
        if opset not in (7, 8, 9):
            raise ValueError(f"{name}: opset {opset} is not one of the zoo's legacy opsets 7, 8, 9")
        if not width > 0:
            raise ValueError(f"{name}: width must be > 0, got {width}")
        self.name, self.opset, self.width, self.prefix = name, opset, width, prefix
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._versions: Counter[str] = Counter()

    # -- names and tensors ---------------------------------------------------------------------
    def blob(self, base: str) -> str:
        """Next SSA version of blob ``base`` (Caffe2's ``conv1_1``, ``conv1_2``, ...)."""
        self._versions[base] += 1
        return f"{self.prefix}{base}_{self._versions[base]}"

    def ch(self, c: int, multiple: int = 1) -> int:
        """``c`` scaled by the width, at least ``multiple`` and a multiple of it."""
        return max(multiple, int(round(c * self.width / multiple)) * multiple)

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def param(self, base: str, arr: np.ndarray) -> str:
        return self.init(f"{self.prefix}{base}", arr.astype(np.float32))

    def he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return self.normal(shape, np.sqrt(2.0 / fan_in))

    def normal(self, shape, std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    # -- layers (Caffe2 naming) ----------------------------------------------------------------
    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0,
             group: int = 1, bias: bool = True, out: str | None = None) -> str:
        w = self.param(f"{name}_w_0", self.he((cout, cin // group, k, k), cin // group * k * k))
        ins = [x, w]
        if bias:
            ins.append(self.param(f"{name}_b_0", self.rng.normal(0, 0.01, cout)))
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", ins, [out or self.blob(name)], **attrs)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], [self.blob(name)])

    def conv_relu(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1,
                  pad: int = 0, group: int = 1) -> str:
        return self.relu(self.conv(x, name, cin, cout, k, stride, pad, group), name)

    def bn(self, x: str, name: str, c: int, *, gamma: tuple[float, float] = (0.8, 1.2),
           out: str | None = None, eps: float = 1e-5) -> str:
        r = self.rng
        ins = [x,
               self.param(f"{name}_s_0", r.uniform(*gamma, c)),
               self.param(f"{name}_b_0", r.normal(0, 0.05, c)),
               self.param(f"{name}_rm_0", r.normal(0, 0.1, c)),
               self.param(f"{name}_riv_0", r.uniform(0.5, 1.5, c))]
        return self.node("BatchNormalization", ins, [out or self.blob(name)],
                         epsilon=eps, momentum=0.9)

    def lrn(self, x: str, name: str) -> str:
        return self.node("LRN", [x], [self.blob(name)], size=5, alpha=1e-4, beta=0.75, bias=1.0)

    def pool(self, op: str, x: str, name: str, k: int, stride: int, pads=(0, 0, 0, 0)) -> str:
        return self.node(op, [x], [self.blob(name)], kernel_shape=[k, k], strides=[stride, stride],
                         pads=list(pads))

    def dropout(self, x: str, name: str, ratio: float) -> str:
        out = self.blob(name)
        mask = f"_{out}_mask"
        return self.node("Dropout", [x], [out, mask], ratio=ratio)

    def reshape(self, x: str, shape: list[int]) -> str:
        # Caffe2's exporter names these OC2_DUMMY_<k>, with the shape as an initializer.
        idx = len([n for n in self.nodes if n.op_type == "Reshape"])
        shp = self.init(f"OC2_DUMMY_{2 * idx + 1}", np.asarray(shape, dtype=np.int64))
        return self.node("Reshape", [x, shp], [f"OC2_DUMMY_{2 * idx}"])

    def fc(self, x: str, name: str, cin: int, cout: int, last: bool = False) -> str:
        std = np.sqrt((1.0 if last else 2.0) / cin)
        w = self.param(f"{name}_w_0", self.normal((cout, cin), std))
        b = self.param(f"{name}_b_0", self.rng.normal(0, 0.01, cout))
        return self.node("Gemm", [x, w, b], [self.blob(name)], transB=1)

    def softmax(self, x: str, out: str) -> str:
        return self.node("Softmax", [x], [out])

    # -- the model -----------------------------------------------------------------------------
    def model(self, inp: str, out: str, out_shape: list, in_shape: list | None = None,
              producer: str = "onnx-caffe2") -> onnx.ModelProto:
        in_shape = in_shape or [1, 3, 224, 224]
        inputs = [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)]
        # IR < 4: every initializer is a graph input as well.
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in self.inits]
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, producer_name=producer,
                                  opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 3 if self.opset <= 8 else 4
        return model


_CEIL = (0, 0, 1, 1)  # Caffe's ceil-mode pooling as the Caffe2 exporter wrote it: extra end pad


def alexnet(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """bvlc_alexnet: Caffe's BVLC AlexNet through Caffe2 (group=2 convs, LRN, Dropout, Gemm)."""
    n = _Net("bvlc_alexnet", opset=opset, width=width, seed=seed)
    c1, c2, c3, c4, c5 = (n.ch(c, 2) for c in (96, 256, 384, 384, 256))
    f6 = n.ch(4096)
    x = n.conv_relu("data_0", "conv1", 3, c1, 11, 4)
    x = n.pool("MaxPool", n.lrn(x, "norm1"), "pool1", 3, 2, _CEIL)               # 54 -> 27
    x = n.conv_relu(x, "conv2", c1, c2, 5, pad=2, group=2)
    x = n.pool("MaxPool", n.lrn(x, "norm2"), "pool2", 3, 2, _CEIL)               # 27 -> 13
    x = n.conv_relu(x, "conv3", c2, c3, 3, pad=1)
    x = n.conv_relu(x, "conv4", c3, c4, 3, pad=1, group=2)
    x = n.conv_relu(x, "conv5", c4, c5, 3, pad=1, group=2)
    x = n.pool("MaxPool", x, "pool5", 3, 2, _CEIL)                               # 13 -> 6
    x = n.reshape(x, [1, c5 * 36])
    x = n.dropout(n.relu(n.fc(x, "fc6", c5 * 36, f6), "fc6"), "fc6", 0.5)
    x = n.dropout(n.relu(n.fc(x, "fc7", f6, f6), "fc7"), "fc7", 0.5)
    x = n.fc(x, "fc8", f6, NUM_CLASSES, last=True)
    n.softmax(x, "prob_1")
    return n.model("data_0", "prob_1", [1, NUM_CLASSES])


def zfnet512(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """zfnet512: Caffe2's ZFNet-512 (``gpu_0/`` names, LRN, floor pooling, 5x5 before fc6)."""
    n = _Net("zfnet512", opset=opset, width=width, seed=seed, prefix="gpu_0/")
    c1, c2, c3, c4, c5 = (n.ch(c) for c in (96, 256, 512, 1024, 512))
    f6 = n.ch(4096)
    x = n.conv_relu("gpu_0/data_0", "conv1", 3, c1, 7, 2)                        # 109
    x = n.pool("MaxPool", n.lrn(x, "norm1"), "pool1", 3, 2)                      # 54
    x = n.conv_relu(x, "conv2", c1, c2, 5, 2)                                    # 25
    x = n.pool("MaxPool", n.lrn(x, "norm2"), "pool2", 3, 2)                      # 12
    x = n.conv_relu(x, "conv3", c2, c3, 3, pad=1)
    x = n.conv_relu(x, "conv4", c3, c4, 3, pad=1)
    x = n.conv_relu(x, "conv5", c4, c5, 3, pad=1)
    x = n.pool("MaxPool", x, "pool5", 3, 2)                                      # 5
    x = n.reshape(x, [1, c5 * 25])
    x = n.dropout(n.relu(n.fc(x, "fc6", c5 * 25, f6), "fc6"), "fc6", 0.5)
    x = n.dropout(n.relu(n.fc(x, "fc7", f6, f6), "fc7"), "fc7", 0.5)
    x = n.fc(x, "fc8", f6, NUM_CLASSES, last=True)
    n.softmax(x, "gpu_0/softmax_1")
    return n.model("gpu_0/data_0", "gpu_0/softmax_1", [1, NUM_CLASSES])


def vgg19(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """vgg19-caffe2: 16 3x3 convs with ReLU, 5 max pools, Reshape, 3 Gemm with Dropout, Softmax."""
    n = _Net("vgg19", opset=opset, width=width, seed=seed)
    x, cin = "data_0", 3
    for s, (c, reps) in enumerate([(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)], start=1):
        c = n.ch(c)
        for i in range(1, reps + 1):
            x = n.conv_relu(x, f"conv{s}_{i}", cin, c, 3, pad=1)
            cin = c
        x = n.pool("MaxPool", x, f"pool{s}", 2, 2)
    f6 = n.ch(4096)
    x = n.reshape(x, [1, cin * 49])
    x = n.dropout(n.relu(n.fc(x, "fc6", cin * 49, f6), "fc6"), "fc6", 0.5)
    x = n.dropout(n.relu(n.fc(x, "fc7", f6, f6), "fc7"), "fc7", 0.5)
    x = n.fc(x, "fc8", f6, NUM_CLASSES, last=True)
    n.softmax(x, "prob_1")
    return n.model("data_0", "prob_1", [1, NUM_CLASSES])


def resnet50_caffe2(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """resnet50-caffe2-v1: bottlenecks with BN, ``Sum`` residuals, dynamic batch ``N`` input.

    The zoo file declares ``gpu_0/data_0`` as [N,3,224,224] and its output as [1,1000]: the Reshape
    before the classifier has a fixed ``[1, 2048]`` shape initializer.
    """
    n = _Net("resnet50", opset=opset, width=width, seed=seed, prefix="gpu_0/")
    c0 = n.ch(64)
    x = n.conv("gpu_0/data_0", "conv1", 3, c0, 7, 2, 3, bias=False)
    x = n.relu(n.bn(x, "res_conv1_bn", c0), "res_conv1_bn")
    x = n.pool("MaxPool", x, "pool1", 3, 2, (1, 1, 1, 1))                       # 56
    cin = c0
    for s, (mid, reps) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=2):
        mid = n.ch(mid)
        cout = 4 * mid
        for b in range(reps):
            stride = 2 if (b == 0 and s > 2) else 1
            p = f"res{s}_{b}_branch"
            y = n.conv(x, f"{p}2a", cin, mid, 1, bias=False)
            y = n.relu(n.bn(y, f"{p}2a_bn", mid), f"{p}2a_bn")
            y = n.conv(y, f"{p}2b", mid, mid, 3, stride, 1, bias=False)
            y = n.relu(n.bn(y, f"{p}2b_bn", mid), f"{p}2b_bn")
            y = n.conv(y, f"{p}2c", mid, cout, 1, bias=False)
            y = n.bn(y, f"{p}2c_bn", cout, gamma=(0.1, 0.3))
            if b == 0:
                sc = n.conv(x, f"{p}1", cin, cout, 1, stride, bias=False)
                sc = n.bn(sc, f"{p}1_bn", cout)
            else:
                sc = x
            s_out = n.node("Sum", [y, sc], [n.blob(f"{p}2c_bn")])
            x = n.relu(s_out, f"res{s}_{b}_branch2c_bn")
            cin = cout
    x = n.pool("AveragePool", x, "pool5", 7, 1)
    x = n.reshape(x, [1, cin])
    x = n.fc(x, "pred", cin, NUM_CLASSES, last=True)
    n.softmax(x, "gpu_0/softmax_1")
    return n.model("gpu_0/data_0", "gpu_0/softmax_1", [1, NUM_CLASSES],
                   in_shape=["N", 3, 224, 224])


def resnet50_mxnet(width: float = 1.0, opset: int = 7, seed: int = 0) -> onnx.ModelProto:
    """resnet50-v1-7: MXNet Gluon ResNet-50 v1 (stride on the first 1x1), Add, Flatten, Gemm.

    MXNet's exporter names every value after its node (``resnetv17_stage1_conv0_fwd``), writes
    every conv attribute explicitly, has a dynamic batch ``N`` and ends at the Gemm (no Softmax).
    """
    n = _Net("mxnet_converted_model", opset=opset, width=width, seed=seed)
    P = "resnetv17_"

    def conv(x, name, cin, cout, k, stride=1, pad=0):
        w = n.init(f"{P}{name}_weight", n.he((cout, cin, k, k), cin * k * k))
        return n.node("Conv", [x, w], [f"{P}{name}_fwd"], kernel_shape=[k, k],
                      strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1], group=1)

    def bn(x, name, c, gamma=(0.8, 1.2)):
        r = n.rng
        ins = [x] + [n.init(f"{P}{name}_{s}", a.astype(np.float32)) for s, a in (
            ("gamma", r.uniform(*gamma, c)), ("beta", r.normal(0, 0.05, c)),
            ("running_mean", r.normal(0, 0.1, c)), ("running_var", r.uniform(0.5, 1.5, c)))]
        return n.node("BatchNormalization", ins, [f"{P}{name}_fwd"], epsilon=1e-5, momentum=0.9)

    def relu(x, name):
        return n.node("Relu", [x], [f"{P}{name}"])

    c0 = n.ch(64)
    x = relu(bn(conv("data", "conv0", 3, c0, 7, 2, 3), "batchnorm0", c0), "relu0")
    x = n.node("MaxPool", [x], [f"{P}pool0_fwd"], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin = c0
    for s, (mid, reps) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        mid = n.ch(mid)
        cout = 4 * mid
        k = 0
        for b in range(reps):
            stride = 2 if (b == 0 and s > 1) else 1
            st = f"stage{s}_"
            y = relu(bn(conv(x, f"{st}conv{k}", cin, mid, 1, stride), f"{st}batchnorm{k}", mid),
                     f"{st}relu{3 * b}")
            y = relu(bn(conv(y, f"{st}conv{k + 1}", mid, mid, 3, 1, 1), f"{st}batchnorm{k + 1}",
                        mid), f"{st}relu{3 * b + 1}")
            y = bn(conv(y, f"{st}conv{k + 2}", mid, cout, 1), f"{st}batchnorm{k + 2}", cout,
                   gamma=(0.1, 0.3))
            k += 3
            if b == 0:
                sc = bn(conv(x, f"{st}conv{k}", cin, cout, 1, stride), f"{st}batchnorm{k}", cout)
                k += 1
            else:
                sc = x
            x = relu(n.node("Add", [y, sc], [f"{P}{st}_plus{b}"]), f"{st}activation{b}")
            cin = cout
    x = n.node("GlobalAveragePool", [x], [f"{P}pool1_fwd"])
    x = n.node("Flatten", [x], [f"{P}flatten0_flatten0"], axis=1)
    w = n.init(f"{P}dense0_weight", n.normal((NUM_CLASSES, cin), np.sqrt(1.0 / cin)))
    b = n.init(f"{P}dense0_bias", n.rng.normal(0, 0.01, NUM_CLASSES).astype(np.float32))
    n.node("Gemm", [x, w, b], [f"{P}dense0_fwd"], alpha=1.0, beta=1.0, transA=0, transB=1)
    return n.model("data", f"{P}dense0_fwd", ["N", NUM_CLASSES], in_shape=["N", 3, 224, 224],
                   producer="MXNet")


def squeezenet10(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """squeezenet1.0: fire modules (squeeze 1x1, expand 1x1 + 3x3, Concat), Dropout, conv10,
    GlobalAveragePool and Softmax over the [1,1000,1,1] map (output ``softmaxout_1``)."""
    n = _Net("squeezenet", opset=opset, width=width, seed=seed)
    c1 = n.ch(96)
    x = n.conv_relu("data_0", "conv1", 3, c1, 7, 2)                              # 109
    x = n.pool("MaxPool", x, "pool1", 3, 2)                                      # 54
    cin = c1
    fires = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128), 6: (48, 192), 7: (48, 192),
             8: (64, 256), 9: (64, 256)}
    for f, (sq, ex) in fires.items():
        sq, ex = n.ch(sq), n.ch(ex)
        s = n.conv_relu(x, f"fire{f}/squeeze1x1", cin, sq, 1)
        e1 = n.conv_relu(s, f"fire{f}/expand1x1", sq, ex, 1)
        e3 = n.conv_relu(s, f"fire{f}/expand3x3", sq, ex, 3, pad=1)
        x = n.node("Concat", [e1, e3], [n.blob(f"fire{f}/concat")], axis=1)
        cin = 2 * ex
        if f in (4, 8):
            x = n.pool("MaxPool", x, f"pool{f}", 3, 2, _CEIL)                    # 54->27->13
    x = n.dropout(x, "fire9/concat", 0.5)
    x = n.conv_relu(x, "conv10", cin, NUM_CLASSES, 1)
    x = n.node("GlobalAveragePool", [x], [n.blob("pool10")])
    n.softmax(x, "softmaxout_1")
    return n.model("data_0", "softmaxout_1", [1, NUM_CLASSES, 1, 1])


def densenet121(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """densenet-121 (Caffe DenseNet through Caffe2): BN without affine + Caffe ``Scale``.

    Each Caffe ``Scale`` layer is ``Mul`` and ``Add`` of its per-channel vectors made [C,1,1] by
    ``Unsqueeze(axes=[1,2])``, so opset-7 broadcasting applies them per channel. The network ends at
    ``fc6`` (a 1x1 Conv on the pooled map) with output ``fc6_1`` [1,1000,1,1] and no Softmax.
    """
    n = _Net("densenet121", opset=opset, width=width, seed=seed)
    growth, bottleneck = n.ch(32), 4 * n.ch(32)

    def bn_scale_relu(x, name, c):
        r = n.rng
        ins = [x, n.param(f"{name}/bn_s_0", np.ones(c)), n.param(f"{name}/bn_b_0", np.zeros(c)),
               n.param(f"{name}/bn_rm_0", r.normal(0, 0.1, c)),
               n.param(f"{name}/bn_riv_0", r.uniform(0.5, 1.5, c))]
        x = n.node("BatchNormalization", ins, [n.blob(f"{name}/bn")], epsilon=1e-5, momentum=0.9)
        ws = n.node("Unsqueeze", [n.param(f"{name}/scale_w_0", r.uniform(0.8, 1.2, c))],
                    [n.blob(f"{name}/scale_w")], axes=[1, 2])
        bs = n.node("Unsqueeze", [n.param(f"{name}/scale_b_0", r.normal(0, 0.05, c))],
                    [n.blob(f"{name}/scale_b")], axes=[1, 2])
        x = n.node("Mul", [x, ws], [n.blob(f"{name}/bn")])
        x = n.node("Add", [x, bs], [n.blob(f"{name}/bn")])
        return n.node("Relu", [x], [n.blob(f"{name}/bn")])

    c = n.ch(64)
    x = n.conv("data_0", "conv1", 3, c, 7, 2, 3, bias=False)
    x = bn_scale_relu(x, "conv1", c)
    x = n.pool("MaxPool", x, "pool1", 3, 2, (1, 1, 1, 1))                       # 56
    for blk, reps in enumerate([6, 12, 24, 16], start=2):
        for i in range(1, reps + 1):
            p = f"conv{blk}_{i}"
            y = bn_scale_relu(x, f"{p}/x1", c)
            y = n.conv(y, f"{p}/x1", c, bottleneck, 1, bias=False)
            y = bn_scale_relu(y, f"{p}/x2", bottleneck)
            y = n.conv(y, f"{p}/x2", bottleneck, growth, 3, pad=1, bias=False)
            x = n.node("Concat", [x, y], [n.blob(f"concat_{blk}_{i}")], axis=1)
            c += growth
        if blk < 5:
            y = bn_scale_relu(x, f"conv{blk}_blk", c)
            y = n.conv(y, f"conv{blk}_blk", c, c // 2, 1, bias=False)
            c //= 2
            x = n.pool("AveragePool", y, f"pool{blk}", 2, 2)
    x = bn_scale_relu(x, "conv5_blk", c)
    x = n.node("GlobalAveragePool", [x], [n.blob("pool5")])
    w = n.param("fc6_w_0", n.normal((NUM_CLASSES, c, 1, 1), np.sqrt(1.0 / c)))
    b = n.param("fc6_b_0", n.rng.normal(0, 0.01, NUM_CLASSES))
    n.node("Conv", [x, w, b], ["fc6_1"], kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
    return n.model("data_0", "fc6_1", [1, NUM_CLASSES, 1, 1])


# GoogLeNet inception modules: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
_GOOGLENET = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception_v1(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """inception-v1 / bvlc_googlenet: LRN, inception modules with Concat, ceil-mode max pools as
    pads [0,0,1,1], AveragePool 7x7, Dropout 0.4, Reshape, Gemm, Softmax (no auxiliary heads)."""
    n = _Net("googlenet", opset=opset, width=width, seed=seed)
    c1, c2r, c2 = n.ch(64), n.ch(64), n.ch(192)
    x = n.conv_relu("data_0", "conv1/7x7_s2", 3, c1, 7, 2, 3)                    # 112
    x = n.lrn(n.pool("MaxPool", x, "pool1/3x3_s2", 3, 2, _CEIL), "pool1/norm1")  # 56
    x = n.conv_relu(x, "conv2/3x3_reduce", c1, c2r, 1)
    x = n.conv_relu(x, "conv2/3x3", c2r, c2, 3, pad=1)
    x = n.pool("MaxPool", n.lrn(x, "conv2/norm2"), "pool2/3x3_s2", 3, 2, _CEIL)  # 28
    cin = c2
    for m, spec in _GOOGLENET.items():
        a, b_r, b, c_r, c, d = (n.ch(v) for v in spec)
        p = f"inception_{m}"
        o1 = n.conv_relu(x, f"{p}/1x1", cin, a, 1)
        o2 = n.conv_relu(n.conv_relu(x, f"{p}/3x3_reduce", cin, b_r, 1), f"{p}/3x3", b_r, b, 3,
                         pad=1)
        o3 = n.conv_relu(n.conv_relu(x, f"{p}/5x5_reduce", cin, c_r, 1), f"{p}/5x5", c_r, c, 5,
                         pad=2)
        o4 = n.conv_relu(n.pool("MaxPool", x, f"{p}/pool", 3, 1, (1, 1, 1, 1)), f"{p}/pool_proj",
                         cin, d, 1)
        x = n.node("Concat", [o1, o2, o3, o4], [n.blob(f"{p}/output")], axis=1)
        cin = a + b + c + d
        if m in ("3b", "4e"):
            x = n.pool("MaxPool", x, f"pool{m[0]}/3x3_s2", 3, 2, _CEIL)          # 14, 7
    x = n.pool("AveragePool", x, "pool5/7x7_s1", 7, 1)
    x = n.dropout(x, "pool5/7x7_s1", 0.4)
    x = n.reshape(x, [1, cin])
    x = n.fc(x, "loss3/classifier", cin, NUM_CLASSES, last=True)
    n.softmax(x, "prob_1")
    return n.model("data_0", "prob_1", [1, NUM_CLASSES])


# BN-Inception modules: 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool proj (0: no
# proj), pool kind, stride.
_BN_INCEPTION = {
    "3a": (64, 64, 64, 64, 96, 32, "avg", 1), "3b": (64, 64, 96, 64, 96, 64, "avg", 1),
    "3c": (0, 128, 160, 64, 96, 0, "max", 2),
    "4a": (224, 64, 96, 96, 128, 128, "avg", 1), "4b": (192, 96, 128, 96, 128, 128, "avg", 1),
    "4c": (160, 128, 160, 128, 160, 128, "avg", 1), "4d": (96, 128, 192, 160, 192, 128, "avg", 1),
    "4e": (0, 128, 192, 192, 256, 0, "max", 2),
    "5a": (352, 192, 320, 160, 224, 128, "avg", 1), "5b": (352, 192, 320, 192, 224, 128, "max", 1),
}


def inception_v2(width: float = 1.0, opset: int = 8, seed: int = 0) -> onnx.ModelProto:
    """inception-v2 (BN-Inception through Caffe2): conv + BatchNormalization + ReLU everywhere,
    double-3x3 branches, average-pool projections, stride-2 modules with a max-pool pass-through,
    AveragePool 7x7, Reshape, Gemm, Softmax."""
    n = _Net("inception_v2", opset=opset, width=width, seed=seed)

    def cbr(x, name, cin, cout, k, stride=1, pad=0):
        y = n.conv(x, name, cin, cout, k, stride, pad)
        return n.relu(n.bn(y, f"{name}_bn", cout), f"{name}_bn")

    c1, c2r, c2 = n.ch(64), n.ch(64), n.ch(192)
    x = cbr("data_0", "conv1/7x7_s2", 3, c1, 7, 2, 3)                           # 112
    x = n.pool("MaxPool", x, "pool1/3x3_s2", 3, 2, _CEIL)                        # 56
    x = cbr(x, "conv2/3x3_reduce", c1, c2r, 1)
    x = cbr(x, "conv2/3x3", c2r, c2, 3, pad=1)
    x = n.pool("MaxPool", x, "pool2/3x3_s2", 3, 2, _CEIL)                        # 28
    cin = c2
    for m, (a, b_r, b, d_r, d, pp, kind, stride) in _BN_INCEPTION.items():
        a, b_r, b, d_r, d, pp = (n.ch(v) if v else 0 for v in (a, b_r, b, d_r, d, pp))
        p = f"inception_{m}"
        outs = []
        if a:
            outs.append(cbr(x, f"{p}/1x1", cin, a, 1))
        outs.append(cbr(cbr(x, f"{p}/3x3_reduce", cin, b_r, 1), f"{p}/3x3", b_r, b, 3, stride, 1))
        y = cbr(x, f"{p}/double_3x3_reduce", cin, d_r, 1)
        y = cbr(y, f"{p}/double_3x3_1", d_r, d, 3, pad=1)
        outs.append(cbr(y, f"{p}/double_3x3_2", d, d, 3, stride, 1))
        op = "AveragePool" if kind == "avg" else "MaxPool"
        if stride == 2:
            outs.append(n.pool(op, x, f"{p}/pool", 3, 2, _CEIL))
        else:
            y = n.pool(op, x, f"{p}/pool", 3, 1, (1, 1, 1, 1))
            outs.append(cbr(y, f"{p}/pool_proj", cin, pp, 1))
        x = n.node("Concat", outs, [n.blob(f"{p}/output")], axis=1)
        cin = a + b + d + (pp if stride == 1 else cin)
    x = n.pool("AveragePool", x, "pool5/7x7_s1", 7, 1)
    x = n.reshape(x, [1, cin])
    x = n.fc(x, "loss3/classifier", cin, NUM_CLASSES, last=True)
    n.softmax(x, "prob_1")
    return n.model("data_0", "prob_1", [1, NUM_CLASSES])


def shufflenet_v1(width: float = 1.0, opset: int = 8, seed: int = 0,
                  groups: int = 3) -> onnx.ModelProto:
    """shufflenet (v1, Caffe2): grouped 1x1 convs, channel shuffle as Reshape -> Transpose ->
    Reshape with shape initializers, depthwise 3x3, ``Sum`` residuals, AveragePool + Concat for the
    stride-2 units, AveragePool 7x7, Reshape, Gemm, Softmax; ``gpu_0/`` names."""
    n = _Net("shufflenet", opset=opset, width=width, seed=seed, prefix="gpu_0/")
    g = groups
    stage_out = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}[g]
    shuffles = 0

    def shuffle(x, c, hw):
        nonlocal shuffles
        s1 = n.init(f"{n.prefix}shuffle{shuffles}_shape1", np.asarray([1, g, c // g, hw, hw],
                                                                         np.int64))
        s2 = n.init(f"{n.prefix}shuffle{shuffles}_shape2", np.asarray([1, c, hw, hw], np.int64))
        shuffles += 1
        y = n.node("Reshape", [x, s1], [n.blob("shuffle_reshape")])
        y = n.node("Transpose", [y], [n.blob("shuffle_transpose")], perm=[0, 2, 1, 3, 4])
        return n.node("Reshape", [y, s2], [n.blob("shuffle_reshape")])

    c0 = n.ch(24, g)
    x = n.conv("gpu_0/data_0", "conv1", 3, c0, 3, 2, 1, bias=False)
    x = n.relu(n.bn(x, "conv1_spatbn", c0), "conv1_spatbn")                      # 112
    x = n.pool("MaxPool", x, "pool1", 3, 2, (1, 1, 1, 1))                        # 56
    cin, hw = c0, 56
    for s, reps in ((2, 4), (3, 8), (4, 4)):
        cout = n.ch(stage_out * 2 ** (s - 2), 4 * g)
        mid = cout // 4
        for b in range(reps):
            p = f"gconv{s}_{b}"
            stride = 2 if b == 0 else 1
            branch_out = cout - cin if stride == 2 else cout
            g1 = 1 if (s == 2 and b == 0) else g
            y = n.conv(x, f"{p}_1", cin, mid, 1, group=g1, bias=False)
            y = n.relu(n.bn(y, f"{p}_1_spatbn", mid), f"{p}_1_spatbn")
            y = shuffle(y, mid, hw)
            hw = hw // stride
            y = n.conv(y, f"{p}_dw", mid, mid, 3, stride, 1, group=mid, bias=False)
            y = n.bn(y, f"{p}_dw_spatbn", mid)
            y = n.conv(y, f"{p}_2", mid, branch_out, 1, group=g, bias=False)
            y = n.bn(y, f"{p}_2_spatbn", branch_out, gamma=(0.1, 0.3) if stride == 1 else
                     (0.8, 1.2))
            if stride == 2:
                sc = n.pool("AveragePool", x, f"{p}_shortcut", 3, 2, (1, 1, 1, 1))
                x = n.node("Concat", [sc, y], [n.blob(f"{p}_concat")], axis=1)
            else:
                x = n.node("Sum", [y, x], [n.blob(f"{p}_sum")])
            x = n.relu(x, f"{p}_out")
            cin = cout
    x = n.pool("AveragePool", x, "pool_final", 7, 1)
    x = n.reshape(x, [1, cin])
    x = n.fc(x, "last_out_L1000", cin, NUM_CLASSES, last=True)
    n.softmax(x, "gpu_0/softmax_1")
    return n.model("gpu_0/data_0", "gpu_0/softmax_1", [1, NUM_CLASSES])


# name -> (builder, the zoo file it reconstructs, its default opset)
BUILDERS: dict[str, tuple[Callable[..., onnx.ModelProto], str]] = {
    "bvlc_alexnet": (alexnet, "bvlcalexnet-8.onnx"),
    "zfnet512": (zfnet512, "zfnet512-8.onnx"),
    "vgg19_caffe2": (vgg19, "vgg19-caffe2-8.onnx"),
    "resnet50_caffe2": (resnet50_caffe2, "resnet50-caffe2-v1-8.onnx"),
    "resnet50_v1_mxnet": (resnet50_mxnet, "resnet50-v1-7.onnx"),
    "squeezenet1.0": (squeezenet10, "squeezenet1.0-8.onnx"),
    "densenet121": (densenet121, "densenet-8.onnx"),
    "inception_v1": (inception_v1, "inception-v1-8.onnx / googlenet-8.onnx"),
    "inception_v2": (inception_v2, "inception-v2-8.onnx"),
    "shufflenet_v1": (shufflenet_v1, "shufflenet-8.onnx"),
}


def build(name: str, width: float = 1.0, opset: int | None = None,
          seed: int = 0) -> onnx.ModelProto:
    """The zoo-form model ``name`` (a key of ``BUILDERS``)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown zoo form {name!r}; known: {', '.join(BUILDERS)}")
    fn = BUILDERS[name][0]
    return fn(width=width, seed=seed) if opset is None else fn(width=width, opset=opset, seed=seed)


def ops_used(model: onnx.ModelProto) -> dict[str, int]:
    """Op types of the graph's nodes (with their domain when not the default one) and counts."""
    c = Counter((f"{nd.domain}::{nd.op_type}" if nd.domain not in ("", "ai.onnx") else nd.op_type)
                for nd in model.graph.node)
    return dict(sorted(c.items()))


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value")
                                                          else None)
            for d in vi.type.tensor_type.shape.dim]


def manifest_entry(path: str | Path, exporter: str, exporter_version: str, **extra) -> dict:
    """A manifest's record of one ONNX file: opsets, true inputs/outputs, sha256, ops, counts."""
    path = Path(path)
    data = path.read_bytes()
    model = onnx.load_from_string(data)  # external tensor data (if any) stays on disk
    inits = {t.name for t in model.graph.initializer}
    external = sorted({e.value for t in model.graph.initializer
                       if t.data_location == TensorProto.EXTERNAL
                       for e in t.external_data if e.key == "location"})
    return {
        "file": path.name,
        "exporter": exporter,
        "exporter_version": exporter_version,
        "ir_version": model.ir_version,
        "opset_import": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [{"name": i.name, "shape": _dims(i)} for i in model.graph.input
                   if i.name not in inits],
        "initializers_as_inputs": sum(i.name in inits for i in model.graph.input),
        "outputs": [{"name": o.name, "shape": _dims(o)} for o in model.graph.output],
        "local_functions": [f.name for f in model.functions],
        "value_info": len(model.graph.value_info),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "external_data": {loc: hashlib.sha256((path.parent / loc).read_bytes()).hexdigest()
                          for loc in external},
        "ops": ops_used(model),
        **extra,
    }


def write_manifest(out_dir: str | Path, entries: list[dict]) -> Path:
    out = Path(out_dir) / "manifest.json"
    out.write_text(json.dumps({"files": entries}, indent=1) + "\n")
    return out


def run_onnxruntime(model: onnx.ModelProto | str | Path, seed: int = 0) -> np.ndarray:
    """Run the model once in onnxruntime on a random N(0,1) input (batch 1) and return output 0."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return sess.run(None, {inp.name: x})[0]
