"""Degenerate splits said out loud: a class that is never tested, missing from a fold's training or validation
part, or with fewer specimens than folds (issue 23, fault 7). Each is one WARNING line in the log and a line
of the run's summary, and a class without test images says why in the per-class numbers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class SplitCheck:
    """What :func:`check_split` found: ``warnings`` (one line each) and, for each class without test rows,
    why (``untested[class name]``)."""

    warnings: list[str] = field(default_factory=list)
    untested: dict[str, str] = field(default_factory=dict)


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _its(n: int, unit: str) -> str:
    return f"its only {unit} is" if n == 1 else f"its {n} {unit}s are all"


def _folds(numbers: list[int]) -> str:
    return f"fold{'' if len(numbers) == 1 else 's'} {', '.join(map(str, numbers))}"


def _names(values) -> str:
    shown = sorted(map(str, values))
    return ", ".join(repr(v) for v in shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def check_split(
    class_names: Sequence[str],
    y_train: np.ndarray,
    y_test: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
) -> SplitCheck:
    """Every degenerate part of a run's split, as one-line warnings.

    ``y_train``/``y_test`` are class indices (``int``, shape ``(n,)``) into ``class_names``; ``folds`` are
    the k-fold ``(train_indices, validation_indices)`` into the training rows; ``groups``/``test_groups``
    the rows' specimens (None: a row-level split, counted in rows). Reported per class: no test rows (why,
    also in ``untested``), no training rows, absent from a fold's training part (that fold's model cannot
    predict it), absent from a fold's validation part (fewer specimens than folds, or how the split fell).
    """
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    unit = "specimen" if groups is not None else "row"
    check = SplitCheck()
    for c, name in enumerate(class_names):
        in_train, in_test = y_train == c, y_test == c
        units = set(np.asarray(groups)[in_train]) if groups is not None else None
        n_train = len(units) if units is not None else int(in_train.sum())
        if not in_test.any():
            if not in_train.any():
                why = "it has no rows in the data"
            elif units is not None and len(units) == 1:
                why = f"its only specimen ({_names(units)}) is in the training data"
            else:
                why = f"{_its(n_train, unit)} in the training data"
            check.untested[name] = f"not tested: {why}"
            check.warnings.append(f"class {name!r} is in no test set: {why}, so its test accuracy is not measured "
                                  "and the headline accuracy says nothing about it")
        if not in_train.any():
            if in_test.any():
                n_test = len(set(np.asarray(test_groups)[in_test])) if test_groups is not None else int(in_test.sum())
                check.warnings.append(f"class {name!r} is not in the training data: {_its(n_test, unit)} in the "
                                      "test set, so no fold can learn it")
            continue
        no_train = [k for k, (train, _) in enumerate(folds, 1) if not in_train[train].any()]
        no_val = [k for k, (_, val) in enumerate(folds, 1) if not in_train[val].any()]
        if no_train:
            check.warnings.append(f"class {name!r} is missing from the training part of {_folds(no_train)}: "
                                  f"{_its(n_train, unit)} "
                                  "in that fold's validation part, so its model cannot predict it")
        if no_val:
            cause = (f"has {_count(n_train, unit)} for {len(folds)} folds" if n_train < len(folds)
                     else "is missing from a validation part")
            check.warnings.append(f"class {name!r} {cause}: the validation part of {_folds(no_val)} "
                                  f"{'has' if len(no_val) == 1 else 'have'} none of it, so that validation accuracy "
                                  "and early stopping ignore it")
    return check


def check_data_split(data, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> SplitCheck:
    """:func:`check_split` of an :class:`dlexp.data.protocol.ExperimentData` and its folds; logs each warning
    as one WARNING line."""
    check = check_split(data.class_names, data.y_train.numpy(), data.y_test.numpy(), folds, data.groups,
                        getattr(data, "test_groups", None))
    for line in check.warnings:
        log.warning("split: %s", line)
    return check
