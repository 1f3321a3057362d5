"""Relative paths are read from the folder dlexp started in, also with ``hydra.job.chdir=True`` (issue #23
fault 4): data files, image folders, caches, SQLite stores, artifact folders; errors say where they looked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK, compose_config
from mlflow.tracking import MlflowClient
from sweep_support import dlexp_env, runs_by_kind

from dlexp.config.paths import absolute_paths, absolute_uri


def test_every_path_valued_setting_is_made_absolute_against_the_start_folder(tmp_path):
    start = tmp_path / "start"
    cfg = compose_config(["+experiment=insects", "dataset.csv=my/Insects.csv", "dataset.images=my/Insects.zip",
                          "dataset.cache_dir=.cache", "tracking.uri=sqlite:///rel.db", "tracking.artifact_location=art",
                          "+dataset.labels_file=../labels.txt", "+dataset.data_dir='~/data'"])
    changed = absolute_paths(cfg, start)
    assert cfg.dataset.csv == f"{start}/my/Insects.csv" and cfg.dataset.images == f"{start}/my/Insects.zip"
    assert cfg.dataset.cache_dir == f"{start}/.cache" and cfg.tracking.artifact_location == f"{start}/art"
    assert cfg.tracking.uri == f"sqlite:///{start}/rel.db"
    assert cfg.dataset.labels_file == f"{tmp_path}/labels.txt"  # a path setting of one's own, by its name
    assert cfg.dataset.data_dir == str(Path.home() / "data")
    assert set(changed) == {"dataset.csv", "dataset.images", "dataset.cache_dir", "tracking.uri",
                            "tracking.artifact_location", "dataset.labels_file", "dataset.data_dir"}
    assert cfg.dataset.label_column == "species" and cfg.dataset.name == "insects"  # names are not paths
    assert absolute_paths(cfg, tmp_path / "elsewhere") == {}  # absolute ones stay


@pytest.mark.parametrize("uri", ["sqlite:////abs/m.db", "sqlite://", "sqlite:///:memory:", "http://h:5000",
                                 "postgresql://u@h/db", "file:///abs/mlruns"])
def test_uris_that_are_not_relative_files_stay_as_they_are(uri, tmp_path):
    assert absolute_uri(uri, tmp_path) == uri


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dlexp_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.full
def test_a_run_in_its_own_folder_reads_data_and_store_from_where_it_started(tmp_path):
    """The issue's steps: "data file not found" (looked for in the run folder), then a store made inside it
    while the closing lines opened another, empty one."""
    from dlexp.data.spiral import main as write_spiral

    write_spiral(["--out", str(tmp_path / "data"), "--points-per-arm", "60"])
    common = ["+experiment=spiral", *QUICK, "hydra.job.chdir=True", "tracking.uri=sqlite:///rel.db",
              "tracking.artifact_location=art", "hydra.run.dir=runs/one", "dataset.test_path=data/testData.txt"]
    result = run_in(tmp_path, *common, "dataset.train_path=data/trainData.txt")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/rel.db")
    _, (job,), _ = runs_by_kind(client, "spiral")
    assert job.info.status == "FINISHED"
    assert not list((tmp_path / "runs").rglob("*.db"))  # no store in the run folder
    assert list((tmp_path / "art").rglob("model.pt"))  # artifacts where tracking.artifact_location said
    see = next(line for line in (result.stdout + result.stderr).splitlines() if "see it:" in line)
    assert see.endswith(f"python -m dlexp.server --backend-store-uri sqlite:///{tmp_path}/rel.db --port 5000")
    missing = run_in(tmp_path, *common, "dataset.train_path=data/nope.txt", "hydra.run.dir=runs/two")
    assert missing.returncode == 2
    assert f"error: {tmp_path}/data/nope.txt: data file not found" in missing.stderr.splitlines()


@pytest.mark.full
def test_a_sweep_whose_jobs_run_in_their_own_folders_nests_them_in_the_store_it_started_with(tmp_path):
    from dlexp.data.spiral import main as write_spiral

    write_spiral(["--out", str(tmp_path / "data"), "--points-per-arm", "60"])
    result = run_in(tmp_path, "-m", "+experiment=spiral", *QUICK, "hydra.job.chdir=True", "hydra.sweep.dir=sweep",
                    "tracking.uri=sqlite:///rel.db", "tracking.artifact_location=art", "optimizer.lr=0.01,0.1",
                    "dataset.train_path=data/trainData.txt", "dataset.test_path=data/testData.txt")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,), jobs, _ = runs_by_kind(MlflowClient(f"sqlite:///{tmp_path}/rel.db"), "spiral")
    assert len(jobs) == 2 and {job.data.tags["mlflow.parentRunId"] for job in jobs} == {sweep.info.run_id}
    assert not list((tmp_path / "sweep").rglob("*.db"))
    output = result.stdout + result.stderr
    assert f"python -m dlexp.server --backend-store-uri sqlite:///{tmp_path}/rel.db --port 5000" in output
