"""Photos are decoded as an image viewer shows them: the EXIF Orientation tag is applied by every decoder
and a decoded-image cache made before it was is never reused (issue 23, fault 2)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from dlexp.data import decode
from dlexp.data.image_cache import resize_transform
from dlexp.data.images import CsvImageDataset, decode_all, decode_rgb

ORIENTATION = 0x0112  # the EXIF tag


def as_viewed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for HWC pixels stored with ``orientation``, from the EXIF 2.3 spec's table (CW:
    clockwise): 2 mirror horizontal, 3 rotate 180, 4 mirror vertical, 5 mirror horizontal and rotate 270 CW,
    6 rotate 90 CW, 7 mirror horizontal and rotate 90 CW, 8 rotate 270 CW."""
    mirrored = stored[:, ::-1]
    return {1: stored, 2: mirrored, 3: stored[::-1, ::-1], 4: stored[::-1], 5: np.rot90(mirrored, 1),
            6: np.rot90(stored, -1), 7: np.rot90(mirrored, -1), 8: np.rot90(stored, 1)}[orientation]


def stored_pixels(seed: int = 0) -> np.ndarray:
    """24 x 40 RGB in 8x8 blocks of random colours: no two orientations look alike, and JPEG keeps
    uniform blocks nearly exact."""
    blocks = np.random.default_rng(seed).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    return blocks.repeat(8, axis=0).repeat(8, axis=1)


def write(path: Path, pixels: np.ndarray, orientation: int, fmt: str) -> Path:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}, "PNG": {}}[fmt]
    Image.fromarray(pixels).save(path, fmt, exif=exif.tobytes(), **options)
    return path


def decoded(path: Path) -> np.ndarray:
    return decode_rgb(path.read_bytes(), str(path)).permute(1, 2, 0).numpy()


def assert_shows(image: np.ndarray, expected: np.ndarray) -> None:
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected).mean() < 4  # JPEG's error on uniform blocks; wrong: ~80


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_orientation_is_applied_in_every_format(tmp_path, fmt, orientation):
    pixels = stored_pixels(orientation)
    path = write(tmp_path / f"photo.{fmt.lower()}", pixels, orientation, fmt)
    assert_shows(decoded(path), as_viewed(pixels, orientation))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_pillow_fallback_applies_the_orientation_too(tmp_path, monkeypatch, orientation):
    def refuse(*args, **kwargs):
        raise RuntimeError("torchvision cannot decode this")

    monkeypatch.setattr(decode, "decode_image", refuse)
    pixels = stored_pixels(orientation)
    path = write(tmp_path / "photo.jpg", pixels, orientation, "JPEG")
    assert_shows(decoded(path), as_viewed(pixels, orientation))


def test_a_phone_photo_stored_sideways_is_upright_in_the_dataset(tmp_path):
    """A phone's portrait photo: stored 24 x 40 (landscape) with Orientation=6, shown 40 x 24."""
    pixels = stored_pixels()
    write(tmp_path / "phone.jpg", pixels, 6, "JPEG")
    (tmp_path / "list.csv").write_text("filename,species\nphone.jpg,Apis mellifera\n")
    image, _ = CsvImageDataset(tmp_path / "list.csv", tmp_path)[0]
    assert image.shape == (3, 40, 24)
    assert_shows(image.permute(1, 2, 0).numpy(), np.rot90(pixels, -1))


def key_before_the_fix(dataset: CsvImageDataset, size) -> str:
    """dlexp.data.image_cache._cache_key as it was when images were decoded as stored (main 2a69257)."""
    files = [(loc, (s := os.stat(loc)).st_size, s.st_mtime_ns) for loc in dataset.locations]
    spec = {"version": 1, "files": files, "size": list(size), "transform": repr(resize_transform(size))}
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:24]


def test_a_cache_of_images_decoded_sideways_is_not_reused(tmp_path):
    size = (40, 24)
    for i, orientation in enumerate([6, 3, 8]):
        write(tmp_path / f"photo{i}.jpg", stored_pixels(i), orientation, "JPEG")
    (tmp_path / "list.csv").write_text("filename,species\n" + "".join(f"photo{i}.jpg,bee\n" for i in range(3)))
    dataset = CsvImageDataset(tmp_path / "list.csv", tmp_path)
    as_stored = torch.stack([resize_transform(size)(decode_image(str(tmp_path / f"photo{i}.jpg"), ImageReadMode.RGB))
                             for i in range(3)])  # what dlexp decoded and cached before
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(as_stored, cache / f"images-{key_before_the_fix(dataset, size)}.pt")

    images = decode_all(dataset, size, num_workers=0, cache_dir=cache)
    upright = torch.stack([resize_transform(size)(dataset.load(i)) for i in range(3)])
    assert torch.equal(images, upright)
    assert not torch.equal(images, as_stored)
    assert len(list(cache.glob("images-*.pt"))) == 2  # the old one is left, never read
