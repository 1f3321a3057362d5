"""Batch transforms for image training: per-image augmentation, then float conversion and normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BatchTransform:
    """uint8 image batch -> augmented (each image on its own draw), float in [0, 1], normalised."""

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.augment = augment
        self.finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            batch = torch.stack([self.augment(image) for image in batch])
        return self.finish(batch)

    def __repr__(self) -> str:
        return f"BatchTransform(augment={self.augment}, finish={self.finish})"


def augmentation(size: Sequence[int], hflip: bool = True, vflip: bool = False,
                 crop_scale: Sequence[float] | None = (0.8, 1.0), color_jitter: float = 0.0,
                 rotation: float = 0.0) -> v2.Compose | None:
    """Training-only augmentation of a uint8 image of ``size``; None when every option is off."""
    steps: list = []
    if crop_scale is not None and tuple(crop_scale) != (1.0, 1.0):
        steps.append(v2.RandomResizedCrop(tuple(size), scale=tuple(crop_scale), ratio=(0.9, 1.1),
                                          antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(steps) if steps else None


# ---------------------------------------------------------------------------------- the experiment's data
