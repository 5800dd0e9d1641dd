"""Transfer learning schedule: train only the head, then (optionally) unfreeze the backbone at an epoch."""

from __future__ import annotations

from torch import nn

from nnrecipe.engine.loop import Callback


class FreezeBackbone(Callback):
    """Freeze every parameter not in `head`; from `unfreeze_at_epoch` on, train everything.

    While frozen, BatchNorm layers of the backbone stay in eval mode, so their running statistics are
    frozen too (a frozen backbone is then exactly the pretrained function, as in a linear probe).
    """

    def __init__(self, head: set[str], unfreeze_at_epoch: int | None):
        self.head, self.unfreeze_at = head, unfreeze_at_epoch

    def frozen(self, epoch: int) -> bool:
        return self.unfreeze_at is None or epoch < self.unfreeze_at

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        frozen = self.frozen(epoch)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.head or not frozen)

    def on_train_mode(self, epoch: int, model: nn.Module) -> None:
        if not self.frozen(epoch):
            return
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
