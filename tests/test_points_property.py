"""Property-based tests of the point-table loader: well-formed files load exactly, malformed ones fail with
a DlexpError naming the file and line, never with anything else."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlexp.data.points import read_point_table
from dlexp.errors import DlexpError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
label_text = st.sampled_from(["{:d}", "{:.18e}", "{:.1f}"])
separator = st.sampled_from([" ", "\t", "  ", " \t "])


@st.composite
def tables(draw):
    """Rows of ``label f1 .. fk`` with random separators and label spellings; returns (text, labels, rows)."""
    n_features = draw(st.integers(1, 5))
    n_rows = draw(st.integers(1, 30))
    labels = draw(st.lists(st.integers(0, 9), min_size=n_rows, max_size=n_rows))
    rows = draw(st.lists(st.lists(finite, min_size=n_features, max_size=n_features), min_size=n_rows,
                         max_size=n_rows))
    lines = []
    for label, row in zip(labels, rows, strict=True):
        sep = draw(separator)
        lines.append(sep.join([draw(label_text).format(label)] + [repr(float(v)) for v in row]))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"])), labels, rows


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(table=tables())
def test_well_formed_tables_load_exactly(tmp_path, table):
    text, labels, rows = table
    path = tmp_path / "table.txt"
    path.write_text(text)
    features, read_labels = read_point_table(path)
    assert read_labels.tolist() == [float(label) for label in labels]
    np.testing.assert_array_equal(features, np.asarray(rows, dtype=np.float32))


@st.composite
def broken_tables(draw):
    """A well-formed table with one line broken: a row wider than the others, a word, NaN or infinity.
    Returns (text, number of the first bad line, what the message must say)."""
    text, _, _ = draw(tables())
    lines = text.rstrip("\n").split("\n")
    kind = draw(st.sampled_from(["ragged", "word", "nan", "inf"]))
    if kind == "ragged":
        lines.append(lines[-1] + " 1.0")  # one column more than every row before it
        return "\n".join(lines) + "\n", len(lines), "ragged row"
    line = draw(st.integers(0, len(lines) - 1))
    fields = lines[line].split()
    fields[draw(st.integers(0, len(fields) - 1))] = {"word": "abc", "nan": "nan", "inf": "-inf"}[kind]
    lines[line] = " ".join(fields)
    return "\n".join(lines) + "\n", line + 1, "is not a number" if kind == "word" else "is not finite"


@SETTINGS
@given(broken=broken_tables())
def test_malformed_tables_name_file_and_line(tmp_path, broken):
    text, line, expected = broken
    path = tmp_path / "broken.txt"
    path.write_text(text)
    try:
        read_point_table(path)
    except DlexpError as error:
        message = str(error)
        assert message.startswith(f"{path}:{line}: "), message
        assert expected in message
        assert "\n" not in message
    else:
        raise AssertionError(f"no error for a broken table:\n{text}")


@SETTINGS
@given(junk=st.text(max_size=200))
def test_any_text_loads_or_fails_with_a_dlexp_error(tmp_path, junk):
    """Whatever a file holds, the loader returns finite arrays or raises DlexpError, nothing else."""
    path = tmp_path / "junk.txt"
    path.write_text(junk, encoding="utf-8", errors="surrogatepass")
    try:
        features, labels = read_point_table(path)
    except DlexpError as error:
        assert str(error).startswith(str(path))
    else:
        assert features.shape[0] == labels.shape[0] > 0
        assert all(math.isfinite(v) for v in features.ravel()) and all(math.isfinite(v) for v in labels)
