"""The image experiment's data: decode a CSV's images once, hold out a test set by specimen, and hand
training an ``ImageData`` (the dataset config's target is ``load_image_data``).

The pieces live in modules of their own: ``image_table`` (the CSV), ``image_source`` (folder or zip),
``decode`` (bytes to RGB), ``image_dataset`` (``CsvImageDataset``, the public PyTorch ``Dataset``),
``image_cache`` (decode once, cached on disk) and ``image_transforms`` (augmentation, normalisation).
They are re-exported here so ``from dlexp.data.images import CsvImageDataset`` keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlexp.data.decode import decode_rgb
from dlexp.data.image_cache import decode_all, resize_transform
from dlexp.data.image_dataset import CsvImageDataset
from dlexp.data.image_source import ImageSource
from dlexp.data.image_table import has_column, read_image_table
from dlexp.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, augmentation
from dlexp.data.protocol import ExperimentData
from dlexp.data.splits import holdout_indices
from dlexp.errors import DlexpError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "BatchTransform", "CsvImageDataset", "ImageData", "ImageSource",
    "augmentation", "decode_all", "decode_rgb", "load_image_data", "read_image_table", "resize_transform",
]

log = logging.getLogger(__name__)


@dataclass
class ImageData(ExperimentData):
    """Decoded images split into train and test; fulfils :class:`dlexp.data.protocol.ExperimentData`.

    ``x_train``/``x_test`` are uint8 ``N x 3 x H x W``; models see them through ``train_transform``
    (augmentation + normalisation) and ``eval_transform`` (normalisation). ``groups`` holds the training
    rows' specimens (None for a row-level split), so k-fold keeps each specimen in one fold.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    name: str
    groups: np.ndarray | None
    test_groups: np.ndarray | None
    group_column: str | None
    train_transform: BatchTransform
    eval_transform: BatchTransform
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    train_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def grouped(self) -> bool:
        return self.groups is not None

    def split_note(self) -> str:
        """One line saying how honest the test accuracy is."""
        if self.grouped:
            return (f"split by {self.group_column!r}: {len(set(self.test_groups))} of "
                    f"{len(set(self.groups)) + len(set(self.test_groups))} specimens held out for testing, "
                    "folds grouped too (no specimen in two places)")
        return ("split by row: near-duplicate photos of one specimen can sit in train and test, so this "
                "accuracy is optimistic" if self.group_column else "split by row")

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"dataset {self.name}: {len(self.y_train)} train / {len(self.y_test)} test images "
                f"({c}x{h}x{w}), {self.n_classes} classes; {self.split_note()}")


def _images_beside(csv_path: Path) -> Path:
    """``Insects.csv`` -> ``Insects.zip`` or the folder ``Insects/`` beside it."""
    for candidate in (csv_path.with_suffix(".zip"), csv_path.with_suffix("")):
        if candidate.exists():
            return candidate
    raise DlexpError(f"dataset.images is not set and neither {csv_path.with_suffix('.zip')} nor the folder "
                     f"{csv_path.with_suffix('')} exists; pass dataset.images=FOLDER_OR_ZIP")


def load_image_data(
    csv: str | None,
    images: str | None = None,
    label_column: str = "species",
    filename_column: str = "filename",
    group_column: str | None = "sample",
    split: str = "group",
    test_fraction: float = 0.25,
    seed: int = 0,
    image_size: Sequence[int] = (64, 64),
    num_workers: int = 2,
    cache_dir: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: dict | None = None,
    name: str = "images",
) -> ImageData:
    """Decode the CSV's images once, hold out a test set and return an :class:`ImageData`.

    ``split="group"`` holds out whole specimens (``group_column``; the default ``sample`` is used only
    when the CSV has it) and groups the folds too; ``split="row"`` splits rows and warns when the data
    has a group column, because near-duplicate photos then leak into the test set.
    """
    if not csv:
        raise DlexpError("dataset.csv is not set: pass dataset.csv=PATH/Insects.csv "
                         "dataset.images=PATH/Insects.zip")
    if split not in ("group", "row"):
        raise DlexpError(f"dataset.split={split!r}: expected group or row")
    check_image_options(test_fraction, image_size, num_workers)
    csv_path = Path(csv)
    has_group = bool(group_column) and has_column(csv_path, group_column)
    if split == "group" and group_column and not has_group and group_column != "sample":
        raise DlexpError(f"{csv_path}: no group column {group_column!r}; set dataset.group_column=NAME, "
                         "or dataset.split=row")
    dataset = CsvImageDataset(csv_path, images or _images_beside(csv_path), label_column, filename_column,
                              group_column if has_group else None)
    if split == "row" and has_group:
        log.warning("dataset.split=row on data with a group column %r: photos of one specimen land in both "
                    "train and test, so the test accuracy is leaked and optimistic; use dataset.split=group "
                    "for an honest number", group_column)
    if split == "group" and not has_group:
        log.warning("%s has no group column %r: splitting by row; if rows of one specimen are near "
                    "duplicates, the test accuracy is optimistic", csv_path, group_column)
    grouped = split == "group" and has_group
    labels = np.asarray(dataset.targets)
    groups = np.asarray(dataset.groups) if has_group else None
    train_idx, test_idx = holdout_indices(labels, test_fraction, seed, groups if grouped else None)
    return decoded_image_data(dataset, train_idx, test_idx, groups if grouped else None,
                              group_column if has_group else None, image_size=image_size, num_workers=num_workers,
                              cache_dir=cache_dir, mean=mean, std=std, augment=augment, name=name)


def check_image_options(test_fraction: float | None, image_size: Sequence[int], num_workers: int) -> None:
    """One line for a bad ``dataset.test_fraction`` (None: not used), ``image_size`` or ``num_workers``."""
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise DlexpError(f"dataset.test_fraction={test_fraction}: expected a fraction between 0 and 1")
    if len(image_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in image_size):
        raise DlexpError(f"dataset.image_size={list(image_size)}: expected [height, width] in pixels")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise DlexpError(f"dataset.num_workers={num_workers!r}: expected an integer >= 0")


def decoded_image_data(dataset, train_idx: np.ndarray, test_idx: np.ndarray, groups: np.ndarray | None,
                       group_column: str | None, *, image_size: Sequence[int], num_workers: int,
                       cache_dir: str | None, mean: Sequence[float], std: Sequence[float], augment: dict | None,
                       name: str) -> ImageData:
    """Decode (or load from the cache) every image of ``dataset`` and split it into an :class:`ImageData`.

    ``dataset`` is a :class:`CsvImageDataset` or one with the same ``targets``, ``classes``, ``filenames``,
    ``source``, ``locations`` (dlexp.data.image_folder's); ``groups`` (one per image, or None) makes the
    folds grouped; ``group_column`` names them in the split note.
    """
    labels = np.asarray(dataset.targets)
    grouped = groups is not None
    size = tuple(image_size)
    try:
        augment_one = augmentation(size, **(augment or {}))
    except (TypeError, ValueError) as error:  # an unknown or bad dataset.augment key
        raise DlexpError(f"dataset.augment: {error} (options: hflip, vflip, crop_scale, color_jitter, "
                         "rotation)") from None
    x = decode_all(dataset, image_size, num_workers, cache_dir=cache_dir)
    files = dataset.filenames
    return ImageData(
        x_train=x[train_idx], y_train=torch.as_tensor(labels[train_idx]),
        x_test=x[test_idx], y_test=torch.as_tensor(labels[test_idx]),
        class_names=list(dataset.classes), name=name,
        groups=groups[train_idx] if grouped else None,
        test_groups=groups[test_idx] if grouped else None,
        group_column=group_column,
        train_transform=BatchTransform(mean, std, augment_one),
        eval_transform=BatchTransform(mean, std),
        mean=tuple(mean), std=tuple(std),
        train_files=[files[i] for i in train_idx], test_files=[files[i] for i in test_idx],
    )
