"""Pictures of a run: data scatter, loss curves, decision boundaries, confusion matrix, per-class accuracy
and image grids. Each function writes one PNG.

Matplotlib runs headless (Agg). The pictures a job draws many of (decision boundaries, loss curves, the data)
reuse one figure per kind and thread (:func:`_reused`): only their data artists are removed and redrawn, so
the axes, ticks, fonts and the Agg renderer are built once per process (benchmarks/README.md, issue 24
part 4); every other figure is closed after saving, so sweeps don't leak memory. Every PNG is written under
a temporary name and renamed into place, so a run stopped mid-picture never leaves a half-written file.
Only the image grid imports torch (when called): dlexp.tracking.background renders these in a helper
process that should start fast, so arrays come in as numpy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from dlexp.notebook import in_notebook

if not in_notebook():  # a notebook's inline backend draws with Agg too; replacing it would stop plt.show() there
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CMAP = "tab10"
#: Fixed margins for the per-run plots, whose labels are known in advance. A layout engine
#: (constrained or tight) draws each figure twice to measure it: 70-80 ms a PNG instead of 55 ms.
MARGINS = {"left": 0.09, "right": 0.98, "bottom": 0.09, "top": 0.93}
#: zlib level of the PNGs: 1 instead of Pillow's 6 costs ~15-40% larger files (plots compress well either way)
#: and saves most of the encoding time (measured in benchmarks/pictures_spiral.py).
PNG = {"compress_level": 1}

_figures = threading.local()  # (kind, figure size) -> (Figure, axes), one set per thread that draws


def _reused(kind: str, figsize: tuple[float, float], ncols: int = 1, margins: bool = True,
            **subplots) -> tuple[Figure, np.ndarray]:
    """This thread's figure for ``kind``, emptied of the previous picture's data artists (lines, collections,
    images, texts, patches, legend, titles) with its data limits and autoscaling reset, so a picture drawn
    on it is the same as one drawn on a new figure (tests/test_pictures.py checks the pixels).

    The figure is a plain ``Figure`` on its own Agg canvas (not pyplot's): the canvas keeps its renderer
    between saves and nothing global holds it. Made with fixed ``MARGINS`` on first use (with matplotlib's
    default margins if not ``margins``)."""
    cache = _figures.__dict__.setdefault("figures", {})
    key = (kind, figsize, ncols, tuple(sorted(subplots.items())))
    if key not in cache:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False, **subplots)[0])
        if margins:
            fig.subplots_adjust(**MARGINS)
        fig.dlexp_reused = True
        cache[key] = (fig, axes)
    fig, axes = cache[key]
    for ax in axes:
        for artist in [*ax.collections, *ax.lines, *ax.images, *ax.texts, *ax.patches]:
            artist.remove()
        if ax.legend_ is not None:
            ax.legend_.remove()
        for loc in ("left", "center", "right"):
            ax.set_title("", loc=loc)
        ax.relim()
        ax.set_autoscale_on(True)
    return fig, axes


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary file renamed into place); close it unless it is
    a reused figure (:func:`_reused`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        fig.savefig(partial, dpi=100, pil_kwargs=PNG)
        os.replace(partial, path)
    finally:
        if not getattr(fig, "dlexp_reused", False):
            plt.close(fig)
        partial.unlink(missing_ok=True)
    return path


def _scatter(ax, x: np.ndarray, y: np.ndarray, n_classes: int, **kwargs) -> None:
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap=CMAP, vmin=0, vmax=9, s=12, edgecolors="k", linewidths=0.3,
               **kwargs)
    ax.set_aspect("equal")


def _legend(ax, class_names: Sequence[str]) -> None:
    colours = plt.get_cmap(CMAP)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours(i % 10), label=name)
               for i, name in enumerate(class_names)]
    ax.legend(handles=handles, title="class", fontsize=7, loc="upper right")


def plot_data(path: Path, x_train, y_train, x_test, y_test, class_names: Sequence[str]) -> Path:
    """Train and test points side by side, coloured by class (first two features)."""
    fig, axes = _reused("data", (10, 5), ncols=2, sharex=True, sharey=True)
    fig.subplots_adjust(wspace=0.08)
    for ax, x, y, title in ((axes[0], x_train, y_train, "train"), (axes[1], x_test, y_test, "test")):
        _scatter(ax, np.asarray(x), np.asarray(y), len(class_names))
        ax.set_title(f"{title} ({len(y)} points)")
    _legend(axes[1], class_names)
    return _save(fig, path)


def plot_loss_curves(path: Path, histories: dict[str, dict[str, list[float]]],
                     best_epochs: dict[str, int] | None = None) -> Path:
    """Training (dashed) and validation (solid) loss per epoch for each named history."""
    fig, (ax,) = _reused("loss_curves", (8, 5))
    colours = plt.get_cmap(CMAP)
    for i, (name, history) in enumerate(histories.items()):
        epochs = np.arange(1, len(history["val_loss"]) + 1)
        ax.plot(epochs, history["train_loss"], ls="--", color=colours(i % 10), alpha=0.7, label=f"{name} train")
        ax.plot(epochs, history["val_loss"], color=colours(i % 10), label=f"{name} val")
        if best_epochs and name in best_epochs:
            best = best_epochs[name]
            ax.plot(best, history["val_loss"][best - 1], "o", color=colours(i % 10))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss per epoch (dot: best validation epoch)")
    ax.legend(fontsize=7, ncol=2, loc="upper right")  # losses fall: that corner is free; "best" is slow
    return _save(fig, path)


def decision_grid(points: Sequence[np.ndarray], resolution: int, margin: float = 0.1):
    """A ``resolution`` x ``resolution`` grid covering all ``points`` plus ``margin`` of their span."""
    stacked = np.concatenate([np.asarray(p)[:, :2] for p in points])
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    pad = (high - low) * margin
    xs = np.linspace(low[0] - pad[0], high[0] + pad[0], resolution)
    ys = np.linspace(low[1] - pad[1], high[1] + pad[1], resolution)
    return np.meshgrid(xs, ys)


def grid_points(grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The grid's points as float32 rows ``(x, y)``, for a model to predict the regions of."""
    gx, gy = grid
    return np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)


def plot_decision_boundary(
    path: Path,
    regions: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    title: str,
    marked: np.ndarray | None = None,
    marked_label: str = "misclassified",
) -> Path:
    """Class ``regions`` (the predicted class of each :func:`grid_points` row) over ``grid`` with the points
    ``(x, y)``; ``marked`` points get an X."""
    gx, gy = grid
    regions = np.asarray(regions).reshape(gx.shape)
    fig, (ax,) = _reused("decision_boundary", (6, 6))
    # The class grid as an image, one cell per grid point (centred on it): the regions contourf drew, at
    # the grid's own resolution, for less (contourf traces every region's outline). Nearest-neighbour
    # resampling of the class numbers (stage "data"), coloured after: 9 ms a picture here against 21 ms for
    # resampling the coloured RGBA image (matplotlib's default stage), the same pixels for a class grid.
    dx, dy = (gx[0, -1] - gx[0, 0]) / (gx.shape[1] - 1) / 2, (gy[-1, 0] - gy[0, 0]) / (gy.shape[0] - 1) / 2
    ax.imshow(regions, origin="lower", extent=(gx[0, 0] - dx, gx[0, -1] + dx, gy[0, 0] - dy, gy[-1, 0] + dy),
              cmap=CMAP, vmin=-0.5, vmax=9.5, alpha=0.35, interpolation="nearest", interpolation_stage="data")
    _scatter(ax, x, y, len(class_names))
    if marked is not None and marked.any():
        ax.scatter(x[marked, 0], x[marked, 1], marker="x", c="k", s=40, linewidths=1.2,
                   label=f"{marked_label} ({int(marked.sum())})")
        ax.legend(loc="lower left", fontsize=7)
    ax.set_xlim(gx.min(), gx.max())
    ax.set_ylim(gy.min(), gy.max())
    ax.set_title(title)
    return _save(fig, path)


def confusion_counts(y_true, y_pred, n_classes: int) -> np.ndarray:
    """``n_classes x n_classes`` int64 counts, true class (rows) against predicted class (columns)
    (scikit-learn's ``confusion_matrix``). Computed where the predictions are (the training process, which has
    scikit-learn loaded), so the helper process that draws never imports it (~0.7 s of CPU, measured)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=np.arange(n_classes))


def plot_confusion_matrix(path: Path, matrix: np.ndarray, class_names: Sequence[str], title: str) -> Path:
    """:func:`confusion_counts`' ``matrix`` as a picture, each cell written out."""
    n = len(class_names)
    fig, (ax,) = _reused("confusion_matrix", (1.2 * n + 3, 1.2 * n + 2), margins=False)
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def per_class_accuracy(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Accuracy within each true class (recall); NaN for a class absent from ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return np.array([(y_pred[y_true == c] == c).mean() if (y_true == c).any() else np.nan
                     for c in range(n_classes)])


def plot_per_class_accuracy(path: Path, accuracies: np.ndarray, class_names: Sequence[str],
                            title: str) -> Path:
    """One bar per class: the share of its test samples predicted right."""
    fig, (ax,) = _reused("per_class_accuracy", (max(5, 1.2 * len(class_names)), 4), margins=False)
    colours = plt.get_cmap(CMAP)
    ax.bar(range(len(class_names)), np.nan_to_num(accuracies), color=[colours(i % 10) for i in
                                                                      range(len(class_names))])
    for i, acc in enumerate(accuracies):
        label = "not tested" if np.isnan(acc) else f"{acc:.0%}"  # summary.txt says why
        ax.text(i, np.nan_to_num(acc) + 0.02, label, ha="center", fontsize=8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return _save(fig, path)


def plot_image_grid(path: Path, images, captions: Sequence[str], title: str, columns: int = 8) -> Path:
    """uint8 ``N x 3 x H x W`` images (tensor or array) in a grid (torchvision's make_grid), each captioned."""
    import torch
    from torchvision.utils import make_grid

    images = torch.as_tensor(np.asarray(images))
    pad = 2
    columns = max(1, min(columns, len(images)))
    fig_w = columns * 1.8
    rows = -(-len(images) // columns) if len(images) else 1
    fig, ax = plt.subplots(figsize=(fig_w, rows * 1.9 + 0.6))
    if len(images):
        grid = make_grid(images, nrow=columns, padding=pad, pad_value=255)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        height, width = images.shape[2] + pad, images.shape[3] + pad
        for k, caption in enumerate(captions):
            row, col = divmod(k, columns)
            ax.text(col * width + pad + 1, row * height + pad + 1, caption, fontsize=6, va="top",
                    bbox={"facecolor": "white", "alpha": 0.75, "pad": 1, "linewidth": 0})
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
