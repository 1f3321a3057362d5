"""Training the folds of several jobs as one stacked model (issue #24): the jobs of a sweep whose configs
differ only in values that keep the model's shapes (learning rate, Adam's betas, weight decay, seeds,
patience, min_delta, the LR schedule's numbers, dropout rate) train as (job, fold) members of one
batched model, one pass over the data per step.

This module is the interface between the launcher that groups jobs (dlexp.sweeps) and the batched
trainer (dlexp.training.batched). Each :class:`StackedJob` carries what one job would hand
:func:`dlexp.training.batched.train_folds_batched` when trained alone; :func:`train_stacked` gives every
job the results it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dlexp.training.loop import NO_HOOKS, FoldResult, TrainingHooks


@dataclass
class StackedJob:
    """One job's folds, as members of a stacked model.

    ``models[i]`` is fold ``i + 1``'s model holding its initial weights; ``optimizer`` and ``scheduler`` are
    built for fold 1 and give this job's optimizer hyper-parameters and epoch-driven LR schedule;
    ``folds[i] = (train_indices, val_indices)`` (int64 tensors into the shared ``x``/``y``);
    ``generators[i]`` drives fold ``i + 1``'s data order. ``hooks`` hear of this job's epochs and folds only;
    ``checkpoint`` (dlexp.training.checkpoint.EpochCheckpoint or None) keeps this job's own state.
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


def train_stacked(jobs: Sequence[StackedJob], x: torch.Tensor, y: torch.Tensor,
                  batch_size: int) -> list[list[FoldResult] | Exception]:
    """Train every job's folds on the shared data ``x`` (float, ``(n, features)``) and ``y`` (int64, ``(n,)``).

    Returns, per job and in order, its fold results (as ``train_folds_batched`` returns them: a diverged fold
    has ``diverged`` set), or the exception its hooks raised (a pruned trial, a store error): that job's
    members stop there and the others train on. ``KeyboardInterrupt`` (Ctrl-C, dlexp.interrupts.Interrupted
    on SIGTERM) stops every job and propagates, after each job's checkpoint is saved.

    This first version trains the jobs one after another (each job's folds batched); the stacked version
    replaces it with the same contract.
    """
    from dlexp.training.batched import train_folds_batched

    outcomes: list[list[FoldResult] | Exception] = []
    for job in jobs:
        try:
            outcomes.append(train_folds_batched(
                job.models, job.optimizer, job.scheduler, job.loss_fn, x, y, job.folds,
                batch_size=batch_size, max_epochs=job.max_epochs, patience=job.patience,
                generators=job.generators, min_delta=job.min_delta, hooks=job.hooks, checkpoint=job.checkpoint))
        except Exception as error:  # noqa: BLE001 - the job's own failure, reported for it alone
            outcomes.append(error)
    return outcomes
