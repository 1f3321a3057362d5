"""Training hooks (dlexp.training.loop.TrainingHooks) hear the same story from one-by-one and batched training,
and the sweep's "best" follows the metric's direction (dlexp.tracking.store.higher_is_better)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.mlp import MLP
from dlexp.tracking.store import higher_is_better
from dlexp.training.batched import train_folds_batched
from dlexp.training.loop import HookList, TrainingHooks, train_fold
from dlexp.training.losses import ClassificationLoss


class Recorder(TrainingHooks):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def fold_start(self, fold):
        self.events.append(("start", fold))

    def epoch_end(self, fold, epoch, metrics):
        self.events.append(("epoch", fold, epoch, round(metrics["val_loss"], 4)))

    def fold_end(self, result):
        assert result.state_dict, "a finished fold carries its best weights"
        self.events.append(("end", result.fold, result.epochs_run, result.best_epoch))


def objects(fold: int):
    torch.manual_seed(fold)
    model = MLP((2,), 3, hidden_dims=[8])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.2)
    return model, optimizer, ClassificationLoss(nn.CrossEntropyLoss())


def test_sequential_and_batched_tell_hooks_the_same_epochs_and_fold_ends():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(90, 2, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    folds = [(torch.arange(0, 60), torch.arange(60, 90)), (torch.arange(30, 90), torch.arange(0, 30))]
    sequential = Recorder()
    for fold, (train, val) in enumerate(folds, start=1):
        model, optimizer, loss_fn = objects(fold)
        train_fold(fold, model, optimizer, None, loss_fn, x, y, train, val, batch_size=16, max_epochs=300,
                   patience=3, generator=torch.Generator().manual_seed(fold), hooks=HookList([sequential]))
    batched = Recorder()
    built = [objects(fold) for fold in (1, 2)]
    train_folds_batched([b[0] for b in built], built[0][1], None, built[0][2], x, y, folds, batch_size=16,
                        max_epochs=300, patience=3,
                        generators=[torch.Generator().manual_seed(f) for f in (1, 2)], hooks=batched)

    def per_fold(events, fold):
        return [e for e in events if e[1] == fold]

    for fold in (1, 2):
        seq, bat = per_fold(sequential.events, fold), per_fold(batched.events, fold)
        assert seq[0] == bat[0] == ("start", fold)
        assert seq[-1][0] == bat[-1][0] == "end"
        assert [e[:3] for e in seq] == [e[:3] for e in bat]  # same epochs, same stop
        assert seq[-1] == bat[-1]
        epochs = [e for e in seq if e[0] == "epoch"]
        assert len(epochs) == seq[-1][2] < 300  # early stopping stopped it, every epoch reported once
    # batched: every fold starts before any epoch
    assert [e[0] for e in batched.events[:2]] == ["start", "start"]


@pytest.mark.parametrize(("metric", "mode", "expected"), [
    ("val_acc_mean", "auto", True), ("test_acc", "auto", True), ("best_val_loss", "auto", False),
    ("train_seconds", "auto", False), ("val_error_rate", "auto", False), ("val_loss", "max", True),
    ("val_acc_mean", "min", False),
])
def test_higher_is_better_from_the_name_or_the_mode(metric, mode, expected):
    assert higher_is_better(metric, mode) is expected


def test_higher_is_better_rejects_an_unknown_mode():
    with pytest.raises(DlexpError, match="best_metric_mode='up'"):
        higher_is_better("val_acc_mean", "up")
