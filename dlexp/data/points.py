"""Point-table datasets: whitespace-separated ``label f1 f2 ...`` rows, as in the course's spiral task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlexp.data.protocol import ExperimentData, Transform
from dlexp.errors import DlexpError


@dataclass
class PointData(ExperimentData):
    """Train and test points with class indices; ``class_names[i]`` is the label that index ``i`` came from.

    Fulfils :class:`dlexp.data.protocol.ExperimentData`: points have no groups and go into the model as
    they are (no transforms).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    name: str = "points"
    groups: np.ndarray | None = None
    train_transform: Transform | None = None
    eval_transform: Transform | None = None

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def grouped(self) -> bool:
        return self.groups is not None

    def describe(self) -> str:
        return (f"dataset {self.name}: {len(self.y_train)} train / {len(self.y_test)} test points, "
                f"{self.n_features} features, {self.n_classes} classes")

    def split_note(self) -> str | None:
        return None


def read_point_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``label f1 f2 ...`` rows (spaces or tabs, any number of features) into float arrays.

    Blank lines and lines starting with ``#`` are skipped. Every problem is a :class:`DlexpError` that
    names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DlexpError(f"{path.absolute()}: data file not found")
    labels: list[float] = []
    rows: list[list[float]] = []
    width = None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if width is None:
                if len(fields) < 2:
                    raise DlexpError(
                        f"{path}:{number}: expected 'label feature1 [feature2 ...]', found one column"
                    )
                width = len(fields)
            elif len(fields) != width:
                raise DlexpError(
                    f"{path}:{number}: ragged row: expected {width} columns like the first row, "
                    f"found {len(fields)}"
                )
            values = []
            for column, text in enumerate(fields, start=1):
                try:
                    value = float(text)
                except ValueError:
                    raise DlexpError(
                        f"{path}:{number}: column {column} is not a number: {text!r}"
                    ) from None
                if not math.isfinite(value):
                    raise DlexpError(f"{path}:{number}: column {column} is not finite: {text!r}")
                values.append(value)
            labels.append(values[0])
            rows.append(values[1:])
    if not rows:
        raise DlexpError(f"{path}: file is empty (expected rows of 'label feature1 [feature2 ...]')")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.float64)


def label_name(value: float) -> str:
    """``2.0`` -> ``"2"``; non-integral labels keep their value (``"0.5"``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def encode_labels(
    labels: np.ndarray, class_values: np.ndarray, path: str | Path
) -> torch.Tensor:
    """Map raw label values to class indices (their position in the sorted ``class_values``)."""
    indices = np.searchsorted(class_values, labels)
    indices = np.clip(indices, 0, len(class_values) - 1)
    unknown = np.flatnonzero(class_values[indices] != labels)
    if unknown.size:
        raise DlexpError(
            f"{path}: label {label_name(labels[unknown[0]])} (data row {unknown[0] + 1}) does not occur "
            f"in the training file; known labels: {', '.join(label_name(v) for v in class_values)}"
        )
    return torch.as_tensor(indices, dtype=torch.long)


def load_point_files(train_path: str, test_path: str, name: str = "points") -> PointData:
    """Load a train and a test point table; classes are the sorted distinct training labels."""
    x_train, raw_train = read_point_table(train_path)
    x_test, raw_test = read_point_table(test_path)
    if x_test.shape[1] != x_train.shape[1]:
        raise DlexpError(
            f"{test_path}: has {x_test.shape[1]} features but {train_path} has {x_train.shape[1]}"
        )
    class_values = np.unique(raw_train)
    if len(class_values) < 2:
        raise DlexpError(
            f"{train_path}: only one class ({label_name(class_values[0])}); classification needs two or more"
        )
    return PointData(
        x_train=torch.from_numpy(x_train),
        y_train=encode_labels(raw_train, class_values, train_path),
        x_test=torch.from_numpy(x_test),
        y_test=encode_labels(raw_test, class_values, test_path),
        class_names=[label_name(v) for v in class_values],
        name=name,
    )


def write_point_table(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write rows in the course format: ``label f1 f2`` in ``%.18e``, space-separated, no header."""
    table = np.column_stack([np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)])
    np.savetxt(path, table, fmt="%.18e", delimiter=" ")
