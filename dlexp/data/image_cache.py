"""Decode and resize every image once into one uint8 tensor, cached on disk so no JPEG is decoded twice.

The cache key covers the listed files (size and modification time), the image size, the resize and the
decoding (``dlexp.data.decode.DECODING``), so a changed file, setting or decoder decodes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms import v2

from dlexp.data.decode import DECODING
from dlexp.data.image_dataset import CsvImageDataset
from dlexp.data.workers import batches as worker_batches
from dlexp.training import progress

log = logging.getLogger(__name__)

#: 2: images are decoded with their EXIF orientation applied; a cache of version 1 holds phone photos
#: sideways and is never read again.
CACHE_VERSION = 2


def resize_transform(size: Sequence[int]) -> v2.Resize:
    """Every image to exactly ``(height, width)`` (photos differ in height), antialiased, still uint8."""
    return v2.Resize(tuple(size), antialias=True)


def _cache_key(dataset: CsvImageDataset, size: Sequence[int]) -> str:
    """Changes when any listed file, the image size, the resize or the decoding changes."""
    if dataset.source.is_zip:
        stat = dataset.source.path.stat()
        files = [str(dataset.source.path.resolve()), stat.st_size, stat.st_mtime_ns, dataset.locations]
    else:
        files = [(loc, (s := os.stat(loc)).st_size, s.st_mtime_ns) for loc in dataset.locations]
    spec = {"version": CACHE_VERSION, "files": files, "size": list(size),
            "transform": repr(resize_transform(size)), "decoding": DECODING}
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
        loader = worker_batches(dataset, batch_size, num_workers)  # in a launcher's worker too
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
