"""The example project (examples/own_project) run as a user runs it: copied to a folder outside the checkout,
``python -m dlexp --config-dir conf ...`` started there, its own model, data and experiment; its results read
back from the MLflow store in that folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sweep_support import ROOT, dlexp_env, runs_by_kind

from dlexp.config.build import build

EXAMPLE = ROOT / "examples" / "own_project"


@pytest.fixture
def project(tmp_path_factory) -> Path:
    """A copy of the example in a temporary folder (outside the checkout)."""
    folder = tmp_path_factory.mktemp("user") / "own_project"
    shutil.copytree(EXAMPLE, folder,
                    ignore=shutil.ignore_patterns("outputs", "mlflow.db*", "mlartifacts", "optuna.db", "__pycache__"))
    assert ROOT not in folder.parents
    return folder


def run_in(folder: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**dlexp_env(), "PYTHONPATH": str(ROOT)}  # this worktree's dlexp, nothing of the project on the path
    return subprocess.run([sys.executable, "-m", "dlexp", "--config-dir", "conf", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.full  # a whole dlexp process: ~15 s of CPU
def test_the_example_trains_its_own_model_on_its_own_data_into_its_own_store(project):
    result = run_in(project, "+experiment=moons", "trainer.max_epochs=25", "trainer.folds=2", "trainer.progress=false",
                    "plots.grid_resolution=20")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")  # the experiment puts its store in the project folder
    _, (job,), folds = runs_by_kind(client, "moons")
    assert job.info.status == "FINISHED" and len(folds) == 2
    assert job.data.params["model._target_"] == "mynet.TinyNet" and job.data.params["model.width"] == "16"
    assert job.data.params["dataset._target_"] == "mydata.moons" and job.data.tags["dlexp.dataset"] == "moons"
    assert job.data.params["model.n_params"] == str((2 * 16 + 16) + (16 * 2 + 2))
    assert job.data.metrics["test_acc"] > 0.85  # two noisy moons: a linear model stays near 0.85, TinyNet above
    assert "model.pt" in [f.path for f in client.list_artifacts(job.info.run_id)]
    assert list(project.glob("outputs/*/*/model.pt"))  # the run folder in the project folder too


@pytest.mark.full
def test_a_search_over_its_own_models_width_searches_its_space_only(project):
    result = run_in(project, "-m", "+experiment=moons", "+hparams_search=width", "hydra.sweeper.n_trials=4",
                    "hydra.sweeper.n_jobs=2", "trainer.max_epochs=6", "trainer.folds=2", "trainer.progress=false",
                    "plots.grid_resolution=20")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    (sweep,), jobs, folds = runs_by_kind(client, "moons")
    assert sweep.info.status == "FINISHED" and len(jobs) == 4 and len(folds) == 8
    assert {job.data.tags["mlflow.parentRunId"] for job in jobs} == {sweep.info.run_id}
    assert all(job.data.params["model._target_"] == "mynet.TinyNet" for job in jobs)
    assert {job.data.params["model.width"] for job in jobs} <= {"2", "4", "8", "32"}
    assert all(0 <= job.data.metrics["val_acc_mean"] <= 1 for job in jobs)
    # the hparams_search file's space is the whole space: no ready key (batch size, dropout) was added
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{project}/optuna.db")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{project}/optuna.db")
    assert {key for trial in study.trials for key in trial.params} == {"model.width", "optimizer.lr"}
    (results,) = (project / "outputs" / "multirun").glob("*/*/optimization_results.yaml")
    command = OmegaConf.load(results).best_command
    assert command.startswith("python -m dlexp --config-dir conf +experiment=moons"), command


def test_the_folder_dlexp_starts_in_is_importable_without_python_m(tmp_path, monkeypatch):
    """The ``dlexp`` console script has its bin/ folder, not the current one, first on sys.path."""
    (tmp_path / "elsewhere_net.py").write_text((EXAMPLE / "mynet.py").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())])
    model = build("model", OmegaConf.create({"_target_": "elsewhere_net.TinyNet", "width": 3}),
                  input_shape=(2,), num_classes=4)
    assert type(model).__name__ == "TinyNet" and str(tmp_path) in sys.path


@pytest.mark.parametrize(("files", "target", "message"), [
    ({}, "absent_net.TinyNet", "model: cannot import absent_net.TinyNet (ModuleNotFoundError: No module named "
                               "'absent_net'); expected absent_net.py in the folder dlexp runs in ({cwd}) or its "
                               "folder on PYTHONPATH"),
    ({"typo_net.py": "class TinyNet: ..."}, "typo_net.TinyNett",
     "model: typo_net ({cwd}/typo_net.py) has no 'TinyNett'; expected the class or function the _target_ names"),
    ({"broken_net.py": "def (\n"}, "broken_net.TinyNet",
     "model: importing broken_net for broken_net.TinyNet failed: SyntaxError: invalid syntax (broken_net.py, line 1)"),
])
def test_a_target_that_cannot_be_found_is_one_line(tmp_path, monkeypatch, files, target, message):
    from dlexp.errors import DlexpError

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())])
    with pytest.raises(DlexpError) as error:
        build("model", OmegaConf.create({"_target_": target}), input_shape=(2,), num_classes=2)
    assert str(error.value) == message.format(cwd=tmp_path)
