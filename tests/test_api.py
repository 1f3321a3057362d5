"""dlexp's Python API (dlexp/api.py): each result checked against what MLflow holds for the same run."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest
import torch
from conftest import QUICK

import dlexp
from dlexp.errors import DlexpError
from dlexp.models.saved import load_model
from dlexp.reports.summary import accuracy, class_probabilities


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick spiral run through ``dlexp.run`` into its own store (shared by the tests below)."""
    folder = tmp_path_factory.mktemp("api")
    overrides = ["+experiment=spiral", *QUICK, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                 f"tracking.artifact_location={folder / 'artifacts'}"]
    handlers = list(logging.getLogger("dlexp").handlers)
    result = dlexp.run(overrides, output_dir=folder / "run")
    assert logging.getLogger("dlexp").handlers == handlers  # the API's log handlers are gone after the run
    return result


def test_run_result_is_what_mlflow_holds(quick_run):
    from mlflow.tracking import MlflowClient

    result = quick_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == result.experiment_name == "spiral"
    assert run.data.tags["dlexp.output_dir"] == str(result.output_dir)
    numbers = {key: value for key, value in result.summary.items() if isinstance(value, int | float)}
    assert len(numbers) >= 9
    for key, value in numbers.items():
        assert run.data.metrics[key] == pytest.approx(value, rel=1e-9), key
    assert run.data.params["trainer.folds"] == "2"

    fold_runs = {int(r.data.tags["dlexp.fold"]): r for r in client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'")}
    assert list(result.folds.index) == sorted(fold_runs) == [1, 2]
    for fold, row in result.folds.iterrows():
        metrics = fold_runs[fold].data.metrics
        assert row["run_id"] == fold_runs[fold].info.run_id
        assert (row["epochs_run"], row["best_epoch"]) == (metrics["epochs_run"], metrics["best_epoch"])
        assert row["test_acc"] == pytest.approx(metrics["test_acc"])
        assert row["test_acc"] == pytest.approx(result.summary["fold_test_acc"][fold])
        assert row["n_train"] + row["n_val"] == len(result.data.y_train)
        history = client.get_metric_history(fold_runs[fold].info.run_id, "val_loss")
        epochs = result.epochs[result.epochs["fold"] == fold]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(list(epochs["val_loss"]))
    assert len(result.epochs) == result.folds["epochs_run"].sum() == 8


def test_run_models_give_the_summary_accuracies(quick_run):
    result, data = quick_run, quick_run.data
    assert len(result.models) == 2
    assert result.model is result.models[result.summary["best_fold"] - 1]
    for fold, model in enumerate(result.models, start=1):
        assert not model.training
        assert accuracy(class_probabilities(model, data.x_test), data.y_test) == pytest.approx(
            result.folds.loc[fold, "test_acc"])
    assert accuracy(class_probabilities(result.model, data.x_test), data.y_test) == pytest.approx(
        result.summary["test_acc"])
    saved, class_names = load_model(result.output_dir)  # the run folder's model.pt is the reported model
    assert class_names == data.class_names
    assert torch.equal(saved(data.x_test).argmax(1), result.model(data.x_test).argmax(1))


def test_run_pictures_and_log_file(quick_run):
    result = quick_run
    assert result.picture("decision_boundary_test") == result.output_dir / "plots" / "decision_boundary_test.png"
    for name in ("plots/loss_curves", "plots/confusion_matrix", "folds/fold_1/decision_boundary",
                 "folds/fold_2/loss_curve"):
        assert result.pictures[name].stat().st_size > 1000, name
    with pytest.raises(DlexpError, match=r"no picture 'boundary' in .*; it has .*plots/decision_boundary_test"):
        result.picture("boundary")
    log_text = (result.output_dir / "dlexp.log").read_text()
    assert "fold 1/2: 4 epochs" in log_text and "test accuracy of the reported model" in log_text


def test_load_runs_nests_folds_under_their_job(quick_run):
    runs = dlexp.load_runs(quick_run.experiment_name, quick_run.tracking_uri)
    assert list(runs.columns[:8]) == ["run_id", "run_name", "kind", "status", "sweep_run_id", "job", "job_run_id",
                                      "fold"]
    job = runs[runs["kind"] == "job"]
    folds = runs[runs["kind"] == "fold"].sort_values("fold")
    assert list(job["run_id"]) == [quick_run.run_id] and job["sweep_run_id"].isna().all()
    assert list(folds["run_id"]) == list(quick_run.folds["run_id"])
    assert list(folds["fold"]) == [1, 2] and (folds["job_run_id"] == quick_run.run_id).all()
    assert job["metrics.test_acc"].item() == pytest.approx(quick_run.summary["test_acc"])
    assert list(folds["metrics.test_acc"]) == pytest.approx(list(quick_run.folds["test_acc"]))
    assert job["params.optimizer.lr"].item() == "0.01"
    better = dlexp.load_runs(quick_run.experiment_name, quick_run.tracking_uri,
                             filter_string=f"metrics.test_acc > {quick_run.summary['test_acc'] + 0.5}")
    assert better.empty and "kind" in better.columns


def test_mistakes_raise_one_line_errors(quick_run, tmp_path):
    with pytest.raises(DlexpError, match=r"trainer.foldz=3: Could not override 'trainer.foldz'"):
        dlexp.compose(["trainer.foldz=3"])
    with pytest.raises(DlexpError, match=r"Could not find 'model/nope' Available options in 'model': cnn mlp"):
        dlexp.run(["model=nope"], output_dir=tmp_path / "never")
    with pytest.raises(DlexpError, match=r"Ambiguous value .* \(in Python: dlexp.sweep runs a sweep\)"):
        dlexp.run("trainer.folds=2,3", output_dir=tmp_path / "never")
    with pytest.raises(DlexpError, match=r"trainer.folds=1: expected an integer >= 2"):
        dlexp.run(["+experiment=spiral", "trainer.folds=1", *QUICK[:1], f"tracking.uri=sqlite:///{tmp_path}/m.db"],
                  output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(DlexpError, match=r"no experiment named 'nope'; it has .*spiral"):
        dlexp.load_runs("nope", quick_run.tracking_uri)
    with pytest.raises(DlexpError, match=r"no MLflow store there"):
        dlexp.load_runs("spiral", f"sqlite:///{tmp_path}/none.db")
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(DlexpError, match=r"config_dirs: no such folder"):
        dlexp.compose([], config_dirs=[tmp_path / "missing"])
    with pytest.raises(DlexpError, match=r"model=nope: In 'config': Could not find 'model/nope'"):
        dlexp.sweep(["model=mlp,nope"], sweep_dir=tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()  # checked before anything ran


def test_config_dirs_add_an_experiment(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/spiral\ntrainer:\n  folds: 3\n")
    cfg = dlexp.compose(["+experiment=mine"], config_dirs=[tmp_path])
    assert (cfg.trainer.folds, cfg.optimizer.lr, list(cfg.model.hidden_dims)) == (3, 0.01, [64, 32])


def test_model_summary_counts_the_course_mlp():
    stats = dlexp.model_summary(["+experiment=spiral"])
    assert stats.total_params == 2437
    assert dlexp.model_summary(["+experiment=spiral"], input_shape=(3,), num_classes=2).total_params == (
        3 * 64 + 64 + 64 * 32 + 32 + 32 * 2 + 2)


@pytest.mark.full
def test_sweep_jobs_table_is_what_mlflow_holds(store, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = dlexp.sweep(["+experiment=spiral", *QUICK, *store["overrides"], "optimizer.lr=0.003,0.03"],
                        sweep_dir=tmp_path / "sweep", echo=False)
    assert sweep.returncode == 0 and sweep.sweep_dir == tmp_path / "sweep"
    assert (sweep.tracking_uri, sweep.experiment_name) == (store["uri"], "spiral")
    client = MlflowClient(store["uri"])
    parent = client.get_run(sweep.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["dlexp.kind"] == "sweep"
    assert list(sweep.jobs["job"]) == [0, 1] and list(sweep.jobs["lr"]) == [0.003, 0.03]
    assert (sweep.jobs["status"] == "FINISHED").all()
    for row in sweep.jobs.itertuples():
        run = client.get_run(row.run_id)
        assert run.data.tags["mlflow.parentRunId"] == sweep.run_id
        assert run.data.params["optimizer.lr"] == str(row.lr)
        assert run.data.metrics["test_acc"] == pytest.approx(row.test_acc)
        assert run.data.metrics["val_acc_mean"] == pytest.approx(row.val_acc_mean)

    runs = sweep.runs()
    assert sorted(runs["kind"]) == ["fold"] * 4 + ["job"] * 2 + ["sweep"]
    assert (runs["sweep_run_id"] == sweep.run_id).all()
    jobs = runs[runs["kind"] == "job"].set_index("job").sort_index()
    assert list(jobs["run_id"]) == list(sweep.jobs["run_id"])
    folds = runs[runs["kind"] == "fold"]
    assert all(jobs.loc[fold.job, "run_id"] == fold.job_run_id for fold in folds.itertuples())
    assert not math.isnan(jobs["metrics.test_acc"].iloc[0])


def test_load_runs_nesting_of_a_sweep_in_a_real_store(store):
    """Runs tagged as dlexp's sweep (dlexp.sweeps.sweep), its jobs and their folds (dlexp.tracking.fold_runs)
    tag them; the full-tier test above makes them through a real sweep."""
    client = store["client"]
    experiment = client.create_experiment("nesting", artifact_location=str(store["dir"] / "artifacts"))
    sweep = client.create_run(experiment, tags={"dlexp.kind": "sweep"}).info.run_id
    jobs = [client.create_run(experiment, tags={"mlflow.parentRunId": sweep, "dlexp.sweep_job": str(n)}).info.run_id
            for n in range(2)]
    folds = {(n, k): client.create_run(experiment, tags={"mlflow.parentRunId": job, "dlexp.fold": str(k)}).info.run_id
             for n, job in enumerate(jobs) for k in (1, 2, 3)}
    single = client.create_run(experiment).info.run_id
    single_fold = client.create_run(experiment, tags={"mlflow.parentRunId": single, "dlexp.fold": "1"}).info.run_id
    client.log_metric(folds[(1, 2)], "test_acc", 0.9)

    runs = dlexp.load_runs("nesting", store["uri"]).set_index("run_id")
    assert len(runs) == 1 + 2 + 6 + 2
    assert runs.loc[sweep, "kind"] == "sweep" and runs.loc[sweep, "sweep_run_id"] == sweep
    for n, job in enumerate(jobs):
        assert (runs.loc[job, "kind"], runs.loc[job, "sweep_run_id"], runs.loc[job, "job"]) == ("job", sweep, n)
    for (n, k), fold in folds.items():
        row = runs.loc[fold]
        assert (row["kind"], row["sweep_run_id"], row["job"], row["job_run_id"], row["fold"]) == (
            "fold", sweep, n, jobs[n], k)
    assert runs.loc[single, "kind"] == "job" and pd.isna(runs.loc[single, "sweep_run_id"])
    assert runs.loc[single_fold, "job_run_id"] == single and runs.loc[single_fold, "fold"] == 1
    assert pd.isna(runs.loc[single_fold, "sweep_run_id"]) and pd.isna(runs.loc[single_fold, "job"])

    only = dlexp.load_runs("nesting", store["uri"], filter_string="metrics.test_acc > 0.5")
    assert list(only["run_id"]) == [folds[(1, 2)]]
    assert (only["kind"].item(), only["job_run_id"].item(), only["fold"].item()) == ("fold", jobs[1], 2)
    assert only["sweep_run_id"].isna().item()  # its job is not among the rows
