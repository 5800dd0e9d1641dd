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
        # After the pooling, which holds no weights: the checkpoint's keys stay those of a run without dropout
        # (inside fc they became fc.1.*, and every verb that builds the model for inference, without dropout,
        # failed to load the run's weights).
        net.avgpool = nn.Sequential(net.avgpool, nn.Dropout(dropout))
    return net


@register_model
def resnet18(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    return _cifar_stem(torchvision.models.resnet18(num_classes=num_classes), in_channels, dropout)


@register_model
def resnet34(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    return _cifar_stem(torchvision.models.resnet34(num_classes=num_classes), in_channels, dropout)
