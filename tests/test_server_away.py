"""A tracking server that goes away: bounded store calls, the run kept whole in its folder, one ``error:``
line, and ``python -m dlexp.sync`` completing the MLflow run once the server is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from service_support import free_port, mlflow_server
from sweep_support import ROOT, dlexp_env

JOB = ["+experiment=spiral", "trainer.folds=3", "trainer.max_epochs=40", "trainer.patience=40",
       "trainer.strategy=sequential", "plots.grid_resolution=20", "trainer.progress=false",
       "tracking.experiment_name=away", "tracking.timeout=15"]


def fold_metric_counts(client, experiment_id: str, job_run_id: str) -> dict[int, dict[str, int]]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{job_run_id}'")
    return {int(r.data.tags["dlexp.fold"]): {
        key: len(client.get_metric_history(r.info.run_id, key)) for key in ("train_loss", "val_loss", "val_acc")}
        for r in runs}


@pytest.mark.full
def test_a_server_killed_mid_run_loses_nothing_and_the_sync_completes_the_run(tmp_path):
    backend = f"sqlite:///{tmp_path}/server.db"
    port = free_port()
    with mlflow_server(tmp_path, backend, port=port) as url:  # a reference run, uninterrupted
        reference = subprocess.run([sys.executable, "-m", "dlexp", *JOB, f"tracking.uri={url}",
                                    "tracking.experiment_name=reference", f"hydra.run.dir={tmp_path}/reference"],
                                   cwd=ROOT, env=dlexp_env(), capture_output=True, text=True, timeout=600)
        assert reference.returncode == 0, reference.stderr[-3000:]
        folder = tmp_path / "run"
        process = subprocess.Popen([sys.executable, "-m", "dlexp", *JOB, f"tracking.uri={url}",
                                    f"hydra.run.dir={folder}"], cwd=ROOT, env=dlexp_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (folder / "checkpoints" / "fold_1.done.pt").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.1)
        # the server dies here (mlflow_server's own end finds it gone)
        server = next(int(pid) for pid in os.listdir("/proc") if pid.isdigit() and f"--port\0{port}\0".encode()
                      in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.killpg(os.getpgid(server), signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = process.communicate(timeout=300)
    # within the bound: the one call that waited (15 s) and training's own few seconds
    assert time.monotonic() - killed < 150
    assert process.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"python -m dlexp.sync {folder}" in errors[0], stderr[-3000:]
    assert "stopped answering" in errors[0]
    for name in ("model.pt", "summary.json", "summary.txt", "mlflow_pending.jsonl", "plots/loss_curves.png"):
        assert (folder / name).exists(), name
    assert not (folder / "FAILED.txt").exists()  # the run did not fail: its store did

    store = MlflowClient(backend)  # the server's own database, read directly
    experiment = store.get_experiment_by_name("away")
    jobs = [r for r in store.search_runs([experiment.experiment_id]) if "dlexp.config_hash" in r.data.tags]
    assert len(jobs) == 1 and jobs[0].info.status != "FINISHED"  # nothing claims FINISHED before the sync

    failed = subprocess.run([sys.executable, "-m", "dlexp.sync", str(folder)], cwd=ROOT, env=dlexp_env(),
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("error: tracking.uri=http"), failed.stderr

    with mlflow_server(tmp_path, backend, port=port) as url:  # the server is back
        sync = subprocess.run([sys.executable, "-m", "dlexp.sync", str(folder)], cwd=ROOT, env=dlexp_env(),
                              capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-3000:]
        again = subprocess.run([sys.executable, "-m", "dlexp.sync", str(folder)], cwd=ROOT, env=dlexp_env(),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing to send" in again.stdout
        artifacts = {a.path for a in MlflowClient(url).list_artifacts(jobs[0].info.run_id)}
        assert {"model.pt", "summary.json", "plots"} <= artifacts
    job = store.get_run(jobs[0].info.run_id)
    assert job.info.status == "FINISHED"
    reference_job = next(r for r in store.search_runs([store.get_experiment_by_name("reference").experiment_id])
                         if "dlexp.config_hash" in r.data.tags)
    assert job.data.metrics.keys() == reference_job.data.metrics.keys()
    counts = fold_metric_counts(store, experiment.experiment_id, job.info.run_id)
    assert counts == fold_metric_counts(store, reference_job.info.experiment_id, reference_job.info.run_id)
    assert counts[3]["val_loss"] == 40  # every epoch once, none twice
    folds = store.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{job.info.run_id}'")
    assert {r.info.status for r in folds} == {"FINISHED"}
    # its MLflow models were not tried against the dead server; the run says why it has none
    assert job.data.tags["dlexp.model_error"] == (
        "ConnectionError: the tracking server stopped answering earlier in this run")


@pytest.mark.full
def test_a_server_down_at_start_is_one_line_and_no_training(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "dlexp", *JOB, f"tracking.uri={url}",
                             f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, env=dlexp_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: tracking.uri={url}: no MLflow server answers")
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
        [result.stderr.strip().splitlines()[-1]]
    assert "training 3 folds" not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_replaying_a_journal_creates_its_runs_once_and_sends_no_value_twice(tmp_path, store):
    """The sync's replay (what ``python -m dlexp.sync`` does once the server answers) on a local store."""
    from mlflow.entities import Metric, Param

    from dlexp.tracking.offline import Journal, decode
    from dlexp.tracking.sync import Replayer, substitute

    client = store["client"]
    experiment_id = client.create_experiment("replay")
    job = client.create_run(experiment_id).info.run_id
    client.log_batch(job, metrics=[Metric("val_loss", 0.5, 1, 1)], params=[Param("lr", "0.01")])
    journal = Journal(tmp_path, "http://example.invalid")
    fold = journal.record("create_run", experiment_id, tags={"dlexp.fold": "1"})
    journal.record("log_batch", job, metrics=[Metric("val_loss", 0.5, 2, 1), Metric("val_loss", 0.4, 2, 2)],
                   params=[Param("lr", "0.01")])  # epoch 1 reached the store before it stopped answering
    journal.record("log_batch", fold, metrics=[Metric("val_loss", 0.3, 3, 1)])
    journal.record("set_terminated", fold, "FINISHED")
    journal.record("set_terminated", job, "FINISHED")
    lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert lines[0] == {"tracking_uri": "http://example.invalid"} and len(lines) == 6 and journal.count == 5

    ids: dict[str, str] = {}
    replayer = Replayer(client)
    for record in lines[1:]:
        result = replayer.call(record["method"], substitute(decode(record["args"]), ids),
                               substitute(decode(record["kwargs"]), ids))
        if record["method"] == "create_run":
            ids[record["placeholder"]] = result.info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(job, "val_loss")] == [(1, 0.5), (2, 0.4)]
    fold_run = client.get_run(ids[fold])
    assert fold_run.info.status == "FINISHED" and fold_run.data.tags["dlexp.fold"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(ids[fold], "val_loss")] == [(1, 0.3)]
    assert client.get_run(job).info.status == "FINISHED"
    assert len(client.search_runs([experiment_id])) == 2
