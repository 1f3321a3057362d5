"""Checkpoints and exact resume: a job SIGKILLed in its 3rd fold, run again with the same command, continues
its own MLflow run and ends with the numbers and model.pt of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from mlflow.tracking import MlflowClient
from sweep_support import ROOT, dlexp_env, runs_by_kind

from dlexp.errors import DlexpError
from dlexp.interrupts import Interrupted
from dlexp.training.checkpoint import Checkpoints, Every, parse_every, stop_at_epoch_end
from dlexp.training.loop import NO_HOOKS, TrainingHooks

#: 3 folds long enough to be killed in the 3rd; every epoch checkpointed so the kill lands after one.
JOB = ["+experiment=spiral", "trainer.folds=3", "trainer.max_epochs=12", "trainer.patience=4",
       "plots.grid_resolution=20", "trainer.progress=false", "trainer.checkpoint_every=1",
       "tracking.experiment_name=resume",
       "tracking.log_models=false"]  # the MLflow models' export: tests/test_mlflow_models.py


def store(path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{path}/mlflow.db", f"tracking.artifact_location={path}/artifacts"]


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=dlexp_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_when(ready, *args: str) -> None:
    """Start ``python -m dlexp *args`` in its own process group; SIGKILL the group (the helper process too, as
    a crashed node would) once ``ready()`` holds."""
    process = subprocess.Popen([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=dlexp_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, f"ended before it could be killed: {process.stderr.read()[-3000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def epoch_of(checkpoint: Path) -> int:
    """The epoch a checkpoint file holds (0 while there is none); it is replaced atomically, never half-written."""
    try:
        return int(torch.load(checkpoint, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def summary_numbers(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("train_seconds")  # wall time: the one number no two runs share
    return summary


def fold_histories(client, job_run_id: str, experiment_id: str) -> dict[int, dict]:
    """Per fold run under the job: its status and every logged (step, value) of each per-epoch metric."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{job_run_id}'")
    histories = {}
    for fold_run in runs:
        fold = int(fold_run.data.tags["dlexp.fold"])
        assert fold not in histories, f"two runs for fold {fold}"
        histories[fold] = {"status": fold_run.info.status, "metrics": fold_run.data.metrics, **{
            key: sorted((m.step, m.value) for m in client.get_metric_history(fold_run.info.run_id, key))
            for key in ("train_loss", "val_loss", "val_acc", "lr")}}
    return histories


def assert_same_store_contents(client_a, job_a, client_b, job_b) -> None:
    """Two job runs hold the same folds, each with the same per-epoch metrics (no epoch twice) and results."""
    folds_a = fold_histories(client_a, job_a.info.run_id, job_a.info.experiment_id)
    folds_b = fold_histories(client_b, job_b.info.run_id, job_b.info.experiment_id)
    assert sorted(folds_a) == sorted(folds_b) == [1, 2, 3]
    for fold in folds_a:
        a, b = folds_a[fold], folds_b[fold]
        assert a["status"] == b["status"] == "FINISHED"
        epochs = int(a["metrics"]["epochs_run"])
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert [step for step, _ in b[key]] == list(range(1, epochs + 1)), (fold, key)
            assert a[key] == b[key], (fold, key)
        assert a["metrics"] == b["metrics"]
    metrics = lambda job: {k: v for k, v in job.data.metrics.items() if k != "train_seconds"}  # noqa: E731
    assert metrics(job_a) == metrics(job_b)


@pytest.mark.full
@pytest.mark.parametrize("strategy", ["sequential", "batched"])
def test_a_job_killed_in_its_third_fold_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, strategy):
    job = [*JOB, f"trainer.strategy={strategy}"]
    run(*job, *store(tmp_path / "a"), f"hydra.run.dir={tmp_path}/a/run")

    b = tmp_path / "b"
    # Sequential: fold 3 has a checkpoint, so folds 1-2 are done. Batched: all folds train at once; the kill
    # comes after their 3rd epoch.
    checkpoint = b / "run1" / "checkpoints" / ("fold_3.pt" if strategy == "sequential" else "batched.pt")
    kill_when(lambda: epoch_of(checkpoint) >= (1 if strategy == "sequential" else 3),
              *job, *store(b), f"hydra.run.dir={b}/run1")
    killed_at = epoch_of(checkpoint)
    client = MlflowClient(f"sqlite:///{b}/mlflow.db")
    _, jobs, folds_before = runs_by_kind(client, "resume")
    assert len(jobs) == 1 and jobs[0].info.status == "RUNNING"  # SIGKILL: nothing could end it
    if strategy == "sequential":  # folds 1-2 finished (the store may lag behind: its writes are off-thread)
        assert sorted(p.name for p in checkpoint.parent.glob("*.done.pt")) == ["fold_1.done.pt", "fold_2.done.pt"]

    second = run(*job, *store(b), f"hydra.run.dir={b}/run2")  # the same command again, a new Hydra folder
    output = second.stdout + second.stderr
    assert f"continuing after epoch {killed_at}" in output
    if strategy == "sequential":
        assert "folds 1, 2 finished in an earlier attempt: not trained again" in output
    _, jobs_after, folds_after = runs_by_kind(client, "resume")
    assert [r.info.run_id for r in jobs_after] == [jobs[0].info.run_id]  # its own MLflow run continued
    job_b = jobs_after[0]
    assert job_b.info.status == "FINISHED" and job_b.data.tags["dlexp.resumed"] == "1"
    assert job_b.data.tags["dlexp.output_dir"] == str(b / "run2")
    assert len(folds_after) == 3 and {f.info.run_id for f in folds_before} <= {f.info.run_id for f in folds_after}
    assert (b / "run1" / "RESUMED.txt").exists() and not (b / "run1" / "checkpoints").exists()

    a = tmp_path / "a" / "run"
    assert (b / "run2" / "model.pt").read_bytes() == (a / "model.pt").read_bytes()
    assert summary_numbers(b / "run2") == summary_numbers(a)
    client_a = MlflowClient(f"sqlite:///{tmp_path}/a/mlflow.db")
    _, jobs_a, _ = runs_by_kind(client_a, "resume")
    assert_same_store_contents(client_a, jobs_a[0], client, job_b)


@pytest.mark.full
def test_a_two_job_sweep_killed_in_its_second_jobs_third_fold_resumes_to_an_uninterrupted_sweeps_numbers(tmp_path):
    sweep = ["-m", *JOB, "trainer.strategy=sequential", "optimizer.lr=0.01,0.02"]
    run(*sweep, *store(tmp_path / "a"), f"hydra.sweep.dir={tmp_path}/a/sweep")
    b = tmp_path / "b"
    kill_when(lambda: epoch_of(b / "sweep1" / "1" / "checkpoints" / "fold_3.pt") >= 1,
              *sweep, *store(b), f"hydra.sweep.dir={b}/sweep1")
    client = MlflowClient(f"sqlite:///{b}/mlflow.db")
    _, jobs_before, folds_before = runs_by_kind(client, "resume")
    assert sorted(r.info.status for r in jobs_before) == ["FINISHED", "RUNNING"]

    second = run(*sweep, *store(b), f"hydra.sweep.dir={b}/sweep2")  # a rerun gets a new sweep folder
    assert "job #0 skipped" in second.stdout + second.stderr
    assert "continuing after epoch" in second.stdout + second.stderr
    sweeps, jobs, folds = runs_by_kind(client, "resume")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert {r.info.run_id for r in jobs} == {r.info.run_id for r in jobs_before}  # no new job runs
    assert len(folds) == 6 and {f.info.status for f in folds} == {"FINISHED"}

    client_a = MlflowClient(f"sqlite:///{tmp_path}/a/mlflow.db")
    _, jobs_a, _ = runs_by_kind(client_a, "resume")
    by_job = lambda runs: {r.data.tags["dlexp.sweep_job"]: r for r in runs}  # noqa: E731
    for num, job_a in by_job(jobs_a).items():
        job_b = by_job(jobs)[num]
        assert_same_store_contents(client_a, job_a, client, job_b)
        folder_a, folder_b = Path(job_a.data.tags["dlexp.output_dir"]), Path(job_b.data.tags["dlexp.output_dir"])
        assert (folder_b / "model.pt").read_bytes() == (folder_a / "model.pt").read_bytes()
        assert summary_numbers(folder_b) == summary_numbers(folder_a)


def test_checkpoint_every_takes_epochs_or_a_time_and_names_a_bad_value():
    assert parse_every(10) == Every(epochs=10)
    assert parse_every("30s") == Every(seconds=30.0)
    assert parse_every("2m") == Every(seconds=120.0)
    assert parse_every(None) is None and parse_every(0) is None
    for bad in ("soon", "-5s", -3, "10x"):
        with pytest.raises(DlexpError, match=r"trainer.checkpoint_every=.*expected a number of epochs"):
            parse_every(bad)


def test_a_checkpoint_of_other_code_or_another_config_is_not_used(tmp_path, caplog):
    mine = {"config_hash": "c1", "code_hash": "k1"}
    Checkpoints(tmp_path, mine, Every(epochs=1)).save("fold_1", {"epoch": 3})
    assert Checkpoints(tmp_path, mine, Every(epochs=1)).load("fold_1")["epoch"] == 3
    assert Checkpoints(tmp_path, {**mine, "code_hash": "k2"}, Every(epochs=1)).load("fold_1") is None
    assert "written by other code (dlexp.code_hash k1, now k2); not used" in caplog.text
    assert Checkpoints(tmp_path, {**mine, "config_hash": "c2"}, Every(epochs=1)).load("fold_1") is None
    assert "written by another config (dlexp.config_hash c1, now c2); not used" in caplog.text


def test_a_checkpoint_of_other_data_is_not_used_and_a_new_run_starts_from_an_empty_folder(tmp_path, caplog):
    mine = {"config_hash": "c1", "code_hash": "k1", "data_digest": "d1"}
    Checkpoints(tmp_path, mine, Every(epochs=1)).save("fold_1", {"epoch": 3})
    assert Checkpoints(tmp_path, {**mine, "data_digest": "d2"}, Every(epochs=1)).load("fold_1") is None
    assert "written by other data (dlexp.data_digest d1, now d2); not used" in caplog.text
    # A new run of the job in the same folder (a sweep's job folder) clears what an earlier run left there.
    fresh = Checkpoints(tmp_path, mine, Every(epochs=1))
    assert fresh.lock()
    fresh.clear()
    assert fresh.load("fold_1") is None
    assert not list(tmp_path.glob("*.pt"))


def test_an_interrupted_run_whose_data_changed_is_not_continued(tmp_path, caplog):
    from types import SimpleNamespace

    from dlexp.tracking.resume import find_interrupted_run

    (tmp_path / "checkpoints").mkdir()
    tags = {"dlexp.config_hash": "c1", "dlexp.code_hash": "k1", "dlexp.data_digest": "d1",
            "dlexp.output_dir": str(tmp_path)}
    run = SimpleNamespace(info=SimpleNamespace(status="KILLED", run_id="r1"), data=SimpleNamespace(tags=tags))
    client = SimpleNamespace(search_runs=lambda *args, **kwargs: [run])
    assert find_interrupted_run(client, "1", "c1", "k1", None, "d1") is run
    assert find_interrupted_run(client, "1", "c1", "k1", None, "d2") is None
    assert "its data changed since (dlexp.data_digest d1, now d2)" in caplog.text


def test_only_one_process_holds_a_checkpoint_folder(tmp_path):
    first, second = (Checkpoints(tmp_path, {}, None) for _ in range(2))
    assert first.lock()
    assert not second.lock()
    first.unlock()
    assert second.lock()


def test_checkpoint_every_leaves_the_config_hash_alone():
    from dlexp.tracking.store import config_hash

    assert (config_hash(compose_config(["trainer.checkpoint_every=1"]))
            == config_hash(compose_config(["trainer.checkpoint_every=5m"])))


class SignalAt(TrainingHooks):
    """Sends this process ``signum`` as fold ``fold`` ends epoch ``epoch`` (a `kill` or Ctrl-C mid-fold)."""

    def __init__(self, fold: int, epoch: int, signum: int) -> None:
        self.at, self.signum = (fold, epoch), signum

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        if (fold, epoch) == self.at:
            # to this thread, handled before raise_signal returns; os.kill(os.getpid()) may reach another
            # thread of the process, and under load its handler ran after these few-ms trainings ended
            signal.raise_signal(self.signum)


def train_in_process(cfg, checkpoints=None, hooks=NO_HOOKS) -> list:
    """(result, best weights) of every fold, as ``run_experiment`` trains them."""
    from dlexp.config.build import build
    from dlexp.data.splits import kfold_indices
    from dlexp.experiment import configure_torch, train_folds

    device = configure_torch(cfg.trainer)
    data = build("dataset", cfg.dataset)
    folds = kfold_indices(data.y_train.numpy(), cfg.trainer.folds, cfg.trainer.seed, cfg.trainer.stratify, None)
    with stop_at_epoch_end(checkpoints):
        return [(result, {k: v.clone() for k, v in model.state_dict().items()}) for result, model in
                train_folds(cfg, data, folds, data.x_train, data.y_train, device, cfg.trainer.strategy, hooks=hooks,
                            checkpoints=checkpoints)]


@pytest.mark.parametrize(("strategy", "signum"), [("sequential", signal.SIGTERM), ("batched", signal.SIGINT)])
def test_a_signal_saves_a_checkpoint_at_the_epochs_end_and_the_rerun_ends_bit_identical(tmp_path, strategy, signum):
    cfg = compose_config(["+experiment=spiral", "trainer.folds=2", "trainer.max_epochs=6", "trainer.patience=3",
                          f"trainer.strategy={strategy}", "model.dropout=0.2", "trainer.checkpoint_every=1000"])
    uninterrupted = train_in_process(cfg)
    identity = {"config_hash": "c", "code_hash": "k"}
    with pytest.raises(Interrupted, match=f"stopped by {signal.Signals(signum).name}"):
        train_in_process(cfg, Checkpoints(tmp_path, identity, Every(epochs=1000)), SignalAt(2, 3, signum))
    name = "fold_2.pt" if strategy == "sequential" else "batched.pt"
    assert epoch_of(tmp_path / name) == 3  # not due (every 1000 epochs): saved because of the signal
    assert (tmp_path / "fold_1.done.pt").exists() == (strategy == "sequential")

    resumed = train_in_process(cfg, Checkpoints(tmp_path, identity, Every(epochs=1000)))
    for (a, weights_a), (b, weights_b) in zip(uninterrupted, resumed, strict=True):
        assert (a.fold, a.epochs_run, a.best_epoch, a.best_val_loss, a.best_val_acc, a.history) == (
            b.fold, b.epochs_run, b.best_epoch, b.best_val_loss, b.best_val_acc, b.history)
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["fold_1.done.pt", "fold_2.done.pt"]
