"""Seeded k-fold splits (optionally stratified by class and/or grouped) built on scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from dlexp.errors import DlexpError


def kfold_indices(
    labels: np.ndarray,
    folds: int,
    seed: int,
    stratify: bool = True,
    groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``folds`` pairs of ``(train_indices, validation_indices)``.

    Validation sets are disjoint and together cover every sample. The same seed gives the same folds.
    With ``groups``, no group is split across a fold boundary.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if folds < 2:
        raise DlexpError(f"trainer.folds={folds}: k-fold cross-validation needs at least 2 folds")
    if n < folds:
        raise DlexpError(f"trainer.folds={folds}: only {n} training samples, fewer than the folds")
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < folds:
            raise DlexpError(
                f"trainer.folds={folds}: only {n_groups} groups in the training data; "
                "a grouped split needs at least one group per fold"
            )
        splitter = (
            StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            if stratify
            else GroupKFold(folds, shuffle=True, random_state=seed)
        )
        return [(tr, va) for tr, va in splitter.split(np.zeros(n), labels, groups)]
    if stratify:
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() < folds:
            raise DlexpError(
                f"trainer.folds={folds}: class index {classes[counts.argmin()]} has only {counts.min()} "
                "samples; a stratified split needs at least one per fold (lower the folds or set "
                "trainer.stratify=false)"
            )
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(np.zeros(n), labels)]
