"""A run's headline numbers and the text that reports them (summary.txt and the end of the log)."""

from __future__ import annotations

import numpy as np
import torch

from dlexp.data.protocol import ExperimentData
from dlexp.training.loop import FoldResult, predict_logits


def class_probabilities(model: torch.nn.Module, x: torch.Tensor, transform=None) -> torch.Tensor:
    """Softmax outputs in eval mode; ``transform`` (the data's eval transform, if any) prepares ``x``."""
    return predict_logits(model, x, transform).softmax(dim=1)


def accuracy(probabilities: torch.Tensor, y: torch.Tensor) -> float:
    return (probabilities.argmax(dim=1) == y).float().mean().item()


def summarise(results: list[FoldResult], ensemble_acc: float, seconds: float) -> dict:
    """Headline numbers of the run; the fold with the lowest validation loss is the reported model."""
    best = min(results, key=lambda r: r.best_val_loss)
    test_accs = np.array([r.test_acc for r in results])
    return {
        "test_acc": best.test_acc,
        "best_fold": best.fold,
        "best_val_loss": best.best_val_loss,
        "test_acc_last_fold": results[-1].test_acc,
        "test_acc_fold_mean": float(test_accs.mean()),
        "test_acc_fold_std": float(test_accs.std()),
        "test_acc_ensemble": ensemble_acc,
        "val_acc_mean": float(np.mean([r.best_val_acc for r in results])),
        "epochs_run_mean": float(np.mean([r.epochs_run for r in results])),
        "train_seconds": seconds,
        "fold_test_acc": {r.fold: r.test_acc for r in results},
    }


def class_report(class_names: list[str], y_test: torch.Tensor, predicted: torch.Tensor,
                 untested: dict[str, str]) -> dict:
    """The reported model's test accuracy within each class (recall), for the summary:
    ``{name: {"test_images": n, "test_acc": share right or None, "note": why None}}``; ``untested`` gives the
    reason a class has no test rows (dlexp.data.split_checks), so it never shows as a bare "n/a"."""
    y_test, predicted = np.asarray(y_test), np.asarray(predicted)
    report = {}
    for c, name in enumerate(class_names):
        rows = y_test == c
        report[name] = {"test_images": int(rows.sum()),
                        "test_acc": float((predicted[rows] == c).mean()) if rows.any() else None,
                        "note": None if rows.any() else untested.get(name, "not tested: no test rows")}
    return report


def _class_lines(summary: dict) -> list[str]:
    """summary.txt's per-class accuracy and split warnings, when the run has them."""
    lines = []
    if classes := summary.get("test_per_class"):
        lines.append(f"test accuracy per class (fold {summary['best_fold']} model):")
        lines += [f"  {name}: {c['note']}" if c["test_acc"] is None else
                  f"  {name}: {c['test_acc']:.1%} of {c['test_images']}" for name, c in classes.items()]
    if warnings := summary.get("split_warnings"):
        lines.append(f"warnings about the split ({len(warnings)}):")
        lines += [f"  WARNING: {line}" for line in warnings]
    return lines


def summary_text(summary: dict, data: ExperimentData) -> str:
    folds = ", ".join(f"{fold}: {acc:.1%}" for fold, acc in summary["fold_test_acc"].items())
    return "\n".join([
        data.describe(),
        f"test accuracy of the reported model (fold {summary['best_fold']}, lowest val loss "
        f"{summary['best_val_loss']:.4f}): {summary['test_acc']:.2%}",
        f"test accuracy of the last fold's model: {summary['test_acc_last_fold']:.2%}",
        f"test accuracy per fold: {folds}",
        f"mean over folds: {summary['test_acc_fold_mean']:.2%} ± {summary['test_acc_fold_std']:.2%}",
        f"ensemble of the fold models (mean probabilities): {summary['test_acc_ensemble']:.2%}",
        f"training time: {summary['train_seconds']:.1f} s",
        *_class_lines(summary),
    ]) + "\n"
