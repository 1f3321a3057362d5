"""A parallel sweep as a person sees it: the lines it ends with, which job each line is from, the run names
in the store, and MLflow's UI rendered in headless Chromium (scripts/ui_screenshot.py)."""

from __future__ import annotations

import html
import json
import re
import sys

import pytest
from mlflow.tracking import MlflowClient
from sweep_support import ROOT, TINY, run_dlexp, runs_by_kind, sqlite_store

sys.path.insert(0, str(ROOT / "scripts"))
from ui_screenshot import find_chromium, mlflow_server, page_url, render  # noqa: E402

EXPERIMENT = "ui"
JOB_NAMES = {"lr=0.01 hidden_dims=[64,32]", "lr=0.01 hidden_dims=[16]",
             "lr=0.003 hidden_dims=[64,32]", "lr=0.003 hidden_dims=[16]"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """4 jobs (2 learning rates x 2 widths) on 2 joblib workers, into a store of their own."""
    tmp_path = tmp_path_factory.mktemp("ui")
    result = run_dlexp("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *TINY,
                       "optimizer.lr=0.01,0.003", "model.hidden_dims=[64,32],[16]",
                       f"tracking.experiment_name={EXPERIMENT}", *sqlite_store(tmp_path), timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return {"result": result, "uri": uri, "client": MlflowClient(uri), "dir": tmp_path}


@pytest.mark.full
def test_sweep_jobs_and_folds_are_named_by_what_differs(sweep):
    sweeps, jobs, folds = runs_by_kind(sweep["client"], EXPERIMENT)
    assert len(sweeps) == 1
    assert re.fullmatch(r"sweep lr×hidden_dims \d{4}-\d\d-\d\d \d\d:\d\d", sweeps[0].info.run_name)
    assert {job.info.run_name for job in jobs} == JOB_NAMES
    names = {job.info.run_id: job.info.run_name for job in jobs}
    assert sorted(fold.info.run_name for fold in folds) == sorted(
        f"fold {fold} of {name}" for name in JOB_NAMES for fold in (1, 2))
    for fold in folds:  # each fold is named by the job it is nested under
        assert fold.info.run_name.endswith(names[fold.data.tags["mlflow.parentRunId"]])
    # The jobs table shows each swept value in a column of its own, before the long overrides.
    table = json.loads((sweep["dir"] / "artifacts" / sweeps[0].info.run_id / "artifacts" / "sweep_jobs.json")
                       .read_text())
    assert table["columns"][:3] == ["job", "lr", "hidden_dims"]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {(row["lr"], row["hidden_dims"]) for row in rows} == {
        ("0.01", "[64,32]"), ("0.01", "[16]"), ("0.003", "[64,32]"), ("0.003", "[16]")}
    assert {row["name"] for row in rows} == JOB_NAMES


@pytest.mark.full
def test_a_sweep_ends_with_where_its_results_are_and_its_best_job(sweep):
    tmp_path, client = sweep["dir"], sweep["client"]
    sweeps, jobs, _ = runs_by_kind(client, EXPERIMENT)
    run, best = sweeps[0], max(jobs, key=lambda job: job.data.metrics["val_acc_mean"])
    experiment_id = run.info.experiment_id
    assert sweep["result"].stdout.splitlines()[-8:] == [
        "results of this sweep (FINISHED, 4 jobs: 4 FINISHED):",
        f"  sweep folder: {tmp_path}/sweep (a folder per job)",
        f"  jobs table:   {tmp_path}/sweep/sweep_jobs.csv, and sweep_jobs.json in the sweep run's artifacts",
        f"  MLflow run:   '{run.info.run_name}' (id {run.info.run_id}) in experiment '{EXPERIMENT}' of "
        f"{sweep['uri']}; its jobs are nested under it",
        f"  artifacts:    {client.get_experiment(experiment_id).artifact_location}/<run id>/artifacts",
        f"  best job:     #{best.data.tags['dlexp.sweep_job']} '{best.info.run_name}': val_acc_mean = "
        f"{best.data.metrics['val_acc_mean']:.4f} (MLflow run {best.info.run_id})",
        f"  see it:       python -m dlexp.server --backend-store-uri {sweep['uri']} --port 5000",
        f"                then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
        "?workflowType=machine_learning",
    ]


@pytest.mark.full
def test_every_line_of_a_parallel_sweeps_job_says_which_job(sweep):
    lines = sweep["result"].stdout.splitlines()
    # Everything a job logs, its summary's lines included, starts with its number; the launcher's own don't.
    logged = [line for line in lines if "[dlexp" in line or line.lstrip("[job 0123456789]").startswith(
        ("dataset spiral", "test accuracy", "mean over folds", "ensemble", "training time"))]
    assert len(logged) >= 4 * 10
    assert all(re.match(r"\[job [0-3]\] ", line) for line in logged), logged
    fold_lines = [line for line in lines if re.search(r"fold [12]/2: ", line)]
    assert sorted(line[:7] for line in fold_lines) == sorted(f"[job {n}]" for n in range(4) for _ in range(2))
    for n in range(4):  # the label is the job's own: its closing line names the same job
        assert sum(line.startswith(f"[job {n}] ") and f"job #{n} '" in line for line in lines) == 1
    assert not any(line.startswith("[job") for line in lines if "[HYDRA]" in line)


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="no Chromium here to render MLflow's UI (apt-get install chromium)")
def test_mlflow_ui_opens_on_the_runs_table_with_names_that_tell_runs_apart(sweep, tmp_path):
    """Rendered by MLflow 3.17's own JavaScript in headless Chromium, as scripts/ui_screenshot.py does."""
    sweep_run = runs_by_kind(sweep["client"], EXPERIMENT)[0][0]
    experiment_id = sweep_run.info.experiment_id
    with mlflow_server(sweep["uri"], str(tmp_path / "served")) as base:
        page = html.unescape(render(page_url(base, experiment_id)))  # the link dlexp prints
        flat = html.unescape(render(page_url(base, experiment_id, flat=True)))  # every run unnested
    # The runs table, not the GenAI pages ("No data available"), with the sweep on top, its jobs folded in.
    assert "Run Name" in page and sweep_run.info.run_name in page
    assert "No data available" not in page
    for name in JOB_NAMES:  # each job and fold by its own name
        assert name in flat and f"fold 1 of {name}" in flat and f"fold 2 of {name}" in flat
