"""Both kinds of data fulfil ``ExperimentData``, the one interface training, pictures and logging use."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from PIL import Image

from dlexp.data.images import ImageData, load_image_data
from dlexp.data.points import PointData, load_point_files
from dlexp.data.protocol import ExperimentData
from dlexp.data.spiral import generate_point_data

MEMBERS = sorted(set(typing.get_type_hints(ExperimentData)) | {
    name for name, value in vars(ExperimentData).items() if isinstance(value, property) or
    (callable(value) and not name.startswith("_"))})


def test_the_interface_names_what_the_experiment_uses():
    assert MEMBERS == sorted([
        "class_names", "describe", "eval_transform", "groups", "grouped", "input_shape", "n_classes",
        "n_features", "name", "split_note", "train_transform", "x_test", "x_train", "y_test", "y_train"])


@pytest.mark.parametrize("kind", [PointData, ImageData])
def test_both_datasets_declare_it_and_implement_every_member(kind):
    assert ExperimentData in kind.__mro__  # declared, not only matching by shape
    fields = set(kind.__dataclass_fields__)
    for member in MEMBERS:
        assert member in fields or member in vars(kind), f"{kind.__name__}.{member} is only the protocol's stub"


def test_points_have_no_groups_no_transforms_and_the_summary_line(tmp_path):
    data = load_point_files("data/trainData.txt", "data/testData.txt", name="spiral")
    assert isinstance(data, ExperimentData)
    assert (data.groups, data.grouped, data.train_transform, data.eval_transform) == (None, False, None, None)
    assert data.split_note() is None
    assert data.describe() == "dataset spiral: 1200 train / 300 test points, 2 features, 5 classes"
    generated = generate_point_data(arms=3, points_per_arm=20)
    assert isinstance(generated, ExperimentData) and generated.input_shape == (2,)


def test_images_have_groups_transforms_and_a_split_note(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(24):
        Image.fromarray(np.full((10, 12, 3), i * 10, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"{i}.png,species {i % 3},s{i % 12}\n")
    (tmp_path / "b.csv").write_text("filename,species,sample\n" + "".join(rows))
    data = load_image_data(str(tmp_path / "b.csv"), str(tmp_path / "img"), image_size=[8, 8], num_workers=0)
    assert isinstance(data, ExperimentData) and data.grouped and len(data.groups) == len(data.y_train)
    assert data.input_shape == (3, 8, 8) and data.n_features == 192 and data.n_classes == 3
    assert data.eval_transform(data.x_test[:2]).dtype == torch.float32
    assert "specimens held out" in data.split_note() and data.describe().startswith("dataset images: ")
