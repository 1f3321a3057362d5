"""Sweeps on a real SLURM cluster (scripts/slurm_cluster.sh) through ``hydra/launcher=slurm``, logging to a
PostgreSQL-backed tracking server, and what the cluster does to jobs: ``scancel``, a job killed without a
word (SIGKILL), ``scontrol requeue``, a time limit shorter than the job (requeued until it finishes); a search
whose trials are cluster jobs. Everything is read back from the server.

The cluster is this machine, so any folder is shared with the node; on a real cluster the sweep folder must
be on a filesystem every node sees (README, "Parallel and cluster sweeps").
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState
from service_support import mlflow_server, new_database, require_cluster
from sweep_support import ROOT, dlexp_env, run_dlexp, runs_by_kind

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

#: One CPU and 1 GB a job, so the 2-core node runs two at once.
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=20", "+experiment=spiral", "plots.grid_resolution=20",
         "tracking.log_models=false"]  # the MLflow models' export: tests/test_mlflow_models.py
#: Long enough a job to act on it between its folds: 2 folds one after the other, no early stop.
LONG = ["trainer.strategy=sequential", "trainer.folds=2", "trainer.patience=100000"]


@pytest.fixture(scope="module")
def server(postgres_admin_uri, tmp_path_factory):
    require_cluster()
    folder = tmp_path_factory.mktemp("cluster-server")
    database = new_database(postgres_admin_uri, "dlexp_test_cluster")
    with mlflow_server(folder, database, workers=2) as url:
        yield url


def runs(client: MlflowClient, experiment: str) -> dict[str, list]:
    """The experiment's runs by kind: sweep, job (by job number) and fold (by parent run id)."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    kinds: dict[str, list] = {"sweep": [], "job": [], "fold": []}
    for run in found:
        tags = run.data.tags
        kinds["sweep" if tags.get("dlexp.kind") == "sweep" else "fold" if "dlexp.fold" in tags else "job"].append(run)
    return kinds


def slurm_jobs(sweep_dir: Path) -> dict[int, str]:
    """Hydra job number -> SLURM job id (``ARRAY_TASK``), from submitit's folders."""
    ids = {}
    for folder in (sweep_dir / ".submitit").iterdir():
        if match := re.fullmatch(r"(\d+)_(\d+)", folder.name):
            ids[int(match.group(2))] = folder.name
    return ids


def start_sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=dlexp_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_fold(client: MlflowClient, experiment: str, job: int, timeout: float = 240):
    """Wait until job ``job`` has a FINISHED fold run (so it is in the middle of its second); its run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_experiment_by_name(experiment) is not None:
            kinds = runs(client, experiment)
            for run in kinds["job"]:
                if run.data.tags.get("dlexp.sweep_job") == str(job) and any(
                        fold.info.status == "FINISHED" and fold.data.tags["mlflow.parentRunId"] == run.info.run_id
                        for fold in kinds["fold"]):
                    return run
        time.sleep(0.5)
    raise AssertionError(f"job #{job} did not finish a fold within {timeout} s")


def job_pid(slurm_id: str) -> int:
    """The process id of the job's own Python (submitit's ``_submit`` in step 0; not its helper process, which
    SLURM lists in the same step), through SLURM's own process list."""
    raw = re.search(r"JobId=(\d+)", subprocess.check_output(["scontrol", "show", "job", slurm_id], text=True))
    seen: dict[int, bytes] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = subprocess.check_output(["scontrol", "listpids", raw.group(1)], text=True).splitlines()[1:]
        for pid in (int(row.split()[0]) for row in listed if row.split()[2] == "0"):
            try:
                seen[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"submitit.core._submit" in seen[pid]:
                return pid
        time.sleep(0.5)
    raise AssertionError(f"no submitit process in SLURM job {slurm_id}'s step 0: {seen}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_three_job_sweep_runs_as_a_slurm_array_and_lands_in_the_postgres_server(server, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_dlexp(*SLURM, "trainer.max_epochs=3", "optimizer.lr=0.01,0.003,0.001", f"tracking.uri={server}",
                       "tracking.experiment_name=cluster3", f"hydra.sweep.dir={sweep_dir}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    ids = slurm_jobs(sweep_dir)  # one array job, one task per Hydra job
    assert sorted(ids) == [0, 1, 2] and len({slurm_id.split("_")[0] for slurm_id in ids.values()}) == 1
    accounted = subprocess.check_output(["sacct", "-n", "-X", "-P", "-o", "JobID", "-j", ids[0].split("_")[0]],
                                        text=True).split()
    assert sorted(accounted) == sorted(ids.values())  # SLURM ran them (its accounting may lag their end)

    client = MlflowClient(server)
    kinds = runs(client, "cluster3")
    assert len(kinds["sweep"]) == 1 and kinds["sweep"][0].info.status == "FINISHED"
    sweep = kinds["sweep"][0]
    assert sorted(run.data.tags["dlexp.sweep_job"] for run in kinds["job"]) == ["0", "1", "2"]
    assert {run.info.status for run in kinds["job"]} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in kinds["job"]} == {sweep.info.run_id}
    for job in kinds["job"]:
        folds = [f for f in kinds["fold"] if f.data.tags["mlflow.parentRunId"] == job.info.run_id]
        assert len(folds) == 5 and {f.info.status for f in folds} == {"FINISHED"}
        assert all(len(client.get_metric_history(f.info.run_id, "val_loss")) == 3 for f in folds)
    assert sweep.data.metrics["jobs_finished"] == 3
    assert (sweep_dir / "sweep_jobs.csv").read_text().count(",FINISHED,") == 3

    # Pictures come back through the server's artifact API (the jobs sent them over HTTP).
    job = kinds["job"][0]
    fold = next(f for f in kinds["fold"] if f.data.tags["mlflow.parentRunId"] == job.info.run_id)
    pictures = [(job.info.run_id, "plots/loss_curves.png"), (job.info.run_id, "plots/decision_boundary_test.png"),
                (fold.info.run_id, "loss_curve.png")]
    for run_id, path in pictures:
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        with urllib.request.urlopen(f"{server}/get-artifact?{query}", timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_scancel_ends_the_job_killed_a_silent_death_fails_it_and_the_rerun_runs_only_those(server, tmp_path):
    # Job 0 finishes at once; job 1 is cancelled with scancel and job 2 SIGKILLed, each after its first fold.
    command = [*SLURM, *LONG, "trainer.max_epochs=3,400,401", f"tracking.uri={server}",
               "tracking.experiment_name=faults"]
    client = MlflowClient(server)
    sweep = start_sweep(*command, f"hydra.sweep.dir={tmp_path}/sweep")
    try:
        wait_for_first_fold(client, "faults", 1)
        subprocess.run(["scancel", slurm_jobs(tmp_path / "sweep")[1]], check=True)
        wait_for_first_fold(client, "faults", 2)
        subprocess.run(["kill", "-KILL", str(job_pid(slurm_jobs(tmp_path / "sweep")[2]))], check=True)
        _, stderr = sweep.communicate(timeout=240)  # never hangs on the dead job
    finally:
        sweep.kill()
    assert sweep.returncode == 2, stderr[-3000:]
    errors = error_lines(stderr)
    assert len(errors) == 2, stderr[-3000:]  # one line per failed job, no traceback
    assert errors[0].startswith("error: job #1 (") and "ended CANCELLED" in errors[0]
    assert errors[1].startswith("error: job #2 (") and "ended FAILED" in errors[1]
    assert "Traceback" not in stderr

    kinds = runs(client, "faults")
    jobs = {int(run.data.tags["dlexp.sweep_job"]): run for run in kinds["job"]}
    assert {num: run.info.status for num, run in jobs.items()} == {0: "FINISHED", 1: "KILLED", 2: "FAILED"}
    for num in (1, 2):  # the fold each finished is kept with all its metrics; the one in training ends too
        folds = {f.data.tags["dlexp.fold"]: f for f in kinds["fold"]
                 if f.data.tags["mlflow.parentRunId"] == jobs[num].info.run_id}
        assert folds["1"].info.status == "FINISHED"
        assert {run.info.status for fold, run in folds.items() if fold != "1"} <= {jobs[num].info.status}
        assert len(client.get_metric_history(folds["1"].info.run_id, "val_loss")) == 400 + num - 1
    assert "RUNNING" not in {run.info.status for run in client.search_runs(
        [client.get_experiment_by_name("faults").experiment_id], max_results=1000)}
    assert [row["status"] for row in jobs_table(tmp_path / "sweep")] == ["FINISHED", "KILLED", "FAILED"]

    # The same command again: job 0 is reused, jobs 1 and 2 run again and finish.
    rerun = run_dlexp(*command, f"hydra.sweep.dir={tmp_path}/again", timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = jobs_table(tmp_path / "again")
    assert [(row["status"], row["reused"]) for row in rows] == [
        ("FINISHED", "True"), ("FINISHED", "False"), ("FINISHED", "False")]
    assert len(runs(client, "faults")["sweep"]) == 1  # the same sweep run, resumed


def jobs_table(sweep_dir: Path) -> list[dict[str, str]]:
    """The rows of the sweep's ``sweep_jobs.csv``, by column name."""
    with (sweep_dir / "sweep_jobs.csv").open(newline="") as table:
        return list(csv.DictReader(table))


def test_a_requeued_job_continues_its_run_from_its_checkpoints_and_ends_finished(server, tmp_path):
    sweep = start_sweep(*SLURM, *LONG, "trainer.max_epochs=3,400", f"tracking.uri={server}",
                        "tracking.experiment_name=requeue", f"hydra.sweep.dir={tmp_path}/sweep")
    client = MlflowClient(server)
    try:
        first = wait_for_first_fold(client, "requeue", 1)
        slurm_id = slurm_jobs(tmp_path / "sweep")[1]
        subprocess.run(["scontrol", "requeue", slurm_id], check=True)
        # SLURM holds a requeued job for a while (BeginTime); let it start as soon as it is pending.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
                break
            time.sleep(1)
        _, stderr = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    attempts = [run for run in runs(client, "requeue")["job"] if run.data.tags["dlexp.sweep_job"] == "1"]
    assert [run.info.run_id for run in attempts] == [first.info.run_id]  # its own run continued, no second one
    job = attempts[0]
    assert job.info.status == "FINISHED" and job.data.tags["dlexp.resumed"] == "1"
    assert "dlexp.error" not in job.data.tags  # the first attempt's interruption is over
    folds = [run for run in runs(client, "requeue")["fold"] if run.data.tags["mlflow.parentRunId"] == job.info.run_id]
    assert sorted(run.data.tags["dlexp.fold"] for run in folds) == ["1", "2"]  # fold 1 not trained again
    assert {run.info.status for run in folds} == {"FINISHED"}
    for fold in folds:  # every epoch once
        steps = [m.step for m in client.get_metric_history(fold.info.run_id, "val_loss")]
        assert steps == list(range(1, 401)), fold.data.tags["dlexp.fold"]
    table = jobs_table(tmp_path / "sweep")
    assert [row["status"] for row in table] == ["FINISHED", "FINISHED"]
    assert table[1]["run_id"] == job.info.run_id
    assert runs(client, "requeue")["sweep"][0].info.status == "FINISHED"
    assert not (Path(job.data.tags["dlexp.output_dir"]) / "FAILED.txt").exists()


def wait_for_epochs(client: MlflowClient, experiment: str, epochs: int, timeout: float = 240) -> None:
    """Wait until a fold run of ``experiment`` has logged ``epochs`` epochs (its job is in the middle of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_experiment_by_name(experiment) is not None:
            for fold in runs(client, experiment)["fold"]:
                if len(client.get_metric_history(fold.info.run_id, "val_loss")) >= epochs:
                    return
        time.sleep(0.5)
    raise AssertionError(f"no fold of {experiment} reached epoch {epochs} within {timeout} s")


def test_a_preempted_job_checkpoints_is_requeued_and_continues_its_run_to_finished(server, tmp_path):
    # scripts/slurm_cluster.sh: a job of partition `urgent` preempts the default partition's jobs (PreemptMode=
    # REQUEUE, GraceTime=60, preempt_send_user_signal: the job's --signal, submitit's USR2, comes at once). The
    # job takes the node's 2 CPUs, so the urgent job needs them; a preemption is not a time-out, so none of the
    # job's max_num_timeout requeues is used.
    epochs = 1000  # ~30 s a fold on a quiet node: the preemption comes in fold 1
    sweep_dir = tmp_path / "sweep"
    whole_node = [o for o in SLURM if "cpus_per_task" not in o] + ["hydra.launcher.cpus_per_task=2"]
    sweep = start_sweep(*whole_node, *LONG, f"trainer.max_epochs={epochs}", f"tracking.uri={server}",
                        "tracking.experiment_name=preempt", f"hydra.sweep.dir={sweep_dir}")
    client = MlflowClient(server)
    try:
        wait_for_epochs(client, "preempt", 20)
        (slurm_id,) = [path.name for path in (sweep_dir / ".submitit").glob("*") if path.name.isdigit()]
        urgent = subprocess.check_output(["sbatch", "--parsable", "-p", "urgent", "-c", "2", "-o", "/dev/null",
                                          "--wrap", "sleep 5"], text=True).strip()
        release_requeued(slurm_id, sweep)
        _, stderr = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    assert not error_lines(stderr) and "Traceback" not in stderr

    log = "".join(path.read_text() for path in sorted((sweep_dir / ".submitit" / slurm_id).glob("*_log.*")))
    assert "this job is preempted" in log and "checkpoint saved; the job is requeued" in log, log[-3000:]
    assert "(3 remaining timeouts)" in log, log[-3000:]  # hydra.launcher.max_num_timeout: all 3 left
    deadline = time.monotonic() + 60
    while True:  # SLURM's accounting may lag the jobs' end by a few seconds
        states = [row.split("|")[1] for row in subprocess.check_output(
            ["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", f"{slurm_id},{urgent}"], text=True).split()
            if row.split("|")[0] == slurm_id]
        urgent_state = subprocess.check_output(["sacct", "-X", "-n", "-P", "-o", "State", "-j", urgent],
                                               text=True).split()
        if (states[-1:] == ["COMPLETED"] and urgent_state == ["COMPLETED"]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert urgent_state == ["COMPLETED"]
    assert len(states) >= 2 and set(states[:-1]) <= {"PREEMPTED", "REQUEUED"} and states[-1] == "COMPLETED", states

    kinds = runs(client, "preempt")  # one job run, continued by the next attempt: each epoch once
    assert len(kinds["job"]) == 1 and kinds["sweep"][0].info.status == "FINISHED"
    job = kinds["job"][0]
    assert job.info.status == "FINISHED" and job.data.tags["dlexp.resumed"] == "1"
    assert "dlexp.error" not in job.data.tags
    assert sorted(fold.data.tags["dlexp.fold"] for fold in kinds["fold"]) == ["1", "2"]
    assert {fold.info.status for fold in kinds["fold"]} == {"FINISHED"}
    for fold in kinds["fold"]:
        steps = [m.step for m in client.get_metric_history(fold.info.run_id, "val_loss")]
        assert steps == list(range(1, epochs + 1)), fold.data.tags["dlexp.fold"]
    assert [row["status"] for row in jobs_table(sweep_dir)] == ["FINISHED"]


def test_a_search_runs_its_trials_as_slurm_jobs_that_report_to_a_study_in_postgres(server, postgres_admin_uri,
                                                                                   tmp_path):
    # The search (the lr=1e20 trial diverges) with its trials as SLURM array jobs, 2 at a time, and the
    # study in the team's PostgreSQL: the trials on the node reach it through its URL to report to the pruner.
    storage = new_database(postgres_admin_uri, "dlexp_test_cluster_study")
    sweep_dir = tmp_path / "sweep"
    result = run_dlexp(*SLURM, "hydra/sweeper=search", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                       f"hydra.sweeper.storage={storage}", "hydra.sweeper.pruner.n_startup_trials=1",
                       "hydra.sweeper.report_every=1", "trainer.max_epochs=3", "trainer.folds=2",
                       # the space searched is exactly this (no ready keys added): the continuous dropout keeps
                       # every trial's config its own, so none is reused from an identical earlier trial
                       "optimizer.lr=choice(0.01, 1e20)", "model.dropout=interval(0.0, 0.3)",
                       f"tracking.uri={server}", "tracking.experiment_name=cluster_search",
                       f"hydra.sweep.dir={sweep_dir}", timeout=900)
    assert result.returncode == 2, result.stderr[-3000:]  # a failed trial: the search went on, then exit 2
    assert "Traceback" not in result.stderr

    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert len(trials) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["optimizer.lr"] == 1e20 for t in failed)
    others = [t for t in trials if t.state != TrialState.FAIL]
    assert others and {t.state for t in others} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.params["optimizer.lr"] == 0.01 and t.intermediate_values for t in others)  # reported from the node
    assert sorted(int(line.split("#")[1].split()[0]) for line in error_lines(result.stderr)) == sorted(
        t.number for t in failed)

    # Every trial was a SLURM job: one array of 2 tasks per batch (submitit's folders are ARRAY_TASK).
    tasks = [folder.name.split("_") for folder in (sweep_dir / ".submitit").iterdir()
             if re.fullmatch(r"\d+_\d+", folder.name)]
    assert len(tasks) == 4 and len({array for array, _ in tasks}) == 2 and {task for _, task in tasks} == {"0", "1"}

    client = MlflowClient(server)
    kinds = runs(client, "cluster_search")
    assert len(kinds["sweep"]) == 1 and len(kinds["job"]) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in kinds["job"]} == {kinds["sweep"][0].info.run_id}
    by_run = {run.info.run_id: run for run in kinds["job"]}
    expected = {TrialState.FAIL: "FAILED", TrialState.PRUNED: "KILLED", TrialState.COMPLETE: "FINISHED"}
    for trial in trials:
        assert by_run[trial.user_attrs["dlexp.run_id"]].info.status == expected[trial.state]
    assert "RUNNING" not in {run.info.status for kind in kinds.values() for run in kind}
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.study == summary.study_name and results.storage.startswith("postgresql://")
    assert dict(results.trials)["FAIL"] == len(failed)


def test_a_trial_cancelled_with_scancel_is_a_failed_trial_and_the_search_goes_on(server, tmp_path):
    # Two trials on the node at once; trial 1's SLURM job is cancelled after its first fold. The search records
    # it FAIL (its run KILLED), keeps trial 0's result, writes its results file and exits 2 with one line.
    sweep_dir = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = start_sweep(*SLURM, *LONG, "hydra/sweeper=search", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                         f"hydra.sweeper.storage={storage}", "hydra.sweeper.pruner=none", "trainer.max_epochs=400",
                         "optimizer.lr=choice(0.01, 0.003)", f"tracking.uri={server}",
                         "tracking.experiment_name=cluster_search_cancel", f"hydra.sweep.dir={sweep_dir}")
    client = MlflowClient(server)
    try:
        wait_for_first_fold(client, "cluster_search_cancel", 1)
        subprocess.run(["scancel", slurm_jobs(sweep_dir)[1]], check=True)
        _, stderr = search.communicate(timeout=300)
    finally:
        search.kill()
    assert search.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1 and errors[0].startswith("error: job #1 (") and "ended CANCELLED" in errors[0], \
        stderr[-3000:]

    trials = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    jobs = {int(run.data.tags["dlexp.sweep_job"]): run for run in runs(client, "cluster_search_cancel")["job"]}
    assert {num: run.info.status for num, run in jobs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert {t.user_attrs["dlexp.run_id"] for t in trials} == {run.info.run_id for run in jobs.values()}
    assert "RUNNING" not in {run.info.status for kind in runs(client, "cluster_search_cancel").values() for run in kind}
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert dict(results.trials) == {"COMPLETE": 1, "PRUNED": 0, "FAIL": 1, "INTERRUPTED": 0}
    assert results.best_trial == 0


#: Epochs per fold, one fold after the other, no early stop: longer than two attempts can train on a fast node.
#: The warning comes at most ~59 s into an attempt, and a job of 2 x 4000 epochs needed only one requeue in a
#: CI run (its first attempt was warned 59 s in, and it trained ~95 epochs/s: 2272 epochs in 24 s); 2 x 7000
#: epochs are ~150 s there: at least 2 requeues.
EPOCHS = 7000
#: No MLflow models: after its training, a job's last attempt has its pictures, summary and model.pt to make
#: before its warning (models would add ~1 s more), and a busy node takes ~30 s to start an attempt.
TIMED = ["+experiment=spiral", "plots.grid_resolution=20", "trainer.strategy=sequential", "trainer.folds=2",
         f"trainer.max_epochs={EPOCHS}", "trainer.patience=null", "tracking.log_models=false"]


def release_requeued(array_id: str, sweep: subprocess.Popen) -> None:
    """While the sweep runs: start each requeued attempt as soon as it is pending (SLURM holds a requeued job
    for a while, BeginTime), so the test waits for the work, not for SLURM's hold."""
    while sweep.poll() is None:
        listed = subprocess.run(["squeue", "-h", "-j", array_id, "-o", "%i %T"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            job, state = (line.split() + [""])[:2]
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(1)


def epoch_of(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, weights_only=True)["epoch"])


def fold_epochs(client: MlflowClient, job) -> dict[str, dict[str, list]]:
    """Per fold of a job run: every logged (step, value) of its per-epoch metrics."""
    experiment = job.info.experiment_id
    folds = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{job.info.run_id}'")
    return {fold.data.tags["dlexp.fold"]: {key: sorted((m.step, m.value) for m in client.get_metric_history(
        fold.info.run_id, key)) for key in ("train_loss", "val_loss", "val_acc", "lr")} for fold in folds}


def test_a_job_past_its_time_limit_is_requeued_until_it_finishes_with_an_uninterrupted_runs_numbers(server, tmp_path):
    # timeout_min=1: SLURM's time checks come every 30 s and may send the warning up to 60 s early, so with
    # signal_delay_s=1 each attempt gets it 29-59 s in (measured: ~30 s), at least 30 s before its limit. The job
    # checkpoints at the epoch's end and is requeued, its next attempt continuing the same MLflow run.
    local_log = tmp_path / "local.log"  # a file, not a pipe: nobody reads it while both run
    with local_log.open("w") as log_file:
        local = subprocess.Popen([sys.executable, "-m", "dlexp", *TIMED, "tracking.experiment_name=time_limit",
                                  "trainer.progress=false",
                                  f"tracking.uri=sqlite:///{tmp_path}/local.db", f"hydra.run.dir={tmp_path}/local"],
                                 cwd=ROOT, env=dlexp_env(), stdout=log_file, stderr=subprocess.STDOUT)
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep("-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                        "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=1",
                        "hydra.launcher.max_num_timeout=30", *TIMED, "tracking.experiment_name=time_limit",
                        f"tracking.uri={server}",
                        f"hydra.sweep.dir={sweep_dir}")
    try:
        deadline = time.monotonic() + 60
        while not (submitted := [path.name for path in sweep_dir.glob(".submitit/*") if path.name.isdigit()]):
            assert sweep.poll() is None and time.monotonic() < deadline, "the sweep submitted no job"
            time.sleep(0.5)
        (slurm_id,) = submitted  # one job: submitit submits it alone, not as an array
        release_requeued(slurm_id, sweep)
        _, stderr = sweep.communicate(timeout=1200)
        local.wait(timeout=600)
    finally:
        sweep.kill()
        local.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    assert local.returncode == 0, local_log.read_text()[-3000:]
    assert not error_lines(stderr) and "Traceback" not in stderr

    # SLURM ran it several times: every attempt but the last was requeued after its warning.
    deadline = time.monotonic() + 60
    while True:  # SLURM's accounting may lag the job's end by a few seconds
        attempts = subprocess.check_output(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", slurm_id],
                                           text=True).split()
        states = [row.split("|")[1] for row in attempts]
        if states[-1:] == ["COMPLETED"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    requeued = states.count("REQUEUED")
    log = "".join(path.read_text() for path in sorted((sweep_dir / ".submitit" / slurm_id).glob("*_log.*")))
    assert requeued >= 2 and states[-1] == "COMPLETED" and len(states) == requeued + 1, f"{states}\n{log[-6000:]}"
    assert log.count("checkpoint saved; the job is requeued") == requeued, log[-3000:]

    # The sweep reports one job: one run, FINISHED, continued by every requeued attempt, each epoch once.
    client = MlflowClient(server)
    kinds = runs(client, "time_limit")
    assert len(kinds["job"]) == 1 and len(kinds["fold"]) == 2 and kinds["sweep"][0].info.status == "FINISHED"
    job = kinds["job"][0]
    # (an attempt that got its warning before it reached its run, on a busy node, continues none)
    assert job.info.status == "FINISHED" and 2 <= int(job.data.tags["dlexp.resumed"]) <= requeued
    assert "dlexp.error" not in job.data.tags
    assert {run.info.status for run in kinds["fold"]} == {"FINISHED"}
    table = jobs_table(sweep_dir)
    assert [(row["status"], row["run_id"]) for row in table] == [("FINISHED", job.info.run_id)]

    # ... with the numbers of the same training never interrupted (run here, without SLURM).
    folder = Path(job.data.tags["dlexp.output_dir"])
    summary = {name: json.loads((path / "summary.json").read_text()) for name, path in
               (("slurm", folder), ("local", tmp_path / "local"))}
    for numbers in summary.values():
        numbers.pop("train_seconds")  # wall time: the one number no two runs share
    assert summary["slurm"] == summary["local"]
    assert (folder / "model.pt").read_bytes() == (tmp_path / "local" / "model.pt").read_bytes()
    local_client = MlflowClient(f"sqlite:///{tmp_path}/local.db")
    (local_job,) = runs_by_kind(local_client, "time_limit")[1]
    epochs = fold_epochs(client, job)
    assert epochs == fold_epochs(local_client, local_job)
    assert all([step for step, _ in history["val_loss"]] == list(range(1, EPOCHS + 1)) for history in epochs.values())


def test_past_max_num_timeout_the_job_ends_killed_with_its_checkpoint_and_the_sweep_says_why(server, tmp_path):
    # A 2-minute limit (the warning 60-119 s in), so that even a busy node is training fold 1 by then, and fold 1
    # of 20000 epochs (~5 min on a quiet node) has not ended on a fast one.
    sweep_dir = tmp_path / "sweep"
    result = run_dlexp("-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                       "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=1",
                       "hydra.launcher.max_num_timeout=0", *(o for o in TIMED if "max_epochs" not in o),
                       "trainer.max_epochs=20000", "tracking.experiment_name=time_limit_0", f"tracking.uri={server}",
                       f"hydra.sweep.dir={sweep_dir}", timeout=400)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: job #0 (") and line.endswith(
        "): time limit reached, not requeued (hydra.launcher.max_num_timeout=0 requeues used up); its MLflow run "
        "ended KILLED with its checkpoints: the same command again continues it"), line
    kinds = runs(MlflowClient(server), "time_limit_0")
    (job,) = kinds["job"]
    assert job.info.status == "KILLED" and job.data.tags["dlexp.error"] == "Interrupted: stopped by SIGUSR2"
    assert [run.info.status for run in kinds["fold"]] == ["KILLED"]  # SLURM's warning came in fold 1
    assert epoch_of(Path(job.data.tags["dlexp.output_dir"]) / "checkpoints" / "fold_1.pt") > 0
    assert [row["status"] for row in jobs_table(sweep_dir)] == ["KILLED"]
