"""Run names a person can tell apart, the experiment kind MLflow's UI reads, and the lines a run ends with."""

from __future__ import annotations

import logging
import re
from datetime import datetime

import mlflow
from mlflow.tracking import MlflowClient
from sweep_support import TINY, run_dlexp, runs_by_kind, sqlite_store

from dlexp.tracking.naming import (
    fold_run_name,
    job_run_name,
    override_labels,
    short_overrides,
    sweep_run_name,
    swept_keys,
)
from dlexp.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, setup_experiment
from dlexp.tracking.where import JobLabel, ui_command, ui_url

WHEN = datetime(2026, 11, 25, 15, 40)
STORE = ["tracking.uri=sqlite:////tmp/x/mlflow.db", "tracking.artifact_location=/tmp/x/artifacts"]


def test_a_single_run_is_named_by_its_dataset_and_its_own_overrides():
    overrides = ["+experiment=spiral", "optimizer.lr=0.003", "model.hidden_dims=[128,64]", *STORE]
    assert job_run_name(overrides, "spiral", now=WHEN) == "spiral lr=0.003 hidden_dims=[128,64]"


def test_a_single_run_without_overrides_is_named_by_its_dataset_and_time():
    assert job_run_name(["+experiment=spiral", *STORE], "spiral", now=WHEN) == "spiral 2026-11-25 15:40"
    assert job_run_name([], "bees", now=WHEN) == "bees 2026-11-25 15:40"


def test_tracking_run_name_wins():
    assert job_run_name(["optimizer.lr=0.1"], "spiral", ["optimizer.lr"], explicit="mine") == "mine"


def test_a_sweep_of_two_keys_names_its_jobs_by_their_values_of_those_keys_only():
    command = ["+experiment=spiral", "trainer.max_epochs=3", "optimizer.lr=0.01,0.003",
               "model.hidden_dims=[64,32],[16]", *STORE]
    swept = swept_keys(command)
    assert swept == ["optimizer.lr", "model.hidden_dims"]
    job = ["+experiment=spiral", "trainer.max_epochs=3", "optimizer.lr=0.01", "model.hidden_dims=[64,32]", *STORE]
    assert job_run_name(job, "spiral", swept) == "lr=0.01 hidden_dims=[64,32]"
    assert sweep_run_name(swept, WHEN) == "sweep lr×hidden_dims 2026-11-25 15:40"
    assert short_overrides(job, swept) == {"lr": "0.01", "hidden_dims": "[64,32]"}


def test_a_fold_is_named_by_its_number_then_its_job():
    assert fold_run_name("lr=0.01 hidden_dims=[64,32]", 3) == "fold 3 of lr=0.01 hidden_dims=[64,32]"
    assert fold_run_name(None, 2) == "fold 2"


def test_swept_keys_come_from_every_sweep_syntax_and_the_sweepers_search_space():
    command = ["+experiment=spiral,insects", "trainer.seed=range(3)", "model=mlp,cnn", "x.y=1",
               "optimizer.lr=tag(log, interval(0.001, 0.1))", "tracking.experiment_name=a,b"]
    assert swept_keys(command, {"model.dropout": "interval(0, 0.5)", "optimizer.lr": "..."}) == [
        "experiment", "trainer.seed", "model", "optimizer.lr", "model.dropout"]
    assert sweep_run_name([], WHEN) == "sweep 2026-11-25 15:40"


def test_short_labels_keep_keys_apart_and_values_short():
    # Two keys ending alike keep their whole names; Optuna's long floats and file paths are cut.
    overrides = ["dataset.seed=1", "trainer.seed=2", "optimizer.lr=0.0012345678901", "dataset.train_path=/a/b/t.txt",
                 "model.hidden_dims=[16]", "trainer.max_epochs=500", "~trainer.patience"]
    assert override_labels(overrides) == ("dataset.seed=1 trainer.seed=2 lr=0.001235 train_path=t.txt "
                                          "hidden_dims=[16] max_epochs=500 patience")


def test_a_new_experiment_gets_the_model_training_kind(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = setup_experiment(uri, "fresh", str(tmp_path / "artifacts"))
    tags = MlflowClient(uri).get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_an_existing_experiment_gets_the_kind_unless_someone_chose_one(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    setup_experiment(uri, "first", None)  # creates the store
    client = MlflowClient(uri)
    plain = client.create_experiment("plain")  # made elsewhere: no kind
    guessed = client.create_experiment("guessed", tags={EXPERIMENT_KIND_TAG: "genai_development_inferred"})
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("plain", "guessed", "chosen"):
        setup_experiment(uri, name, None)
    kinds = {e: client.get_experiment(e).tags.get(EXPERIMENT_KIND_TAG) for e in (plain, guessed, chosen)}
    assert kinds == {plain: EXPERIMENT_KIND, guessed: EXPERIMENT_KIND, chosen: "genai_development"}
    mlflow.set_tracking_uri(None)


def test_ui_links_open_the_runs_table_of_the_run():
    assert ui_url("sqlite:////s/mlflow.db", "4", "abc") == (
        "http://127.0.0.1:5000/#/experiments/4/runs/abc?workflowType=machine_learning")
    assert ui_url("http://head:5001/", "4") == "http://head:5001/#/experiments/4/runs?workflowType=machine_learning"
    assert ui_command("sqlite:////s/mlflow.db") == (
        "python -m dlexp.server --backend-store-uri sqlite:////s/mlflow.db --port 5000")
    assert ui_command("http://head:5001") is None


def test_a_sweep_jobs_lines_carry_its_label_and_blank_lines_stay_blank():
    label = JobLabel(logging.Formatter("[%(name)s] %(message)s"), 3)
    record = logging.LogRecord("dlexp", logging.INFO, __file__, 1, "\nsummary\n\n  test acc 99%", None, None)
    assert label.format(record).split("\n") == ["[job 3] [dlexp] ", "[job 3] summary", "", "[job 3]   test acc 99%"]


def test_a_single_run_ends_with_where_its_results_are_and_names_its_runs(tmp_path):
    result = run_dlexp(*TINY, "optimizer.lr=0.003", *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    _, jobs, folds = runs_by_kind(client, "spiral")
    job = jobs[0]
    name = "spiral max_epochs=3 folds=2 grid_resolution=20 lr=0.003"
    assert job.info.run_name == name
    assert sorted(f.info.run_name for f in folds) == [f"fold 1 of {name}", f"fold 2 of {name}"]

    experiment_id = job.info.experiment_id
    tail = [re.sub(r"^\[[^]]*\]\[dlexp\]\[INFO\] - ", "", line) for line in result.stdout.splitlines()[-6:]]
    assert tail == [
        "results of this run (FINISHED):",
        f"  run folder: {tmp_path}/run",
        f"  MLflow run: '{name}' (id {job.info.run_id}) in experiment 'spiral' of sqlite:///{tmp_path}/mlflow.db",
        f"  artifacts:  file://{tmp_path}/artifacts/{job.info.run_id}/artifacts",
        f"  see it:     python -m dlexp.server --backend-store-uri sqlite:///{tmp_path}/mlflow.db --port 5000",
        f"              then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{job.info.run_id}"
        "?workflowType=machine_learning",
    ]
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_run_that_fails_still_says_where_it_went_and_ends_with_its_error(tmp_path):
    result = run_dlexp(*TINY, "optimizer.lr=1e30", *sqlite_store(tmp_path))  # training diverges: a user error
    assert result.returncode == 2, result.stderr[-3000:]
    _, jobs, _ = runs_by_kind(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "spiral")
    assert [job.info.status for job in jobs] == ["FAILED"]
    assert "results of this run (FAILED):" in result.stdout
    assert f"  run folder: {tmp_path}/run" in result.stdout and f"/runs/{jobs[0].info.run_id}?" in result.stdout
    assert result.stderr.splitlines()[-1].startswith("error: fold 1: train loss is")


def test_a_run_stopped_before_its_run_started_touches_no_store(tmp_path):
    result = run_dlexp(*TINY, f"dataset.train_path={tmp_path}/missing.txt", *sqlite_store(tmp_path))
    assert result.returncode == 2
    assert "results of this run" not in result.stdout
    assert not (tmp_path / "mlflow.db").exists()
