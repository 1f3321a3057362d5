"""Fold runs are live: open from the fold's start, per-epoch metrics in the store while it trains, closed as
it stops (and kept FINISHED through a later interrupt), every epoch once; pictures never half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_ROOT, QUICK, compose_config
from PIL import Image

from dlexp.experiment import run_experiment
from dlexp.interrupts import Interrupted
from dlexp.tracking import fold_runs as fold_logging
from dlexp.training.loop import TrainingHooks

HISTORY = ("train_loss", "val_loss", "val_acc", "lr")


def runs(client):
    experiment_ = client.get_experiment_by_name("spiral")
    found = client.search_runs([experiment_.experiment_id]) if experiment_ else []
    jobs = [r for r in found if "dlexp.fold" not in r.data.tags]
    folds = sorted((r for r in found if "dlexp.fold" in r.data.tags), key=lambda r: int(r.data.tags["dlexp.fold"]))
    return jobs, folds


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_every_epoch_once_with_many_flushes(store, tmp_path, monkeypatch):
    """Batched folds early-stopping at different epochs, the store flushed every 10 ms: each fold run holds
    each of its epochs exactly once per series, as many as it trained."""
    monkeypatch.setattr(fold_logging, "FLUSH_SECONDS", 0.01)
    overrides = ["+experiment=spiral", "trainer.folds=3", "trainer.max_epochs=80", "trainer.patience=3",
                 "plots.grid_resolution=20", *store["overrides"]]
    summary = run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    client = store["client"]
    jobs, folds = runs(client)
    assert [r.info.status for r in jobs + folds] == ["FINISHED"] * 4
    assert "dlexp.running_fold" not in jobs[0].data.tags
    epochs = [int(f.data.metrics["epochs_run"]) for f in folds]
    assert len(set(epochs)) > 1 or epochs[0] == 80  # early stopping made folds of different lengths
    for fold, run in zip((1, 2, 3), folds, strict=True):
        for key in HISTORY:
            assert steps(client, run.info.run_id, key) == list(range(1, int(run.data.metrics["epochs_run"]) + 1))
        assert run.data.metrics["test_acc"] == pytest.approx(summary["fold_test_acc"][fold])


@pytest.mark.full
def test_a_running_fold_already_has_its_epochs_in_the_store(store, tmp_path):
    """A fold that trains for minutes: its run is RUNNING with per-epoch metrics, the job names it running."""
    command = [sys.executable, "-m", "dlexp", "+experiment=spiral", "trainer.strategy=sequential",
               "trainer.folds=2", "trainer.max_epochs=100000", "trainer.patience=100000",
               "plots.grid_resolution=20", "tracking.log_models=false", *store["overrides"],
               f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    client = store["client"]
    try:
        deadline = time.monotonic() + 240
        seen = None
        while time.monotonic() < deadline and process.poll() is None:
            jobs, folds = runs(client) if (tmp_path / "mlflow.db").exists() else ([], [])
            if folds and len(steps(client, folds[0].info.run_id, "val_loss")) >= 3:
                seen = folds[0], jobs[0], steps(client, folds[0].info.run_id, "val_loss")
                break
            time.sleep(0.5)
        assert seen is not None, "no per-epoch metric reached the store while the fold trained"
        fold, job, live_steps = seen
        assert fold.info.status == "RUNNING" and fold.info.run_name.startswith("fold 1 of spiral ")
        assert live_steps == list(range(1, len(live_steps) + 1))
        assert job.data.tags["dlexp.running_fold"] == "1 of 2"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    jobs, folds = runs(client)
    assert [r.info.status for r in jobs + folds] == ["KILLED", "KILLED"]
    counts = {key: steps(client, folds[0].info.run_id, key) for key in HISTORY}
    assert counts["val_loss"] == list(range(1, len(counts["val_loss"]) + 1))  # each epoch once, none lost
    assert all(series == counts["val_loss"] for series in counts.values())


class DeleteTheRunningTagOnce(TrainingHooks):
    """Deletes the job run's ``dlexp.running_fold`` tag behind dlexp's back once it is in the store, as a
    tracking server's retried request (whose first try went through) or a requeued job's earlier attempt does."""

    def __init__(self, client) -> None:
        self.client, self.deleted = client, False

    def epoch_end(self, fold, epoch, metrics) -> None:
        if self.deleted or epoch % 5:
            return
        jobs, _ = runs(self.client)
        if jobs and "dlexp.running_fold" in jobs[0].data.tags:
            self.client.delete_tag(jobs[0].info.run_id, "dlexp.running_fold")
            self.deleted = True


def test_a_running_fold_tag_deleted_already_is_no_error_at_the_end(store, tmp_path):
    overrides = ["+experiment=spiral", "trainer.folds=2", "trainer.max_epochs=200", "trainer.patience=200",
                 "trainer.strategy=sequential", "plots.grid_resolution=20", "tracking.log_models=false",
                 *store["overrides"]]
    hook = DeleteTheRunningTagOnce(store["client"])
    run_experiment(compose_config(overrides), tmp_path / "out", overrides, hooks=hook)
    assert hook.deleted
    jobs, folds = runs(store["client"])
    assert [r.info.status for r in jobs + folds] == ["FINISHED"] * 3
    assert "dlexp.running_fold" not in jobs[0].data.tags


class InterruptAfterFirstFoldStops(TrainingHooks):
    """SIGTERM as the signal handler delivers it (dlexp.interrupts), one epoch after a fold early-stopped."""

    def __init__(self) -> None:
        self.stopped: list[int] = []

    def fold_end(self, result) -> None:
        self.stopped.append(result.fold)

    def epoch_end(self, fold, epoch, metrics) -> None:
        if self.stopped:
            raise Interrupted(signal.SIGTERM)


def test_interrupted_batched_training_keeps_the_folds_that_stopped(store, tmp_path):
    """Issue 14.1: batched training interrupted after a fold early-stopped: that fold is a FINISHED run with
    all its metrics and pictures; the folds still training end KILLED with the job."""
    interrupt = InterruptAfterFirstFoldStops()
    overrides = ["+experiment=spiral", "trainer.strategy=batched", "plots.grid_resolution=20", *store["overrides"]]
    with pytest.raises(Interrupted):
        run_experiment(compose_config(overrides), tmp_path / "out", overrides, hooks=interrupt)
    client = store["client"]
    jobs, folds = runs(client)
    assert [r.info.status for r in jobs] == ["KILLED"]
    assert len(folds) == 5 and interrupt.stopped
    for run in folds:
        fold = int(run.data.tags["dlexp.fold"])
        if fold in interrupt.stopped:
            assert run.info.status == "FINISHED"
            epochs = int(run.data.metrics["epochs_run"])
            assert steps(client, run.info.run_id, "val_loss") == list(range(1, epochs + 1))
            assert run.data.metrics["best_epoch"] == epochs - 30  # patience 30
            assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
                "decision_boundary.png", "loss_curve.png"]
        else:
            assert run.info.status == "KILLED"
            assert run.data.tags["dlexp.error"] == "Interrupted: stopped by SIGTERM"
    assert (tmp_path / "out" / "FAILED.txt").is_file()


@pytest.mark.full
def test_interrupt_while_pictures_are_pending_leaves_the_run_killed_and_nothing_half_written(store, tmp_path):
    """Huge decision-boundary grids keep the picture process busy after training; SIGTERM then."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "dlexp", "+experiment=spiral", *QUICK[:2], "plots.grid_resolution=1500",
               "trainer.progress=false", *store["overrides"], f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if "fold 2/2:" in line:  # training is over; the pictures are still being drawn
            break
    time.sleep(0.5)
    pending = not (run_dir / "plots" / "decision_boundary_test.png").exists()
    process.send_signal(signal.SIGTERM)
    output += process.stdout.read()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, "".join(output)
    assert pending
    client = store["client"]
    jobs, _ = runs(client)
    assert [r.info.status for r in jobs] == ["KILLED"]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.pt").exists()
    assert (run_dir / "FAILED.txt").read_text().startswith("KILLED")
    time.sleep(1)  # anything still drawing would have landed by now
    assert not [p for p in run_dir.rglob("*") if "partial" in p.name]
    artifacts = tmp_path / "artifacts"
    for picture in artifacts.rglob("*.png"):
        with Image.open(picture) as image:
            image.load()  # a truncated PNG raises here
    assert os.path.getsize(run_dir / "config_resolved.yaml") > 0
