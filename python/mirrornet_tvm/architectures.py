"""Standard classification architectures in plain PyTorch, laid out as torchvision defines them.

Each comes in two layouts, chosen from ``in_shape`` (C, H, W): the **ImageNet** layout when H and W are
both at least 64 (the torchvision network itself; 1000 classes by default) and a **CIFAR** layout for
32 <= H, W < 64 (10 classes by default). Every model takes 3-channel float32 NCHW images:

=============  ===========================================================  ==========  ========
name           layout                                                       3x224x224   3x32x32
=============  ===========================================================  ==========  ========
resnet18       7x7 stem, 4 stages of 2 basic blocks (64..512), avgpool, fc   11,689,512  11.17M
resnet50       7x7 stem, 4 stages of 3/4/6/3 bottlenecks (256..2048)        25,557,032  23.52M
mobilenet_v2   17 inverted residuals (ReLU6, depthwise 3x3), 1x1 to 1280     3,504,872   2.24M
squeezenet1_1  3x3 stem, 8 Fire modules (squeeze 1x1, concat 1x1|3x3)       1,235,496   0.73M
densenet121    7x7 stem, dense blocks 6/12/24/16 (growth 32), transitions   7,978,856   6.96M
se_resnet18    resnet18 with squeeze-and-excitation (reduction 16) per block 11,778,592  11.26M
=============  ===========================================================  ==========  ========

The CIFAR layouts change only the early downsampling, as the common CIFAR versions of these networks
do, so the last feature maps of a 32x32 image are 4x4 instead of 1x1:

* ResNets, SE-ResNet, DenseNet: the stem is a 3x3 stride-1 conv (padding 1) without the max-pool.
* MobileNetV2: the stem conv has stride 1 and the first 24-channel stage stride 1 (instead of 2 and 2).
* SqueezeNet 1.1: the stem is a 3x3 stride-1 conv with padding 1 (instead of stride 2, no padding).

Weights are initialised as torchvision does (Kaiming-normal fan-out convs for ResNet and MobileNetV2,
Kaiming-normal fan-in for DenseNet, Kaiming-uniform for SqueezeNet, BatchNorm weight 1 and bias 0, ...).
The forward passes export to plain ONNX ops (torch.onnx.export, opsets 13 and 17): adaptive average
pooling to 1x1 becomes GlobalAveragePool, ReLU6 becomes Clip, the SE gate a broadcast Mul, flatten a
Flatten. SqueezeNet's and MobileNetV2's classifier Dropout is kept (an Identity in eval mode).

Module and parameter names are torchvision's (``conv1``, ``layer1.0.bn2``, ``features.denseblock1.denselayer1``,
...), so a torchvision ``state_dict`` of the ImageNet layout loads with ``load_state_dict``.

``build(name, in_shape, num_classes)`` makes one (also reachable through :func:`mirrornet_tvm.zoo.build`);
every model carries ``in_shape``, ``num_classes`` and ``zoo_name`` attributes.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import ModelError

IMAGENET_MIN = 64  # H and W at least this -> ImageNet layout, else CIFAR layout
SMALLEST = 32


def _stem(imagenet: bool) -> list:
    """ResNet/DenseNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (ImageNet) or 3x3/1 conv, BN, ReLU (CIFAR)."""
    conv = nn.Conv2d(3, 64, 7, 2, 3, bias=False) if imagenet else nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    return [conv, nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()]


# --------------------------------------------------------------------------------------------------
# ResNet-18 / ResNet-50 / SE-ResNet-18
# --------------------------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Channel gate: global avg pool, 1x1 conv, ReLU, 1x1 conv, Sigmoid, ``x * s`` (torchvision.ops form)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


def _downsample(cin: int, cout: int, stride: int):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual add (torchvision's BasicBlock); an SE gate before the add if ``se``."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, se: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcitation(planes, planes // 16) if se else None
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's ResNet v1.5), 1x1 expand by 4, residual add."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, se: bool = False):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(cout, cout // 16) if se else None
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet (``block``, ``layers`` blocks per stage); ``se`` adds an SE gate to every block."""

    def __init__(self, block, layers, in_shape=(3, 224, 224), num_classes=1000, se=False):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = _stem(_imagenet(in_shape))
        stages, cin = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1, se))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------------


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), depthwise 3x3 (ReLU6), linear 1x1 project; residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = [_conv_bn_relu6(cin, hidden, 1)] if expand_ratio != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width 1.0 (channel counts are already multiples of 8)."""

    # expansion t, channels c, repeats n, first stride s
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, in_shape=(3, 224, 224), num_classes=1000, dropout=0.2):
        super().__init__()
        imagenet = _imagenet(in_shape)
        features, cin = [_conv_bn_relu6(3, 32, 3, 2 if imagenet else 1)], 32
        for k, (t, c, n, s) in enumerate(self.SETTING):
            s = s if imagenet or k != 1 else 1  # CIFAR: the 24-channel stage keeps the resolution
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------------
# SqueezeNet 1.1
# --------------------------------------------------------------------------------------------------


class Fire(nn.Module):
    """Squeeze 1x1 conv (ReLU), then 1x1 and 3x3 expand convs (ReLU) concatenated along channels."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1; the classifier is Dropout, 1x1 conv to the classes, ReLU, global avg pool."""

    def __init__(self, in_shape=(3, 224, 224), num_classes=1000, dropout=0.5):
        super().__init__()
        stem = nn.Conv2d(3, 64, 3, 2) if _imagenet(in_shape) else nn.Conv2d(3, 64, 3, 1, 1)
        self.features = nn.Sequential(
            stem, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# --------------------------------------------------------------------------------------------------
# DenseNet-121
# --------------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4 x growth) - BN-ReLU-conv3x3 (growth) on the concatenation of all earlier maps."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list):
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``n`` dense layers; each reads every earlier output, the block returns all of them concatenated."""

    def __init__(self, n: int, cin: int, growth: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth) for i in range(n)})

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(norm=nn.BatchNorm2d(cin), relu=nn.ReLU(inplace=True),
                                     conv=nn.Conv2d(cin, cout, 1, bias=False), pool=nn.AvgPool2d(2, 2)))


class DenseNet(nn.Module):
    """torchvision's DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem channels, bottleneck 4."""

    def __init__(self, in_shape=(3, 224, 224), num_classes=1000, growth=32, blocks=(6, 12, 24, 16)):
        super().__init__()
        layers, c = OrderedDict(zip(("conv0", "norm0", "relu0", "pool0"), _stem(_imagenet(in_shape)))), 64
        for i, n in enumerate(blocks):
            layers[f"denseblock{i + 1}"] = DenseBlock(n, c, growth)
            c += n * growth
            if i != len(blocks) - 1:
                layers[f"transition{i + 1}"] = _transition(c, c // 2)
                c //= 2
        layers["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------

_BUILDERS = {
    "resnet18": lambda shape, k: ResNet(BasicBlock, (2, 2, 2, 2), shape, k),
    "resnet50": lambda shape, k: ResNet(Bottleneck, (3, 4, 6, 3), shape, k),
    "mobilenet_v2": MobileNetV2,
    "squeezenet1_1": SqueezeNet,
    "densenet121": DenseNet,
    "se_resnet18": lambda shape, k: ResNet(BasicBlock, (2, 2, 2, 2), shape, k, se=True),
}

NAMES = tuple(_BUILDERS)


def _imagenet(in_shape) -> bool:
    return min(in_shape[1:]) >= IMAGENET_MIN


def check_shape(name: str, in_shape, num_classes) -> tuple[tuple[int, int, int], int]:
    """Validated ``(in_shape, num_classes)``; ``num_classes`` None -> 1000 (ImageNet layout) or 10 (CIFAR)."""
    try:
        shape = tuple(int(d) for d in in_shape)
    except (TypeError, ValueError):
        raise ModelError(f"in_shape must be three integers (C, H, W), got {in_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"in_shape must be three positive integers (C, H, W), got {in_shape!r}")
    c, h, w = shape
    if c != 3:
        raise ModelError(f"in_shape {shape}: '{name}' takes 3-channel images, not {c}; replicate grey images "
                         "into 3 channels (e.g. the dataset fashion-mnist-rgb, 3x32x32)")
    if h < SMALLEST or w < SMALLEST:
        raise ModelError(f"in_shape {shape} is too small for '{name}': height and width must be at least "
                         f"{SMALLEST} (32x32 for the CIFAR layout, {IMAGENET_MIN} or more for the ImageNet layout); "
                         "pad the images (e.g. the dataset fashion-mnist-rgb, 3x32x32)")
    if num_classes is None:
        num_classes = 1000 if _imagenet(shape) else 10
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return shape, num_classes


def build(name: str, in_shape=(3, 224, 224), num_classes: int | None = None) -> nn.Module:
    """Build architecture ``name`` for ``in_shape`` (C, H, W) images; see the module docstring for layouts."""
    if name not in _BUILDERS:
        raise ModelError(f"unknown architecture '{name}': choose one of {', '.join(NAMES)}")
    shape, num_classes = check_shape(name, in_shape, num_classes)
    model = _BUILDERS[name](shape, num_classes)
    model.in_shape = shape
    model.num_classes = num_classes
    model.zoo_name = name
    return model
