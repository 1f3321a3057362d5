"""Batched k-fold training (dlexp.training.batched) against the one-by-one trainer (dlexp.training.loop.train_fold)."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.nn import functional as F

from dlexp.data.points import load_point_files
from dlexp.data.splits import kfold_indices
from dlexp.errors import DlexpError
from dlexp.experiment import FoldObjects, build_fold_objects, choose_strategy, run_experiment
from dlexp.models.cnn import ConvNet
from dlexp.models.mlp import MLP
from dlexp.training.batched import StackedMLP, batching_obstacle, train_folds_batched
from dlexp.training.loop import evaluate, train_fold
from dlexp.training.losses import ClassificationLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "seed-data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def make_objects(fold: int, input_shape: tuple[int, ...], n_classes: int, lr: float, hidden=(16,),
                 step_size: int = 5, gamma: float = 0.5, activation: str = "relu", optimizer: str = "adam",
                 weight_decay: float = 0.0, dropout: float = 0.0):
    torch.manual_seed(100 + fold)
    model = MLP(input_shape, n_classes, hidden_dims=list(hidden), activation=activation, dropout=dropout)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    optimizer = optimizer_class(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    return model, optimizer, scheduler, ClassificationLoss(nn.CrossEntropyLoss())


def train_both(x, y, folds, n_classes, lr, batch_size, max_epochs, patience, hidden=(16,), step_size=5,
               gamma=0.5, activation="relu", optimizer="adam", weight_decay=0.0, dropout=0.0):
    """The same folds, initial weights and data orders, trained one by one and batched."""
    folds = [(torch.as_tensor(t), torch.as_tensor(v)) for t, v in folds]
    settings = (n_classes, lr, hidden, step_size, gamma, activation, optimizer, weight_decay, dropout)
    sequential, sequential_models = [], []
    for fold, (train, val) in enumerate(folds, start=1):
        model, optimizer_, scheduler, loss_fn = make_objects(fold, tuple(x.shape[1:]), *settings)
        sequential.append(train_fold(fold, model, optimizer_, scheduler, loss_fn, x, y, train, val, batch_size,
                                     max_epochs, patience, torch.Generator().manual_seed(fold)))
        sequential_models.append(model)
    objects = [make_objects(fold, tuple(x.shape[1:]), *settings) for fold in range(1, len(folds) + 1)]
    _, optimizer_, scheduler, loss_fn = objects[0]
    batched_models = [o[0] for o in objects]
    batched = train_folds_batched(batched_models, optimizer_, scheduler, loss_fn, x, y, folds, batch_size,
                                  max_epochs, patience,
                                  [torch.Generator().manual_seed(f) for f in range(1, len(folds) + 1)])
    return sequential, sequential_models, batched, batched_models


def assert_same_training(sequential, batched) -> None:
    """Batched folds stop at the same epochs with the same histories and weights as one-by-one ones."""
    for seq, bat in zip(sequential, batched, strict=True):
        assert (bat.epochs_run, bat.best_epoch) == (seq.epochs_run, seq.best_epoch)
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert len(bat.history[key]) == bat.epochs_run  # nothing recorded after the fold stopped
            torch.testing.assert_close(torch.tensor(bat.history[key]), torch.tensor(seq.history[key]),
                                       rtol=1e-4, atol=1e-5)
        assert bat.best_val_loss == pytest.approx(seq.best_val_loss, rel=1e-4)
        assert bat.best_val_loss == min(bat.history["val_loss"])
        for name, tensor in seq.state_dict.items():
            torch.testing.assert_close(bat.state_dict[name], tensor, rtol=1e-3, atol=1e-4)


@pytest.fixture
def noisy_folds():
    """Three folds of unequal size (68/69/69 train points, so 4 or 5 batches of 17) whose validation
    labels are pure noise: validation loss soon rises and each fold stops at its own epoch."""
    torch.manual_seed(0)
    x = torch.randn(103, 2)
    y = torch.randint(0, 3, (103,))
    folds = kfold_indices(y.numpy(), 3, seed=0, stratify=False)
    assert sorted(len(t) for t, _ in folds) == [68, 69, 69]
    return x, y, folds


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])  # hand-written backward, and autograd's
def test_same_early_stopping_as_one_by_one(noisy_folds, activation):
    x, y, folds = noisy_folds
    sequential, _, batched, _ = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=60, patience=4,
                                           activation=activation)
    epochs = [r.epochs_run for r in sequential]
    assert max(epochs) < 60 and len(set(epochs)) > 1, f"folds should stop at different epochs: {epochs}"
    assert_same_training(sequential, batched)


@pytest.mark.parametrize(("optimizer", "weight_decay", "activation", "shape"), [
    ("adamw", 0.05, "relu", (2,)),      # decoupled weight decay
    ("adam", 0.02, "tanh", (2,)),       # L2 weight decay added to the gradient
    ("adam", 0.0, "sigmoid", (2,)),
    ("adam", 0.0, "relu", (2, 1)),      # 2-D inputs: a Flatten layer in front
], ids=["adamw-decay", "adam-decay", "sigmoid", "flatten"])
def test_batched_matches_one_by_one_for_what_it_claims(noisy_folds, optimizer, weight_decay, activation,
                                                        shape):
    x, y, folds = noisy_folds
    x = x.view(len(x), *shape)
    sequential, models, batched, _ = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=60,
                                                patience=4, activation=activation, optimizer=optimizer,
                                                weight_decay=weight_decay)
    assert isinstance(models[0][0], nn.Flatten) == (len(shape) > 1)
    assert len({r.epochs_run for r in sequential}) > 1  # the folds stop apart: dropping folds is exercised
    assert_same_training(sequential, batched)


class AtenWithout:
    """``torch.ops.aten`` as a torch without the ``missing`` ops shows it."""

    def __init__(self, aten, missing: set[str]) -> None:
        self.aten, self.missing = aten, missing

    def __getattr__(self, name: str):
        if name in self.missing:
            raise AttributeError(f"'_OpNamespace' 'aten' object has no attribute '{name}'")
        return getattr(self.aten, name)


def failing(*args, **kwargs):
    raise RuntimeError("no kernel for this device")


@pytest.mark.parametrize("how", ["missing", "failing"])
def test_batched_falls_back_to_public_operations_without_private_torch_apis(noisy_folds, monkeypatch, how):
    """Another torch (or device) may lack torch._fused_adam(w)_ and the ATen backward ops, or fail in
    them: batched training then uses public operations and still matches one-by-one training."""
    for name in ("_fused_adam_", "_fused_adamw_"):
        if how == "missing":
            monkeypatch.delattr(torch, name)
        else:
            monkeypatch.setattr(torch, name, failing)
    backward_ops = {"threshold_backward", "tanh_backward", "sigmoid_backward"}
    if how == "missing":
        monkeypatch.setattr(torch.ops, "aten", AtenWithout(torch.ops.aten, backward_ops))
    else:
        for name in backward_ops:
            monkeypatch.setattr(torch.ops.aten, name, failing)

    x, y, folds = noisy_folds
    for activation, optimizer in (("relu", "adamw"), ("tanh", "adam"), ("sigmoid", "adam")):
        sequential, _, batched, _ = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=60,
                                               patience=4, activation=activation, optimizer=optimizer,
                                               weight_decay=0.01)
        assert_same_training(sequential, batched)
    from dlexp.training.batched import ACTIVATION_OPS, StackedAdam, StackedMLP

    model, optimizer, _, _ = make_objects(1, (2,), 3, 0.05, activation="sigmoid", optimizer="adamw")
    stacked = StackedMLP([model])
    assert stacked.backward_ops[nn.Sigmoid] is ACTIVATION_OPS[nn.Sigmoid][1]  # the public formula
    assert StackedAdam(optimizer, stacked.weights).fused is None


def test_fused_adam_gets_its_step_count_on_the_parameters_device(monkeypatch):
    """As torch.optim.Adam(fused=True) does: on CUDA the kernel wants the step tensor beside the params
    (a CPU step tensor fails there). The meta device stands in for a GPU."""
    from dlexp.training.batched import StackedAdam

    calls = []
    monkeypatch.setattr(torch, "_fused_adam_", lambda params, *args, **kwargs: calls.append(args[4]))
    weights = torch.zeros(3, 10, device="meta")
    adam = StackedAdam(torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.01), weights)
    adam.step(weights, torch.zeros_like(weights), 0.01, None)
    assert [(s.device.type, s.dtype) for s in calls[-1]] == [("meta", torch.float32)]


def test_restored_best_weights_reproduce_best_val_loss(noisy_folds):
    x, y, folds = noisy_folds
    _, _, batched, models = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=60, patience=4)
    for result, model in zip(batched, models, strict=True):
        assert result.best_epoch < result.epochs_run  # training went on past the best epoch
        fresh = MLP((2,), 3, hidden_dims=[16])
        fresh.load_state_dict(result.state_dict)
        for candidate in (fresh, model):
            loss, acc = evaluate(candidate, ClassificationLoss(nn.CrossEntropyLoss()), x[result.val_indices],
                                 y[result.val_indices])
            assert loss == pytest.approx(result.best_val_loss, rel=1e-5)
            assert acc == pytest.approx(result.best_val_acc)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_batched_is_deterministic(noisy_folds, dropout):
    x, y, folds = noisy_folds
    first = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=20, patience=4, dropout=dropout)[2]
    second = train_both(x, y, folds, 3, lr=0.05, batch_size=17, max_epochs=20, patience=4, dropout=dropout)[2]
    assert [r.history for r in first] == [r.history for r in second]


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])  # hand-written backward, and autograd's
def test_dropout_gradient_is_autograds_with_the_same_masks(activation):
    """One batched step with dropout: each fold's gradient is what autograd gives its own ``nn.Sequential``
    with the masks the step drew (drawn again here from the same seed, in the same order), and evaluation
    leaves dropout out."""
    k, batch, p = 3, 8, 0.4
    models = [make_objects(fold, (2,), 4, 0.01, hidden=(6, 5), activation=activation, dropout=p)[0]
              for fold in range(k)]
    x, y = torch.randn(k, batch, 2), torch.randint(0, 4, (k, batch))
    weight = torch.full((k, batch, 1), 1 / batch)
    stacked = StackedMLP(models)
    stacked.bind(stacked.weights.clone())
    torch.manual_seed(7)
    logits, grad = stacked.logits_and_grad(x, -F.one_hot(y, 4).float() * weight, weight)
    torch.manual_seed(7)
    masks = [torch.empty(k, batch, width).bernoulli_(1 - p).div_(1 - p) for width in (6, 5)]
    assert 0 < sum(int((m == 0).sum()) for m in masks) < sum(m.numel() for m in masks)
    for i, model in enumerate(models):
        h, dropped = x[i], 0
        for layer in model:
            if isinstance(layer, nn.Dropout):
                h, dropped = h * masks[dropped][i], dropped + 1
            else:
                h = layer(h)
        model.zero_grad()
        F.cross_entropy(h, y[i]).backward()
        torch.testing.assert_close(logits[i], h.detach(), rtol=1e-5, atol=1e-6)
        expected = stacked.state_dict(grad[i], model)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(expected[name], parameter.grad, rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(stacked.forward(x)[i], model.eval()(x[i]), rtol=1e-5, atol=1e-6)


SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(("data_dir", "dropout"), [(SHIPPED_DATA, 0.0), (SEED_DATA, 0.0), (SHIPPED_DATA, 0.1)])
def test_equivalent_accuracy_on_spiral(data_dir, dropout):
    """With dropout the two paths draw different masks, so only the accuracies can agree."""
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is absent (the course data lives beside the checkout)")
    data = load_point_files(str(data_dir / "trainData.txt"), str(data_dir / "testData.txt"))
    folds = kfold_indices(data.y_train.numpy(), 3, seed=42)
    sequential, seq_models, batched, bat_models = train_both(
        data.x_train, data.y_train, folds, data.n_classes, lr=0.01, batch_size=50, max_epochs=150,
        patience=20, hidden=(64, 32), step_size=50, gamma=0.8,  # the course set-up, fewer epochs and folds
        dropout=dropout)

    def test_accuracy(model):
        with torch.no_grad():
            return (model.eval()(data.x_test).argmax(dim=1) == data.y_test).float().mean().item()

    seq_acc = [test_accuracy(m) for m in seq_models]
    bat_acc = [test_accuracy(m) for m in bat_models]
    # Both learn the spiral (a linear model gets ~40%), and the fold means agree within 1.5 points: the
    # runs differ only in float rounding, which grows into different but equally good trajectories.
    assert min(seq_acc + bat_acc) > 0.93, (seq_acc, bat_acc)
    assert abs(sum(seq_acc) / 3 - sum(bat_acc) / 3) <= 0.015, (seq_acc, bat_acc)
    for seq, bat in zip(sequential, batched, strict=True):
        assert bat.best_val_acc == pytest.approx(seq.best_val_acc, abs=0.03)


def compose_spiral(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=["+experiment=spiral", *overrides])


def test_auto_strategy_batches_only_what_stacks():
    cfg = compose_spiral()
    data = load_point_files(cfg.dataset.train_path, cfg.dataset.test_path)
    objects = build_fold_objects(cfg, data, torch.device("cpu"), seed=1)
    assert choose_strategy("auto", objects, data) == "batched"
    assert choose_strategy("sequential", objects, data) == "sequential"
    with_dropout = build_fold_objects(compose_spiral("model.dropout=0.2"), data, torch.device("cpu"), seed=1)
    assert any(isinstance(layer, nn.Dropout) for layer in with_dropout.model)
    assert choose_strategy("auto", with_dropout, data) == "batched"
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(objects.optimizer)
    obstacle = batching_obstacle(objects.model, objects.optimizer, plateau, objects.loss_fn)
    assert "ReduceLROnPlateau" in obstacle
    sgd = torch.optim.SGD(objects.model.parameters(), lr=0.1)
    assert "SGD" in batching_obstacle(objects.model, sgd, None, objects.loss_fn)
    cnn = ConvNet((1, 8, 8), 2, channels=[4], hidden_dims=[])
    cnn_objects = FoldObjects(cnn, torch.optim.Adam(cnn.parameters()), None, objects.loss_fn)
    assert choose_strategy("auto", cnn_objects, data) == "sequential"
    with pytest.raises(DlexpError, match="trainer.strategy=batched does not apply here: model: ConvNet"):
        choose_strategy("batched", cnn_objects, data)
    with pytest.raises(DlexpError, match="strategy='fast': expected one of auto, batched, sequential"):
        choose_strategy("fast", objects, data)
    # Data transformed per batch (image augmentation) trains fold by fold.
    data.train_transform = lambda batch: batch
    assert choose_strategy("auto", objects, data) == "sequential"


@pytest.mark.parametrize("strategy", ["batched", "sequential"])
def test_run_logs_the_same_fold_metrics_for_both_strategies(tmp_path, strategy):
    cfg = compose_spiral(f"trainer.strategy={strategy}", "trainer.folds=2", "trainer.max_epochs=6",
                         "plots.grid_resolution=40", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                         f"tracking.artifact_location={tmp_path / 'artifacts'}")
    summary = run_experiment(cfg, tmp_path / "run")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    folds = sorted((r for r in runs if "dlexp.fold" in r.data.tags), key=lambda r: r.data.tags["dlexp.fold"])
    assert len(folds) == 2 and len(runs) == 3
    for run in folds:
        epochs = int(run.data.metrics["epochs_run"])
        assert epochs == 6
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, epochs + 1))
        val_losses = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert run.data.metrics["best_val_loss"] == pytest.approx(min(val_losses))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"loss_curve.png", "decision_boundary.png"} <= artifacts
    assert math.isfinite(summary["test_acc"]) and summary["test_acc"] > 0.5


def test_a_diverging_fold_is_dropped_and_the_others_finish(noisy_folds):
    """One extra NaN point in fold 2's validation set only: batched training marks fold 2 diverged and still
    trains folds 1 and 3 to their own early stop."""
    from dlexp.training.loop import TrainingDiverged

    x, y, folds = noisy_folds
    x = torch.cat([x, torch.full((1, 2), float("nan"))])
    y = torch.cat([y, torch.tensor([0])])
    folds = [(torch.as_tensor(t), torch.as_tensor(v)) for t, v in folds]
    folds[1] = (folds[1][0], torch.cat([folds[1][1], torch.tensor([len(y) - 1])]))
    objects = [make_objects(fold, (2,), 3, 0.05, (16,), 5, 0.5, "relu") for fold in (1, 2, 3)]
    results = train_folds_batched([o[0] for o in objects], objects[0][1], objects[0][2], objects[0][3], x, y,
                                  folds, 17, 60, 4, [torch.Generator().manual_seed(f) for f in (1, 2, 3)])
    assert isinstance(results[1].diverged, TrainingDiverged)
    assert "fold 2: val loss is nan at epoch 1" in str(results[1].diverged)
    assert results[1].epochs_run == 1
    assert results[0].diverged is None and results[2].diverged is None
    assert results[0].epochs_run > 4 and results[2].epochs_run > 4


def test_fold_seeds_are_distinct_for_every_seed_fold_and_stream():
    from dlexp.data.splits import fold_seed

    seeds = {(s, k, stream): fold_seed(s, k, stream) for s in range(30) for k in range(1, 11)
             for stream in ("weights", "order")}
    assert len(set(seeds.values())) == len(seeds)
    assert fold_seed(42, 3, "weights") == fold_seed(42, 3, "weights")  # reproducible


def initial_weights(monkeypatch, strategy: str, seed: int) -> list[dict[str, torch.Tensor]]:
    """Each fold's weights as train_folds builds them (before any step), for a 3-fold spiral run."""
    from dlexp import experiment

    built, build = [], experiment.build_fold_objects

    def recording(*args, **kwargs):
        objects = build(*args, **kwargs)
        built.append({k: v.clone() for k, v in objects.model.state_dict().items()})
        return objects

    monkeypatch.setattr(experiment, "build_fold_objects", recording)
    cfg = compose_spiral(f"trainer.seed={seed}", "trainer.folds=3", "trainer.max_epochs=1")
    data = load_point_files(cfg.dataset.train_path, cfg.dataset.test_path)
    folds = kfold_indices(data.y_train.numpy(), 3, seed)
    list(experiment.train_folds(cfg, data, folds, data.x_train, data.y_train, torch.device("cpu"), strategy))
    monkeypatch.undo()
    assert len(built) == 3
    return built


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_folds_of_neighbouring_seeds_start_from_different_weights(monkeypatch):
    """seed + fold gave fold k+1 of seed s the initial weights of fold k of seed s+1 (a seed sweep's folds
    were correlated); both strategies still give fold k the same weights."""
    batched = {seed: initial_weights(monkeypatch, "batched", seed) for seed in (7, 8)}
    sequential = initial_weights(monkeypatch, "sequential", 7)
    assert all(same_weights(b, s) for b, s in zip(batched[7], sequential, strict=True))
    everything = batched[7] + batched[8]
    for i, a in enumerate(everything):
        for b in everything[i + 1:]:
            assert not same_weights(a, b)
