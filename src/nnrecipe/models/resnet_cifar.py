"""ResNet-18/34 with the CIFAR stem: torchvision's ResNet with a 3x3 stride-1 first conv and no max-pool,
so small (8x8 to 32x32) images keep their resolution through the first stage."""

from __future__ import annotations

import torchvision
from torch import nn

from nnrecipe.models import register_model


def _cifar_stem(net: torchvision.models.ResNet, in_channels: int, dropout: float) -> nn.Module:
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if dropout:
        net.fc = nn.Sequential(nn.Dropout(dropout), net.fc)
    return net


@register_model
def resnet18(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    return _cifar_stem(torchvision.models.resnet18(num_classes=num_classes), in_channels, dropout)


@register_model
def resnet34(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    return _cifar_stem(torchvision.models.resnet34(num_classes=num_classes), in_channels, dropout)
