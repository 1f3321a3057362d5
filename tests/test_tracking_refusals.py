"""MLflow's refusals while a run is set up: one ``error:`` line saying what to do, exit 2, on every path.

Issue #23 fault 1: a deleted experiment, an artifact folder that cannot be written, a store made by an older or
a newer MLflow, a read-only store.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from mlflow.tracking import MlflowClient
from sweep_support import TINY, run_dlexp, sqlite_store

from dlexp.errors import DlexpError
from dlexp.tracking.refusals import refusal
from dlexp.tracking.store import setup_experiment


def deleted(tmp_path, name: str = "gone") -> tuple[str, str]:
    """A store whose experiment ``name`` was deleted as the UI's Delete does; its URI and the id."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = setup_experiment(uri, name, str(tmp_path / "artifacts"))
    MlflowClient(uri).delete_experiment(experiment_id)
    return uri, experiment_id


def test_a_deleted_experiment_is_one_line_saying_restore_or_rename(tmp_path):
    uri, experiment_id = deleted(tmp_path)
    with pytest.raises(DlexpError) as refused:
        setup_experiment(uri, "gone", str(tmp_path / "artifacts"))
    message = str(refused.value)
    assert message.startswith(f"tracking.experiment_name=gone: that experiment (id {experiment_id}) is deleted")
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in message
    assert "choose another tracking.experiment_name" in message
    assert "\n" not in message
    # Another name in the same store is fine.
    assert setup_experiment(uri, "other", str(tmp_path / "artifacts")) != experiment_id


def test_an_artifact_folder_that_cannot_be_made_is_refused_before_the_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for location in ("/proc/dlexp-nowhere", str(tmp_path / "a-file" / "artifacts")):
        (tmp_path / "a-file").write_text("not a folder")
        with pytest.raises(DlexpError, match=r"^tracking.artifact_location=.*: cannot create the artifact folder "):
            setup_experiment(uri, "spiral", location)
    assert MlflowClient(uri).get_experiment_by_name("spiral") is None  # nothing half-made
    # An existing experiment whose artifact folder became a file: named before any run starts.
    setup_experiment(uri, "moved", str(tmp_path / "moved"))
    shutil.rmtree(tmp_path / "moved")
    (tmp_path / "moved").write_text("")
    with pytest.raises(DlexpError, match=r"^experiment 'moved' \(artifacts at file://.*moved\): cannot create"):
        setup_experiment(uri, "moved", None)


def schema_of(tmp_path, name: str, revision: str) -> str:
    """A copy of a fresh store whose schema revision says ``revision``."""
    uri = f"sqlite:///{tmp_path}/fresh.db"
    setup_experiment(uri, "spiral", None)
    shutil.copy(tmp_path / "fresh.db", tmp_path / name)
    with sqlite3.connect(tmp_path / name) as connection:
        connection.execute("update alembic_version set version_num = ?", (revision,))
    return f"sqlite:///{tmp_path}/{name}"


def test_a_store_of_another_mlflow_version_says_upgrade_or_use_that_version(tmp_path):
    old = schema_of(tmp_path, "old.db", "0a8213491aaa")  # an early migration of MLflow's own
    with pytest.raises(DlexpError, match=r"made by an older MLflow .*run `mlflow db upgrade sqlite:///"):
        setup_experiment(old, "spiral", None)
    new = schema_of(tmp_path, "new.db", "ffff00001111")  # a revision this MLflow does not know
    with pytest.raises(DlexpError, match=r"made by a newer MLflow than this one .*use that MLflow version"):
        setup_experiment(new, "spiral", None)


def test_a_read_only_store_is_named_with_what_to_do():
    error = sqlite3.OperationalError("attempt to write a readonly database")
    assert str(refusal("sqlite:///x.db", "spiral", error)).endswith("make it writable or choose another tracking.uri")
    other = refusal("http://h:5000", "spiral", RuntimeError("INTERNAL_ERROR: boom\n  at line 3"))
    assert "\n" not in str(other) and "tracking.uri=http://h:5000" in str(other)


@pytest.mark.full
def test_a_deleted_experiment_stops_a_single_run_and_a_sweep_with_one_line(tmp_path):
    """The issue's steps: the single-run path gave Hydra's traceback and exit 1."""
    deleted(tmp_path, "spiral")
    for flag, sweep in (([], []), (["-m"], ["optimizer.lr=0.1,0.01"])):
        result = run_dlexp(*flag, *TINY, *sqlite_store(tmp_path), *sweep)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "restore it" in errors[0] and "tracking.experiment_name" in errors[0], errors
    assert not list((tmp_path / "run").glob("*.pt"))
