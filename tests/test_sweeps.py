"""Sweeps end to end, as users run them: parallel jobs into one SQLite store, one parent run per sweep,
resuming after a failure, SIGTERM ending a run KILLED, and the cluster launcher config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sweep_support import ROOT, TINY, dlexp_env, run_dlexp, runs_by_kind, sqlite_store, stop_when


@pytest.mark.full
def test_parallel_sweep_of_4_jobs_on_2_workers_logs_into_one_store_under_one_sweep_run(tmp_path):
    result = run_dlexp("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *TINY,
                       "optimizer.lr=0.01,0.003", "model.hidden_dims=[64,32],[16]",
                       "trainer.num_threads=null", "tracking.experiment_name=parallel",
                       *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr + result.stdout
    assert "error" not in result.stderr.lower()

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, folds = runs_by_kind(client, "parallel")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    sweep = sweeps[0]
    assert len(jobs) == 4 and {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweep.info.run_id}
    assert sorted(r.data.tags["dlexp.sweep_job"] for r in jobs) == ["0", "1", "2", "3"]
    assert len({r.data.tags["dlexp.config_hash"] for r in jobs}) == 4
    # Each job's folds are nested under that job.
    assert len(folds) == 8 and {r.info.status for r in folds} == {"FINISHED"}
    job_ids = {r.info.run_id for r in jobs}
    assert all(sum(f.data.tags["mlflow.parentRunId"] == j for f in folds) == 2 for j in job_ids)
    # joblib sizes each worker's torch threads to cores // workers when the config leaves them free.
    assert {r.data.tags["dlexp.torch_threads"] for r in jobs} == {str(max(joblib.cpu_count() // 2, 1))}

    # The sweep run holds the jobs table and names the best job by validation accuracy.
    table = json.loads((tmp_path / "artifacts" / sweep.info.run_id / "artifacts" / "sweep_jobs.json")
                       .read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert sorted(row["job"] for row in rows) == [0, 1, 2, 3]
    assert {row["run_id"] for row in rows} == job_ids
    for row in rows:
        run = client.get_run(row["run_id"])
        assert row["val_acc_mean"] == pytest.approx(run.data.metrics["val_acc_mean"])
        assert row["overrides"] == run.data.tags["dlexp.overrides"]
    best = max(jobs, key=lambda r: r.data.metrics["val_acc_mean"])
    assert sweep.data.tags["dlexp.best_run_id"] == best.info.run_id
    assert sweep.data.metrics["best_val_acc_mean"] == pytest.approx(best.data.metrics["val_acc_mean"])
    assert sweep.data.metrics["jobs_finished"] == 4
    assert (tmp_path / "sweep" / "sweep_jobs.csv").read_text().count("FINISHED") == 4


@pytest.mark.full  # two whole dlexp processes at once, ~28 s of CPU
def test_two_runs_started_together_on_a_new_store_both_finish(tmp_path):
    # Without the lock beside the store, one of the two dies in MLflow's schema creation (seen 3 times
    # out of 3: "duplicate column name").
    command = [sys.executable, "-m", "dlexp", *TINY, "tracking.experiment_name=together",
               f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts"]
    processes = [subprocess.Popen([*command, f"hydra.run.dir={tmp_path}/run{i}"], cwd=ROOT, env=dlexp_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [process.communicate(timeout=240) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    _, jobs, _ = runs_by_kind(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "together")
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}


def write_points(path, source, broken: bool) -> None:
    text = source.read_text()
    path.write_text(text + "1.0 0.5\n" if broken else text)  # a ragged last row is a user error


@pytest.mark.full
def test_rerun_sweep_resumes_only_the_failed_job(tmp_path):
    source = ROOT / "data" / "trainData.txt"
    names = [tmp_path / f"train_{name}.txt" for name in "abc"]
    for path in names:
        write_points(path, source, broken=path.name == "train_b.txt")
    command = ["-m", *TINY, "tracking.experiment_name=resume", *sqlite_store(tmp_path),
               "dataset.train_path=" + ",".join(str(p) for p in names)]

    first = run_dlexp(*command)
    assert first.returncode == 2
    assert "error: job #1" in first.stderr and "train_b.txt" in first.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, _ = runs_by_kind(client, "resume")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FAILED"
    first_runs = {r.data.tags["dlexp.sweep_job"]: r.info.run_id for r in jobs}
    assert sorted(first_runs) == ["0", "2"] and {r.info.status for r in jobs} == {"FINISHED"}

    write_points(names[1], source, broken=False)  # the cause fixed, the same command again
    second = run_dlexp(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    records = {r["job"]: r for r in (json.loads((tmp_path / "sweep" / str(n) / "dlexp_job.json").read_text())
                                     for n in range(3))}
    assert [records[n]["reused"] for n in range(3)] == [True, False, True]
    assert records[0]["run_id"] == first_runs["0"] and records[2]["run_id"] == first_runs["2"]

    sweeps, jobs, _ = runs_by_kind(client, "resume")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"  # the same sweep run, resumed
    assert len(jobs) == 3 and {r.info.status for r in jobs} == {"FINISHED"}  # no duplicates
    assert len({r.data.tags["dlexp.config_hash"] for r in jobs}) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweeps[0].info.run_id}
    assert sweeps[0].data.metrics["jobs_finished"] == 3
    # The jobs table of the resumed sweep lists each job once (MLflow's log_table would append).
    table = json.loads((tmp_path / "artifacts" / sweeps[0].info.run_id / "artifacts" / "sweep_jobs.json")
                       .read_text())
    assert sorted(row[table["columns"].index("job")] for row in table["data"]) == [0, 1, 2]

    forced = run_dlexp(*command, "tracking.resume=false")  # the flag that forces a rerun
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert len(runs_by_kind(client, "resume")[1]) == 6


@pytest.mark.full
def test_sigterm_ends_the_run_killed_and_keeps_the_finished_folds(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def a_fold_finished() -> bool:
        if not (tmp_path / "mlflow.db").exists() or client.get_experiment_by_name("sigterm") is None:
            return False
        return any(r.info.status == "FINISHED" for r in runs_by_kind(client, "sigterm")[2])

    returncode, stderr = stop_when(
        a_fold_finished, "+experiment=spiral", "trainer.folds=3", "trainer.max_epochs=400", "trainer.patience=400",
        "plots.grid_resolution=20", "tracking.experiment_name=sigterm", "tracking.log_models=false",
        "trainer.strategy=sequential",  # folds finish one by one
        f"hydra.run.dir={tmp_path / 'run'}", *sqlite_store(tmp_path), timeout=180)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    line = "interrupted: stopped by SIGTERM; the MLflow run ended KILLED"  # once on the terminal, and in the log
    assert stderr.count("interrupted:") == 1 and line in stderr
    assert f"[dlexp][WARNING] - {line}" in (tmp_path / "run" / "dlexp.log").read_text()

    _, jobs, folds = runs_by_kind(client, "sigterm")
    assert len(jobs) == 1 and jobs[0].info.status == "KILLED"
    assert "stopped by SIGTERM" in jobs[0].data.tags["dlexp.error"]
    finished = [r for r in folds if r.info.status == "FINISHED"]
    assert finished and len(finished) < 3 and all(r.info.status in ("FINISHED", "KILLED") for r in folds)
    fold = finished[0]
    assert {"best_val_loss", "test_acc", "best_epoch"} <= set(fold.data.metrics)
    history = client.get_metric_history(fold.info.run_id, "val_loss")
    assert len(history) == fold.data.metrics["epochs_run"] == 400
    assert (tmp_path / "run" / "FAILED.txt").read_text().startswith("KILLED: Interrupted: stopped by SIGTERM")
    assert not (tmp_path / "run" / "summary.json").exists()


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc), e.g. the joblib launcher's workers."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def is_running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def stop_sweep_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # `kill PID`: only the sweep's own process gets it


def press_ctrl_c(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the group gets it


@pytest.mark.parametrize(("stop", "code", "message"), [
    (stop_sweep_process, 128 + signal.SIGTERM, "interrupted: stopped by SIGTERM"),
    (press_ctrl_c, 128 + signal.SIGINT, "interrupted: Ctrl-C"),
], ids=["sigterm-to-sweep", "ctrl-c"])
@pytest.mark.full
def test_stopping_a_parallel_sweep_ends_every_run_killed_and_leaves_no_worker(tmp_path, stop, code, message):
    # After `kill`, joblib SIGKILLs its workers, whose runs cannot end themselves: the sweep must end them,
    # or they stay RUNNING forever. After Ctrl-C, each job may end its own run first.
    command = [sys.executable, "-m", "dlexp", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
               "+experiment=spiral", "trainer.folds=3", "trainer.max_epochs=400", "trainer.patience=400",
               "trainer.strategy=sequential", "plots.grid_resolution=20", "optimizer.lr=0.01,0.003",
               "tracking.log_models=false",
               "tracking.experiment_name=stop_sweep", *sqlite_store(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, env=dlexp_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,  # its own group
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Not before the sweep has set the store up: an MlflowClient creates a missing store itself.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "sweep" / "mlflow_sweep.json").exists():
                client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
                _, jobs, folds = runs_by_kind(client, "stop_sweep")
                if sum(r.info.status == "RUNNING" for r in jobs) == 2 and len(folds) >= 2:  # both training
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be stopped"
        workers = child_pids(process.pid)
        stop(process)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, stderr[-3000:]
    assert message in stderr and "Traceback" not in stderr

    sweeps, jobs, folds = runs_by_kind(client, "stop_sweep")
    assert len(sweeps) == 1 and sweeps[0].info.status == "KILLED"
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"KILLED"}
    assert folds and {r.info.status for r in folds} <= {"FINISHED", "KILLED"}  # nothing left RUNNING
    for job in jobs:
        folder = Path(job.data.tags["dlexp.output_dir"])
        assert (folder / "FAILED.txt").read_text().startswith("KILLED: ")
        assert not (folder / "summary.json").exists()
    assert (tmp_path / "sweep" / "sweep_jobs.csv").read_text().count("KILLED") == 2
    deadline = time.monotonic() + 10
    while any(is_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not any(is_running(pid) for pid in workers)


@pytest.mark.full
def test_optuna_search_maximises_validation_accuracy_and_is_one_sweep_run(tmp_path):
    result = run_dlexp("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", *TINY,
                       "tracking.experiment_name=search", *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, _ = runs_by_kind(client, "search")
    assert len(sweeps) == 1 and len(jobs) == 3 and {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweeps[0].info.run_id}
    # Optuna maximised what the jobs returned: the same metric that names the sweep's best job.
    optuna = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    best = max(jobs, key=lambda r: r.data.metrics["val_acc_mean"])
    assert optuna.best_value == pytest.approx(best.data.metrics["val_acc_mean"])
    assert sweeps[0].data.tags["dlexp.best_run_id"] == best.info.run_id
    assert f"optimizer.lr={optuna.best_params['optimizer.lr']}" in best.data.tags["dlexp.overrides"].split()


def test_slurm_launcher_config_composes_with_cluster_settings():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.gpus_per_node=1"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 60)
    assert launcher.setup == ["export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"]
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "dlexp.sweeps.sweep.SweepRun"
