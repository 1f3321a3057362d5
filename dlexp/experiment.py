"""One experiment, start to end: config -> objects -> k-fold training -> evaluation -> MLflow.

``run_experiment`` is what the ``python -m dlexp`` entrypoint calls for each Hydra job; tests call it
directly with a composed config.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dlexp import plots
from dlexp.batched import batching_obstacle, train_folds_batched
from dlexp.config import build, build_partial
from dlexp.data.points import PointData
from dlexp.devices import resolve_device
from dlexp.errors import DlexpError
from dlexp.inspect import log_model_summary, summarize_model
from dlexp.splits import kfold_indices
from dlexp.tracking import flatten, git_commit, job_tags, log_history, mlflow_run, setup_experiment
from dlexp.training import NO_HOOKS, FoldResult, TrainingHooks, predict_logits, train_fold
from dlexp.validation import validate_config

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "batched", "sequential")


def configure_torch(trainer: DictConfig) -> torch.device:
    """Threads and seed for reproducible runs; returns the device to train on."""
    if trainer.num_threads:
        torch.set_num_threads(int(trainer.num_threads))
    torch.manual_seed(trainer.seed)
    np.random.seed(trainer.seed)
    return resolve_device(str(trainer.device))


@dataclass
class FoldObjects:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    loss_fn: torch.nn.Module


def build_fold_objects(cfg: DictConfig, data: PointData, device: torch.device, seed: int) -> FoldObjects:
    """A fresh model, optimizer, scheduler and loss from the config; ``seed`` fixes the initial weights."""
    torch.manual_seed(seed)
    model = build("model", cfg.model, input_shape=data.input_shape, num_classes=data.n_classes).to(device)
    optimizer = build_partial("optimizer", cfg.optimizer, model.parameters())
    scheduler = build_partial("scheduler", cfg.scheduler, optimizer) if cfg.get("scheduler") else None
    loss_fn = build("loss", cfg.loss).to(device)
    return FoldObjects(model, optimizer, scheduler, loss_fn)


def choose_strategy(requested: str, objects: FoldObjects, data) -> str:
    """``batched`` (all folds as one stacked model) where it applies, else ``sequential``.

    ``auto`` picks batched only when :func:`dlexp.batched.batching_obstacle` finds nothing against it.
    """
    if requested not in STRATEGIES:
        raise DlexpError(f"trainer.strategy={requested!r}: expected one of {', '.join(STRATEGIES)}")
    if requested == "sequential":
        return requested
    obstacle = batching_obstacle(objects.model, objects.optimizer, objects.scheduler, objects.loss_fn)
    if obstacle is None and getattr(data, "train_transform", None) is not None:
        obstacle = "the data is transformed per batch (image augmentation)"
    if obstacle and requested == "batched":
        raise DlexpError(f"trainer.strategy=batched does not apply here: {obstacle}; use auto or sequential")
    return "sequential" if obstacle else "batched"


def train_folds(cfg: DictConfig, data: PointData, folds: list, x: torch.Tensor, y: torch.Tensor,
                device: torch.device, strategy: str,
                hooks: TrainingHooks = NO_HOOKS) -> Iterator[tuple[FoldResult, torch.nn.Module]]:
    """Train every fold with ``trainer.strategy``; yields each fold's result and its model (best weights).

    Sequential training yields each fold as it finishes; batched training yields them all at the end.
    Both give fold ``k`` the same initial weights and the same data order (seeds of their own for each
    (seed, fold), see dlexp.splits.fold_seed), and both tell ``hooks`` of every epoch and fold as training goes.
    ``trainer.patience=null`` is no early stopping: a fold's first epoch always sets a best, so it can never
    go ``max_epochs`` epochs without improving.
    """
    from dlexp.splits import fold_seed

    trainer = cfg.trainer
    patience = trainer.max_epochs if trainer.patience is None else trainer.patience
    fold_indices = [(torch.as_tensor(train, device=device), torch.as_tensor(val, device=device))
                    for train, val in folds]
    generators = [torch.Generator().manual_seed(fold_seed(trainer.seed, fold, "order"))
                  for fold in range(1, len(folds) + 1)]

    def objects_of(fold: int) -> FoldObjects:
        return build_fold_objects(cfg, data, device, seed=fold_seed(trainer.seed, fold, "weights"))

    first = objects_of(1)
    log.info("training %d folds %s", len(folds), "at once" if strategy == "batched" else "one by one")
    if strategy == "batched":
        objects = [first] + [objects_of(fold) for fold in range(2, len(folds) + 1)]
        models = [o.model for o in objects]
        results = train_folds_batched(
            models, first.optimizer, first.scheduler, first.loss_fn, x, y, fold_indices,
            batch_size=trainer.batch_size, max_epochs=trainer.max_epochs, patience=patience,
            generators=generators, min_delta=trainer.min_delta, hooks=hooks,
        )
        yield from ((r, m) for r, m in zip(results, models, strict=True) if r.diverged is None)
        if diverged := next((r.diverged for r in results if r.diverged is not None), None):
            raise diverged  # after the finished folds are logged, like one-by-one training
        return
    for fold, (train_idx, val_idx) in enumerate(fold_indices, start=1):
        objects = first if fold == 1 else objects_of(fold)
        result = train_fold(
            fold, objects.model, objects.optimizer, objects.scheduler, objects.loss_fn, x, y,
            train_idx, val_idx,
            batch_size=trainer.batch_size, max_epochs=trainer.max_epochs, patience=patience,
            generator=generators[fold - 1], min_delta=trainer.min_delta,
            train_transform=data.train_transform, eval_transform=data.eval_transform, hooks=hooks,
        )
        yield result, objects.model


def class_probabilities(model: torch.nn.Module, x: torch.Tensor, transform=None) -> torch.Tensor:
    """Softmax outputs in eval mode; ``transform`` (the data's eval transform, if any) prepares ``x``."""
    return predict_logits(model, x, transform).softmax(dim=1)


def accuracy(probabilities: torch.Tensor, y: torch.Tensor) -> float:
    return (probabilities.argmax(dim=1) == y).float().mean().item()


def predictor(model: torch.nn.Module, device: torch.device):
    """A CPU-in, CPU-out class predictor for plotting."""
    return lambda x: class_probabilities(model, x.to(device)).argmax(dim=1).cpu().numpy()


def log_fold(result: FoldResult, model: torch.nn.Module, data: PointData, cfg: DictConfig,
             device: torch.device, fold_dir: Path, grid) -> None:
    """One nested MLflow run for a fold: per-epoch series, its best epoch, test accuracy and pictures."""
    with mlflow_run(f"fold_{result.fold}", nested=True, tags={"dlexp.fold": str(result.fold)}):
        mlflow.log_params({"fold": result.fold, "n_train": len(result.train_indices),
                           "n_val": len(result.val_indices)})
        log_history(result.history)
        mlflow.log_metrics({
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "best_val_acc": result.best_val_acc,
            "epochs_run": result.epochs_run,
            "test_acc": result.test_acc,
        })
        pictures = [plots.plot_loss_curves(fold_dir / "loss_curve.png", {f"fold {result.fold}": result.history},
                                           {f"fold {result.fold}": result.best_epoch})]
        if grid is not None:
            x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
            val = result.val_indices.numpy()
            is_val = np.zeros(len(y_train), dtype=bool)
            is_val[val] = True
            pictures.append(plots.plot_decision_boundary(
                fold_dir / "decision_boundary.png", predictor(model, device), grid, x_train, y_train,
                data.class_names, f"fold {result.fold}: best epoch {result.best_epoch}, "
                f"val acc {result.best_val_acc:.1%}", marked=is_val, marked_label="validation"))
        for picture in pictures:
            mlflow.log_artifact(str(picture))


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


def summary_text(summary: dict, data: PointData) -> str:
    folds = ", ".join(f"{fold}: {acc:.1%}" for fold, acc in summary["fold_test_acc"].items())
    return "\n".join([
        data.describe() if hasattr(data, "describe") else
        f"dataset {data.name}: {len(data.y_train)} train / {len(data.y_test)} test points, "
        f"{data.n_features} features, {data.n_classes} classes",
        f"test accuracy of the reported model (fold {summary['best_fold']}, lowest val loss "
        f"{summary['best_val_loss']:.4f}): {summary['test_acc']:.2%}",
        f"test accuracy of the last fold's model: {summary['test_acc_last_fold']:.2%}",
        f"test accuracy per fold: {folds}",
        f"mean over folds: {summary['test_acc_fold_mean']:.2%} ± {summary['test_acc_fold_std']:.2%}",
        f"ensemble of the fold models (mean probabilities): {summary['test_acc_ensemble']:.2%}",
        f"training time: {summary['train_seconds']:.1f} s",
    ]) + "\n"


def run_experiment(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None,
                   extra_tags: dict[str, str] | None = None) -> dict:
    """Train with k-fold CV as ``cfg`` says, write pictures and a summary to ``output_dir``, log to MLflow.

    ``extra_tags`` go on the run as well (a sweep job passes ``mlflow.parentRunId`` to nest under its sweep).
    """
    validate_config(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg.trainer
    device = configure_torch(trainer)
    data: PointData = build("dataset", cfg.dataset)
    groups = getattr(data, "groups", None)  # image data split by specimen: no specimen in two folds
    folds = kfold_indices(data.y_train.numpy(), trainer.folds, trainer.seed, trainer.stratify, groups)
    eval_transform = getattr(data, "eval_transform", None)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    grid = (plots.decision_grid([data.x_train, data.x_test], cfg.plots.grid_resolution)
            if data.n_features == 2 else None)

    # Building the objects once up front stops a bad model/optimizer/scheduler value before any output.
    probe = build_fold_objects(cfg, data, device, seed=trainer.seed)
    model_stats = summarize_model(probe.model, data.input_shape)
    strategy = choose_strategy(trainer.strategy, probe, data)
    setup_experiment(cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_location)
    tags = {"dlexp.overrides": " ".join(overrides or []), "dlexp.output_dir": str(output_dir),
            "dlexp.dataset": data.name, **job_tags(cfg), **(extra_tags or {})}
    if (split_note := data.split_note()) is not None:
        tags["dlexp.split"] = split_note
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    with mlflow_run(cfg.tracking.run_name or data.name, tags=tags, failure_file=output_dir / "FAILED.txt"):
        mlflow.log_params(flatten(cfg))
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        mlflow.log_artifact(str(output_dir / "config_resolved.yaml"))
        log_model_summary(model_stats, data.input_shape, data.n_classes, output_dir)
        mlflow.log_artifact(str(data_picture(output_dir / "plots", data)), "plots")

        started = time.perf_counter()
        results: list[FoldResult] = []
        models: list[torch.nn.Module] = []
        for result, model in train_folds(cfg, data, folds, x_train, y_train, device, strategy):
            result.train_indices, result.val_indices = result.train_indices.cpu(), result.val_indices.cpu()
            result.test_acc = accuracy(class_probabilities(model, x_test, eval_transform), y_test)
            log.info("fold %d/%d: %d epochs, best epoch %d, val loss %.4f, val acc %.2f%%, test acc %.2f%%",
                     result.fold, len(folds), result.epochs_run, result.best_epoch, result.best_val_loss,
                     100 * result.best_val_acc, 100 * result.test_acc)
            log_fold(result, model, data, cfg, device, output_dir / "folds" / f"fold_{result.fold}", grid)
            results.append(result)
            models.append(model)
        seconds = time.perf_counter() - started

        ensemble = torch.stack([class_probabilities(m, x_test, eval_transform) for m in models]).mean(dim=0)
        summary = summarise(results, accuracy(ensemble, y_test), seconds)
        best_model = models[summary["best_fold"] - 1]
        mlflow.log_metrics({k: v for k, v in summary.items() if not isinstance(v, dict)})
        predicted = class_probabilities(best_model, x_test, eval_transform).argmax(dim=1).cpu()
        log_classification(output_dir / "plots", summary, data, predicted)
        write_run_outputs(output_dir, summary, results, best_model, data, device, grid)
        mlflow.log_artifacts(str(output_dir / "plots"), "plots")
        for name in ("model.pt", "summary.txt", "summary.json"):
            mlflow.log_artifact(str(output_dir / name))
    log.info("\n%s", summary_text(summary, data))
    return summary


def data_picture(plot_dir: Path, data) -> Path:
    """Images: a grid of training samples with their labels (as the course's dataset tester shows);
    points: train and test scatter."""
    if len(data.input_shape) != 3:
        return plots.plot_data(plot_dir / "data.png", data.x_train, data.y_train, data.x_test, data.y_test,
                               data.class_names)
    y = data.y_train.numpy()
    per_class = max(1, 32 // data.n_classes)
    picks = np.concatenate([np.flatnonzero(y == c)[:: max(1, (y == c).sum() // per_class)][:per_class]
                            for c in range(data.n_classes)])
    return plots.plot_image_grid(plot_dir / "samples.png", data.x_train[picks],
                                 [data.class_names[y[i]] for i in picks],
                                 f"{data.name}: training samples ({len(y)} images)")


def metric_name(text: str) -> str:
    """A class name as an MLflow metric key part (letters, digits, _ - . space and / only)."""
    return re.sub(r"[^\w\-. /]", "_", text)


def log_classification(plot_dir: Path, summary: dict, data, predicted: torch.Tensor) -> None:
    """The reported model on the test set: confusion matrix and per-class accuracy (pictures and metrics),
    for images the misclassified test images, and for a grouped split the headline ``test_acc_grouped``."""
    y_test = data.y_test.numpy()
    predicted = predicted.numpy()
    title = f"fold {summary['best_fold']} model on the test set: {summary['test_acc']:.1%}"
    per_class = plots.per_class_accuracy(y_test, predicted, data.n_classes)
    plots.plot_confusion_matrix(plot_dir / "confusion_matrix.png", y_test, predicted, data.class_names, title)
    plots.plot_per_class_accuracy(plot_dir / "per_class_accuracy.png", per_class, data.class_names, title)
    mlflow.log_metrics({f"test_acc_class.{metric_name(name)}": float(acc)
                        for name, acc in zip(data.class_names, per_class, strict=True) if not np.isnan(acc)})
    if getattr(data, "grouped", False):
        mlflow.log_metric("test_acc_grouped", summary["test_acc"])
    if len(data.input_shape) == 3:
        wrong = np.flatnonzero(predicted != y_test)[:48]
        plots.plot_image_grid(
            plot_dir / "misclassified.png", data.x_test[wrong],
            [f"true: {data.class_names[y_test[i]]}\npred: {data.class_names[predicted[i]]}" for i in wrong],
            f"misclassified test images: {int((predicted != y_test).sum())} of {len(y_test)} (first 48)",
            columns=6)


def write_run_outputs(output_dir: Path, summary: dict, results: list[FoldResult], best_model: torch.nn.Module,
                      data: PointData, device: torch.device, grid) -> None:
    """The run folder's pictures, the best model's weights and the summary files."""
    plot_dir = output_dir / "plots"
    plots.plot_loss_curves(plot_dir / "loss_curves.png", {f"fold {r.fold}": r.history for r in results},
                           {f"fold {r.fold}": r.best_epoch for r in results})
    if grid is not None:
        predict = predictor(best_model, device)
        x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
        x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
        wrong = predict(data.x_test) != y_test
        plots.plot_decision_boundary(plot_dir / "decision_boundary_train.png", predict, grid, x_train, y_train,
                                     data.class_names, f"fold {summary['best_fold']} model, train points")
        plots.plot_decision_boundary(plot_dir / "decision_boundary_test.png", predict, grid, x_test, y_test,
                                     data.class_names, f"fold {summary['best_fold']} model, test points: "
                                     f"{summary['test_acc']:.1%}", marked=wrong)
    torch.save({k: v.cpu() for k, v in best_model.state_dict().items()}, output_dir / "model.pt")
    (output_dir / "summary.txt").write_text(summary_text(summary, data))
    (output_dir / "summary.json").write_text(json.dumps({**summary, "class_names": data.class_names,
                                                               "input_shape": list(data.input_shape)}, indent=2))
