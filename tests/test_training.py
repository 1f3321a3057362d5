"""Early stopping and best-weight restoring in the real training loop."""

from __future__ import annotations

import pytest
import torch

from dlexp.models.mlp import MLP
from dlexp.training import loop as training
from dlexp.training.loop import EarlyStopping, clone_state, train_fold
from dlexp.training.losses import ClassificationLoss


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=3)
    history = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]
    stopped_at = None
    for epoch, value in enumerate(history, start=1):
        stopper.step(value, epoch)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert (stopped_at, stopper.best_epoch, stopper.best) == (5, 2, 0.8)


def test_min_delta_ignores_tiny_improvements():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert stopper.step(1.0, 1) and not stopper.step(0.95, 2) and not stopper.step(0.92, 3)
    assert stopper.should_stop and stopper.best_epoch == 1


def spiral_problem(n=300, seed=0):
    from dlexp.data.spiral import make_spiral

    x, y = make_spiral(arms=3, points_per_arm=n // 3, noise=0.1, seed=seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x, y, order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]


def make_objects(seed=0):
    torch.manual_seed(seed)
    model = MLP((2,), 3, hidden_dims=[32, 16])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, optimizer, ClassificationLoss(torch.nn.CrossEntropyLoss())


def test_train_fold_stops_at_the_right_epoch_for_a_known_validation_sequence(monkeypatch):
    """The validation losses are scripted; the loop must stop `patience` epochs after the best one."""
    scripted = iter([0.9, 0.7, 0.75, 0.6, 0.65, 0.61, 0.62, 0.5, 0.9])
    monkeypatch.setattr(training, "evaluate", lambda *args: (next(scripted), 0.5))
    x, y, train_idx, val_idx = spiral_problem()
    model, optimizer, loss_fn = make_objects()
    result = train_fold(1, model, optimizer, None, loss_fn, x, y, train_idx, val_idx, batch_size=50,
                        max_epochs=100, patience=3, generator=torch.Generator().manual_seed(0))
    assert result.best_epoch == 4 and result.best_val_loss == 0.6
    assert result.epochs_run == 7
    assert result.history["val_loss"] == [0.9, 0.7, 0.75, 0.6, 0.65, 0.61, 0.62]
    assert len(result.history["train_loss"]) == len(result.history["lr"]) == 7


def test_restored_best_weights_reproduce_the_best_validation_loss():
    x, y, train_idx, val_idx = spiral_problem()
    model, optimizer, loss_fn = make_objects()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    result = train_fold(1, model, optimizer, scheduler, loss_fn, x, y, train_idx, val_idx, batch_size=32,
                        max_epochs=300, patience=5, generator=torch.Generator().manual_seed(0))
    history = result.history["val_loss"]
    assert result.epochs_run == result.best_epoch + 5, "stopped early, patience epochs after the best"
    assert result.best_val_loss == min(history) == history[result.best_epoch - 1]
    assert history[-1] > result.best_val_loss, "the last epoch is worse, so restoring matters"

    fresh, _, _ = make_objects(seed=123)
    fresh.load_state_dict(result.state_dict)
    val_loss, val_acc = training.evaluate(fresh, loss_fn, x[val_idx], y[val_idx])
    assert val_loss == pytest.approx(result.best_val_loss, rel=1e-6)
    assert val_acc == pytest.approx(result.best_val_acc)
    # The model handed back holds the best weights too, not the last epoch's.
    assert training.evaluate(model, loss_fn, x[val_idx], y[val_idx])[0] == pytest.approx(result.best_val_loss)


def test_clone_state_is_a_deep_copy():
    model, optimizer, loss_fn = make_objects()
    saved = clone_state(model)
    shallow = model.state_dict().copy()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(shallow["0.weight"], model[0].weight), "the trap: a shallow copy follows the model"
    assert not torch.equal(saved["0.weight"], model[0].weight)


def test_learning_rate_is_recorded_per_epoch_and_follows_the_scheduler():
    x, y, train_idx, val_idx = spiral_problem()
    model, optimizer, loss_fn = make_objects()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    result = train_fold(1, model, optimizer, scheduler, loss_fn, x, y, train_idx, val_idx, batch_size=50,
                        max_epochs=5, patience=100, generator=torch.Generator().manual_seed(0))
    assert result.history["lr"] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125])
