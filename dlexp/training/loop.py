"""Training one fold: shuffled mini-batches by tensor indexing, validation each epoch, early stopping.

Everything here works on tensors already on the device; no DataLoader of single samples sits in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from dlexp.errors import DlexpError


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = float("inf")
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; return True if it is a new best."""
        if value < self.best - self.min_delta:
            self.best = value
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A real copy of the weights (``state_dict().copy()`` is shallow and keeps tracking the live tensors)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def step_scheduler(scheduler, val_loss: float) -> None:
    """Advance a scheduler once per epoch; ReduceLROnPlateau is the one that needs the validation loss."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


class TrainingDiverged(DlexpError):
    """A fold's loss became NaN or infinite: training cannot recover, so the run stops and fails.

    ``result`` holds the fold's history up to that epoch.
    """

    def __init__(self, message: str, result: FoldResult) -> None:
        super().__init__(message)
        self.result = result


def check_finite(result: FoldResult, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` when the epoch's training or validation loss is not finite."""
    for key in ("train_loss", "val_loss"):
        value = result.history[key][-1]
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"fold {result.fold}: {key.replace('_', ' ')} is {value} at epoch {epoch}; training "
                "diverged (try a lower optimizer.lr, or check the data for extreme values)", result)


@dataclass
class FoldResult:
    """What one fold's training produced; ``state_dict`` holds the best epoch's weights."""

    fold: int
    train_indices: torch.Tensor
    val_indices: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    best_val_acc: float = 0.0
    epochs_run: int = 0
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    test_acc: float | None = None
    diverged: TrainingDiverged | None = None  # set when batched training dropped the fold for a NaN loss


class TrainingHooks:
    """What training tells the rest of a run while it goes (progress, live metrics, pruning).

    Both paths call them: one-by-one training (``train_fold``) and all folds at once (dlexp.training.batched),
    where ``fold_start`` comes for every fold before the first epoch and ``fold_end`` when a fold stops
    (its result then holds its best weights in ``state_dict``). Every method here does nothing; override
    what you need. An exception raised in a hook stops training and propagates (a pruned trial does that).
    """

    def fold_start(self, fold: int) -> None:
        pass

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def fold_end(self, result: FoldResult) -> None:
        pass


class HookList(TrainingHooks):
    """Several hooks called in order."""

    def __init__(self, hooks: list[TrainingHooks]) -> None:
        self.hooks = hooks

    def fold_start(self, fold: int) -> None:
        for hook in self.hooks:
            hook.fold_start(fold)

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        for hook in self.hooks:
            hook.epoch_end(fold, epoch, metrics)

    def fold_end(self, result: FoldResult) -> None:
        for hook in self.hooks:
            hook.fold_end(result)


NO_HOOKS = TrainingHooks()

Transform = Callable[[torch.Tensor], torch.Tensor]
EVAL_CHUNK = 1024  # rows per forward pass when evaluating, to bound memory on large (image) sets


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, transform: Transform | None = None,
                   chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """``model``'s logits for ``x`` in eval mode, ``chunk`` rows at a time, each through ``transform``."""
    model.eval()
    parts = [x[start : start + chunk] for start in range(0, len(x), chunk)]
    return torch.cat([model(transform(part) if transform else part) for part in parts])


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
             transform: Transform | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    logits = predict_logits(model, x, transform)
    return loss_fn(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def train_fold(
    fold: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train_indices: torch.Tensor,
    val_indices: torch.Tensor,
    batch_size: int,
    max_epochs: int,
    patience: int,
    generator: torch.Generator,
    min_delta: float = 0.0,
    hooks: TrainingHooks = NO_HOOKS,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    checkpoint=None,
) -> FoldResult:
    """Train ``model`` on ``x[train_indices]``, early-stopping on the loss over ``x[val_indices]``.

    ``train_transform``/``eval_transform`` turn a batch of stored rows into model inputs (for images:
    augmentation, float conversion, normalisation); without them the rows go in as they are.

    The model ends holding the best epoch's weights, which are also returned as a copy in the result.
    ``checkpoint`` (a dlexp.training.checkpoint.EpochCheckpoint) restores an interrupted fold's state before
    the first epoch (the hooks hear of its epochs again) and saves it at the end of epochs.
    """
    x_train, y_train = x[train_indices], y[train_indices]
    x_val, y_val = x[val_indices], y[val_indices]
    n = len(y_train)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_acc": [], "lr": []}
    stopper = EarlyStopping(patience, min_delta)
    result = FoldResult(fold=fold, train_indices=train_indices, val_indices=val_indices, history=history)
    result.state_dict = clone_state(model)
    hooks.fold_start(fold)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    first_epoch = 1
    if checkpoint is not None:
        from dlexp.training.checkpoint import fold_state, restore_fold_state

        if (saved := checkpoint.restore()) is not None:
            first_epoch = restore_fold_state(saved, model, optimizer, scheduler, stopper, generator, result, hooks) + 1
    for epoch in range(first_epoch, max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(x.device)
        total = torch.zeros((), device=x.device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            if len(batch) == 1 < n and has_batchnorm:
                continue  # BatchNorm cannot train on a lone last sample; the next shuffle includes it
            optimizer.zero_grad(set_to_none=True)
            inputs = x_train[batch] if train_transform is None else train_transform(x_train[batch])
            loss = loss_fn(model(inputs), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        val_loss, val_acc = evaluate(model, loss_fn, x_val, y_val, eval_transform)
        metrics = {
            "train_loss": total.item() / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
        }
        for key, value in metrics.items():
            history[key].append(value)
        result.epochs_run = epoch
        check_finite(result, epoch)
        hooks.epoch_end(fold, epoch, metrics)
        if stopper.step(val_loss, epoch):
            result.best_epoch, result.best_val_loss, result.best_val_acc = epoch, val_loss, val_acc
            result.state_dict = clone_state(model)
        if stopper.should_stop:
            break
        step_scheduler(scheduler, val_loss)
        if checkpoint is not None:
            checkpoint.epoch_end(epoch, lambda: fold_state(model, optimizer, scheduler, stopper, generator, result))
    model.load_state_dict(result.state_dict)
    hooks.fold_end(result)
    return result
