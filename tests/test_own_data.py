"""Your own data: a table with named columns (dataset=table), one folder per class (dataset=image_folder), and a
dataset class of one's own checked against the ExperimentData contract as it loads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from PIL import Image

from dlexp.config.build import build
from dlexp.data.contract import check_data
from dlexp.data.image_folder import load_image_folder
from dlexp.data.points import PointData
from dlexp.data.protocol import ExperimentData
from dlexp.data.table import load_table
from dlexp.errors import DlexpError


def blobs_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Three well-separated classes in (width, height), a useless column, a patient column (10 patients)."""
    rng = np.random.default_rng(seed)
    species = np.array(["setosa", "virginica", "versicolor"])[np.arange(n) % 3]
    centre = {"setosa": (0.0, 0.0), "versicolor": (5.0, 0.0), "virginica": (0.0, 5.0)}
    xy = np.array([centre[s] for s in species]) + rng.normal(0, 0.5, (n, 2))
    return pd.DataFrame({"patient": [f"p{i % 10}" for i in range(n)], "width": xy[:, 0], "noise": rng.normal(size=n),
                         "species": species, "height": xy[:, 1]})


def test_a_named_column_csv_by_name_with_held_out_groups(tmp_path):
    path = tmp_path / "flowers.csv"
    blobs_frame().to_csv(path, index=False)
    data = load_table(str(path), label_column="species", feature_columns=["height", "width"],
                      group_column="patient", test_fraction=0.2, seed=1)
    assert isinstance(data, ExperimentData) and check_data(data) is data
    assert data.class_names == ["setosa", "versicolor", "virginica"]  # sorted text labels
    assert data.input_shape == (2,) and data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.long
    frame = blobs_frame()
    test_patients = set(frame.patient) - set(data.groups)
    assert len(test_patients) == 2 and len(data.y_test) == 12  # 20% of the 10 patients, whole (6 rows each)
    # features in the named order: height first; the first training row is the frame's first row of a train patient
    first = frame[~frame.patient.isin(test_patients)].iloc[0]
    assert data.x_train[0].tolist() == pytest.approx([first.height, first.width], rel=1e-6)
    assert data.class_names[int(data.y_train[0])] == first.species
    assert "held out" in data.split_note() and "'patient'" in data.split_note()


def test_tsv_parquet_and_a_separate_test_file_read_the_same(tmp_path):
    frame = blobs_frame()
    frame.iloc[:45].to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    frame.iloc[45:].to_parquet(tmp_path / "test.parquet")
    data = load_table(str(tmp_path / "train.tsv"), label_column="species", group_column="patient",
                      test_path=str(tmp_path / "test.parquet"))
    assert data.input_shape == (3,)  # default features: every column but the label and the group, in file order
    assert len(data.y_train) == 45 and len(data.y_test) == 15 and data.split_note() == "test set from test.parquet"
    assert data.x_test[0].tolist() == pytest.approx(frame.iloc[45][["width", "noise", "height"]].tolist(), rel=1e-6)


@pytest.mark.parametrize(("edit", "kwargs", "message"), [
    (lambda f: f, {"label_column": "kind"},
     "flowers.csv: no column 'kind' (columns: 'patient', 'width', 'noise', 'species', 'height'); "
     "set dataset.label_column"),
    (lambda f: f, {"label_column": "species", "feature_columns": ["width", "heigth"]},
     "flowers.csv: no column 'heigth'"),
    (lambda f: f.assign(width=f.width.astype(object).where(f.index != 7, "n/a")), {"label_column": "species"},
     "flowers.csv:9: column 'width' is not a number: 'n/a'"),
    (lambda f: f.assign(height=f.height.where(f.index != 3, np.nan)), {"label_column": "species"},
     "flowers.csv:5: column 'height' is empty: ''"),
    (lambda f: f.assign(height=f.height.astype(object).where(f.index != 0, "inf")), {"label_column": "species"},
     "flowers.csv:2: column 'height' is not finite: 'inf'"),
    (lambda f: f.assign(species="setosa"), {"label_column": "species"},
     "flowers.csv: only one class (setosa) in column 'species'"),
    (lambda f: f.assign(species=f.species.where(f.index != 11, "")), {"label_column": "species"},
     "flowers.csv:13: empty label in column 'species'"),
    (lambda f: f, {"label_column": "species", "test_fraction": 1.5}, "dataset.test_fraction=1.5: expected a fraction"),
])
def test_bad_tables_are_one_line_naming_file_line_and_column(tmp_path, edit, kwargs, message):
    path = tmp_path / "flowers.csv"
    edit(blobs_frame()).to_csv(path, index=False)
    kwargs.setdefault("feature_columns", ["width", "height"] if kwargs.get("label_column") != "kind" else None)
    with pytest.raises(DlexpError) as error:
        load_table(str(path), **kwargs)
    text = str(error.value)
    assert message in text and "\n" not in text, text


def test_a_test_file_with_an_unknown_label_names_its_line(tmp_path):
    frame = blobs_frame()
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[:5].assign(species=["setosa", "setosa", "rosa", "setosa", "setosa"]).to_csv(tmp_path / "test.csv",
                                                                                          index=False)
    with pytest.raises(DlexpError, match=r"test.csv:4: label 'rosa' does not occur in .*train.csv; known labels: "
                                         r"setosa, versicolor, virginica$"):
        load_table(str(tmp_path / "train.csv"), "species", ["width", "height"], test_path=str(tmp_path / "test.csv"))


def make_image_folder(root, classes=("blue", "red"), per_class=8, specimens=4, size=(10, 12)):
    """``root/CLASS/sSPECIMEN_K.png``: red or blue images with noise, ``specimens`` specimens per class."""
    rng = np.random.default_rng(0)
    colour = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = np.clip(np.array(colour[name]) + rng.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{k % specimens}_{k}.png")
    (root / classes[0] / "notes.txt").write_text("not an image: torchvision's extensions leave it out")


def test_image_folder_holds_out_whole_specimens_and_decodes_like_the_insects(tmp_path):
    make_image_folder(tmp_path / "photos")
    data = load_image_folder(str(tmp_path / "photos"), group_pattern=r"^(\w+?\d)_", image_size=[8, 8],
                             num_workers=0, cache_dir=None, test_fraction=0.25)
    assert check_data(data) is data and data.class_names == ["blue", "red"]
    assert data.x_train.dtype == torch.uint8 and data.input_shape == (3, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 16
    # one of each class's 4 specimens held out (2 images each); no specimen on both sides
    assert len(data.y_test) == 4 and set(data.groups).isdisjoint(data.test_groups)
    assert sorted(set(data.test_groups)) == sorted({f.split("/")[1].split("_")[0] for f in data.test_files})
    red = data.eval_transform(data.x_train[data.y_train == 1])
    assert red[:, 0].mean() > red[:, 2].mean()  # the red channel is brighter in the red class, after normalising
    assert "specimens held out" in data.split_note() and data.name == "photos"


def test_image_folder_with_train_and_test_folders_and_the_cache(tmp_path):
    make_image_folder(tmp_path / "set" / "train", per_class=6)
    make_image_folder(tmp_path / "set" / "test", per_class=2)
    options = dict(image_size=[8, 8], num_workers=0, cache_dir=str(tmp_path / "cache"))
    data = load_image_folder(str(tmp_path / "set"), **options)
    assert (len(data.y_train), len(data.y_test)) == (12, 4) and data.y_test.tolist() == [0, 0, 1, 1]
    assert data.test_files == ["blue/blue0_0.png", "blue/blue1_1.png", "red/red0_0.png", "red/red1_1.png"]
    assert data.split_note().startswith("test set from ") and not data.grouped
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1
    again = load_image_folder(str(tmp_path / "set"), **options)  # from the cache: the same tensor
    assert torch.equal(again.x_train, data.x_train)


@pytest.mark.parametrize(("make", "kwargs", "message"), [
    (lambda root: None, {}, "image folder not found (expected one sub-folder per class)"),
    (lambda root: root.mkdir(), {}, "no class sub-folders; expected"),
    (lambda root: make_image_folder(root, classes=("red",)), {}, "only one class folder (red)"),
    (lambda root: (make_image_folder(root), (root / "green").mkdir()), {}, "Found no valid file for the classes green"),
    (lambda root: make_image_folder(root), {"group_pattern": r"^specimen(\d)"},
     "does not match dataset.group_pattern="),
    (lambda root: make_image_folder(root), {"group_pattern": "(("}, "not a regular expression"),
])
def test_bad_image_folders_are_one_line(tmp_path, make, kwargs, message):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(DlexpError) as error:
        load_image_folder(str(root), image_size=[8, 8], num_workers=0, cache_dir=None, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_image_folder_config_builds_through_hydra(tmp_path):
    make_image_folder(tmp_path / "photos")
    cfg = compose_config(["+experiment=insects", "dataset=image_folder", f"dataset.root={tmp_path / 'photos'}",
                          "dataset.cache_dir=null", "dataset.num_workers=0", "dataset.image_size=[16,16]"])
    data = build("dataset", cfg.dataset)
    assert data.input_shape == (3, 16, 16) and data.n_classes == 2 and len(data.y_train) == 12


def good_points(**changes) -> PointData:
    fields = dict(x_train=torch.zeros(6, 2), y_train=torch.tensor([0, 1, 0, 1, 0, 1]), x_test=torch.zeros(2, 2),
                  y_test=torch.tensor([0, 1]), class_names=["a", "b"])
    return PointData(**{**fields, **changes})


class NotData:
    x_train = torch.zeros(2, 2)


@pytest.mark.parametrize(("data", "message"), [
    (NotData(), "dataset: mine.load returned NotData, which lacks name, y_train, x_test"),
    (good_points(x_train=np.zeros((6, 2))), "dataset: mine.load: x_train is ndarray; expected a torch.Tensor"),
    (good_points(x_test=torch.zeros(2, 3)),
     "x_test has rows of shape (3,), but input_shape is (2,); expected x_test of shape (N, *input_shape)"),
    (good_points(x_train=torch.zeros(6, 2, dtype=torch.float64)), "x_train is torch.float64; expected float32"),
    (good_points(y_train=torch.tensor([0.0, 1, 0, 1, 0, 1])), "y_train is torch.float32 of shape (6,); expected class"),
    (good_points(y_test=torch.tensor([0, 1, 1])), "2 rows in x_test but 3 labels in y_test"),
    (good_points(y_train=torch.tensor([0, 1, 0, 1, 0, 2])), "y_train holds class index 2; expected indices 0..1"),
    (good_points(class_names=["a"], y_train=torch.zeros(6, dtype=torch.long), y_test=torch.zeros(2, dtype=torch.long)),
     "n_classes=1 with class_names ['a']; expected n_classes == len(class_names) >= 2"),
    (good_points(x_train=torch.zeros(6, 2).index_fill(0, torch.tensor([4]), float("nan"))),
     "x_train row 4 holds NaN or infinite values"),
    (good_points(groups=np.array(["g1", "g2"])), "2 groups for 6 training rows"),
])
def test_a_dataset_of_ones_own_is_checked_on_load(data, message):
    with pytest.raises(DlexpError) as error:
        check_data(data, "mine.load")
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
