"""The image CSV: one row per image with its label, file name and (optionally) specimen group.

Columns are found by name in any order; the separator is guessed from the header line. Every problem is
a DlexpError naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dlexp.errors import DlexpError


def separator(path: Path) -> str:
    """Commas, then tabs, then semicolons, else runs of whitespace, judged by the header line."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline()
    for sep in (",", "\t", ";"):
        if sep in header:
            return sep
    return r"\s+"


def _find_column(frame: pd.DataFrame, name: str, option: str, path: Path) -> str:
    """The column called ``name`` (exact, else ignoring case); a DlexpError lists what is there."""
    if name in frame.columns:
        return name
    matches = [c for c in frame.columns if c.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    raise DlexpError(
        f"{path}: no column {name!r} (columns: {', '.join(map(repr, frame.columns))}); "
        f"set dataset.{option}=NAME"
    )


def _label_text(value: str) -> str:
    """``"2.000000000000000000e+00"`` and ``"2"`` are the same class ``"2"``; other text is kept as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def label_sort_key(label: str):
    """Numeric labels in numeric order, then text labels in alphabetical order."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def read_image_table(
    csv_path: str | Path,
    label_column: str = "species",
    filename_column: str = "filename",
    group_column: str | None = None,
) -> pd.DataFrame:
    """The CSV as a frame with columns ``label``, ``filename``, ``group`` (None without a group column)
    and ``row`` (the CSV line number, for error messages). Columns are found by name, in any order."""
    path = Path(csv_path)
    if not path.is_file():
        raise DlexpError(f"{path.absolute()}: CSV file not found")
    try:
        frame = pd.read_csv(path, sep=separator(path), dtype=str, keep_default_na=False,
                            engine="python", encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DlexpError(f"{path}: not a readable CSV ({str(error).strip().splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    label = _find_column(frame, label_column, "label_column", path)
    filename = _find_column(frame, filename_column, "filename_column", path)
    group = _find_column(frame, group_column, "group_column", path) if group_column else None
    table = pd.DataFrame({
        "label": frame[label].str.strip().map(_label_text),
        "filename": frame[filename].str.strip(),
        "group": frame[group].str.strip() if group else None,
        "row": np.arange(2, len(frame) + 2),
    })
    if table.empty:
        raise DlexpError(f"{path}: no rows under the header")
    for column, name in (("label", label), ("filename", filename)) + ((("group", group),) if group else ()):
        empty = table.index[table[column] == ""]
        if len(empty):
            raise DlexpError(f"{path}:{table.row[empty[0]]}: empty {name!r} value")
    return table


# -------------------------------------------------------------------------------------- folder or zip


def has_column(csv_path: Path, name: str) -> bool:
    """Whether the CSV's header has a column ``name`` (ignoring case), read without loading the rows."""
    if not csv_path.is_file():
        raise DlexpError(f"{Path(csv_path).absolute()}: CSV file not found")
    header = pd.read_csv(csv_path, sep=separator(csv_path), nrows=0, engine="python", encoding="utf-8-sig")
    return name.lower() in {str(c).strip().lower() for c in header.columns}
