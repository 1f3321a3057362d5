"""Training the folds of several jobs as one stacked model (issue #24): the jobs of a sweep whose configs
differ only in values that keep the model's shapes (learning rate, Adam's betas and eps, weight decay, Adam or
AdamW, seeds, patience, min_delta, max_epochs, the LR schedule, dropout rate) train as (job, fold) members of
one batched model, one pass over the data per step.

This module is the interface between the launcher that groups jobs (dlexp.sweeps) and the batched trainer
(dlexp.training.batched, whose building blocks it runs). Each :class:`StackedJob` carries what one job would
hand :func:`dlexp.training.batched.train_folds_batched` when trained alone (which is this with one job);
:func:`train_stacked` gives every job the results it gets alone, bit for bit on the CPU:

- every job has its own :class:`~dlexp.training.batched.StackedAdam` on its own rows (its lr from its own
  scheduler, its betas, eps, weight decay, step counts): one fused Adam call per job and step, on exactly the
  rows it would update alone, since torch's fused kernel rounds an element by where it falls in the tensor;
- the forward and backward passes run once for all rows; each row's numbers are independent of the rows
  around it (batched matrix products per row, reductions per row; elementwise activations per job where the
  vector/tail split could differ, :meth:`~dlexp.training.batched.StackedMLP.activation`);
- each fold has its own data order generator and its own dropout generator (masks drawn for that fold
  alone), its own early stopping, best weights, divergence, and ``max_epochs``;
- each job's training loss is summed over its own rows and steps (a sum's order depends on its shape).

Jobs stop independently: all their folds stopped, ``max_epochs`` reached, or their hooks raised (the
exception becomes the job's outcome). ``KeyboardInterrupt`` (Ctrl-C, ``dlexp.interrupts.Interrupted``) stops
every job after each job's checkpoint holds the epoch it just finished (jobs resumed from checkpoints may be
at different epochs of their own in one stack).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dlexp.training.batched import (
    SCHEDULER_ORDER_WARNING,
    StackedAdam,
    StackedMLP,
    batching_obstacle,
    epoch_sample_losses,
    padded_batches,
    smoothed_targets,
)
from dlexp.training.loop import NO_HOOKS, EarlyStopping, FoldResult, TrainingDiverged, TrainingHooks, check_finite

#: Stream number of the dropout generators' seeds (the order and weights streams are dlexp.data.splits').
DROPOUT_STREAM = 2


@dataclass
class StackedJob:
    """One job's folds, as members of a stacked model.

    ``models[i]`` is fold ``i + 1``'s model holding its initial weights; ``optimizer`` and ``scheduler`` are
    built for fold 1 and give this job's optimizer hyper-parameters and epoch-driven LR schedule;
    ``folds[i] = (train_indices, val_indices)`` (int64 tensors into the shared ``x``/``y``);
    ``generators[i]`` drives fold ``i + 1``'s data order. ``hooks`` hear of this job's epochs and folds only;
    ``checkpoint`` (dlexp.training.checkpoint.EpochCheckpoint or None) keeps this job's own state.
    ``dropout_generators[i]`` draws fold ``i + 1``'s dropout masks; by default each is seeded from its
    fold's order generator (:func:`dropout_generator`), so a job's masks depend on its own seeds only.
    """

    models: Sequence[nn.Sequential]
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    loss_fn: nn.Module
    folds: Sequence[tuple[torch.Tensor, torch.Tensor]]
    generators: Sequence[torch.Generator]
    max_epochs: int
    patience: int
    min_delta: float = 0.0
    hooks: TrainingHooks = NO_HOOKS
    checkpoint: object | None = None
    dropout_generators: Sequence[torch.Generator] | None = None


def dropout_generator(order: torch.Generator) -> torch.Generator:
    """A fold's dropout generator, seeded from its order generator's seed (``order.initial_seed()``, which
    dlexp.data.splits.fold_seed gives per (seed, fold)) hashed with a stream number of its own."""
    entropy = [int(order.initial_seed()), DROPOUT_STREAM]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]))


# ---------------------------------------------------------------- which jobs can share a stack

def layer_signature(model: nn.Module) -> list[str]:
    """The layers that fix a model's shapes and function (dropout left out: its rate is per member)."""
    return [f"Linear({layer.in_features}, {layer.out_features})" if isinstance(layer, nn.Linear) else repr(layer)
            for layer in model if not isinstance(layer, nn.Dropout)]


def dropout_rates(model: nn.Module) -> dict[int, float]:
    """``{position: p}`` of a model's Dropout layers, position = how many other layers come before it."""
    rates, position = {}, 0
    for layer in model:
        if isinstance(layer, nn.Dropout):
            rates[position] = float(layer.p)
        else:
            position += 1
    return rates


def stack_layers(models: Sequence[nn.Module]) -> list[nn.Module]:
    """The layers of a stack of ``models`` (equal :func:`layer_signature`): the first one's, with a Dropout
    wherever any model has one (rows of a model without it get masks of ones, which change nothing)."""
    slots = set().union(*(dropout_rates(m).keys() for m in models))
    base = [layer for layer in models[0] if not isinstance(layer, nn.Dropout)]
    layers: list[nn.Module] = [nn.Dropout(0.0)] if 0 in slots else []
    for position, layer in enumerate(base, start=1):
        layers.append(layer)
        if position in slots:
            layers.append(nn.Dropout(0.0))
    return layers


def stacking_obstacle(jobs: Sequence[StackedJob]) -> str | None:
    """Why ``jobs`` cannot train as one stack (a short reason naming the config key), or None.

    Each job must be batchable (dlexp.training.batched.batching_obstacle) and all must have the same layers
    (widths, depth, activation; ``model.*``), the same loss settings (``loss.label_smoothing``), the same
    validation padding (the largest validation fold; ``trainer.folds``), one device and dtype. The data
    ``x``/``y`` and ``batch_size`` are one per stack by :func:`train_stacked`'s signature: the caller groups
    jobs by ``dataset`` and ``trainer.batch_size`` itself. Everything else (Adam or AdamW and their settings,
    the scheduler, seeds, patience, min_delta, max_epochs, dropout rate) may differ from job to job.
    """
    if not jobs:
        return "no jobs to stack"
    first = jobs[0]
    signature = layer_signature(first.models[0])
    first_parameter = next(first.models[0].parameters())
    for number, job in enumerate(jobs, start=1):
        if not (len(job.models) == len(job.folds) == len(job.generators)) or not job.models:
            return (f"job {number}: {len(job.models)} models, {len(job.folds)} folds and {len(job.generators)} "
                    "generators (one of each per fold expected)")
        for model in job.models:
            if (why := batching_obstacle(model, job.optimizer, job.scheduler, job.loss_fn)) is not None:
                return why
            if (theirs := layer_signature(model)) != signature:
                difference = next((f"{a} vs {b}" for a, b in zip(signature, theirs, strict=False)
                                   if a != b), f"{len(signature)} vs {len(theirs)} layers")
                return f"model: the jobs' layers differ ({difference}); widths, depth and activation must be equal"
            if None in dropout_widths(list(model)):
                return "model: dropout before the first Linear layer is not stacked"
            parameter = next(model.parameters())
            if (parameter.device, parameter.dtype) != (first_parameter.device, first_parameter.dtype):
                return f"trainer.device: models on {parameter.device}/{parameter.dtype} and " \
                       f"{first_parameter.device}/{first_parameter.dtype}"
        smoothing = job.loss_fn.criterion.label_smoothing, first.loss_fn.criterion.label_smoothing
        if smoothing[0] != smoothing[1]:
            return f"loss.label_smoothing differs between the jobs ({smoothing[1]} vs {smoothing[0]})"
        widths = max(len(v) for _, v in job.folds), max(len(v) for _, v in first.folds)
        if widths[0] != widths[1]:
            return (f"trainer.folds: the jobs' largest validation folds differ ({widths[1]} vs {widths[0]} "
                    "samples); they cannot share a stack")
    return None


# ---------------------------------------------------------------- one job's part of the stack

class JobState:
    """One job's training state in a stack: its results, early stopping, running folds, Adam state (rows of
    its running folds), best weights (one row per fold) and epoch; ``outcome`` once its hooks raised."""

    def __init__(self, job: StackedJob, weights: torch.Tensor, first_member: int) -> None:
        self.job = job
        self.first_member = first_member  # this job's fold 1 is member ``first_member`` of the whole stack
        self.weights = weights  # rows of the running folds: this job's own tensor, or a view into the stack's
        self.adam = StackedAdam(job.optimizer, weights)
        self.best_weights = weights.clone()
        self.results = [FoldResult(fold=i + 1, train_indices=train, val_indices=val,
                                   history={"train_loss": [], "val_loss": [], "val_acc": [], "lr": []})
                        for i, (train, val) in enumerate(job.folds)]
        self.stoppers = [EarlyStopping(job.patience, job.min_delta) for _ in job.models]
        self.running = list(range(len(job.models)))  # fold positions training; row r of weights is running[r]
        self.dropout = list(job.dropout_generators or [dropout_generator(g) for g in job.generators])
        self.rates = [dropout_rates(model) for model in job.models]
        self.epoch = 0  # the last epoch finished
        self.outcome: Exception | None = None
        self.train_sizes = [len(train) for train, _ in job.folds]

    @property
    def live(self) -> bool:
        return self.outcome is None and bool(self.running) and self.epoch < self.job.max_epochs

    def steps(self, batch_size: int) -> int:
        """Batches per epoch of this job alone: its longest running fold's."""
        return max(math.ceil(self.train_sizes[i] / batch_size) for i in self.running)

    def finish_state(self, stacked: StackedMLP, i: int) -> None:
        """Fold ``i`` has stopped: its best weights into its model and result."""
        result = self.results[i]
        result.state_dict = stacked.state_dict(self.best_weights[i], self.job.models[i])
        self.job.models[i].load_state_dict(result.state_dict)

    def state(self) -> dict:
        """This job's checkpoint (``batched.pt``): its rows only, the format train_folds_batched always wrote
        plus the dropout generators (and without torch's global generator, which training no longer uses)."""
        from dlexp.training.checkpoint import result_state

        job = self.job
        return {"optimizer": job.optimizer.state_dict(),
                "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
                "generators": [g.get_state() for g in job.generators],
                "dropout_generators": [g.get_state() for g in self.dropout],
                "running": list(self.running), "weights": self.weights.clone(),
                "best_weights": self.best_weights.clone(), "exp_avg": self.adam.exp_avg.clone(),
                "exp_avg_sq": self.adam.exp_avg_sq.clone(), "steps": list(self.adam.steps),
                "results": [result_state(r) for r in self.results],
                "stoppers": [dict(vars(s)) for s in self.stoppers]}

    def restore(self, saved: dict, stacked: StackedMLP, device: torch.device) -> None:
        """Put a checkpoint's state back; the hooks hear of its epochs and of the folds it had finished."""
        from dlexp.training.checkpoint import replay_epochs, result_from_state

        job = self.job
        job.optimizer.load_state_dict(saved["optimizer"])
        if job.scheduler is not None:
            job.scheduler.load_state_dict(saved["scheduler"])
        for generator, state in zip(job.generators, saved["generators"], strict=True):
            generator.set_state(state)
        for generator, state in zip(self.dropout, saved.get("dropout_generators") or [], strict=False):
            generator.set_state(state)
        self.running = list(saved["running"])
        self.weights, self.best_weights = saved["weights"].to(device), saved["best_weights"].to(device)
        self.adam.exp_avg, self.adam.exp_avg_sq = saved["exp_avg"].to(device), saved["exp_avg_sq"].to(device)
        self.adam.steps = list(saved["steps"])
        for i, (result, stopper) in enumerate(zip(self.results, self.stoppers, strict=True)):
            saved_result = result_from_state(saved["results"][i])
            for key, values in saved_result.history.items():
                result.history[key][:] = values
            for name in ("best_epoch", "best_val_loss", "best_val_acc", "epochs_run", "diverged"):
                setattr(result, name, getattr(saved_result, name))
            vars(stopper).update(saved["stoppers"][i])
            # a diverged fold's last epoch never reached the hooks
            replay_epochs(result, job.hooks, result.epochs_run - (result.diverged is not None))
        for i, result in enumerate(self.results):
            if i not in self.running and result.diverged is None:
                self.finish_state(stacked, i)
                job.hooks.fold_end(result)
        self.epoch = int(saved["epoch"])

    def end_epoch(self, stacked: StackedMLP, epoch: int, metrics: list[list[float]], lr: float) -> list[tuple]:
        """Record epoch ``epoch`` (``metrics[row] = [train_loss, val_loss, val_acc]`` per running row): history,
        divergence, early stopping, best weights, stopped folds' best weights. Returns the hook calls this
        epoch owes, in the order training alone makes them, for :meth:`notify`."""
        calls, still_running = [], []
        for row, i in enumerate(self.running):
            result, stopper = self.results[i], self.stoppers[i]
            values = {"train_loss": metrics[row][0], "val_loss": metrics[row][1], "val_acc": metrics[row][2],
                      "lr": lr}
            for key, value in values.items():
                result.history[key].append(value)
            result.epochs_run = epoch
            try:
                check_finite(result, epoch)
            except TrainingDiverged as error:
                result.diverged = error  # dropped like a stopped fold; the others train on
                continue
            calls.append(("epoch_end", result.fold, epoch, values))
            if stopper.step(values["val_loss"], epoch):
                result.best_epoch, result.best_val_loss, result.best_val_acc = (epoch, values["val_loss"],
                                                                                values["val_acc"])
                self.best_weights[i] = self.weights[row]
            if not stopper.should_stop:
                still_running.append(row)
        for row, i in enumerate(self.running):
            if row not in still_running and self.results[i].diverged is None:
                self.finish_state(stacked, i)
                calls.append(("fold_end", self.results[i]))
        if len(still_running) < len(self.running):
            keep = torch.tensor(still_running, dtype=torch.long, device=self.weights.device)
            self.weights = self.weights[keep]
            self.adam.keep(still_running)
            self.running = [self.running[row] for row in still_running]
        self.epoch = epoch
        return calls

    def notify(self, calls: list[tuple]) -> None:
        for name, *args in calls:
            getattr(self.job.hooks, name)(*args)

    def step_scheduler(self) -> None:
        if self.job.scheduler is not None:
            with warnings.catch_warnings():  # the optimizer's step is StackedAdam's, which torch cannot see
                warnings.filterwarnings("ignore", SCHEDULER_ORDER_WARNING, UserWarning)
                self.job.scheduler.step()

    def finish(self, stacked: StackedMLP) -> list[FoldResult]:
        """The job is over: running folds (``max_epochs`` reached) and diverged ones get their best weights."""
        for i in self.running:
            self.finish_state(stacked, i)
            self.job.hooks.fold_end(self.results[i])
        self.running = []
        for i, result in enumerate(self.results):  # diverged folds keep their best weights too
            if result.diverged is not None:
                self.finish_state(stacked, i)
        return self.results


# ---------------------------------------------------------------- the stacked training loop

def dropout_masks(states: list[JobState], layers: list[nn.Module], steps: int, batch_size: int,
                  widths: list[int]) -> list[torch.Tensor] | None:
    """Each Dropout layer's masks for an epoch, ``(steps, rows, batch, width)``: every running fold draws its
    own from its own generator (``bernoulli(1 - p) / (1 - p)`` as ``nn.Dropout``, for its own batches only),
    rows without dropout get ones. None when no layer is a Dropout."""
    slots = list(dropout_rates(layers))
    if not slots:
        return None
    rows = sum(len(s.running) for s in states)
    masks = [torch.ones(steps, rows, batch_size, width) for width in widths]
    row = 0
    for state in states:
        for i in state.running:
            own_steps = math.ceil(state.train_sizes[i] / batch_size)
            for mask, slot in zip(masks, slots, strict=True):
                p = state.rates[i].get(slot, 0.0)
                if p > 0:
                    drawn = torch.empty(own_steps, batch_size, mask.shape[3]).bernoulli_(
                        1 - p, generator=state.dropout[i])
                    mask[:own_steps, row] = drawn.div_(1 - p)
            row += 1
    return masks


class EpochBatches(NamedTuple):
    """An epoch's batches for every running fold of the stack, step-major so each step is one slice.

    ``x`` ``(steps, rows, batch, ...)``; ``targets`` ``(steps, rows, batch, classes)`` class probabilities;
    ``weights`` ``(steps, rows, batch, 1)``: ``1 / len(batch)`` per sample, 0 for padding; ``neg_scaled_targets``
    ``-targets * weights``; ``masks``: per Dropout layer, ``(steps, rows, batch, width)`` or None without
    dropout; ``has_batch[step][row]``; ``spans[j] = (first row, end row)`` of live job ``j``.
    """

    x: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    neg_scaled_targets: torch.Tensor
    masks: list[torch.Tensor] | None
    has_batch: list[list[bool]]
    spans: list[tuple[int, int]]


def epoch_batches(live: list[JobState], x: torch.Tensor, y: torch.Tensor, batch_size: int, n_classes: int,
                  label_smoothing: float, layers: list[nn.Module]) -> EpochBatches:
    """Every running fold's shuffled batches for the next epoch (its own order generator, its own dropout
    generator), padded to the stack's longest fold as :func:`dlexp.training.batched.padded_batches` does."""
    device = x.device
    orders = [s.job.folds[i][0][torch.randperm(s.train_sizes[i], generator=s.job.generators[i]).to(device)]
              for s in live for i in s.running]
    index, weight = padded_batches(orders, batch_size)
    n_steps, rows = index.shape[1] // batch_size, len(orders)
    x_steps, y_steps, w_steps = (t.view(rows, n_steps, batch_size, *t.shape[2:]).transpose(0, 1).contiguous()
                                 for t in (x[index], y[index], weight))
    targets = smoothed_targets(y_steps, n_classes, label_smoothing, x.dtype)
    weight_steps = w_steps.unsqueeze(3)
    masks = dropout_masks(live, layers, n_steps, batch_size, dropout_widths(layers))
    spans, start = [], 0
    for s in live:
        spans.append((start, start + len(s.running)))
        start += len(s.running)
    # Which folds have a batch at each step: with unequal train sizes the last steps may miss some.
    return EpochBatches(x_steps, targets, weight_steps, -targets * weight_steps,
                        None if masks is None else [m.to(device) for m in masks], (w_steps[:, :, 0] > 0).tolist(),
                        spans)


def train_stacked(jobs: Sequence[StackedJob], x: torch.Tensor, y: torch.Tensor,
                  batch_size: int) -> list[list[FoldResult] | Exception]:
    """Train every job's folds on the shared data ``x`` (float, ``(n, features)``) and ``y`` (int64, ``(n,)``).

    Returns, per job and in order, its fold results (as ``train_folds_batched`` returns them: a diverged fold
    has ``diverged`` set), or the exception its hooks raised (a pruned trial, a store error): that job's
    members stop there and the others train on. ``KeyboardInterrupt`` (Ctrl-C, dlexp.interrupts.Interrupted
    on SIGTERM, raised by a hook or by a job's checkpoint at an epoch's end) stops every job and propagates,
    after each live job's checkpoint holds the epoch just finished; one raised in the middle of an epoch (a
    second Ctrl-C) propagates at once, the checkpoints keeping their last save.

    Raises ValueError when :func:`stacking_obstacle` finds the jobs cannot share a stack.
    """
    if (obstacle := stacking_obstacle(jobs)) is not None:
        raise ValueError(f"these jobs cannot train as one stack: {obstacle}")
    device = x.device
    models = [model for job in jobs for model in job.models]
    layers = stack_layers(models)
    stacked = StackedMLP(models, layers)
    all_weights = stacked.weights.to(device)
    states: list[JobState] = []
    member = 0
    for job in jobs:
        states.append(JobState(job, all_weights[member:member + len(job.models)].clone(), member))
        member += len(job.models)
    n_classes = models[0][-1].out_features
    label_smoothing = jobs[0].loss_fn.criterion.label_smoothing
    val_index, val_weight = padded_batches([val for job in jobs for _, val in job.folds],
                                           max(len(val) for job in jobs for _, val in job.folds))
    val_index, val_weight = val_index.to(device), val_weight.to(device)
    train_size = torch.tensor([len(train) for job in jobs for train, _ in job.folds], device=device)

    for state in states:
        try:
            for result in state.results:
                state.job.hooks.fold_start(result.fold)
            if state.job.checkpoint is not None and (saved := state.job.checkpoint.restore()) is not None:
                state.restore(saved, stacked, device)
        except Exception as error:  # noqa: BLE001 - the job's own failure (its hooks), reported for it alone
            state.outcome = error

    while live := [s for s in states if s.live]:
        weights = torch.cat([s.weights for s in live])
        blocks = [len(s.running) for s in live]
        for s, part in zip(live, weights.split(blocks), strict=True):
            s.weights = part  # views: each job's Adam updates its rows of the stack in place
        stacked.bind(weights, blocks)
        members = torch.tensor([s.first_member + i for s in live for i in s.running], device=device)
        lrs = [s.job.optimizer.param_groups[0]["lr"] for s in live]
        batches = epoch_batches(live, x, y, batch_size, n_classes, label_smoothing, layers)
        n_steps, spans = len(batches.x), batches.spans
        step_logits = []
        for step in range(n_steps):
            logits, grad = stacked.logits_and_grad(batches.x[step], batches.neg_scaled_targets[step],
                                                   batches.weights[step],
                                                   None if batches.masks is None else [m[step] for m in batches.masks])
            flags = batches.has_batch[step]
            for s, (a, b), lr in zip(live, spans, lrs, strict=True):
                active = flags[a:b]
                if all(active):
                    s.adam.step(s.weights, grad[a:b], lr, None)
                elif any(active):
                    s.adam.step(s.weights, grad[a:b], lr, active)
            step_logits.append(logits)
        # Each job's losses summed as alone (torch sums a (steps, k, batch) tensor in an order that depends on
        # k, and a job alone pads to its own longest fold): over its own rows and steps, contiguous.
        sample_losses = epoch_sample_losses(torch.stack(step_logits), batches.targets, batches.weights[..., 0] > 0)
        train_total = torch.cat([sample_losses[:s.steps(batch_size), a:b].contiguous().sum(dim=(0, 2))
                                 for s, (a, b) in zip(live, spans, strict=True)])

        with torch.no_grad():
            val_rows = val_index[members]
            row_weight = val_weight[members]
            logits = stacked.forward(x[val_rows])
            losses = F.cross_entropy(logits.flatten(0, 1), y[val_rows].flatten(), reduction="none",
                                     label_smoothing=label_smoothing).view_as(row_weight)
            val_loss = (losses * row_weight).sum(dim=1)
            val_acc = ((logits.argmax(dim=2) == y[val_rows]) * row_weight).sum(dim=1)
            metrics = torch.stack([train_total / train_size[members], val_loss, val_acc]).t().tolist()

        end_of_epoch(live, stacked, metrics, spans, lrs)
    outcomes: list[list[FoldResult] | Exception] = []
    for s in states:
        if s.outcome is None:
            try:
                outcomes.append(s.finish(stacked))
                continue
            except Exception as error:  # noqa: BLE001 - the job's own failure (its fold_end hooks)
                s.outcome = error
        outcomes.append(s.outcome)
    return outcomes


def end_of_epoch(live: list[JobState], stacked: StackedMLP, metrics: list[list[float]],
                 spans: list[tuple[int, int]], lrs: list[float]) -> None:
    """Every live job records its epoch, its hooks hear of it, its scheduler steps and its checkpoint saves
    (if due) as training alone does; a job whose hooks raise ends with that exception as its outcome.

    A ``KeyboardInterrupt`` (from a hook, or a checkpoint's ``Interrupted`` after its save) stops further
    hooks; every job still finishes the epoch's bookkeeping and saves its checkpoint, then it propagates.
    """
    interrupt: KeyboardInterrupt | None = None
    calls = [s.end_epoch(stacked, s.epoch + 1, metrics[a:b], lr)
             for s, (a, b), lr in zip(live, spans, lrs, strict=True)]
    for s, owed in zip(live, calls, strict=True):
        if interrupt is None:
            try:
                s.notify(owed)
            except KeyboardInterrupt as error:
                interrupt = error
            except Exception as error:  # noqa: BLE001 - the job's own failure (its hooks), reported for it alone
                s.outcome = error
    going_on = [s for s in live if s.outcome is None and s.running]  # a job over has nothing to checkpoint
    for s in going_on:
        s.step_scheduler()
        if s.job.checkpoint is None:
            continue
        try:
            if interrupt is None:
                s.job.checkpoint.epoch_end(s.epoch, s.state)
            else:
                s.job.checkpoint.save(s.epoch, s.state)
        except KeyboardInterrupt as error:  # saved, then asked to stop: the other jobs save too
            interrupt = interrupt or error
        except Exception as error:  # noqa: BLE001 - this job's checkpoint could not be written
            s.outcome = error
    if interrupt is not None:
        for s in going_on:  # the jobs before the one stopped, whose save was not due
            if s.outcome is None and s.job.checkpoint is not None and s.job.checkpoint.last_epoch != s.epoch:
                s.job.checkpoint.save(s.epoch, s.state)
        raise interrupt
    for s in live:
        if s.outcome is None and s.running and s.epoch >= s.job.max_epochs:
            try:
                s.finish(stacked)
            except Exception as error:  # noqa: BLE001 - the job's own failure (its fold_end hooks)
                s.outcome = error


def dropout_widths(layers: list[nn.Module]) -> list[int]:
    """The width of the activations each Dropout layer of ``layers`` masks: the preceding Linear's outputs."""
    widths, width = [], None
    for layer in layers:
        if isinstance(layer, nn.Linear):
            width = layer.out_features
        elif isinstance(layer, nn.Dropout):
            widths.append(width)
    return widths
