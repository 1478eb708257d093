"""Models by name, built from torchvision where the paper used a standard architecture.

* ``densenet-bc``: DenseNet-BC, depth 40, growth rate 40, for 32x32 inputs (the paper's CIFAR-100
  model): torchvision's :class:`~torchvision.models.DenseNet` with 3 dense blocks of
  (40 - 4) / 6 = 6 bottleneck layers, 2 x growth initial features, compression 0.5 (torchvision's
  transitions halve the features), and a 3x3 stride-1 convolution as the stem in place of the
  ImageNet stem (7x7 stride-2 convolution and max pooling).
* ``resnet18``: torchvision's ResNet-18 (the paper's ImageNet model).
* ``resnet18-cifar``: the same with a 3x3 stride-1 stem and no max pooling, for 32x32 inputs.
* ``small-cnn``: three conv-BN-ReLU-maxpool blocks and a linear layer, for the embedded data.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

MODELS = ("small-cnn", "densenet-bc", "resnet18", "resnet18-cifar")
DEFAULT_MODEL = {
    "embedded": "small-cnn",
    "cifar100": "densenet-bc",
    "imagenet": "resnet18",
    "folder": "resnet18",
}


def check_model(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return name


def densenet_bc_cifar(num_classes: int, depth: int = 40, growth_rate: int = 40) -> nn.Module:
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6 n + 4, got {depth}")
    layers = (depth - 4) // 6
    net = models.DenseNet(
        growth_rate=growth_rate,
        block_config=(layers, layers, layers),
        num_init_features=2 * growth_rate,
        bn_size=4,
        num_classes=num_classes,
    )
    net.features.conv0 = nn.Conv2d(3, 2 * growth_rate, 3, padding=1, bias=False)
    net.features.norm0 = nn.Identity()
    net.features.relu0 = nn.Identity()
    net.features.pool0 = nn.Identity()
    return net


def resnet18_cifar(num_classes: int) -> nn.Module:
    net = models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def small_cnn(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip

    return nn.Sequential(
        *block(in_channels, width),
        *block(width, 2 * width),
        *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * width, num_classes),
    )


def build_model(name: str, num_classes: int) -> nn.Module:
    check_model(name)
    if name == "small-cnn":
        return small_cnn(num_classes)
    if name == "densenet-bc":
        return densenet_bc_cifar(num_classes)
    if name == "resnet18":
        return models.resnet18(num_classes=num_classes)
    return resnet18_cifar(num_classes)


def memory_format(device: torch.device) -> torch.memory_format | None:
    """The layout a model's weights take on ``device``: ``channels_last`` on the CPU, where
    oneDNN's convolutions follow it and max pooling of ``NCHW`` tensors is the slow path
    (64 x 16 x 32 x 32: 5.2 ms against 0.55 ms channels-last; a demo epoch of ``small-cnn``
    0.8 s -> 0.5 s, docs/experiments.md); None elsewhere (not measured on GPUs: the layout is
    left as built). Activations follow the weights' layout, so inputs need no conversion.

    Example:
        >>> memory_format(torch.device("cpu")) is torch.channels_last
        True
    """
    return torch.channels_last if device.type == "cpu" else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "DEFAULT_MODEL", "MODELS", "build_model", "check_model", "count_parameters", "memory_format",
    "torch",
]  # fmt: skip
