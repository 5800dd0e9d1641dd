"""Small classic CNNs: the 2-conv "ConvNet", a LeNet-5 style net, and an MLP baseline.

They take any square input size and channel count, so the same net runs on 8x8 digits and 32x32 CIFAR.
"""

from __future__ import annotations

from torch import nn

from nnrecipe.models import register_model


@register_model
def convnet(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """The classic ConvNet: conv32-pool-conv64-pool-fc256-fc(classes), 3x3 'same' convolutions."""
    side = image_size // 4  # two 2x2 max-pools
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )


@register_model
def lenet5(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """LeNet-5 style: conv6-pool-conv16-pool-fc120-fc84-fc(classes); 'same' 5x5 convs so 8x8 input works."""
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(84, num_classes),
    )


@register_model
def mlp(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """A one-hidden-layer perceptron: the baseline every CNN must beat."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )
