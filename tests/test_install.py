"""dlexp as a new user installs it: a wheel built from the sources, installed (not editable) into a fresh
virtual environment, run as the ``dlexp`` command from an empty folder; and an editable install run from
another folder. The venvs reuse this interpreter's packages (torch, MLflow, Hydra): ``--system-site-packages``
and ``pip install --no-deps``."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.full

#: What ``pip install .`` builds from: the packaging files and the folders the wheel carries.
SOURCES = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "dlexp", "hydra_plugins", "conf", "data"]
SMALL = ["trainer.max_epochs=3", "trainer.folds=2", "plots.grid_resolution=20"]


def run(command, cwd, check=True, env=None, **kwargs):
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600, **kwargs)
    if check:
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def clean_source(folder: Path) -> Path:
    """A copy of the checkout's sources only, as a fresh clone has them (no build/, stores or caches)."""
    folder.mkdir()
    for name in SOURCES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    return folder


def make_venv(folder: Path) -> Path:
    """A venv over this interpreter's packages; its ``python -m pip`` is this interpreter's pip."""
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", folder], cwd=folder.parent)
    return folder


def venv_env(venv: Path) -> dict[str, str]:
    """The environment of a shell with the venv activated (and no PYTHONPATH pointing at a checkout)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
            "HYDRA_FULL_ERROR": "0"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel .`` of the sources, installed into a fresh venv: the wheel, the venv, its package folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = clean_source(root / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        cwd=root)
    (wheel,) = (root / "dist").glob("dlexp-*.whl")
    venv = make_venv(root / "venv")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", wheel], cwd=root)
    env = venv_env(venv)
    package = Path(run(["python", "-c", "import dlexp; print(dlexp.__file__)"], cwd=root, env=env)
                   .stdout.strip()).parent
    assert package.is_relative_to(venv), f"dlexp imported from {package}, not from the venv"
    files = {path for path in package.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    return {"wheel": wheel, "venv": venv, "env": env, "package": package, "files": files}


@pytest.fixture
def empty_folder(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_the_wheel_carries_the_configs_the_data_and_the_command(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        shipped_train = wheel.read("dlexp/data_files/trainData.txt")
    configs = {f"dlexp/conf/{p.relative_to(PROJECT_ROOT / 'conf')}" for p in (PROJECT_ROOT / "conf").rglob("*.yaml")}
    assert len(configs) >= 30 and configs <= names  # every config group and option
    assert {"dlexp/data_files/trainData.txt", "dlexp/data_files/testData.txt",
            "hydra_plugins/dlexp_search/dlexp_search.py", "hydra_plugins/dlexp_slurm_launcher/__init__.py"} <= names
    assert shipped_train == (PROJECT_ROOT / "data" / "trainData.txt").read_bytes()
    assert "dlexp = dlexp.__main__:cli" in entry_points


def written_into_the_package(installed) -> set[Path]:
    now = {p for p in installed["package"].rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return now - installed["files"]


def test_an_installed_dlexp_runs_the_spiral_from_an_empty_folder(installed, empty_folder):
    done = run(["dlexp", "+experiment=spiral", *SMALL], cwd=empty_folder, env=installed["env"])
    assert "dataset spiral: 1200 train / 300 test points, 2 features, 5 classes" in done.stdout

    client = MlflowClient(f"sqlite:///{empty_folder / 'mlflow.db'}")  # the store is where the user ran dlexp
    (run_,) = client.search_runs([client.get_experiment_by_name("spiral").experiment_id],
                                 "tags.mlflow.parentRunId IS NULL")
    assert run_.info.status == "FINISHED"
    assert run_.data.params["dataset.train_path"] == str(installed["package"] / "data_files" / "trainData.txt")
    assert 0 < run_.data.metrics["test_acc"] <= 1
    assert "mlflow.source.git.commit" not in run_.data.tags  # the user's folder is not dlexp's code
    assert run_.info.artifact_uri.startswith(f"file://{empty_folder / 'mlartifacts'}/")
    (log_file,) = (empty_folder / "outputs").glob("*/*/dlexp.log")
    assert "dataset spiral: 1200 train" in log_file.read_text()
    assert written_into_the_package(installed) == set()


def test_an_installed_search_sweeps_two_jobs(installed, empty_folder):
    """``hydra/sweeper=search`` is dlexp's plugin: a sweep that runs at all found it."""
    run(["dlexp", "-m", "+experiment=spiral", "hydra/sweeper=search", "hydra.sweeper.n_trials=2", *SMALL],
        cwd=empty_folder, env=installed["env"])
    (table,) = (empty_folder / "outputs" / "multirun").glob("*/*/sweep_jobs.csv")
    with table.open(newline="") as rows:
        assert [row["status"] for row in csv.DictReader(rows)] == ["FINISHED", "FINISHED"]
    client = MlflowClient(f"sqlite:///{empty_folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    (sweep,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(jobs) == 2 and all(job.info.status == "FINISHED" for job in jobs)
    assert (empty_folder / "optuna.db").is_file()  # the study beside the store
    assert written_into_the_package(installed) == set()


def test_an_installed_dlexp_shows_its_config_and_plugins(installed, empty_folder):
    env = installed["env"]
    dataset = run(["dlexp", "+experiment=spiral", "--cfg", "job", "--resolve", "-p", "dataset"], cwd=empty_folder,
                  env=env).stdout
    assert f"train_path: {installed['package'] / 'data_files' / 'trainData.txt'}" in dataset
    tracking = run(["dlexp", "--cfg", "job", "--resolve", "-p", "tracking.uri"], cwd=empty_folder, env=env).stdout
    assert tracking.strip() == f"sqlite:///{empty_folder}/mlflow.db"

    plugins = run(["dlexp", "--info", "plugins"], cwd=empty_folder, env=env).stdout.split()
    assert plugins.count("SearchSweeper") == 1
    assert plugins.count("SlurmLauncher") == 2  # dlexp's and the submitit launcher's it extends
    assert "JoblibLauncher" in plugins  # hydra/launcher=parallel
    assert list(empty_folder.iterdir()) == []  # showing writes nothing


def test_the_dlexp_command_installs_bash_completion(installed, empty_folder):
    env = installed["env"]
    script = run(["dlexp", "-sc", "install=bash"], cwd=empty_folder, env=env).stdout
    assert script.rstrip().endswith("-F hydra_bash_completion dlexp")
    (empty_folder / "completion.sh").write_text(script)
    # What bash does on `dlexp +experiment=<TAB>`: set COMP_* and call the function `complete` names.
    shell = ('source completion.sh; COMP_LINE="dlexp +experiment="; COMP_POINT=${#COMP_LINE}; '
             'COMP_WORDS=(dlexp +experiment=); COMP_CWORD=1; hydra_bash_completion; printf "%s\\n" "${COMPREPLY[@]}"')
    offered = run(["bash", "-c", shell], cwd=empty_folder, env=env).stdout.split()
    assert offered == ["+experiment=insects", "+experiment=spiral"]


def test_an_installed_dlexp_logs_the_error_line_and_runs_its_subcommands(installed, empty_folder):
    env = installed["env"]
    done = run(["dlexp", "+experiment=spiral", "trainer.folds=1", "hydra.run.dir=run"], cwd=empty_folder,
               env=env, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line == "error: trainer.folds=1: expected an integer >= 2"
    assert (empty_folder / "run" / "dlexp.log").read_text().strip().endswith(f"[dlexp][ERROR] - {line}")

    model = run(["dlexp", "inspect", "+experiment=spiral"], cwd=empty_folder, env=env).stdout
    assert "Total params: 2,437" in model
    usage = run(["dlexp", "server", "--help"], cwd=empty_folder, env=env).stdout
    assert usage.startswith("usage: dlexp server") and "--backend-store-uri" in usage


def test_an_editable_install_keeps_the_checkout_and_finds_the_plugins_from_elsewhere(tmp_path, empty_folder):
    """``pip install -e .`` maps the packages with an import hook that Hydra's plugin scan misses; dlexp
    registers its plugins itself. The store stays in the checkout, wherever dlexp starts."""
    checkout = clean_source(tmp_path / "checkout")
    venv = make_venv(tmp_path / "venv")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", checkout],
        cwd=tmp_path)
    env = venv_env(venv)
    where = run(["python", "-c", "import dlexp; print(dlexp.__file__)"], cwd=empty_folder, env=env).stdout
    assert where.strip() == str(checkout / "dlexp" / "__init__.py")
    plugins = run(["dlexp", "--info", "plugins"], cwd=empty_folder, env=env).stdout.split()
    assert plugins.count("SearchSweeper") == 1 and plugins.count("SlurmLauncher") == 2
    config = run(["dlexp", "+experiment=spiral", "--cfg", "job", "--resolve", "-p", "tracking.uri"],
                 cwd=empty_folder, env=env).stdout
    assert config.strip() == f"sqlite:///{checkout}/mlflow.db"
