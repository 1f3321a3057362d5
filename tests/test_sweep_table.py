"""The sweep's jobs table and best job against a real MLflow store, what a resumed sweep may reuse (its own
runs, made by the same code), and the code hash behind that."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient
from sweep_support import ROOT, TINY, run_dlexp, runs_by_kind, sqlite_store

from dlexp.sweeps.sweep import log_jobs_table
from dlexp.tracking import store as tracking


@pytest.fixture
def sweep_run(tmp_path):
    """A run standing for a sweep's parent run in a fresh store, and the sweep folder."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("table", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    (tmp_path / "sweep").mkdir()
    return client, run.info.run_id, tmp_path / "sweep"


def logged_table(client, run_id: str, tmp_path) -> list[dict]:
    path = client.download_artifacts(run_id, "sweep_jobs.json", str(tmp_path))
    table = json.loads(open(path).read())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


# The two jobs: the one with the lower validation loss is the better one.
ROWS = [
    {"job": 0, "name": "lr=0.5", "overrides": "optimizer.lr=0.5", "status": "FINISHED", "reused": False, "run_id": "a",
     "error": None, "best_val_loss": 1.5481, "val_acc_mean": 0.41},
    {"job": 1, "name": "lr=0.01", "overrides": "optimizer.lr=0.01", "status": "FINISHED", "reused": False,
     "run_id": "b", "error": None, "best_val_loss": 0.1409, "val_acc_mean": 0.97},
    {"job": 2, "name": "lr=9", "overrides": "optimizer.lr=9", "status": "FAILED", "reused": False, "run_id": "c",
     "error": "diverged", "best_val_loss": 0.0001, "val_acc_mean": 0.99},  # failed: never the best
]


def test_a_resumed_sweeps_table_holds_each_job_once(sweep_run, tmp_path):
    client, run_id, sweep_dir = sweep_run
    log_jobs_table(client, run_id, ROWS, "val_acc_mean", "auto", sweep_dir)
    log_jobs_table(client, run_id, ROWS, "val_acc_mean", "auto", sweep_dir)  # the same sweep, resumed
    rows = logged_table(client, run_id, tmp_path / "download")
    assert [row["job"] for row in rows] == [0, 1, 2]
    assert [row["status"] for row in rows] == ["FINISHED", "FINISHED", "FAILED"]
    # Still MLflow's table artifact, listed once (the UI shows it as a table).
    tag = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert tag == [{"path": "sweep_jobs.json", "type": "table"}]


@pytest.mark.parametrize(("metric", "mode", "best", "rule"), [
    ("best_val_loss", "auto", 1, "best by best_val_loss (lower is better)"),
    ("val_acc_mean", "auto", 1, "best by val_acc_mean (higher is better)"),
    ("best_val_loss", "max", 0, "best by best_val_loss (higher is better)"),  # the user's override
    ("val_acc_mean", "min", 0, "best by val_acc_mean (lower is better)"),
])
def test_best_job_follows_the_metrics_direction_and_says_so(sweep_run, metric, mode, best, rule):
    client, run_id, sweep_dir = sweep_run
    log_jobs_table(client, run_id, ROWS, metric, mode, sweep_dir)
    tags = client.get_run(run_id).data.tags
    assert tags["dlexp.best_run_id"] == ROWS[best]["run_id"]
    assert tags["dlexp.best_job"] == f"#{best} {ROWS[best]['name']}"
    assert tags["dlexp.best_rule"] == rule
    assert rule in tags["mlflow.note.content"]
    assert client.get_run(run_id).data.metrics[f"best_{metric}"] == ROWS[best][metric]


def test_code_hash_covers_every_source_file_committed_or_not(tmp_path):
    package = tmp_path / "dlexp"
    shutil.copytree(ROOT / "dlexp", package, ignore=shutil.ignore_patterns("__pycache__"))
    original = tracking.code_hash(package)
    assert original == tracking.code_hash(ROOT / "dlexp")  # by content and path, not by where the copy sits
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    (package / "notes.txt").write_text("not code")
    assert tracking.code_hash.__wrapped__(package) == original
    training = package / "training" / "loop.py"
    training.write_text(training.read_text().replace("patience", "patience ", 1))  # an uncommitted edit
    assert tracking.code_hash.__wrapped__(package) != original
    training.write_text((ROOT / "dlexp" / "training" / "loop.py").read_text())
    (package / "data" / "extra.py").write_text("")  # a new module
    assert tracking.code_hash.__wrapped__(package) != original


@pytest.mark.full
def test_a_sweep_reuses_only_its_own_runs_made_by_the_same_code(tmp_path):
    store = sqlite_store(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    # A standalone run of the config that the sweep's job 0 trains.
    single = run_dlexp(*TINY, "tracking.experiment_name=own", "optimizer.lr=0.01", *store)
    assert single.returncode == 0, single.stderr[-3000:]
    _, (standalone,), _ = runs_by_kind(client, "own")

    sweep = ["-m", *TINY, "tracking.experiment_name=own", "optimizer.lr=0.01,0.003", *store,
             "tracking.best_metric=best_val_loss"]
    first = run_dlexp(*sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    sweeps, jobs, _ = runs_by_kind(client, "own")
    (sweep_run,) = sweeps
    own = [r for r in jobs if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id]
    # Both jobs trained and sit in the sweep's group: the standalone run was not adopted.
    assert sorted(r.data.tags["dlexp.sweep_job"] for r in own) == ["0", "1"]
    assert standalone.info.run_id not in {r.info.run_id for r in own}
    assert {r.data.tags["dlexp.code_hash"] for r in jobs} == {tracking.code_hash()}
    job0 = next(r for r in own if r.data.tags["dlexp.sweep_job"] == "0")
    assert job0.data.tags["dlexp.config_hash"] == standalone.data.tags["dlexp.config_hash"]
    table = [json.loads((tmp_path / "sweep" / str(n) / "dlexp_job.json").read_text()) for n in range(2)]
    assert [r["reused"] for r in table] == [False, False]
    # Named best: the job with the lower validation loss, by the rule the note shows.
    assert len({r.data.metrics["best_val_loss"] for r in own}) == 2
    best = min(own, key=lambda r: r.data.metrics["best_val_loss"])
    assert sweep_run.data.tags["dlexp.best_run_id"] == best.info.run_id
    assert "best by best_val_loss (lower is better)" in sweep_run.data.tags["mlflow.note.content"]

    # Job 0's run as if other code had made it: the resumed sweep trains job 0 again and says so loudly.
    client.set_tag(job0.info.run_id, "dlexp.code_hash", "0123456789abcdef")
    second = run_dlexp(*sweep)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "WARNING" in second.stdout + second.stderr
    warning = next(line for line in (second.stdout + second.stderr).splitlines() if "other code" in line)
    assert job0.info.run_id in warning and "0123456789ab" in warning and tracking.code_hash()[:12] in warning
    records = [json.loads((tmp_path / "sweep" / str(n) / "dlexp_job.json").read_text()) for n in range(2)]
    assert [r["reused"] for r in records] == [False, True]
    assert records[0]["run_id"] != job0.info.run_id
    sweeps, jobs, _ = runs_by_kind(client, "own")
    assert len(sweeps) == 1 and len(jobs) == 4  # standalone, 2 first jobs, job 0 again
    assert client.get_run(records[0]["run_id"]).data.tags["mlflow.parentRunId"] == sweep_run.info.run_id


def test_a_sweep_with_an_unknown_best_metric_mode_stops_before_its_jobs(tmp_path):
    result = run_dlexp("-m", *TINY, "tracking.experiment_name=mode", "tracking.best_metric_mode=lowest",
                       "optimizer.lr=0.01,0.003", *sqlite_store(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: tracking.best_metric_mode='lowest': expected auto, max or min"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep" / "0").exists()  # no job started
