"""``dataset=table``: a table with a header (CSV, TSV or Parquet, read by pandas), columns chosen by name.

The label is one named column (numbers or text), the features are named numeric columns (default: every
other column but the group column), an optional group column keeps each group's rows in one fold (and, for
a held-out test set, on one side). The test set is a separate file with the same columns, or a held-out
fraction. Every problem is one :class:`DlexpError` naming the file, line (or row) and column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlexp.data.image_table import label_sort_key
from dlexp.data.points import PointData
from dlexp.data.splits import holdout_indices
from dlexp.errors import DlexpError

#: file suffix -> pandas separator (text tables); other suffixes are sniffed by pandas' python engine.
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


@dataclass
class TableData(PointData):
    """A table's rows as float32 features and class indices (:class:`PointData` with a split note).

    ``groups`` holds the training rows' groups when ``group_column`` is set (k-fold keeps a group in one fold).
    """

    note: str | None = None

    def split_note(self) -> str | None:
        return self.note


def _where(path: Path, row: int) -> str:
    """``file:LINE`` for text tables (the header is line 1), ``file: row N`` for Parquet."""
    return f"{path}: row {row + 1}" if path.suffix.lower() == ".parquet" else f"{path}:{row + 2}"


def read_table(path: str | Path) -> pd.DataFrame:
    """The file as a frame of strings (text) or typed columns (Parquet); one line for an unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DlexpError(f"{path}: table file not found")
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as error:
            raise DlexpError(f"{path}: reading Parquet needs pyarrow ({error}); pip install pyarrow") from None
        except (OSError, ValueError) as error:
            raise DlexpError(f"{path}: not a readable Parquet file ({str(error).strip().splitlines()[0]})") from None
    sep = SEPARATORS.get(path.suffix.lower())
    try:
        frame = pd.read_csv(path, sep=sep, engine="python", dtype=str, keep_default_na=False,
                            encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv_error()) as error:
        raise DlexpError(f"{path}: not a readable table with a header ({str(error).strip().splitlines()[0]})") \
            from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DlexpError(f"{path}: no rows under the header")
    return frame


def csv_error() -> type[Exception]:
    import csv

    return csv.Error


def _column(frame: pd.DataFrame, name: str, option: str, path: Path) -> str:
    if name in frame.columns:
        return name
    raise DlexpError(f"{path}: no column {name!r} (columns: {', '.join(map(repr, frame.columns))}); "
                     f"set dataset.{option}")


def _features(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    """The named columns as float32, every cell a finite number, else one line naming the cell."""
    out = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        values = frame[name]
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if bad.size:
            text = values.iloc[bad[0]]
            what = "is empty" if str(text).strip() in ("", "nan", "None") else (
                "is not finite" if _is_number(text) else "is not a number")
            raise DlexpError(f"{_where(path, int(bad[0]))}: column {name!r} {what}: {str(text)!r}; expected a "
                             "finite number in every feature column (or leave the column out: "
                             "dataset.feature_columns=[...])")
        out[:, j] = numbers
    return out


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _labels(frame: pd.DataFrame, column: str, path: Path) -> list[str]:
    """Label cells as class names: ``2``, ``2.0`` and ``2.000e+00`` are one class ``2``; text stays text."""
    labels = []
    for row, value in enumerate(frame[column]):
        text = str(value).strip()
        if text in ("", "nan", "None"):
            raise DlexpError(f"{_where(path, row)}: empty label in column {column!r}")
        if _is_number(text) and math.isfinite(float(text)):
            number = float(text)
            text = str(int(number)) if number.is_integer() else repr(number)
        labels.append(text)
    return labels


def load_table(
    path: str,
    label_column: str,
    feature_columns: list[str] | None = None,
    group_column: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = False,
    name: str | None = None,
) -> TableData:
    """Read ``path`` (``.csv``, ``.tsv``/``.tab``, ``.parquet``, other suffixes sniffed) into a :class:`TableData`.

    ``feature_columns`` (default: every column but the label and group columns) become the float32 features in
    that order; ``label_column`` the classes (sorted: numbers numerically, then text). The test set is
    ``test_path`` (same columns) or ``test_fraction`` of the rows (stratified; with ``group_column``, whole
    groups). ``standardize`` rescales each feature to mean 0, std 1 over the training rows.
    """
    file = Path(path) if path else None
    if file is None:
        raise DlexpError("dataset.path is not set: pass dataset.path=PATH/table.csv dataset.label_column=NAME")
    if not label_column:
        raise DlexpError("dataset.label_column is not set: name the column that holds the class")
    if test_path is None and not 0 < test_fraction < 1:
        raise DlexpError(f"dataset.test_fraction={test_fraction}: expected a fraction between 0 and 1 "
                         "(or a test file: dataset.test_path=PATH)")
    frame = read_table(file)
    label = _column(frame, label_column, "label_column", file)
    group = _column(frame, group_column, "group_column", file) if group_column else None
    if feature_columns is None:
        features = [c for c in frame.columns if c not in (label, group)]
    else:
        features = [_column(frame, str(c), "feature_columns", file) for c in feature_columns]
    if not features:
        raise DlexpError(f"{file}: no feature columns besides {label!r}; expected at least one numeric column")
    if label in features:
        raise DlexpError(f"dataset.feature_columns: {label!r} is the label column; leave it out")
    x, labels = _features(frame, features, file), _labels(frame, label, file)
    groups = frame[group].astype(str).str.strip().to_numpy() if group else None
    classes = sorted(set(labels), key=label_sort_key)
    if len(classes) < 2:
        raise DlexpError(f"{file}: only one class ({classes[0]}) in column {label!r}; classification needs two "
                         "or more")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in labels], dtype=np.int64)
    if test_path is not None:
        test_file = Path(test_path)
        test_frame = read_table(test_file)
        x_test = _features(test_frame, [_column(test_frame, c, "feature_columns", test_file) for c in features],
                           test_file)
        test_labels = _labels(test_frame, _column(test_frame, label, "label_column", test_file), test_file)
        unknown = [i for i, v in enumerate(test_labels) if v not in index]
        if unknown:
            raise DlexpError(f"{_where(test_file, unknown[0])}: label {test_labels[unknown[0]]!r} does not occur "
                             f"in {file}; known labels: {', '.join(classes)}")
        x_train, y_train, groups_train = x, y, groups
        y_test = np.asarray([index[v] for v in test_labels], dtype=np.int64)
        note = f"test set from {test_file.name}"
    else:
        train_idx, test_idx = holdout_indices(y, test_fraction, seed, groups)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        groups_train = groups[train_idx] if groups is not None else None
        note = (f"{len(test_idx)} of {len(y)} rows held out for testing"
                + (f", whole groups of {group!r} (folds grouped too)" if groups is not None else ""))
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0  # a constant column stays 0 rather than dividing by zero
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return TableData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)), y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)), y_test=torch.from_numpy(y_test),
        class_names=classes, name=name or file.stem, groups=groups_train, note=note,
    )
