"""A small model zoo in plain PyTorch for the demo, the tests and the benchmarks.

Every model takes float32 NCHW images (1x28x28 by default, 3x32x32 for the RGB dataset variants) and
returns ``num_classes`` logits. They are built only from layers the front end supports (Conv2d,
BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), residual add, flatten, Linear) and stay small
enough to train on a two-core CPU and to run on an edge device:

========  ====================================================  ========  ========
name      layout                                                1x28x28   3x32x32
========  ====================================================  ========  ========
lenet     2 x (conv5x5-BN-ReLU-maxpool), 3 fully connected      120k      163k
vgg       3 x (2 x conv3x3-BN-ReLU, maxpool), avgpool, linear   163k      163k
resnet    conv stem, 3 basic blocks (residual adds), avgpool    78k       78k
========  ====================================================  ========  ========

``build(name, in_shape, num_classes)`` makes one; every model carries ``in_shape`` and ``num_classes``
attributes so it can be exported without being told its input again.

``build`` also makes the standard architectures of :mod:`mirrornet_tvm.architectures` (``resnet18``,
``resnet50``, ``mobilenet_v2``, ``squeezenet1_1``, ``densenet121``, ``se_resnet18``; 3-channel images of
at least 32x32, ImageNet layout from 64x64): :data:`NAMES` lists the small models above,
:data:`ALL_NAMES` both.
"""
from __future__ import annotations

import torch
from torch import nn

from . import architectures
from .errors import ModelError


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> list:
    padding = kernel // 2 if padding is None else padding
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class LeNet(nn.Module):
    """LeNet-style CNN: two 5x5 conv stages with max-pooling, then three fully connected layers."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            *_conv_bn_relu(c, 16, 5), nn.MaxPool2d(2),          # 16 x H/2 x W/2
            *_conv_bn_relu(16, 32, 5, padding=0), nn.MaxPool2d(2),  # 32 x (H/2-4)/2 x (W/2-4)/2
        )
        fh, fw = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(32 * fh * fw, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class VGG(nn.Module):
    """VGG-style CNN: three stages of two 3x3 convs and a max-pool, global average pool, one linear."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, widths=(24, 48, 96)):
        super().__init__()
        layers, cin = [], in_shape[0]
        for width in widths:
            layers += _conv_bn_relu(cin, width, 3) + _conv_bn_relu(width, width, 3) + [nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add; a strided 1x1 conv projects the shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style CNN: conv stem, three basic blocks (the last two strided), global average pool."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_shape[0], widths[0], 3))
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(cin, width, stride=1 if i == 0 else 2))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


# name -> (class, smallest height/width it accepts)
_REGISTRY = {
    "lenet": (LeNet, 12),
    "vgg": (VGG, 8),
    "resnet": (ResNet, 4),
}

NAMES = tuple(sorted(_REGISTRY))
ALL_NAMES = NAMES + architectures.NAMES


def _check_shape(name: str, in_shape, num_classes) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in in_shape)
    except (TypeError, ValueError):
        raise ModelError(f"in_shape must be three integers (C, H, W), got {in_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"in_shape must be three positive integers (C, H, W), got {in_shape!r}")
    c, h, w = shape
    if c > 4:
        raise ModelError(f"in_shape {shape}: {c} channels; the zoo models take images with 1 to 4 channels (C, H, W)")
    smallest = _REGISTRY[name][1]
    if h < smallest or w < smallest:
        raise ModelError(f"in_shape {shape} is too small for '{name}': height and width must be at least {smallest}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return shape


def build(name: str, in_shape=None, num_classes: int | None = None) -> nn.Module:
    """Build zoo model ``name`` for ``in_shape`` (C, H, W) images and ``num_classes`` classes.

    Defaults: 1x28x28 and 10 classes for the small models; for the standard architectures 3x224x224, and
    1000 classes for the ImageNet layout or 10 for the CIFAR layout.
    """
    if name in architectures.NAMES:
        return architectures.build(name, (3, 224, 224) if in_shape is None else in_shape, num_classes)
    if name not in _REGISTRY:
        raise ModelError(f"unknown zoo model '{name}': choose one of {', '.join(NAMES)} (small models) or "
                         f"{', '.join(architectures.NAMES)} (standard architectures)")
    in_shape = (1, 28, 28) if in_shape is None else in_shape
    num_classes = 10 if num_classes is None else num_classes
    shape = _check_shape(name, in_shape, num_classes)
    model = _REGISTRY[name][0](shape, num_classes)
    model.in_shape = shape
    model.num_classes = num_classes
    model.zoo_name = name
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
