"""The bee images of the course (../shared/seed-data/insects): every row loads, and the experiment runs end
to end into a temporary MLflow store, reporting the specimen-held-out accuracy as its headline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SEED_DATA, compose_config

from dlexp.data.images import CsvImageDataset, decode_all
from dlexp.errors import DlexpError
from dlexp.experiment import run_experiment

INSECTS = SEED_DATA / "insects"
CSV, ZIP = INSECTS / "Insects.csv", INSECTS / "Insects.zip"
pytestmark = [pytest.mark.full,  # decodes the 724 course photos (520 px wide) and trains on them
              pytest.mark.skipif(not (CSV.is_file() and ZIP.is_file()),
                                 reason=f"course bee images not found at {INSECTS}")]
SPECIES = ["Andrena fulva", "Lasioglossum punctatissimum", "Panurgus banksianus"]


def test_every_row_of_the_course_csv_loads_from_the_zip():
    dataset = CsvImageDataset(CSV, ZIP, group_column="sample")
    assert len(dataset) == 724 and dataset.classes == SPECIES
    assert np.bincount(dataset.targets).tolist() == [256, 235, 233]
    assert len(set(dataset.groups)) == 12
    first, label = dataset[0]
    assert first.dtype == torch.uint8 and first.shape[0] == 3 and first.shape[2] == 520
    assert 520 <= first.shape[1] <= 687 and label == SPECIES.index(dataset.labels[0])
    images = decode_all(dataset, (32, 32), num_workers=2)
    assert images.shape == (724, 3, 32, 32) and images.dtype == torch.uint8
    assert (images.float().std(dim=(1, 2, 3)) > 5).all()  # every image decoded to a real picture


def run_and_fetch(store, *overrides: str):
    """A short insects run (48 px, 3 folds, at most 6 epochs) into the test's MLflow store."""
    cfg = compose_config([
        "+experiment=insects", f"dataset.csv={CSV}", f"dataset.images={ZIP}", "dataset.image_size=[48,48]",
        f"dataset.cache_dir={store['dir'] / 'cache'}", "trainer.folds=3", "trainer.max_epochs=6",
        "trainer.patience=3", *store["overrides"], *overrides,
    ])
    summary = run_experiment(cfg, store["dir"] / "run")
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("insects").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return summary, client, parent, folds


def test_grouped_experiment_end_to_end(store):
    summary, client, parent, folds = run_and_fetch(store)
    metrics = parent.data.metrics
    assert parent.info.status == "FINISHED" and len(folds) == 3
    assert metrics["test_acc_grouped"] == pytest.approx(summary["test_acc"])
    # Three whole specimens (one per species) are unseen: chance is 1/3; a few epochs already do better
    # for the reported fold (50.4% with the per-fold seeds of dlexp.data.splits.fold_seed; the folds' mean is
    # 36.9% after 6 epochs, was 55% with the old seed + fold; the README's longer runs average 55%).
    assert metrics["test_acc_grouped"] > 0.40 and metrics["test_acc_fold_mean"] > 0.34
    assert {f"test_acc_class.{s}" for s in SPECIES} <= set(metrics)
    assert "specimens held out" in parent.data.tags["dlexp.split"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("samples.png", "confusion_matrix.png", "per_class_accuracy.png", "misclassified.png",
                 "loss_curves.png"):
        assert f"plots/{name}" in artifacts
    assert "held out" in (store["dir"] / "run" / "summary.txt").read_text()


def test_row_split_reports_the_leaked_accuracy_and_says_so(store, caplog):
    summary, _, parent, _ = run_and_fetch(store, "dataset.split=row", "model.channels=[8,16]")
    # Near-duplicate photos of each specimen sit in train and test: the number looks (falsely) great.
    assert summary["test_acc"] > 0.9
    assert "test_acc_grouped" not in parent.data.metrics
    assert "optimistic" in parent.data.tags["dlexp.split"]
    assert any("leaked" in r.getMessage() for r in caplog.records)


def test_experiment_without_a_csv_is_a_one_line_error(store):
    cfg = compose_config(["+experiment=insects", *store["overrides"]])
    with pytest.raises(DlexpError, match="^dataset.csv is not set: pass dataset.csv="):
        run_experiment(cfg, store["dir"] / "run")
