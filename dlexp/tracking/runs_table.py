"""The runs of an experiment as one pandas DataFrame, with the sweep / job / fold nesting as columns.

MLflow's ``mlflow.search_runs`` already returns a DataFrame (``run_id``, ``status``, ``start_time``,
``params.*``, ``metrics.*``, ``tags.*``, one row per run); dlexp nests its runs through tags, so this
module only adds columns that say where each run sits:

- ``kind``: ``sweep`` (a multirun's parent run, tag ``dlexp.kind=sweep``), ``fold`` (a fold's nested run,
  tag ``dlexp.fold``) or ``job`` (one training run: a single ``dlexp`` run or one job of a sweep);
- ``sweep_run_id``: the sweep a job or fold belongs to (a fold's comes from its job's row, so it is empty
  when the job is not among the rows, e.g. filtered out);
- ``job``: a sweep job's number (``dlexp.sweep_job``), also on its folds;
- ``job_run_id``: a job's own run id, or a fold's job; ``fold``: the fold number (1..k).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from dlexp.errors import DlexpError
from dlexp.tracking.store import sqlite_path

PARENT_TAG = "mlflow.parentRunId"
NESTING_COLUMNS = ["run_id", "run_name", "kind", "status", "sweep_run_id", "job", "job_run_id", "fold"]


def search_runs(tracking_uri: str, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """``mlflow.search_runs`` of ``experiment_name`` in the store at ``tracking_uri``, with the nesting
    columns (see the module's docstring) first. Deleted runs are left out.

    Raises DlexpError when a ``sqlite:///`` store's file does not exist (MLflow would create an empty
    one) or the store has no experiment of that name (the message lists the ones it has).
    """
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise DlexpError(f"tracking_uri={tracking_uri}: no MLflow store there (the file does not exist)")
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment_name) is None:
        names = sorted(e.name for e in client.search_experiments())
        raise DlexpError(f"{tracking_uri}: no experiment named {experiment_name!r}; it has {', '.join(names)}")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # mlflow.search_runs reads the global URI; put it back after
    try:
        frame = mlflow.search_runs(experiment_names=[experiment_name], filter_string=filter_string)
    finally:
        mlflow.set_tracking_uri(previous)
    return with_nesting(frame)


def with_nesting(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (from ``mlflow.search_runs``) with the columns run_name, kind, sweep_run_id, job,
    job_run_id and fold put first, beside run_id and status."""
    if frame.empty:
        return pd.DataFrame(columns=[*NESTING_COLUMNS, *(c for c in frame.columns if c not in NESTING_COLUMNS)])
    frame = frame.copy()

    def tag(key: str) -> pd.Series:
        column = f"tags.{key}"
        return frame[column] if column in frame else pd.Series(None, index=frame.index, dtype=object)

    parent = tag(PARENT_TAG)
    fold = pd.to_numeric(tag("dlexp.fold"), errors="coerce").astype("Int64")
    kind = pd.Series("job", index=frame.index, dtype=object)
    kind[fold.notna()] = "fold"
    kind[tag("dlexp.kind") == "sweep"] = "sweep"
    is_job, is_fold, is_sweep = kind == "job", kind == "fold", kind == "sweep"
    job_run_id = frame["run_id"].where(is_job, parent.where(is_fold))
    sweep_run_id = frame["run_id"].where(is_sweep, parent.where(is_job))
    job_number = pd.to_numeric(tag("dlexp.sweep_job"), errors="coerce").astype("Int64")
    # A fold inherits its job's sweep and number (its job's row, when the job is among the rows).
    job_ids = frame.loc[is_job, "run_id"].to_numpy()
    sweep_of_job = pd.Series(sweep_run_id[is_job].to_numpy(), index=job_ids, dtype=object)
    number_of_job = pd.Series(job_number[is_job].to_numpy(), index=job_ids, dtype="Int64")
    frame["run_name"] = tag("mlflow.runName")
    frame["kind"] = kind
    frame["sweep_run_id"] = sweep_run_id.where(~is_fold, job_run_id.map(sweep_of_job))
    frame["job"] = job_number.where(~is_fold, job_run_id.map(number_of_job).astype("Int64"))
    frame["job_run_id"] = job_run_id
    frame["fold"] = fold
    rest = [column for column in frame.columns if column not in NESTING_COLUMNS]
    return frame[NESTING_COLUMNS + rest]
