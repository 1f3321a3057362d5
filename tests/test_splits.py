"""k-fold splits: disjoint, complete, repeatable, grouped when asked."""

from __future__ import annotations

import numpy as np
import pytest

from dlexp.data.splits import kfold_indices
from dlexp.errors import DlexpError

LABELS = np.repeat(np.arange(5), [40, 37, 45, 38, 40])


@pytest.mark.parametrize("stratify", [True, False])
def test_folds_are_disjoint_cover_everything_and_repeat(stratify):
    folds = kfold_indices(LABELS, 5, seed=42, stratify=stratify)
    assert len(folds) == 5
    validation = np.concatenate([val for _, val in folds])
    assert sorted(validation.tolist()) == list(range(len(LABELS)))
    for train, val in folds:
        assert not set(train) & set(val)
        assert len(train) + len(val) == len(LABELS)
    again = kfold_indices(LABELS, 5, seed=42, stratify=stratify)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = kfold_indices(LABELS, 5, seed=43, stratify=stratify)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_stratified_folds_keep_class_proportions():
    for _, val in kfold_indices(LABELS, 5, seed=0):
        counts = np.bincount(LABELS[val], minlength=5)
        assert np.all(np.abs(counts - np.bincount(LABELS) / 5) <= 1)


def test_grouped_folds_never_split_a_group():
    groups = np.repeat(np.arange(20), 10)
    labels = groups % 3
    for train, val in kfold_indices(labels, 4, seed=0, groups=groups):
        assert not set(groups[train]) & set(groups[val])


def test_too_few_samples_for_the_folds():
    with pytest.raises(DlexpError, match="trainer.folds=1"):
        kfold_indices(LABELS, 1, seed=0)
    with pytest.raises(DlexpError, match="class index 1 has only 2 samples"):
        kfold_indices(np.array([0, 0, 0, 1, 1, 0]), 3, seed=0)
