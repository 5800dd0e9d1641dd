"""Batch-level augmentation and normalisation of uint8 image batches, on whichever device they are.

Random crop-with-padding and horizontal flip are the workhorses of small-image training, so they are
vectorised over the batch with an independent draw per image (transforms.v2 on a batch tensor would
give every image the same draw). Rotation, resized crop and colour jitter use torchvision.transforms.v2
per image. All randomness comes from the generator passed in, so a batch is a function of its seed.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchAugment:
    def __init__(self, cfg, image_size: int):
        self.pad = cfg.crop_padding
        self.hflip = cfg.hflip
        per_image = []
        if cfg.scale is not None:
            per_image.append(v2.RandomResizedCrop(image_size, scale=tuple(cfg.scale), antialias=True))
        if cfg.rotation:
            per_image.append(v2.RandomRotation(cfg.rotation))
        if cfg.color_jitter:
            j = cfg.color_jitter
            per_image.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        self.per_image = v2.Compose(per_image) if per_image else None

    @property
    def active(self) -> bool:
        return bool(self.pad or self.hflip or self.per_image)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        b, _, h, w = x.shape
        if self.per_image is not None:
            # v2 draws from torch's global RNG: fork it so dropout's stream (and resume) is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = torch.stack([self.per_image(img) for img in x])
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b, 1), generator=g).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (b, 1), generator=g).to(x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
            bi = torch.arange(b, device=x.device)[:, None, None, None]
            ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.hflip:
            flip = (torch.rand(b, generator=g) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
        return x


class Normalizer:
    """uint8 -> float, (x/255 - mean) / std per channel."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.inv_std = self.mean.to(x.device), self.inv_std.to(x.device)
        return (x.float() - self.mean) * self.inv_std


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, in chunks of about 256K values (2 MB as float64), so a large set
    (or a streamed one, decoded chunk by chunk) never becomes one float copy."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    per_image = c * images.shape[2] * images.shape[3]
    for chunk in images.split(max(1, 2**18 // per_image)):
        f = chunk.to(torch.float64) / 255.0
        total += f.sum(dim=(0, 2, 3))
        sq += (f * f).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (sq / n - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
