"""Seeded k-fold splits (optionally stratified by class and/or grouped) built on scikit-learn, and the
seeds of each fold's own random streams."""

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


def holdout_indices(
    labels: np.ndarray, test_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split off a test set: ``(train_indices, test_indices)``, both sorted.

    Without ``groups``, a stratified row split. With ``groups``, whole groups go to the test set, chosen
    per class (a group counts for its most frequent class): ``round(test_fraction * n)`` of a class's
    ``n`` groups, at least one whenever the class has two or more, so every class is tested where
    possible and no group is in both sets.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if groups is None:
        from sklearn.model_selection import train_test_split

        _, counts = np.unique(labels, return_counts=True)
        stratify = labels if counts.min() >= 2 else None
        train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                       stratify=stratify)
        return np.sort(train), np.sort(test)
    groups = np.asarray(groups)
    names = np.unique(groups)
    if len(names) < 2:
        raise DlexpError(f"only {len(names)} group in the data; a grouped test split needs two or more")
    main_class = {g: np.bincount(labels[groups == g]).argmax() for g in names}
    test_groups: list = []
    for cls in np.unique(labels):
        members = [g for g in names if main_class[g] == cls]
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(test_fraction * len(members))))
        test_groups += list(rng.choice(members, size=take, replace=False))
    if not test_groups:
        test_groups = [rng.choice(names)]
    is_test = np.isin(groups, test_groups)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


#: The random streams a fold draws from; each gets its own seed.
FOLD_STREAMS = ("weights", "order")


def fold_seed(seed: int, fold: int, stream: str) -> int:
    """The seed of fold ``fold``'s ``stream`` (initial ``weights``, data ``order``) in a run seeded ``seed``.

    numpy's SeedSequence hashes the whole (seed, fold, stream) tuple, so no two of them share a stream;
    ``seed + fold`` gave fold k of seed s the weights of fold k+1 of seed s+1, correlating a seed sweep.
    """
    if stream not in FOLD_STREAMS:
        raise ValueError(f"stream {stream!r}: expected one of {FOLD_STREAMS}")
    entropy = [int(seed), int(fold), FOLD_STREAMS.index(stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
