"""Where a command's results went: the run folder, the MLflow run, and how to open MLflow's UI on it.

Every ``python -m dlexp`` ends with these lines (a sweep: its folder, its run, the jobs table, the best job),
and every line of a sweep's job starts with ``[job N]`` (``label_job_output``), so the output of parallel
jobs can be told apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("dlexp")

UI_PORT = 5000
#: MLflow 3.17's UI opens an experiment on its GenAI pages (Traces, "No data available") unless the link
#: asks for the runs table: its GenAI / Model training switch is this URL parameter (or the browser's memory).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI's page of a run (or of the experiment's runs table), on the server at ``uri`` or on the
    server that :func:`ui_command` starts."""
    base = uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{UI_PORT}"
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?{MODEL_TRAINING_VIEW}"


def ui_command(uri: str) -> str | None:
    """The command that serves MLflow's UI over the store at ``uri``; None for a server (it is the UI).

    dlexp's server rather than ``mlflow ui``: without MLflow's GenAI job runner it starts in a fraction of
    the time, and on a busy machine ``mlflow ui`` lost worker processes and left pages loading for minutes
    (seen twice with headless Chromium; ``python -m dlexp.server`` never did).
    """
    return None if is_server(uri) else f"python -m dlexp.server --backend-store-uri {uri} --port {UI_PORT}"


def open_lines(uri: str, experiment_id: str, run_id: str, width: int) -> list[str]:
    """``see it:`` the command that starts the UI and the page to open, or the server's page."""
    command, url = ui_command(uri), ui_url(uri, experiment_id, run_id)
    label = "  " + "see it:".ljust(width)
    return [label + command, " " * len(label) + f"then open {url}"] if command else [label + url]


def run_report(output_dir: Path, run, experiment_name: str, uri: str) -> str:
    """The closing lines of a single run: its folder, its MLflow run and how to open it."""
    return "\n".join([
        f"results of this run ({run.info.status}):",
        f"  run folder: {Path(output_dir).resolve()}",
        f"  MLflow run: '{run.info.run_name}' (id {run.info.run_id}) in experiment '{experiment_name}' of {uri}",
        *open_lines(uri, run.info.experiment_id, run.info.run_id, width=12),
    ])


def job_report(num: int, output_dir: Path, run) -> str:
    """One line per sweep job (the sweep's own report at its end says how to open them)."""
    return f"job #{num} '{run.info.run_name}' ({run.info.status}): folder {output_dir}, MLflow run {run.info.run_id}"


def sweep_report(sweep_dir: Path, run, experiment_name: str, uri: str, rows: list[dict], best: dict | None,
                 metric: str) -> str:
    """The closing lines of a sweep: its folder and jobs table, its MLflow run, the best job, how to open it."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [
        f"results of this sweep ({run.info.status}, {len(rows)} jobs: {statuses or 'none'}):",
        f"  sweep folder: {sweep_dir} (a folder per job)",
        f"  jobs table:   {sweep_dir / 'sweep_jobs.csv'}, and sweep_jobs.json in the sweep run's artifacts",
        f"  MLflow run:   '{run.info.run_name}' (id {run.info.run_id}) in experiment '{experiment_name}' of {uri};"
        " its jobs are nested under it",
    ]
    if best is not None:
        lines.append(f"  best job:     #{best['job']} '{best['name']}': {metric} = {best[metric]:.4f} "
                     f"(MLflow run {best['run_id']})")
    else:  # said, not left out: a missing line reads as if nothing went wrong
        lines.append(f"  best job:     none (no FINISHED job has a value of {metric})")
    return "\n".join([*lines, *open_lines(uri, run.info.experiment_id, run.info.run_id, width=14)])


class JobLabel(logging.Formatter):
    """Puts ``[job N]`` before every line another formatter makes (multi-line messages too; blank lines stay
    blank)."""

    def __init__(self, inner: logging.Formatter | None, num: int) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.prefix = f"[job {num}] "

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.prefix + line if line else line for line in self.inner.format(record).split("\n"))


@contextmanager
def label_job_output(num: int) -> Iterator[None]:
    """While a sweep's job runs, its terminal log lines start with ``[job N]`` (parallel jobs interleave).

    Wraps the formatters of the root logger's console handlers (Hydra sets them up per job); its log file
    is the job's own and stays as it is. The formatters are put back when the job ends, so the launcher's
    lines between jobs carry no label.
    """
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    originals = [h.formatter for h in handlers]
    for handler, formatter in zip(handlers, originals, strict=True):
        handler.setFormatter(JobLabel(formatter, num))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, originals, strict=True):
            handler.setFormatter(formatter)


def report_run(cfg, output_dir: str | Path, job_num: int | None = None) -> None:
    """Log where a finished job's results went (the run is found by its folder's tag, however it ended)."""
    from mlflow.tracking import MlflowClient

    from dlexp.tracking.store import job_run

    tracking = cfg.tracking
    client = MlflowClient(str(tracking.uri))
    experiment = client.get_experiment_by_name(str(tracking.experiment_name))
    run = job_run(client, experiment.experiment_id, Path(output_dir)) if experiment else None
    if run is None:
        return
    if job_num is None:
        log.info("%s", run_report(Path(output_dir), run, experiment.name, str(tracking.uri)))
    else:
        log.info("%s", job_report(job_num, Path(output_dir), run))


def report_failed_run(cfg, output_dir: str | Path) -> None:
    """After a failed or interrupted single run: where it went, if it got as far as a run (its folder then
    holds FAILED.txt). A run stopped before that touched no store, and this does not touch one either."""
    if (Path(output_dir) / "FAILED.txt").exists():
        try:
            report_run(cfg, output_dir)
        except Exception as error:  # the error being reported matters more than this
            log.debug("no closing lines: %s", error)
