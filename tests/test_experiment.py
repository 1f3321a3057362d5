"""End to end through Hydra's configs into a temporary MLflow store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, QUICK, compose_config

from dlexp import experiment
from dlexp.experiment import run_experiment
from dlexp.models.mlp import MLP
from dlexp.models.saved import load_model

PNG = b"\x89PNG\r\n\x1a\n"


def runs_of(client, experiment_name="spiral"):
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def artifact_paths(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def test_run_logs_parent_and_fold_runs_with_metrics_and_artifacts(store, tmp_path):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    summary = run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    client = store["client"]
    parents, children = runs_of(client)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}

    params = parent.data.params
    assert params["model.hidden_dims"] == "[64, 32]" and params["optimizer.lr"] == "0.01"
    assert params["trainer.folds"] == "2" and params["scheduler._target_"] == "torch.optim.lr_scheduler.StepLR"
    for key in ("test_acc", "test_acc_last_fold", "test_acc_fold_mean", "test_acc_fold_std",
                "test_acc_ensemble", "best_fold"):
        assert key in parent.data.metrics
    assert parent.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    assert parent.data.tags["dlexp.overrides"] == " ".join(overrides)
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    assert artifact_paths(client, parent.info.run_id) == [
        "config_resolved.yaml", "model.pt", "model_summary.txt", "plots/confusion_matrix.png", "plots/data.png",
        "plots/decision_boundary_test.png", "plots/decision_boundary_train.png", "plots/loss_curves.png",
        "plots/per_class_accuracy.png", "summary.json", "summary.txt"]

    for child in children:
        fold = int(child.data.params["fold"])
        metrics = child.data.metrics
        epochs = int(metrics["epochs_run"])
        assert epochs == 4
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, epochs + 1))
        val_losses = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "val_loss"),
                                              key=lambda m: m.step)]
        assert metrics["best_val_loss"] == pytest.approx(min(val_losses))
        assert metrics["best_epoch"] == val_losses.index(min(val_losses)) + 1
        assert metrics["test_acc"] == pytest.approx(summary["fold_test_acc"][fold])
        assert artifact_paths(client, child.info.run_id) == ["decision_boundary.png", "loss_curve.png"]
        local = client.download_artifacts(child.info.run_id, "decision_boundary.png", str(tmp_path / f"f{fold}"))
        with open(local, "rb") as handle:
            assert handle.read(8) == PNG


def test_run_folder_holds_pictures_model_and_summary(store, tmp_path):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    out = tmp_path / "out"
    summary = run_experiment(compose_config(overrides), out, overrides)
    for name in ("data", "loss_curves", "decision_boundary_train", "decision_boundary_test"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG
    for fold in (1, 2):
        assert (out / "folds" / f"fold_{fold}" / "decision_boundary.png").read_bytes()[:8] == PNG
    saved = json.loads((out / "summary.json").read_text())
    assert saved["test_acc"] == pytest.approx(summary["test_acc"])
    assert saved["class_names"] == ["0", "1", "2", "3", "4"]
    assert "test accuracy of the reported model" in (out / "summary.txt").read_text()

    # The saved weights are the reported model: reloading them reproduces its test accuracy.
    from dlexp.data.points import load_point_files

    data = load_point_files(str(PROJECT_ROOT / "data/trainData.txt"), str(PROJECT_ROOT / "data/testData.txt"))
    model, class_names = load_model(out)
    assert isinstance(model, MLP) and class_names == ["0", "1", "2", "3", "4"]
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(summary["test_acc"])


def test_same_seed_same_metrics(store, tmp_path):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    first = run_experiment(compose_config(overrides), tmp_path / "a", overrides)
    second = run_experiment(compose_config(overrides), tmp_path / "b", overrides)
    first.pop("train_seconds"), second.pop("train_seconds")
    assert first == second
    third = run_experiment(compose_config([*overrides, "trainer.seed=7"]), tmp_path / "c", overrides)
    assert third["best_val_loss"] != first["best_val_loss"]


def test_a_run_that_raises_ends_failed_and_the_next_starts_clean(store, tmp_path, monkeypatch):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"], "trainer.strategy=sequential"]

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(experiment, "train_fold", broken)
        with pytest.raises(RuntimeError):
            run_experiment(compose_config(overrides), tmp_path / "a", overrides)
    run_experiment(compose_config(overrides), tmp_path / "b", overrides)
    parents, _ = runs_of(store["client"])
    statuses = sorted((r.info.status, r.data.tags.get("dlexp.error", "")) for r in parents)
    assert statuses == [("FAILED", "RuntimeError: disk on fire"), ("FINISHED", "")]
    assert not (tmp_path / "a" / "summary.json").exists()


def run_cli(*args, cwd=PROJECT_ROOT):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.full
def test_multirun_gives_one_run_per_job(store, tmp_path):
    result = run_cli("-m", "+experiment=spiral", *QUICK, *store["overrides"], "optimizer.lr=0.01,0.001",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    by_id = {r.info.run_id: r for r in runs}
    job_runs = [r for r in runs if "optimizer.lr" in r.data.params]
    assert sorted(r.data.params["optimizer.lr"] for r in job_runs) == ["0.001", "0.01"]
    assert all(r.info.status == "FINISHED" for r in job_runs)
    # Each job's folds are nested under that job; the jobs under the sweep's own run.
    folds = [r for r in runs if by_id.get(r.data.tags.get("mlflow.parentRunId")) in job_runs]
    assert len(folds) == 4
    assert len({r.data.tags["mlflow.parentRunId"] for r in job_runs}) == 1
    assert (tmp_path / "sweep" / "0" / "summary.json").is_file()
    assert (tmp_path / "sweep" / "1" / "summary.json").is_file()


def test_user_mistake_is_one_line_and_exit_2(store, tmp_path):
    result = run_cli("+experiment=spiral", *store["overrides"], f"dataset.train_path={tmp_path}/missing.txt",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert f"error: {tmp_path}/missing.txt: data file not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_course_config_on_course_data_reaches_97_percent(store, tmp_path, seed_data):
    overrides = ["+experiment=spiral", *store["overrides"], f"dataset.train_path={seed_data}/trainData.txt",
                 f"dataset.test_path={seed_data}/testData.txt"]
    summary = run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    assert summary["test_acc"] >= 0.97
    assert summary["test_acc_ensemble"] >= 0.97


@pytest.mark.slow
def test_course_config_on_shipped_data_reaches_97_percent(store, tmp_path):
    overrides = ["+experiment=spiral", *store["overrides"]]
    summary = run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    assert summary["test_acc"] >= 0.97
    assert summary["test_acc_fold_mean"] >= 0.97


def test_a_fold_that_diverges_fails_the_run_and_keeps_the_finished_folds(store, tmp_path, monkeypatch):
    """Fold 2's loss turns NaN: fold 1 stays in the store FINISHED with its metrics, the job run is FAILED."""
    from dlexp.training import loop as training

    real_evaluate = training.evaluate
    calls = {"n": 0}

    def evaluate_then_nan(model, loss_fn, x, y, transform=None):
        calls["n"] += 1
        loss, acc = real_evaluate(model, loss_fn, x, y, transform)
        return (float("nan"), acc) if calls["n"] > 4 else (loss, acc)  # QUICK: 4 epochs a fold

    monkeypatch.setattr(training, "evaluate", evaluate_then_nan)
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"], "trainer.strategy=sequential"]
    with pytest.raises(training.TrainingDiverged, match="fold 2: val loss is nan at epoch 1"):
        run_experiment(compose_config(overrides), tmp_path / "out", overrides)
    parents, children = runs_of(store["client"])
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "TrainingDiverged: fold 2" in parents[0].data.tags["dlexp.error"]
    # Fold 1 finished; fold 2's run (open since it started) ends FAILED with the reason.
    children = sorted(children, key=lambda c: c.data.tags["dlexp.fold"])
    assert [(c.data.tags["dlexp.fold"], c.info.status) for c in children] == [("1", "FINISHED"), ("2", "FAILED")]
    assert children[0].data.metrics["epochs_run"] == 4
    assert "TrainingDiverged: fold 2" in children[1].data.tags["dlexp.error"]
    assert (tmp_path / "out" / "FAILED.txt").is_file() and not (tmp_path / "out" / "summary.json").exists()


def test_load_model_refuses_a_failed_or_foreign_folder(tmp_path):
    from dlexp.errors import DlexpError

    (tmp_path / "FAILED.txt").write_text("FAILED: boom\n")
    with pytest.raises(DlexpError, match="not a finished dlexp run folder, missing config_resolved.yaml, "
                                         "summary.json, model.pt .the run failed"):
        load_model(tmp_path)
