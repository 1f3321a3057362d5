"""MLflow plumbing: where the store is, one run per job and one nested run per fold, and how runs end.

The default store is one SQLite file in the project with artifacts beside it, both absolute paths, so
Hydra's per-job folders never scatter stores around. ``tracking.uri`` may point at a server instead.

Parallel jobs may share the SQLite file: MLflow (3.x) already gives every session
``PRAGMA busy_timeout = 20000`` (mlflow/store/db/utils.py), and ``setup_experiment`` switches the file to
write-ahead logging so readers never block the writer. Concurrent first-time schema migrations are what
breaks: a sweep creates its store in its own process (dlexp.sweeps.sweep) before any job starts, and separate
commands take turns through a lock file beside the store (``first_use_lock``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError
from dlexp.interrupts import Requeued
from dlexp.locations import CHECKOUT

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


#: MLflow's record of what an experiment is for (mlflow/server/js: ``mlflow.experimentKind``); MLflow 3's UI
#: shows a "custom_model_development" experiment as a runs table, a GenAI one as its Traces page. An
#: experiment without the tag, or with a kind the UI only guessed (``*_inferred``), gets it; a kind someone
#: chose stays. (MLflow 3.17's UI itself follows its GenAI / Model training switch, which dlexp's links set.)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def kind_is_unset(kind: str | None) -> bool:
    """No experiment kind, or one MLflow's UI guessed rather than someone chose."""
    return kind is None or kind.endswith("_inferred") or kind == "no_inferred_type"


def setup_experiment(uri: str, experiment_name: str, artifact_location: str | None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment_name``, creating it if needed.

    ``artifact_location`` is used only when a local store creates the experiment; a server keeps the
    artifacts itself (``mlflow-artifacts:/``), so jobs on other machines can log them too.
    Raises :class:`DlexpError` (one line saying what to do, dlexp.tracking.refusals) for every refusal of the
    store: no server, a deleted experiment, a schema of another MLflow version, a read-only store or an
    artifact folder that cannot be written.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from dlexp.tracking.refusals import refusal

    database = sqlite_path(uri)
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise store_error(uri, error) from None
    server = uri.startswith(("http://", "https://"))
    if server:
        check_server(uri)
    try:
        experiment_id = find_or_create_experiment(uri, database, experiment_name, artifact_location, server)
        mlflow.set_experiment(experiment_id=experiment_id)
    except (mlflow.exceptions.MlflowException, SQLAlchemyError, OSError) as error:
        # Every refusal MLflow has for a run's setup (deleted experiment, schema of another version, read-only
        # store, unwritable artifacts) is the user's to fix: one line with what to do, not a traceback.
        raise refusal(uri, experiment_name, error) from error
    return experiment_id


def find_or_create_experiment(uri: str, database: Path | None, experiment_name: str,
                              artifact_location: str | None, server: bool) -> str:
    """The id of ``experiment_name`` in the store at ``uri`` (created if missing), checked to take runs: not
    deleted, its local artifact folder writable. Raises :class:`DlexpError` saying what to do otherwise."""
    from dlexp.tracking.refusals import check_artifact_folder, check_store_writable, deleted_experiment

    if database is not None:
        check_store_writable(uri, database)
    with first_use_lock(database):
        if database is not None:
            use_write_ahead_log(uri, database)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(experiment_name)  # MLflow creates the schema here
        if experiment is None:
            location = None if server else artifacts_folder(uri, artifact_location)
            location = location.as_uri() if location else None
            if location:
                setting = f"tracking.artifact_location={artifact_location}" if artifact_location else \
                    f"the artifact folder beside the store ({location})"
                check_artifact_folder(location, setting)
            try:
                experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location,
                                                         tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except mlflow.exceptions.MlflowException:
                # Another job of a parallel sweep created it first.
                experiment = mlflow.get_experiment_by_name(experiment_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage != "active":
                raise deleted_experiment(uri, experiment_name, experiment_id)
            if not server:
                check_artifact_folder(experiment.artifact_location,
                                      f"experiment '{experiment_name}' (artifacts at {experiment.artifact_location})")
            if kind_is_unset(experiment.tags.get(EXPERIMENT_KIND_TAG)):
                MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def artifacts_folder(uri: str, artifact_location: str | None) -> Path | None:
    """Where a new experiment of a local store keeps its artifacts: ``artifact_location``, else the folder
    ``mlartifacts`` beside a SQLite store's file (so a store outside the project keeps its artifacts with it);
    None where MLflow decides (a server, another kind of store)."""
    if artifact_location:
        return Path(artifact_location).resolve()
    database = sqlite_path(uri)
    return database.resolve().parent / "mlartifacts" if database is not None else None


@contextmanager
def first_use_lock(database: Path | None) -> Iterator[None]:
    """Let one process at a time open a SQLite store for the first time in the process.

    MLflow creates and migrates the schema of a new store on first use; two runs started together on a
    new store both do it, and one dies with "duplicate column name" or "database is locked" (seen with two
    runs started at once, 3 times out of 3). A POSIX lock on ``<store>.lock`` puts them in a row; where
    there is no ``fcntl`` (Windows) the runs go unserialised, as MLflow leaves them.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if database is None or fcntl is None:
        yield
        return
    path = database.with_name(database.name + ".lock")
    try:
        lock = open(path, "w")  # noqa: SIM115 (closed below, after the lock is released)
    except OSError as error:
        raise DlexpError(f"{path}: cannot create the MLflow store's lock file ({error.strerror})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds with a clear line when no MLflow server answers at ``uri`` (MLflow's own client
    retries for minutes before it gives up)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as error:
        raise DlexpError(f"tracking.uri={uri}: no MLflow server answers there ({error}); start one with "
                         "`python -m dlexp.server` or fix the address") from None
    check_credentials(uri, timeout)


def check_credentials(uri: str, timeout: float = 10.0) -> None:
    """Stop with one line, before anything is logged, when a server that requires logins (``python -m
    dlexp.server --auth``) refuses MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's client
    would fail at the first write, with a run half made)."""
    import base64
    import os
    import urllib.error

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code not in (401, 403):
            return  # not a login problem; MLflow's own calls will say what it is
        given = (f"those of MLFLOW_TRACKING_USERNAME={user}" if user and password else
                 "none were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        raise DlexpError(f"tracking.uri={uri}: the server refused the credentials ({error.code} "
                         f"{error.reason}; {given})") from None
    except (OSError, ValueError):
        return  # the server answered /health a moment ago; MLflow's client retries what follows


def use_write_ahead_log(uri: str, database: Path) -> None:
    """Switch a SQLite file to WAL journaling (a persistent property of the file; a no-op once set)."""
    try:
        connection = sqlite3.connect(database, timeout=20)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise store_error(uri, error) from None


def store_error(uri: str, error: OSError | sqlite3.Error) -> DlexpError:
    """The one-line error for a SQLite store that cannot be made or opened at ``uri``."""
    detail = f"{error.strerror}: {error.filename}" if getattr(error, "filename", None) else str(error)
    return DlexpError(f"tracking.uri={uri}: cannot open a SQLite store there ({detail})")


CONFIG_HASH_TAG = "dlexp.config_hash"


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config without ``tracking`` (where a run is logged is not what it trains).

    Two jobs with the same hash (and the same code, ``code_hash``) train the same thing; a resumed sweep
    skips a job whose hashes already FINISHED in it. Data files are named, not read, here: their contents
    are compared through the tag ``dlexp.data_digest`` (dlexp.tracking.datasets.data_changed).
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("tracking", None)
    resolved.get("trainer", {}).pop("checkpoint_every", None)  # how often it is saved is not what it trains
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


#: Words in a metric's name that mean lower is better (losses, errors, times); all else goes up.
LOWER_IS_BETTER_WORDS = ("loss", "error", "err", "mse", "mae", "rmse", "seconds", "time")


def higher_is_better(metric: str, mode: str = "auto") -> bool:
    """Whether a larger ``metric`` is better: ``mode`` ``max``/``min`` as the user says, or ``auto`` from
    its name (``best_val_loss`` goes down, ``val_acc_mean`` goes up). Sweeps (best job) and searches
    (their direction) share this one rule, ``tracking.best_metric_mode`` in the config."""
    if mode in ("max", "min"):
        return mode == "max"
    if mode != "auto":
        raise DlexpError(f"tracking.best_metric_mode={mode!r}: expected auto, max or min")
    import re

    words = re.split(r"[^a-z]+", metric.lower())
    return not any(word in LOWER_IS_BETTER_WORDS for word in words)


CODE_HASH_TAG = "dlexp.code_hash"
PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def code_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 of the package's own source: every ``*.py`` under ``package_dir`` by path and content.

    Committed or not: an edited working copy is other code, so a resumed sweep trains its jobs again
    rather than reusing results the current code might not give. Computed once per process.
    """
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def job_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags of every job's run: its config and code hashes (what resumed sweeps match) and its torch threads."""
    import torch

    return {CONFIG_HASH_TAG: config_hash(cfg), CODE_HASH_TAG: code_hash(),
            "dlexp.torch_threads": str(torch.get_num_threads())}


def find_finished_run(experiment_id: str, config_hash_value: str, parent_run_id: str,
                      code_hash_value: str | None = None):
    """The latest FINISHED run under ``parent_run_id`` (a sweep's run) with this config and code, or None.

    Only the sweep's own runs count, so a sweep never adopts a standalone run or another sweep's job
    (its table and the UI show all its jobs in its group). ``code_hash_value`` defaults to this code's.
    """
    code_hash_value = code_hash_value or code_hash()
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(f"tags.`{CONFIG_HASH_TAG}` = '{config_hash_value}' and "
                       f"tags.`{CODE_HASH_TAG}` = '{code_hash_value}' and "
                       f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def finished_with_other_code(experiment_id: str, config_hash_value: str, parent_run_id: str) -> list:
    """The sweep's FINISHED runs of this config that other code made (what a resume will not reuse)."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(f"tags.`{CONFIG_HASH_TAG}` = '{config_hash_value}' and "
                       f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
    )
    return [run for run in runs if run.data.tags.get(CODE_HASH_TAG) != code_hash()]


def flatten(config: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """``{"model": {"hidden_dims": [64, 32]}}`` -> ``{"model.hidden_dims": "[64, 32]"}`` for MLflow params."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_commit() -> str | None:
    """The project's current commit, or None outside a git checkout (and for an installed wheel, whose code is
    not the commit of the folder it runs in)."""
    if CHECKOUT is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def delete_tag_if_present(client, run_id: str, key: str) -> None:
    """``client.delete_tag(run_id, key)``, where a tag that is gone already is what was wanted, not an error.
    MLflow's delete is not idempotent (RESOURCE_DOES_NOT_EXIST), and the tag can be gone: a tracking server's
    retried request (dlexp bounds HTTP calls with retries, dlexp.tracking.offline) whose first try went
    through, or another attempt of a requeued job (seen failing a requeued SLURM job with a traceback)."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_tag(run_id, key)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:5000]


@contextmanager
def mlflow_run(run_name: str, nested: bool = False, tags: Mapping[str, str] | None = None,
               failure_file: Path | None = None, run_id: str | None = None, journal=None) -> Iterator:
    """Start a run and always end it: FINISHED, FAILED (error tagged) or KILLED (interrupted); a job stopped
    to be requeued (``dlexp.interrupts.Requeued``) leaves it RUNNING for its next attempt to continue.

    Ending the run on every path is what lets the next job of a sweep start cleanly. ``failure_file``
    (in the job's run folder) gets the status and the error when the run does not finish, so the folder
    says so too. ``run_id`` continues that run (an interrupted job resumed, dlexp.tracking.resume). With a
    ``journal`` (dlexp.tracking.offline) the run's end goes where its other writes went: to the server, or,
    once it stopped answering, to the journal (the store then still says RUNNING, which is true).
    """
    try:
        run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=dict(tags or {}))
    except mlflow.exceptions.MlflowException as error:  # e.g. the store turned read-only since the setup
        from dlexp.tracking.refusals import refusal

        raise refusal(mlflow.get_tracking_uri(), "(the active one)", error) from error
    try:
        yield run
    except Requeued:  # the job's next attempt continues the run (dlexp.sweeps.slurm): the store keeps RUNNING
        if journal is None:
            mlflow.end_run("RUNNING")  # only MLflow's active run here ends
        else:
            from dlexp.tracking.offline import end_run

            end_run(journal, run.info.run_id, "RUNNING")
        raise
    except BaseException as error:
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        status = RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED)
        if journal is None:
            mlflow.set_tag("dlexp.error", one_line(error))
            mlflow.end_run(status)
        else:
            from dlexp.tracking.offline import end_run

            journal.call("set_tag", run.info.run_id, "dlexp.error", one_line(error))
            end_run(journal, run.info.run_id, status)
        if failure_file is not None:
            pending = (f"not in the store yet: send it with python -m dlexp.sync {failure_file.parent}\n"
                       if journal is not None and journal.offline else "")
            failure_file.write_text(f"{status}: {one_line(error)}\nMLflow run: {run.info.run_id}\n{pending}")
        raise
    else:
        if journal is None:
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
        else:
            from dlexp.tracking.offline import end_run

            end_run(journal, run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))

def job_run(client, experiment_id: str, output_dir: Path):
    """The run a job started (its output folder is tagged on it), or None if it got no run."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`dlexp.output_dir` = '{output_dir}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None
