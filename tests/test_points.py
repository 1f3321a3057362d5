"""The point-table loader: formats it must accept and bad files it must explain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlexp.data.points import load_point_files, read_point_table
from dlexp.errors import DlexpError


def write(path, text):
    path.write_text(text)
    return path


def test_int_labels_map_to_sorted_indices_with_names_kept(tmp_path):
    train = write(tmp_path / "train.txt", "3 0.1 0.2\n7 0.3 0.4\n3 0.5 0.6\n-1 0.7 0.8\n")
    test = write(tmp_path / "test.txt", "7 1.0 1.0\n-1 2.0 2.0\n")
    data = load_point_files(str(train), str(test))
    assert data.class_names == ["-1", "3", "7"]
    assert data.y_train.tolist() == [1, 2, 1, 0]
    assert data.y_test.tolist() == [2, 0]
    assert data.x_train.dtype == torch.float32
    assert data.x_train[1].tolist() == pytest.approx([0.3, 0.4])
    assert data.input_shape == (2,)


def test_scientific_float_labels_and_tabs(tmp_path):
    rows = "2.000000000000000000e+00\t2.4e-01\t5.3e-01\n0.000000000000000000e+00 \t 3.0e-02\t-7.4e-02\n"
    train = write(tmp_path / "train.txt", rows)
    data = load_point_files(str(train), str(train))
    assert data.class_names == ["0", "2"]
    assert data.y_train.tolist() == [1, 0]
    assert data.x_train[1].tolist() == pytest.approx([0.03, -0.074])


def test_extra_feature_columns_blank_lines_and_comments(tmp_path):
    train = write(tmp_path / "train.txt", "# label x y z w\n1 1 2 3 4\n\n0 5 6 7 8\n")
    features, labels = read_point_table(train)
    assert features.shape == (2, 4)
    assert labels.tolist() == [1.0, 0.0]
    assert load_point_files(str(train), str(train)).n_features == 4


def test_non_integral_labels_keep_their_value_as_name(tmp_path):
    train = write(tmp_path / "train.txt", "0.5 1 1\n1.5 2 2\n")
    assert load_point_files(str(train), str(train)).class_names == ["0.5", "1.5"]


def test_course_files_load(seed_data):
    data = load_point_files(str(seed_data / "trainData.txt"), str(seed_data / "testData.txt"))
    assert data.x_train.shape == (1200, 2) and data.x_test.shape == (299, 2)
    assert data.class_names == ["0", "1", "2", "3", "4"]
    assert np.bincount(data.y_train.numpy()).tolist() == [245, 234, 240, 236, 245]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty"),
        ("\n# only a comment\n", "file is empty"),
        ("1 0.1 0.2\n2 0.3\n", ":2: ragged row: expected 3 columns like the first row, found 2"),
        ("1 0.1 0.2\n2 0.3 abc\n", ":2: column 3 is not a number: 'abc'"),
        ("1 0.1 nan\n", ":1: column 3 is not finite: 'nan'"),
        ("1 0.1 inf\n", ":1: column 3 is not finite: 'inf'"),
        ("1\n2\n", ":1: expected 'label feature1 [feature2 ...]', found one column"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(DlexpError) as error:
        read_point_table(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(DlexpError, match="nope.txt: data file not found"):
        read_point_table(tmp_path / "nope.txt")


def test_single_class_and_unknown_test_label(tmp_path):
    one = write(tmp_path / "one.txt", "1 0 0\n1 1 1\n")
    two = write(tmp_path / "two.txt", "1 0 0\n2 1 1\n")
    three = write(tmp_path / "three.txt", "1 0 0\n3 1 1\n")
    with pytest.raises(DlexpError, match="only one class"):
        load_point_files(str(one), str(two))
    with pytest.raises(DlexpError, match=r"three.txt: label 3 \(data row 2\) does not occur in the training"):
        load_point_files(str(two), str(three))


def test_feature_count_mismatch(tmp_path):
    two = write(tmp_path / "two.txt", "1 0 0\n2 1 1\n")
    three = write(tmp_path / "three.txt", "1 0 0 0\n2 1 1 1\n")
    with pytest.raises(DlexpError, match="has 3 features but .* has 2"):
        load_point_files(str(two), str(three))
