"""SLURM's warning before a time limit (or a preemption), without SLURM: submitit's real signal handler, as a job
has it, with the cluster's side (``scontrol requeue``, the process's exit) recorded instead of done.

The job stops at the end of its epoch with a checkpoint, its MLflow runs stay RUNNING, and submitit resubmits
the launcher's call; the next attempt continues to the numbers of an uninterrupted run. The real cluster's
version (a 1-minute time limit, requeued until FINISHED): tests/test_cluster.py.
"""

from __future__ import annotations

import json
import signal
import types

import pytest
import torch
from conftest import QUICK, compose_config
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from test_resume import train_in_process

from dlexp import interrupts
from dlexp.interrupts import Interrupted, Requeued
from dlexp.sweeps.slurm import TimeLimitWarning
from dlexp.training.checkpoint import Checkpoints, Every
from dlexp.training.loop import TrainingHooks

CALL = (["optimizer.lr=0.01"], "hydra.sweep.dir", 3, "job_id_for_3", {})  # what the launcher submits per job


class SignalAt(TrainingHooks):
    """Sends this process ``signum`` as fold ``fold`` ends epoch ``epoch`` (SLURM's warning mid-fold)."""

    def __init__(self, fold: int, epoch: int, signum: int = signal.SIGUSR2) -> None:
        self.at, self.signum = (fold, epoch), signum

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        if (fold, epoch) == self.at:
            # to this thread, handled before raise_signal returns; os.kill(os.getpid()) may reach another
            # thread of the process, and under load its handler ran after these few-ms trainings ended
            signal.raise_signal(self.signum)


@pytest.fixture
def job_signals(monkeypatch, tmp_path):
    """submitit's handler on USR2 (as ``process_job`` installs it) for a launcher call submitted with a 1-minute
    time limit; the requeue (``scontrol requeue``) is recorded. Signal handlers are put back afterwards."""
    from hydra_plugins.dlexp_slurm_launcher import SlurmLauncher

    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(interrupts, "_requeue_signals", {})
    requeued: list[int] = []
    environment = types.SimpleNamespace(global_rank=0, _requeue=requeued.append)
    paths = JobPaths(tmp_path / "submitit", job_id="7_3")
    paths.folder.mkdir(parents=True)

    def install(max_num_timeout: int) -> SignalHandler:
        delayed = DelayedSubmission(SlurmLauncher(timeout_min=1, max_num_timeout=max_num_timeout), *CALL)
        delayed.set_timeout(1, max_num_timeout)  # as the executor does when it submits
        handler = SignalHandler(environment, paths, delayed)
        signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
        return handler

    yield types.SimpleNamespace(install=install, requeued=requeued, paths=paths)
    for s, handler in saved.items():
        signal.signal(s, handler)


#: (result, best weights) of every fold, as run_experiment trains them (test_resume's helper)
train = train_in_process


def epoch_of(path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


@pytest.mark.parametrize("strategy", ["sequential", "batched"])
def test_the_time_limit_warning_checkpoints_at_the_epochs_end_and_submitit_requeues_the_same_call(
        job_signals, tmp_path, strategy):
    cfg = compose_config(["+experiment=spiral", "trainer.folds=2", "trainer.max_epochs=6", "trainer.patience=3",
                          f"trainer.strategy={strategy}", "model.dropout=0.2", "trainer.checkpoint_every=1000"])
    uninterrupted = train(cfg)
    handler = job_signals.install(max_num_timeout=2)
    warning = TimeLimitWarning.take(2)  # what the launcher's call does first in the job
    assert warning is not None and signal.getsignal(signal.SIGUSR2) is interrupts._raise_interrupted

    identity = {"config_hash": "c", "code_hash": "k"}
    with pytest.raises(Requeued, match="stopped by SIGUSR2") as stopped:
        train(cfg, Checkpoints(tmp_path / "ckpt", identity, Every(epochs=1000)), SignalAt(2, 3))
    name = "fold_2.pt" if strategy == "sequential" else "batched.pt"
    assert epoch_of(tmp_path / "ckpt" / name) == 3  # not due (every 1000 epochs): saved because of the warning
    assert job_signals.requeued == []  # nothing requeued while training was stopping

    with pytest.raises(SystemExit):  # submitit's handler: checkpoint(), the new submission, requeue, exit
        warning.requeue(stopped.value)
    assert job_signals.requeued == [1]  # a 1-minute job's warning is a timeout: one of its 2 requeues used
    assert signal.getsignal(signal.SIGTERM) == handler.bypass  # the requeue's SIGTERM no longer stops anything
    resubmitted = DelayedSubmission.load(job_signals.paths.submitted_pickle)
    assert type(resubmitted.function).__name__ == "SlurmLauncher" and resubmitted.args == CALL
    assert (resubmitted._timeout_min, resubmitted._timeout_countdown) == (1, 1)

    # The next attempt continues from the checkpoint to the uninterrupted run's numbers and weights.
    resumed = train(cfg, Checkpoints(tmp_path / "ckpt", identity, Every(epochs=1000)))
    for (a, weights_a), (b, weights_b) in zip(uninterrupted, resumed, strict=True):
        assert (a.fold, a.epochs_run, a.best_epoch, a.best_val_loss, a.best_val_acc, a.history) == (
            b.fold, b.epochs_run, b.best_epoch, b.best_val_loss, b.best_val_acc, b.history)
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_past_max_num_timeout_the_warning_stops_the_job_killed_with_its_checkpoint(job_signals, tmp_path):
    cfg = compose_config(["+experiment=spiral", "trainer.folds=2", "trainer.max_epochs=6", "trainer.patience=3",
                          "trainer.strategy=sequential", "trainer.checkpoint_every=1000"])
    job_signals.install(max_num_timeout=0)  # no requeue left for a timeout
    TimeLimitWarning.take(0)
    with pytest.raises(Interrupted, match="stopped by SIGUSR2") as stopped:
        train(cfg, Checkpoints(tmp_path, {"config_hash": "c", "code_hash": "k"}, Every(epochs=1000)),
              SignalAt(1, 2))
    assert not isinstance(stopped.value, Requeued)  # a plain interruption: the runs end KILLED
    assert epoch_of(tmp_path / "fold_1.pt") == 2
    assert job_signals.requeued == []


def test_a_warning_after_the_job_returned_is_ignored_while_submitit_saves_its_result(job_signals, monkeypatch, caplog):
    # The job's last attempt ended its work just before SLURM's warning: submitit saves the result and the
    # process ends; the warning there must neither fail the process nor requeue a job whose work is done.
    from dlexp.sweeps import slurm
    from hydra_plugins.dlexp_slurm_launcher import SlurmLauncher

    job_signals.install(max_num_timeout=2)
    # Hydra's launcher (the base class dlexp's was made from: Hydra's plugin scan may import its module again)
    monkeypatch.setattr(slurm.HydraSlurmLauncher, "__call__", lambda self, *args: "the job's result")
    assert SlurmLauncher(timeout_min=1, max_num_timeout=2)(*CALL) == "the job's result"
    signal.raise_signal(signal.SIGUSR2)  # handled before raise_signal returns: raises nothing
    assert job_signals.requeued == []
    assert "SIGUSR2: the job's work is done; the warning is ignored" in caplog.text


@pytest.mark.full  # three spiral runs with their MLflow runs: ~20 s
def test_a_job_stopped_for_a_requeue_leaves_its_runs_running_and_the_next_attempt_finishes_them(
        job_signals, store, tmp_path):
    from dlexp.experiment import run_experiment

    overrides = ["+experiment=spiral", *QUICK, "trainer.max_epochs=6", "trainer.strategy=sequential",
                 "trainer.checkpoint_every=1000", "trainer.progress=false", *store["overrides"]]
    job_signals.install(max_num_timeout=2)
    TimeLimitWarning.take(2)
    with pytest.raises(Requeued):
        run_experiment(compose_config(overrides), tmp_path / "attempt1", overrides, hooks=SignalAt(2, 3))
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    job = next(run for run in runs if "dlexp.fold" not in run.data.tags)
    folds = {run.data.tags["dlexp.fold"]: run for run in runs if "dlexp.fold" in run.data.tags}
    assert job.info.status == "RUNNING" and "dlexp.error" not in job.data.tags
    assert folds["1"].info.status == "FINISHED" and folds["2"].info.status == "RUNNING"
    assert not (tmp_path / "attempt1" / "FAILED.txt").exists()

    summary = run_experiment(compose_config(overrides), tmp_path / "attempt2", overrides)  # the requeued attempt
    after = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    assert {run.info.run_id for run in after} == {job.info.run_id, folds["1"].info.run_id, folds["2"].info.run_id}
    assert {run.info.status for run in after} == {"FINISHED"}
    assert client.get_run(job.info.run_id).data.tags["dlexp.resumed"] == "1"
    for fold in folds.values():  # every epoch once
        steps = [m.step for m in client.get_metric_history(fold.info.run_id, "val_loss")]
        assert steps == list(range(1, 7))
    # ... to the numbers and weights of a run that was never stopped
    plain = [*overrides, "tracking.experiment_name=never_stopped"]
    run_experiment(compose_config(plain), tmp_path / "plain", plain)
    numbers = {folder: json.loads((tmp_path / folder / "summary.json").read_text()) for folder in ("attempt2", "plain")}
    for summary_numbers in numbers.values():
        summary_numbers.pop("train_seconds")  # wall time: the one number no two runs share
    assert numbers["attempt2"] == numbers["plain"] and summary["best_fold"] == numbers["plain"]["best_fold"]
    assert (tmp_path / "attempt2" / "model.pt").read_bytes() == (tmp_path / "plain" / "model.pt").read_bytes()


@pytest.mark.parametrize("in_job", [True, False])
def test_the_job_s_child_processes_ignore_the_warning_only_inside_a_submitit_job(in_job):
    # dlexp's helper process and DataLoader workers call this first: SLURM signals every process of the job.
    import subprocess
    import sys

    from sweep_support import ROOT, dlexp_env

    env = {key: value for key, value in dlexp_env().items() if key != "SUBMITIT_FOLDER"}
    if in_job:
        env["SUBMITIT_FOLDER"] = "/nowhere"
    code = ("import os, signal; from dlexp.interrupts import ignore_requeue_signal; ignore_requeue_signal(); "
            "os.kill(os.getpid(), signal.SIGUSR2); print('alive')")
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if in_job:
        assert (child.returncode, child.stdout) == (0, "alive\n"), child.stderr
    else:
        assert child.returncode == -signal.SIGUSR2  # elsewhere the signal keeps its default action
