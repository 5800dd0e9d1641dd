"""Model registry: networks are built by name, never inside the training loop.

Built-in names are registered with `@register_model`; `tv:<name>` builds any torchvision classification
model and `timm:<name>` any timm model, both from scratch (weights come from `model.init_from`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from nnrecipe.errors import RecipeError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    _REGISTRY[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def check_model_name(name: str) -> None:
    """Raise ValueError (shown as a recipe error) when `name` cannot be built."""
    if name.startswith("tv:"):
        import torchvision

        if name[3:] not in torchvision.models.list_models(module=torchvision.models):
            close = difflib.get_close_matches(name[3:], torchvision.models.list_models(module=torchvision.models), n=3)
            raise ValueError(
                f"unknown torchvision model '{name[3:]}'" + (f"; close: {', '.join(close)}" if close else "")
            )
        return
    if name.startswith("timm:"):
        import timm

        if not timm.is_model(name[5:]):
            raise ValueError(f"unknown timm model '{name[5:]}' (see timm.list_models())")
        return
    names = model_names()
    if name not in names:
        raise ValueError(f"unknown model; allowed: {', '.join(names)}, tv:<torchvision name>, timm:<timm name>")


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """Build a freshly initialised classifier for `num_classes` classes on `in_channels` x image_size^2 input."""
    if name.startswith("tv:"):
        import torchvision

        if in_channels != 3:
            raise RecipeError(f"model.name {name}: torchvision models take RGB input; set data.channels: 3")
        return torchvision.models.get_model(name[3:], weights=None, num_classes=num_classes)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(
            name[5:], pretrained=False, num_classes=num_classes, in_chans=in_channels, drop_rate=dropout
        )
    _load_builtins()
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, dropout=dropout)


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters: timm's get_classifier(), else the last nn.Linear."""
    head = None
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
    if not isinstance(head, nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise RecipeError("model.freeze: this model has no nn.Linear head to keep trainable")
        head = linears[-1]
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _load_builtins() -> None:
    from nnrecipe.models import resnet_cifar, small_cnn  # noqa: F401  (registers on import)
