"""A job's own pictures and files, and which pictures a run gets: the data, the loss curves of every
fold, the reported model's decision regions, confusion matrix and per-class accuracy, misclassified images.

Pictures are drawn in the helper process (dlexp.tracking.background) and logged by the writer thread as they come;
the run's model and summary files are written only after every picture is in, so a run stopped on the
way has none of them (its folder gets FAILED.txt instead).
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from dlexp.reports import plots
from dlexp.reports.summary import class_probabilities, summary_text
from dlexp.tracking.background import Writer
from dlexp.tracking.keys import mlflow_keys
from dlexp.tracking.offline import log_metrics
from dlexp.training.loop import FoldResult


def predict_regions(model: torch.nn.Module, grid, device: torch.device) -> np.ndarray:
    """The class ``model`` predicts at every grid point (what a decision-boundary picture shows)."""
    points = torch.from_numpy(plots.grid_points(grid)).to(device)
    return class_probabilities(model, points).argmax(dim=1).cpu().numpy()


def data_picture(writer: Writer, plot_dir: Path, data) -> Future:
    """Images: a grid of training samples with their labels (as the course's dataset tester shows);
    points: train and test scatter."""
    if len(data.input_shape) != 3:
        return writer.render("plot_data", plot_dir / "data.png", data.x_train.numpy(), data.y_train.numpy(),
                             data.x_test.numpy(), data.y_test.numpy(), data.class_names)
    y = data.y_train.numpy()
    per_class = max(1, 32 // data.n_classes)
    picks = np.concatenate([np.flatnonzero(y == c)[:: max(1, (y == c).sum() // per_class)][:per_class]
                            for c in range(data.n_classes)])
    return writer.render("plot_image_grid", plot_dir / "samples.png", data.x_train[picks].numpy(),
                         [data.class_names[y[i]] for i in picks],
                         f"{data.name}: training samples ({len(y)} images)")


#: Per-class test accuracies are logged as ``test_acc_class.<class name as a valid MLflow key>``.
CLASS_METRIC_PREFIX = "test_acc_class."


def classification_pictures(writer: Writer, plot_dir: Path, summary: dict, data,
                            predicted: torch.Tensor, here: bool = False) -> list[Future]:
    """The reported model on the test set: confusion matrix and per-class accuracy (pictures and metrics),
    for images the misclassified test images, and for a grouped split the headline ``test_acc_grouped``.
    ``here``: draw them in this process (see dlexp.tracking.background.Writer.render)."""
    y_test = data.y_test.numpy()
    predicted = predicted.numpy()
    title = f"fold {summary['best_fold']} model on the test set: {summary['test_acc']:.1%}"
    per_class = plots.per_class_accuracy(y_test, predicted, data.n_classes)
    pictures = [
        writer.render("plot_confusion_matrix", plot_dir / "confusion_matrix.png",
                      plots.confusion_counts(y_test, predicted, data.n_classes), data.class_names, title, here=here),
        writer.render("plot_per_class_accuracy", plot_dir / "per_class_accuracy.png", per_class,
                      data.class_names, title, here=here),
    ]
    keys = mlflow_keys(data.class_names, CLASS_METRIC_PREFIX)  # the run logged their table as it started
    metrics = {keys[name]: float(acc)
               for name, acc in zip(data.class_names, per_class, strict=True) if not np.isnan(acc)}
    if data.grouped:
        metrics["test_acc_grouped"] = summary["test_acc"]
    log_metrics(writer.journal, metrics)
    if len(data.input_shape) == 3:
        wrong = np.flatnonzero(predicted != y_test)[:48]
        pictures.append(writer.render(
            "plot_image_grid", plot_dir / "misclassified.png", data.x_test[wrong].numpy(),
            [f"true: {data.class_names[y_test[i]]}\npred: {data.class_names[predicted[i]]}" for i in wrong],
            f"misclassified test images: {int((predicted != y_test).sum())} of {len(y_test)} (first 48)",
            columns=6, here=here))
    return pictures


def run_pictures(writer: Writer, plot_dir: Path, summary: dict, results: list[FoldResult],
                 best_model: torch.nn.Module, data, device: torch.device, grid) -> list[Future]:
    """Every fold's loss curves in one picture and, for 2-D points, the reported model's class regions."""
    pictures = [writer.render("plot_loss_curves", plot_dir / "loss_curves.png",
                              {f"fold {r.fold}": r.history for r in results},
                              {f"fold {r.fold}": r.best_epoch for r in results})]
    if grid is not None:
        regions = predict_regions(best_model, grid, device)
        x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
        x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
        wrong = class_probabilities(best_model, data.x_test.to(device)).argmax(dim=1).cpu().numpy() != y_test
        pictures.append(writer.render("plot_decision_boundary", plot_dir / "decision_boundary_train.png", regions,
                                      grid, x_train, y_train, data.class_names,
                                      f"fold {summary['best_fold']} model, train points"))
        pictures.append(writer.render("plot_decision_boundary", plot_dir / "decision_boundary_test.png", regions,
                                      grid, x_test, y_test, data.class_names,
                                      f"fold {summary['best_fold']} model, test points: {summary['test_acc']:.1%}",
                                      marked=wrong))
    return pictures


def write_run_files(output_dir: Path, summary: dict, best_model: torch.nn.Module, data) -> list[Path]:
    """The best model's weights and the summary files (written last: a finished run has them)."""
    torch.save({k: v.cpu() for k, v in best_model.state_dict().items()}, output_dir / "model.pt")
    (output_dir / "summary.txt").write_text(summary_text(summary, data))
    (output_dir / "summary.json").write_text(json.dumps({**summary, "class_names": data.class_names,
                                                               "input_shape": list(data.input_shape)}, indent=2))
    return [output_dir / name for name in ("model.pt", "summary.txt", "summary.json")]
