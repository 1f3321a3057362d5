"""``dataset=image_folder``: one sub-folder per class (torchvision's ``ImageFolder`` convention).

``root/CLASS/**/image.jpg``, the test set held out as a fraction; or ``root/train/CLASS/...`` and
``root/test/CLASS/...``, the test set given. The files are listed by torchvision's own
``find_classes``/``make_dataset`` (its image extensions, sorted); decoding, the disk cache, the transforms
and the grouped split are the insects set's (dlexp.data.images).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from dlexp.data.decode import decode_rgb
from dlexp.data.image_source import ImageSource
from dlexp.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD
from dlexp.data.images import ImageData, check_image_options, decoded_image_data
from dlexp.data.splits import holdout_indices
from dlexp.errors import DlexpError

log = logging.getLogger(__name__)


@dataclass
class FolderImageData(ImageData):
    """:class:`ImageData` whose test set may be a folder of its own (then the split note says so)."""

    test_folder: str | None = None

    def split_note(self) -> str:
        if self.test_folder is None:
            return super().split_note()
        return f"test set from {self.test_folder}" + (", folds grouped by group_pattern" if self.grouped else "")


class FolderImageDataset(Dataset):
    """The images under ``root``'s class folders (and, for a given test set, ``test_root``'s), as ``(image,
    class index)`` items: ``image`` the decoded uint8 RGB ``3 x H x W`` tensor through ``transform``.

    ``classes`` are ``root``'s sub-folder names, sorted (torchvision's ``find_classes``); ``n_train`` items come
    from ``root``, the rest from ``test_root``. ``filenames`` are paths below their root (``CLASS/x.jpg``);
    ``group_pattern`` (a regular expression searched in the path below the class folder, its first group or
    whole match the group) gives each image's group.
    """

    def __init__(self, root: str | Path, test_root: str | Path | None = None, group_pattern: str | None = None,
                 transform=None) -> None:
        self.root = Path(root)
        if self.root.is_file():
            raise DlexpError(f"{self.root}: a file; dataset=image_folder reads a folder with one sub-folder per "
                             "class (unpack it, or list its images in a CSV for dataset=insects)")
        self.classes, self.class_to_idx = _classes(self.root)
        self.source = ImageSource(self.root)  # a folder: locations are file paths
        items = _files(self.root, self.class_to_idx)
        self.n_train = len(items)
        if test_root is not None:
            test_classes, _ = _classes(Path(test_root))
            if extra := sorted(set(test_classes) - set(self.classes)):
                raise DlexpError(f"{Path(test_root) / extra[0]}: class folder {extra[0]!r} has no training folder "
                                 f"in {self.root} (classes: {', '.join(self.classes)})")
            items += _files(Path(test_root), {c: self.class_to_idx[c] for c in test_classes})
        self.locations = [path for path, _ in items]
        self.targets = [target for _, target in items]
        roots = [self.root] * self.n_train + [Path(test_root or self.root)] * (len(items) - self.n_train)
        self.filenames = [Path(path).relative_to(top).as_posix() for path, top in zip(self.locations, roots,
                                                                                      strict=True)]
        self.groups = _groups(self.filenames, group_pattern, self.root) if group_pattern else None
        self.transform = transform
        self.return_label_name = False

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | str]:
        image = decode_rgb(self.source.read(self.locations[index]), self.locations[index])
        if self.transform is not None:
            image = self.transform(image)
        target = self.targets[index]
        return image, (self.classes[target] if self.return_label_name else target)


def _classes(root: Path) -> tuple[list[str], dict[str, int]]:
    if not root.is_dir():
        raise DlexpError(f"{root}: image folder not found (expected one sub-folder per class)")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise DlexpError(f"{root}: no class sub-folders; expected {root}/CLASS/image.jpg for each class") from None
    return classes, class_to_idx


def _files(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    try:
        return make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:  # torchvision: "Found no valid file for the classes X. Supported ..."
        raise DlexpError(f"{root}: {str(error).splitlines()[0]}") from None


def _groups(filenames: list[str], pattern: str, root: Path) -> np.ndarray:
    """The group of ``CLASS/rest``: ``pattern`` searched in ``rest``, its first group (or the whole match)."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise DlexpError(f"dataset.group_pattern={pattern!r}: not a regular expression ({error})") from None
    groups = []
    for name in filenames:
        rest = name.split("/", 1)[1] if "/" in name else name
        match = regex.search(rest)
        if match is None:
            raise DlexpError(f"{root}: {name} does not match dataset.group_pattern={pattern!r}; expected every "
                             "image's path below its class folder to name its group")
        groups.append(match.group(1) if regex.groups else match.group(0))
    return np.asarray(groups)


def load_image_folder(
    root: str | None,
    test_root: str | None = None,
    group_pattern: str | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    image_size: Sequence[int] = (64, 64),
    num_workers: int = 2,
    cache_dir: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: dict | None = None,
    name: str | None = None,
) -> ImageData:
    """An :class:`ImageData` of the class folders under ``root``.

    The test set: ``test_root`` (class folders of the same names); else, when ``root`` holds exactly the
    folders ``train`` and ``test``, those; else ``test_fraction`` of the images (stratified; with
    ``group_pattern``, whole groups of each class, and the folds grouped too).
    """
    if not root:
        raise DlexpError("dataset.root is not set: pass dataset.root=PATH (one sub-folder per class)")
    root_path = Path(root)
    if test_root is None and root_path.is_dir() and sorted(p.name for p in root_path.iterdir() if p.is_dir()) == [
            "test", "train"]:
        root_path, test_root = root_path / "train", str(root_path / "test")
    check_image_options(None if test_root else test_fraction, image_size, num_workers)
    dataset = FolderImageDataset(root_path, test_root, group_pattern)
    labels = np.asarray(dataset.targets)
    if len(dataset.classes) < 2:
        raise DlexpError(f"{root_path}: only one class folder ({dataset.classes[0]}); classification needs two or "
                         "more")
    if test_root is not None:
        train_idx, test_idx = np.arange(dataset.n_train), np.arange(dataset.n_train, len(dataset))
        if dataset.groups is not None and (shared := set(dataset.groups[train_idx]) & set(dataset.groups[test_idx])):
            log.warning("group %s has images in both %s and %s: the test accuracy is optimistic",
                        sorted(shared)[0], root_path, test_root)
    else:
        train_idx, test_idx = holdout_indices(labels, test_fraction, seed, dataset.groups)
    data = decoded_image_data(dataset, train_idx, test_idx, dataset.groups,
                              "group_pattern" if dataset.groups is not None else None, image_size=image_size,
                              num_workers=num_workers, cache_dir=cache_dir, mean=mean, std=std, augment=augment,
                              name=name or Path(root).resolve().name)
    return FolderImageData(**{f.name: getattr(data, f.name) for f in fields(ImageData)}, test_folder=test_root)
