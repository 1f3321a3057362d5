"""Image classification data: a CSV of labels and file names, images in a folder or a zip, decoded once.

``CsvImageDataset`` is a plain PyTorch ``Dataset`` (usable without Hydra): ``dataset[i]`` is
``(image CHW tensor, class index)``, or ``(image, label string)`` with ``return_label_name=True``.
``load_image_data`` is the ``dataset`` config's target: it decodes every image once through that dataset
and a ``DataLoader`` into one resized uint8 ``N x C x H x W`` tensor (cached on disk, keyed by the files,
the size and the resize), holds out a test set by specimen (the ``group_column``) and returns an
``ImageData`` with the same interface as ``PointData`` plus batch transforms for training and evaluation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from dlexp import progress
from dlexp.errors import DlexpError
from dlexp.splits import holdout_indices

log = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- the CSV


def _separator(path: Path) -> str:
    """Commas, then tabs, then semicolons, else runs of whitespace, judged by the header line."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline()
    for sep in (",", "\t", ";"):
        if sep in header:
            return sep
    return r"\s+"


def _find_column(frame: pd.DataFrame, name: str, option: str, path: Path) -> str:
    """The column called ``name`` (exact, else ignoring case); a DlexpError lists what is there."""
    if name in frame.columns:
        return name
    matches = [c for c in frame.columns if c.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    raise DlexpError(
        f"{path}: no column {name!r} (columns: {', '.join(map(repr, frame.columns))}); "
        f"set dataset.{option}=NAME"
    )


def _label_text(value: str) -> str:
    """``"2.000000000000000000e+00"`` and ``"2"`` are the same class ``"2"``; other text is kept as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _sort_key(label: str):
    """Numeric labels in numeric order, then text labels in alphabetical order."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def read_image_table(
    csv_path: str | Path,
    label_column: str = "species",
    filename_column: str = "filename",
    group_column: str | None = None,
) -> pd.DataFrame:
    """The CSV as a frame with columns ``label``, ``filename``, ``group`` (None without a group column)
    and ``row`` (the CSV line number, for error messages). Columns are found by name, in any order."""
    path = Path(csv_path)
    if not path.is_file():
        raise DlexpError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path, sep=_separator(path), dtype=str, keep_default_na=False,
                            engine="python", encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DlexpError(f"{path}: not a readable CSV ({str(error).strip().splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    label = _find_column(frame, label_column, "label_column", path)
    filename = _find_column(frame, filename_column, "filename_column", path)
    group = _find_column(frame, group_column, "group_column", path) if group_column else None
    table = pd.DataFrame({
        "label": frame[label].str.strip().map(_label_text),
        "filename": frame[filename].str.strip(),
        "group": frame[group].str.strip() if group else None,
        "row": np.arange(2, len(frame) + 2),
    })
    if table.empty:
        raise DlexpError(f"{path}: no rows under the header")
    for column, name in (("label", label), ("filename", filename)) + ((("group", group),) if group else ()):
        empty = table.index[table[column] == ""]
        if len(empty):
            raise DlexpError(f"{path}:{table.row[empty[0]]}: empty {name!r} value")
    return table


# -------------------------------------------------------------------------------------- folder or zip


def _safe_entry(name: str) -> bool:
    """A zip entry that names a file inside the archive: not a folder, not absolute, no ``..``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    return not name.endswith("/") and not pure.is_absolute() and ".." not in pure.parts and ":" not in name


class ImageSource:
    """Image files by name from a folder, or from a zip archive read in place (never extracted).

    In a zip, a CSV file name matches the entry of that name under any folder prefix (``Insects/x.jpg``
    for ``x.jpg``). Entries with absolute paths or ``..`` are ignored. Each process opens its own zip
    handle on first use and a pickled source carries none, so DataLoader workers never share one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DlexpError(f"{self.path}: image folder or zip not found")
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._by_basename: dict[str, list[str]] = {}
        if self.is_zip:
            if not zipfile.is_zipfile(self.path):
                raise DlexpError(f"{self.path}: not a zip archive (expected a folder of images or a .zip)")
            with zipfile.ZipFile(self.path) as archive:
                for name in archive.namelist():
                    if _safe_entry(name):
                        self._by_basename.setdefault(PurePosixPath(name).name, []).append(name)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zip"], state["_zip_pid"] = None, None
        return state

    def __repr__(self) -> str:
        return f"ImageSource({str(self.path)!r})"

    def locate(self, filename: str) -> str | None:
        """The zip entry or folder path for ``filename``, or None when there is none.

        Raises DlexpError when a zip holds several entries that fit the name.
        """
        filename = filename.replace("\\", "/")
        if not self.is_zip:
            path = self.path / filename
            return str(path) if path.is_file() else None
        candidates = [e for e in self._by_basename.get(PurePosixPath(filename).name, [])
                      if e == filename or e.endswith("/" + filename)]
        if len(candidates) > 1:
            raise DlexpError(f"{self.path}: several entries fit {filename!r}: {', '.join(candidates[:3])}")
        return candidates[0] if candidates else None

    def read(self, location: str) -> bytes:
        """The bytes of a location returned by :meth:`locate`."""
        if not self.is_zip:
            return Path(location).read_bytes()
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(location)


def decode_rgb(data: bytes, where: str) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB ``3 x H x W`` tensor.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted, not rejected; formats torchvision
    cannot decode go through PIL. Undecodable bytes raise a DlexpError naming ``where``.
    """
    if not data:
        raise DlexpError(f"{where}: not a readable image (the file is empty)")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                image = v2.functional.pil_to_tensor(pil.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DlexpError(f"{where}: not a readable image ({error})") from None
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = v2.functional.to_dtype(image, torch.uint8, scale=True)
    return image


# ----------------------------------------------------------------------------------------- the Dataset


class CsvImageDataset(Dataset):
    """Images listed in a CSV (a label and a file name per row) from a folder or a zip.

    ``dataset[i]`` is ``(image, class index)``: ``image`` is the decoded uint8 RGB ``3 x H x W`` tensor
    passed through ``transform`` when one is given. ``classes`` lists the class names (sorted, or as
    given) and ``class_to_idx`` maps a name to its index. With ``return_label_name=True`` items are
    ``(image, label string)`` instead. Every listed file is checked when the dataset is made, so a
    missing image is reported before any work. Safe with ``DataLoader(num_workers=N)``.
    """

    def __init__(
        self,
        csv_path: str | Path,
        images: str | Path,
        label_column: str = "species",
        filename_column: str = "filename",
        group_column: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_label_name: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.table = read_image_table(csv_path, label_column, filename_column, group_column)
        self.source = images if isinstance(images, ImageSource) else ImageSource(images)
        self.transform = transform
        self.return_label_name = return_label_name
        self.classes = list(classes) if classes is not None else sorted(set(self.table.label), key=_sort_key)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        unknown = self.table.index[~self.table.label.isin(self.class_to_idx)]
        if len(unknown):
            first = self.table.loc[unknown[0]]
            raise DlexpError(f"{self.csv_path}:{first.row}: label {first.label!r} is not one of the classes "
                             f"{self.classes}")
        self.locations = [self._locate(name, row)
                          for name, row in zip(self.table.filename, self.table.row, strict=True)]
        self.targets = [self.class_to_idx[label] for label in self.table.label]

    def _locate(self, filename: str, row: int) -> str:
        location = self.source.locate(filename)
        if location is None:
            raise DlexpError(f"{self.csv_path}:{row}: image {filename!r} not found in {self.source.path}")
        return location

    @property
    def labels(self) -> list[str]:
        return list(self.table.label)

    @property
    def filenames(self) -> list[str]:
        return list(self.table.filename)

    @property
    def groups(self) -> list[str] | None:
        return None if self.table.group.isna().all() else list(self.table.group)

    def __len__(self) -> int:
        return len(self.table)

    def load(self, index: int) -> torch.Tensor:
        """The decoded image of row ``index`` (no transform)."""
        row = self.table.row.iloc[index]
        where = f"{self.csv_path}:{row}: {self.table.filename.iloc[index]} in {self.source.path}"
        return decode_rgb(self.source.read(self.locations[index]), where)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | str]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        label = self.table.label.iloc[index] if self.return_label_name else self.targets[index]
        return image, label


# ------------------------------------------------------------------------------------ decode once, cached


def resize_transform(size: Sequence[int]) -> v2.Resize:
    """Every image to exactly ``(height, width)`` (photos differ in height), antialiased, still uint8."""
    return v2.Resize(tuple(size), antialias=True)


def _cache_key(dataset: CsvImageDataset, size: Sequence[int]) -> str:
    """Changes when any listed file, the image size or the resize changes."""
    if dataset.source.is_zip:
        stat = dataset.source.path.stat()
        files = [str(dataset.source.path.resolve()), stat.st_size, stat.st_mtime_ns, dataset.locations]
    else:
        files = [(loc, (s := os.stat(loc)).st_size, s.st_mtime_ns) for loc in dataset.locations]
    spec = {"version": CACHE_VERSION, "files": files, "size": list(size),
            "transform": repr(resize_transform(size))}
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:24]


def decode_all(
    dataset: CsvImageDataset,
    size: Sequence[int],
    num_workers: int = 2,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Every image of ``dataset`` decoded and resized once, as a uint8 ``N x 3 x H x W`` tensor.

    With ``cache_dir`` the tensor is saved there under a key of the files, size and resize, and later
    calls load it instead of decoding again.
    """
    cache_file = Path(cache_dir) / f"images-{_cache_key(dataset, size)}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            images = torch.load(cache_file, weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:  # damaged: decode again
            log.warning("images: ignoring unreadable cache %s (%s)", cache_file, error)
        else:
            if images.shape[0] == len(dataset):
                log.info("images: loaded %d decoded images from %s", len(dataset), cache_file)
                return images
    saved = dataset.transform, dataset.return_label_name
    dataset.transform, dataset.return_label_name = resize_transform(size), False
    try:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            persistent_workers=False)
        batches = progress.track(loader, len(dataset), "decoding images", "image", size=lambda b: len(b[0]))
        images = torch.cat([batch for batch, _ in batches])
    finally:
        dataset.transform, dataset.return_label_name = saved
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(images, partial)
        os.replace(partial, cache_file)  # atomic: a parallel job never reads half a file
    return images


# -------------------------------------------------------------------------------------- batch transforms


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


@dataclass
class ImageData:
    """Decoded images split into train and test, with the interface of ``PointData``.

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


def _has_column(csv_path: Path, name: str) -> bool:
    if not csv_path.is_file():
        raise DlexpError(f"{csv_path}: CSV file not found")
    header = pd.read_csv(csv_path, sep=_separator(csv_path), nrows=0, engine="python", encoding="utf-8-sig")
    return name.lower() in {str(c).strip().lower() for c in header.columns}


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
    if not 0 < test_fraction < 1:
        raise DlexpError(f"dataset.test_fraction={test_fraction}: expected a fraction between 0 and 1")
    if len(image_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in image_size):
        raise DlexpError(f"dataset.image_size={list(image_size)}: expected [height, width] in pixels")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise DlexpError(f"dataset.num_workers={num_workers!r}: expected an integer >= 0")
    csv_path = Path(csv)
    has_group = bool(group_column) and _has_column(csv_path, group_column)
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
        group_column=group_column if has_group else None,
        train_transform=BatchTransform(mean, std, augment_one),
        eval_transform=BatchTransform(mean, std),
        mean=tuple(mean), std=tuple(std),
        train_files=[files[i] for i in train_idx], test_files=[files[i] for i in test_idx],
    )
