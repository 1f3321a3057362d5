"""Pictures of a run: data scatter, loss curves, decision boundaries. Each function writes one PNG.

Matplotlib runs headless (Agg) and every figure is closed after saving, so sweeps don't leak memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CMAP = "tab10"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)  # the constrained layout fits the labels in: no second render
    plt.close(fig)
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True, layout="constrained")
    for ax, x, y, title in ((axes[0], x_train, y_train, "train"), (axes[1], x_test, y_test, "test")):
        _scatter(ax, np.asarray(x), np.asarray(y), len(class_names))
        ax.set_title(f"{title} ({len(y)} points)")
    _legend(axes[1], class_names)
    return _save(fig, path)


def plot_loss_curves(path: Path, histories: dict[str, dict[str, list[float]]],
                     best_epochs: dict[str, int] | None = None) -> Path:
    """Training (dashed) and validation (solid) loss per epoch for each named history."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
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


def plot_decision_boundary(
    path: Path,
    predict: Callable[[torch.Tensor], torch.Tensor],
    grid: tuple[np.ndarray, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    title: str,
    marked: np.ndarray | None = None,
    marked_label: str = "misclassified",
) -> Path:
    """Class regions of ``predict`` over ``grid`` with the points ``(x, y)``; ``marked`` points get an X."""
    gx, gy = grid
    flat = torch.from_numpy(np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32))
    regions = predict(flat).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    ax.contourf(gx, gy, regions, levels=np.arange(-0.5, 10.5), cmap=CMAP, vmin=-0.5, vmax=9.5, alpha=0.35)
    _scatter(ax, x, y, len(class_names))
    if marked is not None and marked.any():
        ax.scatter(x[marked, 0], x[marked, 1], marker="x", c="k", s=40, linewidths=1.2,
                   label=f"{marked_label} ({int(marked.sum())})")
        ax.legend(loc="lower left", fontsize=7)
    ax.set_xlim(gx.min(), gx.max())
    ax.set_ylim(gy.min(), gy.max())
    ax.set_title(title)
    return _save(fig, path)
