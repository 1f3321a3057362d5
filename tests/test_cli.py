"""The ``dlexp`` command from the checkout: its log file and the line that says why a run ended, its
sub-commands, Hydra's shell completion, and where the configs point (tests/test_install.py: the wheel)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, compose_config

from dlexp.__main__ import cli
from dlexp.logfile import report_end


def run_dlexp(*args, cwd=PROJECT_ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}, timeout=300)


def test_report_end_prints_once_and_writes_every_log_file(tmp_path, capsys):
    """What Hydra's job logging sets up: a console and a file handler on the root logger."""
    root = logging.getLogger()
    log_file = logging.FileHandler(tmp_path / "dlexp.log")
    log_file.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    console = logging.StreamHandler(sys.stdout)
    root.addHandler(log_file)
    root.addHandler(console)
    try:
        report_end("error: trainer.folds=1: expected an integer >= 2")
        report_end("interrupted: Ctrl-C; the MLflow run ended KILLED", logging.WARNING)
    finally:
        for handler in log_file, console:
            root.removeHandler(handler)
            handler.close()
    out, err = capsys.readouterr()
    assert out == ""  # the console handler did not print the line a second time
    assert err == ("error: trainer.folds=1: expected an integer >= 2\n"
                   "interrupted: Ctrl-C; the MLflow run ended KILLED\n")
    assert (tmp_path / "dlexp.log").read_text() == (
        "[dlexp][ERROR] - error: trainer.folds=1: expected an integer >= 2\n"
        "[dlexp][WARNING] - interrupted: Ctrl-C; the MLflow run ended KILLED\n")


@pytest.mark.parametrize(("override", "line"), [
    ("trainer.folds=1", "error: trainer.folds=1: expected an integer >= 2"),  # caught before the run
    # while loading; named by its absolute path (relative paths are read from where dlexp starts: the checkout)
    ("dataset.train_path=no_such_file.txt", f"error: {PROJECT_ROOT / 'no_such_file.txt'}: data file not found"),
])
def test_the_run_log_is_dlexp_log_and_holds_the_error_line(tmp_path, override, line):
    done = run_dlexp("+experiment=spiral", override, f"hydra.run.dir={tmp_path / 'run'}",
                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == line
    assert "error:" not in done.stdout  # shown once on the terminal
    assert sorted(p.name for p in (tmp_path / "run").glob("*.log")) == ["dlexp.log"]
    assert (tmp_path / "run" / "dlexp.log").read_text().strip().splitlines()[-1].endswith(
        f"[dlexp][ERROR] - {line}")


def test_a_sweep_jobs_log_holds_its_error_line(tmp_path):
    """A sweep goes on past a job's user error; the job's own log (a SLURM job's, too) says why it failed."""
    done = run_dlexp("-m", "+experiment=spiral", "trainer.folds=1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                     f"tracking.artifact_location={tmp_path / 'artifacts'}")
    assert done.returncode == 2, done.stderr[-3000:]
    line = "[job 0] error: trainer.folds=1: expected an integer >= 2"
    assert done.stderr.count(line) == 1 and line not in done.stdout
    assert f"[dlexp][ERROR] - {line}\n" in (tmp_path / "sweep" / "0" / "dlexp.log").read_text()


def test_subcommands_run_server_and_inspect(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlexp", "server", "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli()
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: dlexp server ") and "--backend-store-uri" in usage

    done = run_dlexp("inspect", "+experiment=spiral")  # the course's MLP 2-64-32-5
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Total params: 2,437" in done.stdout

    help_lines = [line.split()[:2] for line in run_dlexp("--help").stdout.splitlines()[:5]]
    assert ["dlexp", "server"] in help_lines and ["dlexp", "inspect"] in help_lines


def test_shell_completion_offers_the_experiments():
    done = run_dlexp("-sc", "query=bash", env={"COMP_LINE": "dlexp +experiment=", "COMP_POINT": "18"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["+experiment=insects", "+experiment=spiral"]


def test_a_checkout_reads_and_writes_in_the_checkout():
    """``pip install -e .`` (and a clone on sys.path) keep the store and the data in the checkout."""
    cfg = compose_config(["+experiment=spiral"])
    assert cfg.tracking.uri == f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    # artifacts beside the SQLite store (tracking.artifact_location=null): the checkout's mlartifacts/
    from dlexp.tracking.store import artifacts_folder

    assert artifacts_folder(cfg.tracking.uri, cfg.tracking.artifact_location) == PROJECT_ROOT / "mlartifacts"
    assert cfg.dataset.train_path == f"{PROJECT_ROOT}/data/trainData.txt"
    assert cfg.dataset.test_path == f"{PROJECT_ROOT}/data/testData.txt"
