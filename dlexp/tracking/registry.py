"""A sweep's best model in MLflow's Model Registry (``tracking.register_as=NAME``), alias ``champion``.

The sweep's best job (dlexp.sweeps.sweep.best_row, by ``tracking.best_metric`` and its direction) has its
``model`` (dlexp.tracking.models) registered as a new version of NAME, tagged with the metric; the alias
``champion`` moves to it only when it beats the current champion's value of the same metric (or there is
no champion yet). A resumed sweep whose best run is already a version of NAME registers nothing new.
Works on any store MLflow's registry works on: SQLite, PostgreSQL, a tracking server.
"""

from __future__ import annotations

import logging
import math

from mlflow.exceptions import MlflowException

from dlexp.tracking.models import MODEL_NAME

log = logging.getLogger(__name__)

CHAMPION = "champion"
METRIC_TAG = "dlexp.best_metric"
VALUE_TAG = "dlexp.best_metric_value"
DIRECTION_TAG = "dlexp.best_metric_direction"


def champion_of(client, name: str):
    """The version the ``champion`` alias names, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def logged_model_uri(client, run_id: str) -> str:
    """``models:/<id>`` of the run's LoggedModel ``model`` (what ``runs:/<run_id>/model`` stands for in
    MLflow 3; registering that URI works too, with a warning that it was looked up)."""
    run = client.get_run(run_id)
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'", max_results=1)
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/{MODEL_NAME}"


def better(value: float, than: float, higher: bool) -> bool:
    return not math.isnan(value) and (math.isnan(than) or (value > than if higher else value < than))


def register_best(client, name: str, run_id: str, metric: str, value: float, higher: bool) -> str:
    """Register ``runs:/<run_id>/model`` under ``name`` (once per run) and move ``champion`` to it if its
    ``metric`` ``value`` beats the champion's; returns one line saying what happened.

    Raises MlflowException when the run has no logged model (``tracking.log_models=false``) or the
    registry refuses.
    """
    import mlflow

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        version = mlflow.register_model(logged_model_uri(client, run_id), name, tags={
            METRIC_TAG: metric, VALUE_TAG: repr(float(value)), DIRECTION_TAG: "higher" if higher else "lower"})
    where = f"model '{name}' version {version.version}"
    champion = champion_of(client, name)
    if champion is not None and champion.version == version.version:
        return f"{where} (run {run_id}) is the {CHAMPION} already"
    if champion is not None:
        their_metric = champion.tags.get(METRIC_TAG)
        their_value = float(champion.tags.get(VALUE_TAG, "nan"))
        if their_metric != metric:
            return (f"registered {where}; the {CHAMPION} (version {champion.version}) was chosen by "
                    f"{their_metric}, not {metric}: it stays (move it with MlflowClient.set_registered_model_alias)")
        if not better(value, their_value, higher):
            return (f"registered {where} ({metric} = {value:.4f}); the {CHAMPION} stays version "
                    f"{champion.version} ({metric} = {their_value:.4f}, {'higher' if higher else 'lower'} "
                    "is better)")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    before = f", was version {champion.version}" if champion is not None else ""
    return f"registered {where} ({metric} = {value:.4f}) as models:/{name}@{CHAMPION}{before}"
