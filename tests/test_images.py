"""The image Dataset, decode cache, grouped splits, batch transforms and backbones on generated images."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from dlexp.data import image_cache
from dlexp.data.images import (
    BatchTransform,
    CsvImageDataset,
    ImageSource,
    augmentation,
    decode_all,
    decode_rgb,
    load_image_data,
)
from dlexp.data.splits import holdout_indices, kfold_indices
from dlexp.errors import DlexpError
from dlexp.models.backbones import torchvision_classifier

CLASSES = ["Apis mellifera", "Bombus terrestris", "Osmia bicornis"]
# (mode, format): grayscale, RGBA, CMYK and 16-bit images must all come out as 3-channel uint8.
KINDS = [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG")]


def make_image(path: Path, mode: str, fmt: str, height: int, width: int, seed: int) -> np.ndarray:
    """Write an image and return the RGB uint8 pixels a lossless reader should see (HWC)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "I;16":
        gray = rgb[..., 0].astype(np.uint16) * 257
        Image.fromarray(gray).save(path, fmt)
        return np.repeat(rgb[..., :1], 3, axis=2)
    image = Image.fromarray(rgb).convert(mode)
    image.save(path, fmt)
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def bees(tmp_path_factory) -> dict:
    """24 images of 3 species (12 specimens, 2 photos each), different sizes and kinds, names with spaces;
    a CSV with the columns in another order; a folder, a zip and a zip with a folder prefix."""
    root = tmp_path_factory.mktemp("bees")
    folder = root / "my photos"
    folder.mkdir()
    rows, pixels = [], {}
    for i in range(24):
        species = CLASSES[i % 3]
        mode, fmt = KINDS[i % len(KINDS)]
        name = f"bee {i:02d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        pixels[name] = make_image(folder / name, mode, fmt, 40 + 3 * i, 50 + (i % 4), seed=i)
        rows.append((name, species, f"specimen {i % 12}"))
    csv = root / "bees list.csv"
    csv.write_text("filename,sample,species\n" + "".join(f"{n},{g},{s}\n" for n, s, g in rows))
    plain_zip, prefixed_zip = root / "plain.zip", root / "prefixed.zip"
    with zipfile.ZipFile(plain_zip, "w") as a, zipfile.ZipFile(prefixed_zip, "w") as b:
        for name, _, _ in rows:
            a.write(folder / name, name)
            b.write(folder / name, f"Bees/sub dir/{name}")
    return {"root": root, "csv": csv, "folder": folder, "rows": rows, "pixels": pixels,
            "sources": {"folder": folder, "zip": plain_zip, "prefixed zip": prefixed_zip}}


@pytest.mark.parametrize("source", ["folder", "zip", "prefixed zip"])
def test_dataset_items_through_two_workers(bees, source):
    dataset = CsvImageDataset(bees["csv"], bees["sources"][source], transform=v2.Resize((32, 24)))
    assert dataset.classes == CLASSES
    assert dataset.class_to_idx == {name: i for i, name in enumerate(CLASSES)}
    loader = DataLoader(dataset, batch_size=5, num_workers=2)
    images, labels = zip(*loader, strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (24, 3, 32, 24) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == [CLASSES.index(s) for _, s, _ in bees["rows"]]


@pytest.mark.parametrize("source", ["folder", "prefixed zip"])
def test_dataset_returns_full_images_and_species_names(bees, source):
    dataset = CsvImageDataset(bees["csv"], bees["sources"][source], return_label_name=True)
    for i, (name, species, _) in enumerate(bees["rows"]):
        image, label = dataset[i]
        expected = bees["pixels"][name]
        assert label == species
        assert image.dtype == torch.uint8 and image.shape == (3, *expected.shape[:2])
        if name.endswith(".png"):  # lossless: exact pixels, also for RGBA and 16-bit sources
            assert torch.equal(image, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    assert [label for _, label in loader] == [s for _, s, _ in bees["rows"]]


def test_zip_source_pickles_without_its_handle(bees):
    source = ImageSource(bees["sources"]["zip"])
    first = source.read(source.locate("bee 00.jpg"))
    assert source._zip is not None
    clone = pickle.loads(pickle.dumps(source))
    assert clone._zip is None and clone.read(clone.locate("bee 00.jpg")) == first


def test_labels_as_ints_or_floats_and_tab_separated(tmp_path, bees):
    csv = tmp_path / "numbers.tsv"
    labels = ["2.000000000000000000e+00", "10", "2", "1.0"]
    csv.write_text("species\tfilename\n" + "".join(f"{lab}\t{n}\n" for lab, (n, _, _) in
                                                     zip(labels, bees["rows"], strict=False)))
    dataset = CsvImageDataset(csv, bees["folder"])
    assert dataset.classes == ["1", "2", "10"]
    assert dataset.targets == [1, 2, 1, 0]


@pytest.mark.parametrize("header, message", [
    ("filename,kind\n", "no column 'species'"),
    ("name,species\n", "no column 'filename'"),
])
def test_missing_column_is_named(tmp_path, bees, header, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(header + "bee 00.jpg,Apis\n")
    with pytest.raises(DlexpError, match=f"bad.csv: {message}"):
        CsvImageDataset(csv, bees["folder"])


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_missing_image_names_file_and_csv_line(tmp_path, bees, source):
    csv = tmp_path / "gap.csv"
    csv.write_text("species,filename\nApis,bee 00.jpg\nApis,bee 99.jpg\n")
    with pytest.raises(DlexpError, match=r"gap.csv:3: image 'bee 99.jpg' not found"):
        CsvImageDataset(csv, bees["sources"][source])


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    csv = tmp_path / "c.csv"
    csv.write_text("species,filename\nApis,broken.jpg\n")
    dataset = CsvImageDataset(csv, tmp_path / "imgs")
    with pytest.raises(DlexpError, match=r"c.csv:2: broken.jpg .*not a readable image"):
        dataset[0]
    with pytest.raises(DlexpError, match="not a readable image"):
        decode_rgb(b"", "empty")


def test_zip_entries_outside_the_archive_are_never_used(tmp_path, bees):
    evil = tmp_path / "evil.zip"
    data = (bees["folder"] / "bee 00.jpg").read_bytes()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.jpg", data)
        archive.writestr("/abs/rooted.jpg", data)
        archive.writestr("ok/fine.jpg", data)
    source = ImageSource(evil)
    assert source.locate("escape.jpg") is None and source.locate("../escape.jpg") is None
    assert source.locate("rooted.jpg") is None
    assert source.locate("fine.jpg") == "ok/fine.jpg"


def test_ambiguous_zip_entry_is_an_error(tmp_path, bees):
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as archive:
        archive.write(bees["folder"] / "bee 00.jpg", "a/bee 00.jpg")
        archive.write(bees["folder"] / "bee 00.jpg", "b/bee 00.jpg")
    with pytest.raises(DlexpError, match="several entries fit 'bee 00.jpg'"):
        ImageSource(twice).locate("bee 00.jpg")
    assert ImageSource(twice).locate("b/bee 00.jpg") == "b/bee 00.jpg"


def test_decode_all_caches_by_files_and_size(tmp_path, bees, monkeypatch):
    dataset = CsvImageDataset(bees["csv"], bees["sources"]["zip"])
    first = decode_all(dataset, (20, 16), num_workers=2, cache_dir=tmp_path / "cache")
    assert first.shape == (24, 3, 20, 16) and first.dtype == torch.uint8
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(image_cache, "worker_batches", no_decoding)
    assert torch.equal(decode_all(dataset, (20, 16), num_workers=2, cache_dir=tmp_path / "cache"), first)
    monkeypatch.undo()
    next((tmp_path / "cache").glob("images-*.pt")).write_bytes(b"damaged")
    assert torch.equal(decode_all(dataset, (20, 16), num_workers=0, cache_dir=tmp_path / "cache"), first)
    other = decode_all(dataset, (24, 16), num_workers=0, cache_dir=tmp_path / "cache")
    assert other.shape == (24, 3, 24, 16)
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 2


def test_holdout_by_group_keeps_specimens_whole_and_tests_every_class():
    rng = np.random.default_rng(1)
    groups = np.repeat([f"s{i}" for i in range(12)], rng.integers(10, 60, 12))
    labels = np.array([int(g[1:]) % 3 for g in groups])
    for seed in range(5):
        train, test = holdout_indices(labels, 0.25, seed, groups)
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
        assert not set(groups[train]) & set(groups[test])
        assert set(labels[test]) == {0, 1, 2}
        assert len(set(groups[test])) == 3  # round(0.25 * 4) specimens of each class
    same_seed = [holdout_indices(labels, 0.25, 3, groups)[1] for _ in range(2)]
    assert np.array_equal(*same_seed)


def test_grouped_data_from_the_loader_has_no_specimen_in_two_places(tmp_path, bees):
    data = load_image_data(str(bees["csv"]), str(bees["sources"]["prefixed zip"]), image_size=[16, 16],
                           test_fraction=0.25, seed=0, num_workers=0, cache_dir=None)
    assert data.x_train.shape[1:] == (3, 16, 16) and data.input_shape == (3, 16, 16)
    assert len(data.y_train) + len(data.y_test) == 24
    assert not set(data.groups) & set(data.test_groups)
    folds = kfold_indices(data.y_train.numpy(), 3, 0, True, data.groups)
    seen: set = set()
    for train_idx, val_idx in folds:
        val_groups = set(data.groups[val_idx])
        assert not val_groups & set(data.groups[train_idx])
        assert not val_groups & seen
        seen |= val_groups
    assert seen == set(data.groups)
    assert "specimens held out" in data.describe()


def test_row_split_on_grouped_data_warns(caplog, bees):
    with caplog.at_level(logging.WARNING, logger="dlexp.data.images"):
        data = load_image_data(str(bees["csv"]), str(bees["folder"]), split="row", image_size=[8, 8],
                               num_workers=0)
    assert data.groups is None and "optimistic" in data.split_note()
    assert any("dataset.split=row" in r.getMessage() and "leaked" in r.getMessage() for r in caplog.records)


def test_missing_csv_setting_and_bad_split_are_errors(bees):
    with pytest.raises(DlexpError, match="dataset.csv is not set"):
        load_image_data(None)
    with pytest.raises(DlexpError, match="dataset.split='fold': expected group or row"):
        load_image_data(str(bees["csv"]), split="fold")
    with pytest.raises(DlexpError, match=r"dataset.image_size=\[64, 'a'\]: expected \[height, width\]"):
        load_image_data(str(bees["csv"]), image_size=[64, "a"])
    with pytest.raises(DlexpError, match="dataset.num_workers=-1: expected an integer >= 0"):
        load_image_data(str(bees["csv"]), num_workers=-1)
    with pytest.raises(DlexpError, match="dataset.augment: .*'flip'"):
        load_image_data(str(bees["csv"]), str(bees["folder"]), augment={"flip": True})
    with pytest.raises(DlexpError, match="no group column 'specimen'"):
        load_image_data(str(bees["csv"]), str(bees["folder"]), group_column="specimen")


def test_batch_transforms_normalise_and_augment_each_image_on_its_own():
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(16, 1, 1, 1)
    plain = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(batch)
    assert plain.dtype == torch.float32 and plain.shape == (16, 3, 32, 32)
    assert torch.allclose(plain[0], (batch[0].float() / 255 - 0.5) / 0.25, atol=1e-5)
    augmented = BatchTransform((0.5,) * 3, (0.25,) * 3, augmentation((32, 32), color_jitter=0.2))(batch)
    assert augmented.shape == (16, 3, 32, 32)
    assert len({augmented[i].sum().item() for i in range(16)}) > 8  # not one draw for the whole batch
    assert augmentation((32, 32), hflip=False, crop_scale=None) is None


@pytest.mark.parametrize("name, parameters", [("resnet18", 11_178_051), ("mobilenet_v3_small", 1_520_931)])
def test_backbones_get_a_head_for_our_classes(name, parameters):
    model = torchvision_classifier(name, (3, 64, 64), num_classes=3, weights=None)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(DlexpError, match="model.weights='IMAGENET_NOPE'"):
        torchvision_classifier(name, (3, 64, 64), 3, weights="IMAGENET_NOPE")
    with pytest.raises(DlexpError, match="needs RGB"):
        torchvision_classifier(name, (1, 64, 64), 3)


def test_a_frozen_backbone_does_not_change_in_training():
    """model=mobilenet_v3_small model.freeze=true: one epoch changes the new head and nothing else, not
    even BatchNorm's running statistics (its 34 BatchNorm layers used to update them while frozen)."""
    from conftest import compose_config

    from dlexp.config.build import build
    from dlexp.training.loop import train_fold

    cfg = compose_config(["+experiment=insects", "model=mobilenet_v3_small", "model.freeze=true",
                          "model.weights=null"])
    torch.manual_seed(0)
    model = build("model", cfg.model, input_shape=(3, 32, 32), num_classes=3)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batchnorms) == 34
    head = ["classifier.3.bias", "classifier.3.weight"]

    def weights() -> dict[str, torch.Tensor]:  # torchvision's names (the frozen model wraps it as `model`)
        return {name.removeprefix("model."): t.clone() for name, t in model.state_dict().items()}

    before = weights()
    trainable = [name.removeprefix("model.") for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == head
    x, y = torch.rand(40, 3, 32, 32), torch.arange(40) % 3
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    train_fold(1, model, optimizer, None, torch.nn.CrossEntropyLoss(), x, y, torch.arange(32),
               torch.arange(32, 40), batch_size=8, max_epochs=1, patience=1,
               generator=torch.Generator().manual_seed(0))
    after = weights()
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert changed == head
    model.train()
    assert model.training and not any(m.training for m in batchnorms)
