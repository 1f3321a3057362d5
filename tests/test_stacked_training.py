"""Several jobs' folds trained as one stack (dlexp.training.stacked, issue #24): each job's numbers are those
it gets alone, bit for bit, whatever it is stacked with; members stop, diverge and fail on their own; an
interrupted stack resumes exactly, each job alone or stacked again."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from torch import nn

from dlexp.data.spiral import make_spiral
from dlexp.data.splits import fold_seed, kfold_indices
from dlexp.interrupts import Interrupted
from dlexp.models.mlp import MLP
from dlexp.training.batched import train_folds_batched
from dlexp.training.checkpoint import Checkpoints, Every
from dlexp.training.loop import TrainingDiverged, TrainingHooks
from dlexp.training.losses import ClassificationLoss
from dlexp.training.stacked import StackedJob, stacking_obstacle, train_stacked

BATCH = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def spiral():
    """300 points of a 3-arm spiral: 3 folds of 200/100, 10 batches of 20 per epoch."""
    x, y = make_spiral(arms=3, points_per_arm=100, seed=0)
    return torch.from_numpy(x), torch.from_numpy(y)


def make_job(spiral, lr=0.01, seed=1, weight_decay=0.0, patience=4, dropout=0.0, max_epochs=12, folds=3,
             optimizer="adam", activation="relu", hidden=(16, 12), smoothing=0.0, hooks=None, checkpoint=None,
             step_size=4):
    """A job as dlexp.experiment builds one: per-fold weights and order seeds from ``seed``, the optimizer and
    StepLR schedule built for fold 1."""
    x, y = spiral
    split = kfold_indices(y.numpy(), folds, seed=seed)
    models = []
    for fold in range(1, folds + 1):
        torch.manual_seed(fold_seed(seed, fold, "weights"))
        models.append(MLP((2,), 3, hidden_dims=list(hidden), activation=activation, dropout=dropout))
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    built = optimizer_class(models[0].parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(built, step_size=step_size, gamma=0.5)
    generators = [torch.Generator().manual_seed(fold_seed(seed, fold, "order")) for fold in range(1, folds + 1)]
    return StackedJob(models, built, scheduler, ClassificationLoss(nn.CrossEntropyLoss(label_smoothing=smoothing)),
                      [(torch.as_tensor(t), torch.as_tensor(v)) for t, v in split], generators, max_epochs,
                      patience, hooks=hooks or TrainingHooks(), checkpoint=checkpoint)


#: Three jobs differing in everything a stack lets differ: lr, seed, weight decay (L2 and decoupled), patience,
#: min_delta, dropout rate, max_epochs, the schedule.
JOBS = [dict(lr=0.05, seed=5, patience=1, max_epochs=14),
        dict(lr=0.005, seed=2, weight_decay=0.01, optimizer="adamw", dropout=0.2, max_epochs=10, step_size=3),
        dict(lr=0.01, seed=3, weight_decay=0.001, dropout=0.1, patience=3)]


def assert_identical(alone, stacked) -> None:
    """Every number of every fold is the same, bit for bit."""
    assert len(alone) == len(stacked)
    for a, s in zip(alone, stacked, strict=True):
        assert a.history.keys() == s.history.keys()
        for key, values in a.history.items():  # NaN (a diverged fold's last epoch) counts as equal to NaN
            assert torch.equal(torch.tensor(values).nan_to_num(7.5), torch.tensor(s.history[key]).nan_to_num(7.5))
            assert values == s.history[key] or any(map(math.isnan, values))
        assert (a.epochs_run, a.best_epoch, a.best_val_loss, a.best_val_acc) == (
            s.epochs_run, s.best_epoch, s.best_val_loss, s.best_val_acc)
        assert (a.diverged is None) == (s.diverged is None)
        assert a.state_dict.keys() == s.state_dict.keys()
        assert all(torch.equal(a.state_dict[name], s.state_dict[name]) for name in a.state_dict)


def alone(spiral, spec) -> list:
    (outcome,) = train_stacked([make_job(spiral, **spec)], *spiral, BATCH)
    return outcome


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])  # sigmoid: stacked elementwise calls round apart
def test_stacked_jobs_train_exactly_as_alone(spiral, activation):
    specs = [{**spec, "activation": activation} for spec in JOBS]
    alones = [alone(spiral, spec) for spec in specs]
    stacked = train_stacked([make_job(spiral, **spec) for spec in specs], *spiral, BATCH)
    for a, s in zip(alones, stacked, strict=True):
        assert_identical(a, s)
    # the order in the stack changes nothing either
    for a, s in zip(alones[::-1], train_stacked([make_job(spiral, **spec) for spec in specs[::-1]], *spiral, BATCH),
                    strict=True):
        assert_identical(a, s)
    # The jobs really differ, and members stop on their own: job 1's folds early (patience 1) at epochs of their
    # own, job 2's at its max_epochs 10, job 3's at its default 12.
    epochs = [[r.epochs_run for r in outcome] for outcome in stacked]
    assert min(epochs[0]) < 14 and len(set(epochs[0])) > 1, epochs
    assert epochs[1:] == [[10, 10, 10], [12, 12, 12]]
    assert len({outcome[0].history["val_loss"][0] for outcome in stacked}) == 3
    assert stacked[0][0].history["lr"][:2] == [0.05, 0.05] and stacked[1][0].history["lr"][3] == 0.0025


def test_one_job_alone_is_train_folds_batched(spiral):
    spec = JOBS[2]
    job = make_job(spiral, **spec)
    batched = train_folds_batched(job.models, job.optimizer, job.scheduler, job.loss_fn, *spiral, job.folds, BATCH,
                                  job.max_epochs, job.patience, job.generators)
    assert_identical(alone(spiral, spec), batched)
    for model, result in zip(job.models, batched, strict=True):  # each model ends with its best weights
        assert all(torch.equal(model.state_dict()[name], result.state_dict[name]) for name in result.state_dict)


def test_a_diverging_job_fails_alone_and_the_others_train_on(spiral):
    huge = dict(lr=1e20, seed=4, max_epochs=6)
    stacked = train_stacked([make_job(spiral, **JOBS[0]), make_job(spiral, **huge), make_job(spiral, **JOBS[2])],
                            *spiral, BATCH)
    assert all(isinstance(r.diverged, TrainingDiverged) for r in stacked[1]), [r.history for r in stacked[1]]
    assert "training diverged" in str(stacked[1][0].diverged)
    assert_identical(alone(spiral, huge), stacked[1])
    assert_identical(alone(spiral, JOBS[0]), stacked[0])
    assert_identical(alone(spiral, JOBS[2]), stacked[2])
    assert all(r.diverged is None for r in stacked[0] + stacked[2])


class Pruned(Exception):
    """What optuna's TrialPruned is to a search: a hook's way of ending its own job."""


class Recorder(TrainingHooks):
    """Records its job's epochs; raises ``error`` at fold ``fold``'s epoch ``epoch``."""

    def __init__(self, fold=None, epoch=None, error=None, action=None) -> None:
        self.events, self.fold, self.epoch, self.error, self.action = [], fold, epoch, error, action

    def epoch_end(self, fold, epoch, metrics):
        self.events.append((fold, epoch))
        if (fold, epoch) == (self.fold, self.epoch):
            if self.action is not None:
                self.action()
            if self.error is not None:
                raise self.error


def test_a_job_whose_hook_raises_gets_the_exception_and_the_others_train_on(spiral):
    hooks = Recorder(fold=2, epoch=3, error=Pruned("trial pruned at epoch 3"))
    stacked = train_stacked([make_job(spiral, **JOBS[0]), make_job(spiral, **JOBS[1], hooks=hooks),
                             make_job(spiral, **JOBS[2])], *spiral, BATCH)
    assert isinstance(stacked[1], Pruned) and str(stacked[1]) == "trial pruned at epoch 3"
    assert hooks.events[-1] == (2, 3) and max(epoch for _, epoch in hooks.events) == 3  # nothing after
    assert_identical(alone(spiral, JOBS[0]), stacked[0])
    assert_identical(alone(spiral, JOBS[2]), stacked[2])
    with pytest.raises(Pruned):  # alone, the job's own exception propagates as it always did
        job = make_job(spiral, **JOBS[1], hooks=Recorder(fold=2, epoch=3, error=Pruned("pruned")))
        train_folds_batched(job.models, job.optimizer, job.scheduler, job.loss_fn, *spiral, job.folds, BATCH,
                            job.max_epochs, job.patience, job.generators, hooks=job.hooks)


def test_a_member_stopped_early_stops_alone(spiral):
    """Patience 1 stops job 1's folds within a few epochs; job 2 (patience beyond its max_epochs) trains to the
    end, and each one's numbers are those it gets alone."""
    quick, long = dict(lr=0.05, seed=5, patience=1, max_epochs=20), dict(lr=0.01, seed=6, patience=50, max_epochs=9)
    assert [r.epochs_run for r in alone(spiral, quick)] == [6, 4, 3]
    stacked = train_stacked([make_job(spiral, **quick), make_job(spiral, **long)], *spiral, BATCH)
    assert all(r.epochs_run < 20 for r in stacked[0]) and len({r.epochs_run for r in stacked[0]}) > 1
    assert [r.epochs_run for r in stacked[1]] == [9, 9, 9]
    assert_identical(alone(spiral, quick), stacked[0])
    assert_identical(alone(spiral, long), stacked[1])


def jobs_with_checkpoints(spiral, folder, hooks=None, specs=JOBS, every=(1, 1)):
    """The three jobs, jobs 1 and 2 checkpointing into their own folders every ``every`` epochs, job 3 not."""
    owners = [Checkpoints(folder / f"job{n}", {}, Every(epochs=epochs))
              for n, epochs in zip((1, 2), every, strict=True)]
    hooks = hooks or [None] * len(specs)
    return owners, [make_job(spiral, **specs[0], checkpoint=owners[0].epochs("batched"), hooks=hooks[0]),
                    make_job(spiral, **specs[1], checkpoint=owners[1].epochs("batched"), hooks=hooks[1]),
                    make_job(spiral, **specs[2], hooks=hooks[2])]


@pytest.mark.parametrize("how", ["hook", "signal"])
def test_an_interrupted_stack_resumes_exactly_alone_or_stacked(spiral, tmp_path, how):
    """Ctrl-C from a hook of job 2 at epoch 4, or SIGTERM taken by job 2's checkpoints (Interrupted after its
    save): both checkpointed jobs hold epoch 4 and the stack stops. Resumed from their checkpoints, each alone or
    all stacked again (job 3 from scratch, so the jobs of the stack are at different epochs), every job ends
    with the numbers of an uninterrupted run."""
    uninterrupted = [alone(spiral, spec) for spec in JOBS]
    if how == "hook":
        hooks = [None, Recorder(fold=1, epoch=4, error=KeyboardInterrupt()), None]
        owners, jobs = jobs_with_checkpoints(spiral, tmp_path / "a", hooks)
        expected = KeyboardInterrupt
    else:
        # job 1 saves every 100 epochs only: it saves at epoch 4 because job 2 was stopped there
        holder = {}
        hooks = [None, Recorder(fold=1, epoch=4, action=lambda: setattr(holder["owner"], "stop_signal",
                                                                       signal.SIGTERM)), None]
        owners, jobs = jobs_with_checkpoints(spiral, tmp_path / "a", hooks, every=(100, 1))
        holder["owner"] = owners[1]
        expected = Interrupted
    with pytest.raises(expected):
        train_stacked(jobs, *spiral, BATCH)
    for owner in owners:
        saved = owner.load("batched")
        assert saved is not None and saved["epoch"] == 4
        assert len(saved["best_weights"]) == 3 and len(saved["dropout_generators"]) == 3  # this job's rows only
    # each job alone from its own checkpoint (a copy, so the stacked resume below starts from the same files)
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for number in (0, 1):
        owner = Checkpoints(tmp_path / "a" / f"job{number + 1}", {}, Every(epochs=1))
        (resumed,) = train_stacked([make_job(spiral, **JOBS[number], checkpoint=owner.epochs("batched"))],
                                   *spiral, BATCH)
        assert_identical(uninterrupted[number], resumed)
    _, jobs = jobs_with_checkpoints(spiral, tmp_path / "b")
    for expected_result, resumed in zip(uninterrupted, train_stacked(jobs, *spiral, BATCH), strict=True):
        assert_identical(expected_result, resumed)


def test_stacking_obstacle_names_the_key(spiral):
    base = make_job(spiral)
    assert stacking_obstacle([base, make_job(spiral, **JOBS[1]), make_job(spiral, **JOBS[2])]) is None
    assert "model: the jobs' layers differ (Linear(2, 16) vs Linear(2, 32))" in stacking_obstacle(
        [base, make_job(spiral, hidden=(32, 12))])
    assert "ReLU() vs Tanh()" in stacking_obstacle([base, make_job(spiral, activation="tanh")])
    assert "loss.label_smoothing differs" in stacking_obstacle([base, make_job(spiral, smoothing=0.1)])
    assert "optimizer: SGD" in stacking_obstacle([base, make_job(spiral, optimizer="sgd")])
    assert "trainer.folds" in stacking_obstacle([base, make_job(spiral, folds=4)])
    with pytest.raises(ValueError, match="cannot train as one stack: model: the jobs' layers differ"):
        train_stacked([base, make_job(spiral, hidden=(8,))], *spiral, BATCH)


def test_folds_of_unequal_size_stack_exactly(spiral):
    """100 points in 3 unstratified folds: 66 or 67 training points, 6 or 7 batches of 11, so as folds stop a
    job alone pads to fewer batches than the stack (its training loss is summed over its own), and its last
    batches leave some folds out of an Adam step."""
    x, y = spiral[0][::3].contiguous(), spiral[1][::3].contiguous()

    def job(seed, lr, patience):
        made = make_job((x, y), lr=lr, seed=seed, patience=patience, max_epochs=25)
        made.folds = [(torch.as_tensor(t), torch.as_tensor(v))
                      for t, v in kfold_indices(y.numpy(), 3, seed=seed, stratify=False)]
        return made

    specs = [(1, 0.05, 1), (2, 0.02, 3), (3, 0.05, 2)]
    alones = [train_stacked([job(*spec)], x, y, 11)[0] for spec in specs]
    stacked = train_stacked([job(*spec) for spec in specs], x, y, 11)
    assert sorted(len(t) for t, _ in job(1, 0.05, 1).folds) == [66, 67, 67]
    assert len({r.epochs_run for results in stacked for r in results}) > 2
    for a, s in zip(alones, stacked, strict=True):
        assert_identical(a, s)
