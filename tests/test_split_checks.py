"""Degenerate splits are reported: a class never tested, missing from a fold's training or validation part,
or with fewer specimens than folds gives one WARNING line each, in the log and the run's summary, and the
per-class numbers say why a class has none (issue 23, fault 7)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import compose_config
from PIL import Image

from dlexp.data.split_checks import check_split
from dlexp.data.splits import holdout_indices, kfold_indices

CLASSES = ["Apis", "Bombus", "Osmia"]


def bees_with_a_lonely_species(specimens: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Apis and Bombus with ``specimens`` specimens of 3 photos each; Osmia with a single specimen."""
    labels, groups = [], []
    for c in (0, 1):
        for s in range(specimens):
            labels += [c] * 3
            groups += [f"{CLASSES[c]} {s}"] * 3
    labels += [2] * 3
    groups += ["Osmia 0"] * 3
    return np.array(labels), np.array(groups)


def split(labels, groups, folds: int):
    train, test = holdout_indices(labels, 0.25, 0, groups)
    return labels[train], labels[test], kfold_indices(labels[train], folds, 0, True, groups[train]), groups[train]


def test_a_species_with_one_specimen_is_reported_untested_and_missing_from_folds():
    labels, groups = bees_with_a_lonely_species()
    y_train, y_test, folds, train_groups = split(labels, groups, folds=3)
    check = check_split(CLASSES, y_train, y_test, folds, train_groups)
    holding = next(k for k, (_, val) in enumerate(folds, 1) if (y_train[val] == 2).any())
    others = ", ".join(str(k) for k in (1, 2, 3) if k != holding)
    assert check.warnings == [
        "class 'Osmia' is in no test set: its only specimen ('Osmia 0') is in the training data, so its test "
        "accuracy is not measured and the headline accuracy says nothing about it",
        f"class 'Osmia' is missing from the training part of fold {holding}: its only specimen is in that fold's "
        "validation part, so its model cannot predict it",
        f"class 'Osmia' has 1 specimen for 3 folds: the validation part of folds {others} have none of it, so "
        "that validation accuracy and early stopping ignore it",
    ]
    assert check.untested == {"Osmia": "not tested: its only specimen ('Osmia 0') is in the training data"}


def test_a_class_with_two_specimens_for_three_folds_and_row_splits():
    labels, groups = bees_with_a_lonely_species()
    labels[-3:] = 0  # no lonely species any more: Apis and Bombus only
    y_train, y_test, folds, train_groups = split(labels, groups, folds=3)
    assert check_split(CLASSES[:2], y_train, y_test, folds, train_groups).warnings == []
    # a row split of 5 rows per class into 6 folds without stratification: some fold validates without a class
    y = np.arange(10) % 2
    folds = kfold_indices(y, 6, 0, stratify=False)
    check = check_split(["a", "b"], y, np.array([0, 1]), folds)
    assert check.warnings and all("has 5 rows for 6 folds: the validation part of fold" in w for w in check.warnings)
    # a class whose only row went to the test set is never learned
    check = check_split(["a", "b"], np.zeros(4, int), np.array([0, 1]), kfold_indices(np.zeros(4), 2, 0, False))
    assert check.warnings == ["class 'b' is not in the training data: its only row is in the test set, so no fold "
                              "can learn it"]


@pytest.fixture
def lonely_image_set(tmp_path):
    """24 32x32 JPEGs: 2 species of 5 specimens (2 photos each) and one species of a single specimen."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        c = 2 if i >= 20 else i % 2
        pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        pixels[..., c] += 180
        Image.fromarray(pixels).save(folder / f"bee{i}.jpg")
        specimen = "Osmia 0" if c == 2 else f"{CLASSES[c]} {i // 4}"
        rows.append(f"bee{i}.jpg,{specimen},{CLASSES[c]}\n")
    (tmp_path / "bees.csv").write_text("filename,sample,species\n" + "".join(rows))
    return tmp_path / "bees.csv", folder


def test_a_run_warns_of_its_degenerate_split_and_its_summary_says_why(store, tmp_path, lonely_image_set, caplog):
    from dlexp.experiment import run_experiment

    csv, folder = lonely_image_set
    overrides = ["+experiment=insects", f"dataset.csv={csv}", f"dataset.images={folder}", "dataset.cache_dir=null",
                 "dataset.num_workers=0", "dataset.image_size=[32,32]", "trainer.folds=2", "trainer.max_epochs=2",
                 *store["overrides"]]
    with caplog.at_level(logging.WARNING, logger="dlexp.data.split_checks"):
        summary = run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    warned = [r.getMessage() for r in caplog.records if r.name == "dlexp.data.split_checks"]
    assert len(warned) == 3 and all(r.levelname == "WARNING" for r in caplog.records
                                    if r.name == "dlexp.data.split_checks")
    assert warned[0].startswith("split: class 'Osmia' is in no test set: its only specimen ('Osmia 0')")
    assert warned[1].startswith("split: class 'Osmia' is missing from the training part of fold ")
    assert warned[2].startswith("split: class 'Osmia' has 1 specimen for 2 folds: the validation part of fold ")
    assert summary["split_warnings"] == [w.removeprefix("split: ") for w in warned]

    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["split_warnings"] == summary["split_warnings"]
    osmia = saved["test_per_class"]["Osmia"]
    assert osmia == {"test_images": 0, "test_acc": None,
                     "note": "not tested: its only specimen ('Osmia 0') is in the training data"}
    assert [saved["test_per_class"][c]["test_images"] for c in CLASSES[:2]] == [2, 2]
    text = (tmp_path / "out" / "summary.txt").read_text()
    assert "  Osmia: not tested: its only specimen ('Osmia 0') is in the training data\n" in text
    assert "warnings about the split (3):\n  WARNING: class 'Osmia' is in no test set" in text
