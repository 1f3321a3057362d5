"""The run's pictures hold what they claim, checked against the run's own numbers: the validation points
marked on each fold's decision boundary are that fold's validation set, the crosses on the test picture
are the reported model's mistakes, and the misclassified-images grid shows exactly those test images.

The figures are read as drawn (their artists, just before saving), not re-derived from the code's inputs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import QUICK, compose_config
from matplotlib.collections import PathCollection
from PIL import Image

from dlexp.data.images import load_image_data
from dlexp.data.points import load_point_files
from dlexp.data.splits import kfold_indices
from dlexp.experiment import run_experiment
from dlexp.models.saved import load_model
from dlexp.reports import plots
from dlexp.tracking import background

MARK = re.compile(r"^(validation|misclassified) \((\d+)\)$")


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """Every figure the run saves, by file path relative to its folder: its title, texts and marked points.

    The pictures are drawn in this process (as in a parallel launcher's worker), not in the helper process,
    so that the recording sees them."""
    monkeypatch.setattr(background, "helper_possible", lambda: False)
    figures: dict[str, dict] = {}
    save = plots._save

    def recording(fig, path):
        ax = fig.axes[0]
        marks = [c for c in ax.collections if isinstance(c, PathCollection) and MARK.match(str(c.get_label()))]
        figures[path.name if path.parent.name == "plots" else f"{path.parent.name}/{path.name}"] = {
            "title": ax.get_title(),
            "texts": [t.get_text() for t in ax.texts],
            "marks": {MARK.match(c.get_label()).group(1): (int(MARK.match(c.get_label()).group(2)),
                                                           np.asarray(c.get_offsets())) for c in marks},
            "images": [np.asarray(image.get_array()) for image in ax.images],
        }
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording)
    return figures


def same_points(a: np.ndarray, b: np.ndarray) -> bool:
    key = lambda p: np.lexsort(p.T[::-1])  # noqa: E731
    return a.shape == b.shape and np.allclose(a[key(a)], b[key(b)], atol=1e-6)


def test_marked_points_are_each_folds_validation_set_and_the_models_mistakes(store, tmp_path, drawn):
    overrides = ["+experiment=spiral", *QUICK, "trainer.max_epochs=3", *store["overrides"]]
    cfg = compose_config(overrides)
    out = tmp_path / "out"
    summary = run_experiment(cfg, out, overrides)
    data = load_point_files(cfg.dataset.train_path, cfg.dataset.test_path)
    folds = kfold_indices(data.y_train.numpy(), cfg.trainer.folds, cfg.trainer.seed, cfg.trainer.stratify)

    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id],
                              filter_string="tags.`dlexp.fold` != ''")
    n_val = {int(r.data.params["fold"]): int(r.data.params["n_val"]) for r in runs}
    for fold, (_, val) in enumerate(folds, start=1):
        count, points = drawn[f"fold_{fold}/decision_boundary.png"]["marks"]["validation"]
        assert count == len(points) == n_val[fold] == len(val)
        assert same_points(points, data.x_train.numpy()[val])

    # The test picture crosses the reported model's mistakes: as many as its test accuracy leaves.
    model, _ = load_model(out)
    with torch.no_grad():
        wrong = (model(data.x_test).argmax(dim=1) != data.y_test).numpy()
    assert round((1 - summary["test_acc"]) * len(data.y_test)) == wrong.sum() > 0
    count, points = drawn["decision_boundary_test.png"]["marks"]["misclassified"]
    assert count == wrong.sum() and same_points(points, data.x_test.numpy()[wrong])


def write_images(folder, n: int = 36) -> str:
    """``n`` small photos of 3 species (12 specimens), each species a colour plus noise; returns a CSV."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        species = i % 3
        pixels = rng.integers(0, 120, (20, 20, 3)) + np.eye(3, dtype=int)[species] * 100
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"bee{i}.png")
        rows.append(f"bee{i}.png,species {species},s{i % 12}\n")
    (folder / "bees.csv").write_text("filename,species,sample\n" + "".join(rows))
    return str(folder / "bees.csv")


def test_misclassified_grid_shows_exactly_the_reported_models_wrong_test_images(store, tmp_path, drawn):
    csv = write_images(tmp_path / "bees")
    overrides = ["+experiment=insects", f"dataset.csv={csv}", f"dataset.images={tmp_path / 'bees'}",
                 "dataset.image_size=[16,16]", "dataset.num_workers=0", "dataset.cache_dir=null",
                 "trainer.max_epochs=2", "trainer.folds=2", "model.channels=[4]", "model.hidden_dims=[8]",
                 *store["overrides"]]
    cfg = compose_config(overrides)
    out = tmp_path / "out"
    summary = run_experiment(cfg, out, overrides)

    data = load_image_data(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    model, class_names = load_model(out)
    with torch.no_grad():
        predicted = model(data.eval_transform(data.x_test)).argmax(dim=1)
    truth = data.y_test
    wrong = torch.nonzero(predicted != truth).flatten()
    n_test = len(truth)
    # The run's own numbers: its test accuracy leaves exactly these mistakes.
    assert round((1 - summary["test_acc"]) * n_test) == len(wrong) > 0
    grid = drawn["misclassified.png"]
    assert grid["title"] == f"misclassified test images: {len(wrong)} of {n_test} (first 48)"
    expected = [f"true: {class_names[truth[i]]}\npred: {class_names[predicted[i]]}" for i in wrong[:48]]
    assert grid["texts"] == expected
    # The grid's pixels are those test images, in order (make_grid: 2 px padding around each).
    (shown,) = grid["images"]
    columns = min(6, len(wrong))
    for k, i in enumerate(wrong[:48].tolist()):
        row, col = divmod(k, columns)
        tile = shown[2 + row * 18: 18 + row * 18, 2 + col * 18: 18 + col * 18]
        assert np.array_equal(tile, data.x_test[i].permute(1, 2, 0).numpy())


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def test_a_reused_figure_draws_the_same_pixels_as_a_new_one(tmp_path):
    """Pictures of one kind reuse a figure (plots._reused); nothing of the previous picture may show: the
    second of two pictures drawn in a row equals the same picture drawn on a new figure, pixel for pixel."""
    rng = np.random.default_rng(0)
    grid = plots.decision_grid([np.array([[-1.0, -1.0], [1.0, 1.0]])], 40)
    gx, gy = grid
    first = (np.hypot(gx, gy) * 3).astype(int).ravel() % 5  # rings of 5 classes
    second = (gx > gy).astype(int).ravel()  # two half-planes
    x1, y1 = rng.uniform(-1, 1, (60, 2)), rng.integers(0, 5, 60)
    x2, y2 = rng.uniform(-0.5, 0.5, (30, 2)), rng.integers(0, 2, 30)
    names = ["a", "b", "c", "d", "e"]
    long = {f"fold {k}": {"train_loss": list(np.geomspace(2, 0.01, 300)), "val_loss": list(np.geomspace(3, 0.1, 300))}
            for k in range(1, 6)}
    short = {"fold 2": {"train_loss": [1.0, 0.8, 0.7, 0.65], "val_loss": [1.1, 0.9, 0.95, 0.9]}}
    kinds = {
        "decision_boundary": (
            lambda p: plots.plot_decision_boundary(p, first, grid, x1, y1, names, "first", marked=y1 == 3),
            lambda p: plots.plot_decision_boundary(p, second, grid, x2, y2, names[:2], "second")),
        "loss_curves": (lambda p: plots.plot_loss_curves(p, long, {k: 200 for k in long}),
                        lambda p: plots.plot_loss_curves(p, short, {"fold 2": 2})),
        "data": (lambda p: plots.plot_data(p, x1, y1, x1[:20], y1[:20], names),
                 lambda p: plots.plot_data(p, x2, y2, x2[:5], y2[:5], names[:2])),
        "confusion_matrix": (
            lambda p: plots.plot_confusion_matrix(p, plots.confusion_counts(y1, y1[::-1], 5), names, "first"),
            lambda p: plots.plot_confusion_matrix(p, plots.confusion_counts(y1, y1, 5), list("vwxyz"), "second")),
        "per_class_accuracy": (
            lambda p: plots.plot_per_class_accuracy(p, np.array([0.1, 0.5, np.nan, 1, 0.9]), names, "first"),
            lambda p: plots.plot_per_class_accuracy(p, np.array([0.9, 0.2, 0.3, 0.4, 0.5]), list("vwxyz"), "2nd")),
    }
    for kind, (draw_first, draw_second) in kinds.items():
        plots._figures.__dict__.pop("figures", None)  # new figures from here on
        draw_first(tmp_path / f"{kind}_first.png")
        draw_second(tmp_path / f"{kind}_reused.png")
        plots._figures.__dict__.pop("figures", None)
        draw_second(tmp_path / f"{kind}_new.png")
        reused, new, other = (pixels(tmp_path / f"{kind}_{n}.png") for n in ("reused", "new", "first"))
        assert reused.shape == new.shape
        assert np.array_equal(reused, new), f"{kind}: {np.count_nonzero((reused != new).any(axis=2))} pixels differ"
        assert not np.array_equal(reused, other)  # the pictures differ, so the comparison can fail
