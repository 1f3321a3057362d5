"""Shared by the sweep and server tests: run ``python -m dlexp`` as users do, read what MLflow holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Tiny trainings: the tests check what is logged and how runs end, not what is learned.
TINY_WITH_MODELS = ["+experiment=spiral", "trainer.max_epochs=3", "trainer.folds=2", "plots.grid_resolution=20"]
# ... without MLflow models, whose export (~7 s of CPU a process, most of a tiny run's) only the tests of
# models need (test_mlflow_models.py, test_models_on_server.py)
TINY = [*TINY_WITH_MODELS, "tracking.log_models=false"]


def dlexp_env() -> dict[str, str]:
    """This checkout's dlexp first on the path, also for the launchers' worker processes."""
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)  # it switches MLflow's store into its own test-only checks
    return env


def run_dlexp(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=dlexp_env(),
                          capture_output=True, text=True, timeout=timeout)


def stop_when(ready: Callable[[], bool], *args: str, timeout: float = 240) -> tuple[int, str]:
    """Start ``python -m dlexp *args``, send it SIGTERM (as ``kill`` does) once ``ready()`` holds; its exit code
    and standard error. Fails if the command ends before that."""
    process = subprocess.Popen([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=dlexp_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the command ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, stderr


def sqlite_store(tmp_path: Path) -> list[str]:
    """Overrides that put the MLflow store and the sweep folder under ``tmp_path``."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/artifacts",
            f"hydra.sweep.dir={tmp_path}/sweep", f"hydra.run.dir={tmp_path}/run"]


def runs_by_kind(client, experiment_name: str) -> tuple[list, list, list]:
    """(sweep runs, job runs, fold runs) of an experiment, told apart by dlexp's tags."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    sweeps = [r for r in runs if r.data.tags.get("dlexp.kind") == "sweep"]
    folds = [r for r in runs if "dlexp.fold" in r.data.tags]
    jobs = [r for r in runs if "dlexp.config_hash" in r.data.tags]
    return sweeps, jobs, folds
