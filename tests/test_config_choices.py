"""Every optimizer, scheduler and loss config trains the spiral experiment and is what MLflow records.

One tiny run per option (3 epochs, 2 folds) through ``run_experiment`` into a temporary MLflow store;
the run is read back with ``MlflowClient``: the chosen class, the learning rate per epoch the scheduler
produced, and the best validation loss recomputed with the configured loss on the saved model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from torch import nn

from dlexp.data.spiral import generate_point_data
from dlexp.data.splits import kfold_indices
from dlexp.errors import DlexpError
from dlexp.experiment import build_fold_objects, run_experiment
from dlexp.training.loop import train_fold

EPOCHS = 3
LR = 0.01  # the spiral experiment's learning rate
SCHED = "torch.optim.lr_scheduler."


def compose_spiral(overrides: list[str]) -> DictConfig:
    return compose_config(["+experiment=spiral", *overrides])


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Path:
    """One MLflow store for all cases (creating a SQLite store costs seconds)."""
    return tmp_path_factory.mktemp("mlflow")


def cosine(epoch: int, t_max: int = EPOCHS) -> float:
    return LR * (1 + math.cos(math.pi * (epoch - 1) / t_max)) / 2


# Each case picks one optimizer, one scheduler and one loss, so five short runs cover every option:
# (case, overrides, params the run must hold, lr per epoch expected in every fold or None).
CASES = [
    ("adam-step-cross_entropy",
     ["optimizer=adam", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
      "loss=cross_entropy", "loss.criterion.label_smoothing=0.1"],
     {"optimizer._target_": "torch.optim.Adam", "scheduler._target_": SCHED + "StepLR",
      "loss.criterion._target_": "torch.nn.CrossEntropyLoss", "loss.criterion.label_smoothing": "0.1"},
     [LR, LR / 2, LR / 4]),
    ("adamw-exponential-huber",
     ["optimizer=adamw", "optimizer.weight_decay=0.05", "scheduler=exponential", "scheduler.gamma=0.9",
      "loss=huber", "loss.criterion.delta=0.5"],
     {"optimizer._target_": "torch.optim.AdamW", "optimizer.weight_decay": "0.05",
      "scheduler._target_": SCHED + "ExponentialLR", "loss.criterion._target_": "torch.nn.HuberLoss",
      "loss.criterion.delta": "0.5", "loss.inputs": "softmax", "loss.targets": "one_hot"},
     [LR, LR * 0.9, LR * 0.81]),
    ("sgd-cosine-mse",
     ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "scheduler=cosine", "loss=mse"],
     {"optimizer._target_": "torch.optim.SGD", "optimizer.momentum": "0.9", "optimizer.nesterov": "True",
      "scheduler._target_": SCHED + "CosineAnnealingLR", "scheduler.T_max": str(EPOCHS),
      "loss.criterion._target_": "torch.nn.MSELoss", "loss.targets": "one_hot"},
     [cosine(1), cosine(2), cosine(3)]),
    ("rmsprop-plateau-smooth_l1",
     ["optimizer=rmsprop", "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.5",
      "loss=smooth_l1"],
     {"optimizer._target_": "torch.optim.RMSprop", "scheduler._target_": SCHED + "ReduceLROnPlateau",
      "loss.criterion._target_": "torch.nn.SmoothL1Loss"},
     None),  # the lr is checked by replaying the logged validation losses
    ("adagrad-none-nll",
     ["optimizer=adagrad", "scheduler=none", "loss=nll"],
     {"optimizer._target_": "torch.optim.Adagrad", "scheduler._target_": SCHED + "ConstantLR",
      "loss.criterion._target_": "torch.nn.NLLLoss", "loss.inputs": "log_softmax"},
     [LR] * EPOCHS),
]


@pytest.mark.parametrize(("case", "overrides", "params", "lrs"), CASES, ids=[case[0] for case in CASES])
def test_config_choice_trains_spiral_and_is_logged(shared_store, case, overrides, params, lrs):
    cfg = compose_spiral([f"trainer.max_epochs={EPOCHS}", "trainer.folds=2", "plots.grid_resolution=20",
                          f"tracking.uri=sqlite:///{shared_store}/mlflow.db",
                          f"tracking.artifact_location={shared_store}/artifacts", *overrides])
    output_dir = shared_store / case
    summary = run_experiment(cfg, output_dir, overrides)

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string=f"tags.`dlexp.output_dir` = '{output_dir}'")
    assert run.info.status == "FINISHED"
    assert params.items() <= run.data.params.items()
    assert run.data.params["model.n_params"] == "2437"
    assert "model_summary.txt" in [f.path for f in client.list_artifacts(run.info.run_id)]
    assert "Total params: 2,437" in (output_dir / "model_summary.txt").read_text()

    folds = client.search_runs([experiment.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(folds) == 2
    for fold in folds:
        series = {key: [m.value for m in sorted(client.get_metric_history(fold.info.run_id, key),
                                                key=lambda m: m.step)] for key in ("lr", "val_loss")}
        assert len(series["lr"]) == EPOCHS and all(math.isfinite(v) for v in series["val_loss"])
        if lrs is not None:
            assert series["lr"] == pytest.approx(lrs, rel=1e-9)
        if "plateau" in case:
            assert series["lr"] == pytest.approx(replay_plateau(cfg, series["val_loss"]), rel=1e-9)
            assert series["lr"][-1] < LR, "patience 0 with a 50% threshold must lower the lr"

    # The logged best validation loss is the configured loss of the saved model on its validation fold.
    model = instantiate(cfg.model, input_shape=(2,), num_classes=5)
    model.load_state_dict(torch.load(output_dir / "model.pt"))
    model.eval()
    data = instantiate(cfg.dataset)
    folds = kfold_indices(data.y_train.numpy(), 2, cfg.trainer.seed, cfg.trainer.stratify)
    _, val = folds[summary["best_fold"] - 1]
    with torch.no_grad():
        loss = instantiate(cfg.loss)(model(data.x_train[val]), data.y_train[val]).item()
    assert run.data.metrics["best_val_loss"] == pytest.approx(loss, rel=1e-5)


def replay_plateau(cfg: DictConfig, val_losses: list[float]) -> list[float]:
    """The lr per epoch a fresh ReduceLROnPlateau gives when fed the logged validation losses."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    lrs = []
    for val_loss in val_losses:
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(val_loss)
    return lrs


class ScriptedValidationLoss(nn.Module):
    """Cross-entropy while training; while evaluating (no grad) the next scripted validation loss."""

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.val_losses = iter(val_losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return nn.functional.cross_entropy(logits, target)
        return torch.tensor(next(self.val_losses))


@pytest.mark.parametrize(("val_losses", "expected_lrs"), [
    # Improves for 3 epochs, then flat: patience 2 means the 3rd epoch without improvement halves the lr,
    # and after the reset another 3 flat epochs halve it again.
    ([1.0, 0.9, 0.8] + [0.8] * 7, [LR] * 6 + [LR / 2] * 3 + [LR / 4]),
    # Always improving: the lr never changes.
    ([1.0 - 0.05 * i for i in range(10)], [LR] * 10),
])
def test_reduce_lr_on_plateau_reacts_to_validation_loss(val_losses, expected_lrs):
    cfg = compose_spiral(["scheduler=plateau", "scheduler.patience=2", "scheduler.factor=0.5"])
    data = generate_point_data(arms=3, points_per_arm=20)
    objects = build_fold_objects(cfg, data, torch.device("cpu"), seed=0)
    scripted = ScriptedValidationLoss(val_losses)
    result = train_fold(1, objects.model, objects.optimizer, objects.scheduler, scripted, data.x_train,
                        data.y_train, torch.arange(0, 40), torch.arange(40, 48), batch_size=10,
                        max_epochs=len(val_losses), patience=100, generator=torch.Generator().manual_seed(0))
    assert result.history["val_loss"] == pytest.approx(val_losses)
    assert result.history["lr"] == pytest.approx(expected_lrs, rel=1e-12)


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer=sgd", "optimizer.nesterov=true"],
     "optimizer: cannot build torch.optim.SGD: Nesterov momentum requires a momentum"),
    (["optimizer.lr=-1"], "optimizer: cannot build torch.optim.Adam: Invalid learning rate: -1"),
    (["scheduler=step", "+scheduler.warmup=3"], "scheduler: cannot build torch.optim.lr_scheduler.StepLR: "),
])
def test_bad_optimizer_or_scheduler_value_is_one_line_error(overrides, message):
    cfg = compose_spiral(overrides)
    data = generate_point_data(arms=3, points_per_arm=20)
    with pytest.raises(DlexpError) as error:
        build_fold_objects(cfg, data, torch.device("cpu"), seed=0)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_patience_null_is_no_early_stopping(shared_store):
    """trainer.patience=null trains every fold for max_epochs, where patience 1 stops the same folds early
    (trainer.patience=0 is refused: tests/test_bad_input.py)."""
    def epochs_per_fold(patience: str) -> list[int]:
        cfg = compose_spiral(["trainer.max_epochs=30", "trainer.folds=2", "plots.grid_resolution=20",
                              "optimizer.lr=0.1", f"trainer.patience={patience}",
                              f"tracking.uri=sqlite:///{shared_store}/mlflow.db",
                              f"tracking.artifact_location={shared_store}/artifacts"])
        output_dir = shared_store / f"patience_{patience}"
        run_experiment(cfg, output_dir)
        client = MlflowClient(tracking_uri=cfg.tracking.uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
        (run,) = client.search_runs([experiment.experiment_id],
                                    filter_string=f"tags.`dlexp.output_dir` = '{output_dir}'")
        folds = client.search_runs([experiment.experiment_id],
                                   filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        return [int(fold.data.metrics["epochs_run"]) for fold in folds]

    assert epochs_per_fold("null") == [30, 30]
    assert max(epochs_per_fold("1")) < 30
