"""The trial side of a search: report intermediate scores while training, stop when the pruner says so.

A trial reports every ``report_every`` epochs, whichever way it trains. The step is the epoch of the fold(s)
in training plus ``max_epochs`` for each fold trained before them: batched training (all folds at once)
reports at steps 10, 20, ...; one-by-one training at 10, 20, ... during its first fold, at ``max_epochs``
+ 10, ... during its second. So step 10 means "10 epochs into a fold" for every trial, and a pruner can stop
a hopeless trial during its first fold. The value is the mean, over the folds begun, of each fold's best
validation score so far: the validation accuracy when the search maximises and the validation loss when it
minimises, so it moves in the study's direction. A pruned trial raises ``optuna.TrialPruned`` out of
training; ``SweepJob`` ends its run KILLED with the tag ``dlexp.pruned``.
"""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path

from dlexp.training.loop import NO_HOOKS, FoldResult, TrainingHooks

log = logging.getLogger(__name__)

PRUNED_TAG = "dlexp.pruned"  # a search's trial its pruner stopped early

TRIAL_TAG = "dlexp.trial"


def is_pruned(error: BaseException) -> bool:
    """Whether ``error`` is Optuna's signal that a trial was pruned (optuna is only imported by searches)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


class TrialReporter(TrainingHooks):
    """Reports a trial's scores to its study while it trains and raises ``TrialPruned`` when told to."""

    def __init__(self, trial, maximise: bool, report_every: int, max_epochs: int) -> None:
        self.trial = trial
        self.maximise = maximise
        self.report_every = report_every
        self.max_epochs = max_epochs
        self.best: dict[int, float] = {}  # fold -> its best validation score so far
        self.running: set[int] = set()
        self.reached: dict[int, int] = {}  # fold -> last epoch seen
        self.offset = 0  # steps of the folds trained before the running ones
        #: the job run's tags naming its trial (set when the run starts: stacked jobs train with no active run)
        self.tags = {TRIAL_TAG: str(trial.number)}

    def fold_start(self, fold: int) -> None:
        if not self.running:  # one-by-one training: the folds before this one are done
            self.offset = self.max_epochs * len(self.best)
        self.running.add(fold)

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics["val_acc"] if self.maximise else metrics["val_loss"]
        better = max if self.maximise else min
        self.best[fold] = better(self.best.get(fold, value), value)
        self.reached[fold] = epoch
        if epoch % self.report_every == 0 and all(self.reached.get(f) == epoch for f in self.running):
            where = f"epoch {epoch}" if len(self.running) > 1 else f"fold {fold}, epoch {epoch}"
            self.report(statistics.fmean(self.best.values()), self.offset + epoch, where)

    def fold_end(self, result: FoldResult) -> None:
        self.running.discard(result.fold)

    def report(self, value: float, step: int, where: str) -> None:
        import optuna
        from sqlalchemy.exc import SQLAlchemyError

        if self.trial is None:
            return
        try:
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        except SQLAlchemyError as error:  # the study's database is out of reach: train on, unpruned
            log.warning("trial %d: cannot report to the study (%s); it trains on without pruning",
                        self.trial.number, str(error).splitlines()[0])
            self.trial = None
            return
        if prune:
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned after {where}: "
                                     f"intermediate score {value:.4f}")


def trial_hooks(sweep_dir: Path, job_num: int, max_epochs: int) -> TrainingHooks:
    """The reporter for this job if it is a trial of a search with a pruner, else hooks that do nothing."""
    from dlexp.sweeps.search.study import read_handoff

    handoff = read_handoff(sweep_dir)
    if handoff is None or handoff.get("pruner") is None or str(job_num) not in handoff["trials"]:
        return NO_HOOKS
    import optuna
    from hydra.utils import instantiate

    from dlexp.sweeps.search.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    number = int(handoff["trials"][str(job_num)])
    try:
        storage = open_storage(handoff["storage"])
        study = optuna.load_study(study_name=handoff["study"], storage=storage, pruner=instantiate(handoff["pruner"]),
                                  sampler=optuna.samplers.RandomSampler())
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(handoff["study"]), number)
        trial = optuna.trial.Trial(study, trial_id)
    except Exception as error:  # a trial that cannot reach its study still trains and returns its score
        log.warning("trial %d: cannot reach the study %s (%s); it trains without pruning", number,
                    handoff["study"], str(error).strip().splitlines()[0] if str(error).strip() else error)
        return NO_HOOKS
    return TrialReporter(trial, study.direction == optuna.study.StudyDirection.MAXIMIZE,
                         int(handoff["report_every"]), max_epochs)


def record_pruned(run_id: str | None, output_dir: Path, reason: str) -> None:
    """End a pruned trial's run KILLED (the run's own context ended it FAILED) with the tag ``dlexp.pruned``,
    and say so in its folder's ``FAILED.txt``."""
    from mlflow.tracking import MlflowClient

    if run_id is not None:
        client = MlflowClient()
        client.set_tag(run_id, PRUNED_TAG, reason)
        client.set_terminated(run_id, "KILLED")
    (output_dir / "FAILED.txt").write_text(f"PRUNED: {reason}\nMLflow run: {run_id}\n")
