"""Images per second of the bee-image input pipeline: decode once and keep uint8 tensors (dlexp) against a
plain per-item ``read_image`` + ``Resize`` Dataset that decodes every image again every epoch.

    python benchmarks/image_pipeline.py [--csv ../shared/seed-data/insects/Insects.csv] [--size 64]

The zip is extracted to a temporary folder for the plain dataset (``read_image`` needs files); dlexp reads
the zip in place. Results go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, read_image
from torchvision.transforms import v2

from dlexp.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchTransform,
    CsvImageDataset,
    augmentation,
    decode_all,
)

SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "seed-data" / "insects"


class PlainImageDataset(Dataset):
    """The textbook version: read, decode, resize and normalise one file per item, every epoch."""

    def __init__(self, paths: list[Path], targets: list[int], size: int) -> None:
        self.paths, self.targets = paths, targets
        self.transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(str(self.paths[i]), ImageReadMode.RGB)), self.targets[i]


def timed(label: str, n: int, work) -> float:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"{label:<62} {seconds:7.2f} s  {n / seconds:8.0f} images/s")
    return seconds


def epoch_over(loader) -> None:
    for _ in loader:
        pass


def epoch_in_memory(x: torch.Tensor, transform, batch_size: int) -> None:
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch_size):
        transform(x[order[start : start + batch_size]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=SEED_DATA / "Insects.csv")
    parser.add_argument("--zip", type=Path, default=None, help="default: the CSV's name with .zip")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    archive = args.zip or args.csv.with_suffix(".zip")
    torch.set_num_threads(1)
    dataset = CsvImageDataset(args.csv, archive)
    n, size = len(dataset), (args.size, args.size)
    print(f"{n} images -> {args.size}x{args.size}, batch {args.batch_size}, {args.workers} DataLoader workers, "
          f"{torch.get_num_threads()} torch thread(s)\n")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(folder)
        paths = [next(folder.rglob(name)) for name in dataset.filenames]
        plain = DataLoader(PlainImageDataset(paths, dataset.targets, args.size), batch_size=args.batch_size,
                           shuffle=True, num_workers=args.workers)
        for epoch in range(1, args.epochs + 1):
            timed(f"plain read_image + Resize per item, epoch {epoch}", n, lambda: epoch_over(plain))

        from_folder = CsvImageDataset(args.csv, paths[0].parent)
        timed("dlexp decode once, from the folder (first epoch)", n,
              lambda: decode_all(from_folder, size, args.workers, args.batch_size))

        x = None

        def decode_zip():
            nonlocal x
            x = decode_all(dataset, size, args.workers, args.batch_size)

        timed("dlexp decode once, from the zip in place (first epoch)", n, decode_zip)
        cache = Path(scratch) / "cache"
        decode_all(dataset, size, args.workers, args.batch_size, cache_dir=cache)
        timed("dlexp first epoch of a later run (disk cache hit)", n,
              lambda: decode_all(dataset, size, args.workers, args.batch_size, cache_dir=cache))

    evaluation = BatchTransform(IMAGENET_MEAN, IMAGENET_STD)
    training = BatchTransform(IMAGENET_MEAN, IMAGENET_STD, augmentation(size, color_jitter=0.1))
    for epoch in range(2, args.epochs + 1):
        timed(f"dlexp later epoch {epoch}, in memory, normalise only", n,
              lambda: epoch_in_memory(x, evaluation, args.batch_size))
    for epoch in range(2, args.epochs + 1):
        timed(f"dlexp later epoch {epoch}, in memory, augment + normalise", n,
              lambda: epoch_in_memory(x, training, args.batch_size))


if __name__ == "__main__":
    main()
