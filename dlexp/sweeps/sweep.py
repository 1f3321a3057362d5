"""A multirun as one MLflow run: the sweep's parent run, every job's run nested under it, a jobs table.

Hydra calls ``SweepRun`` (``hydra.callbacks`` in conf/config.yaml) in the process that launches the sweep.
Jobs may run in other processes (joblib) or on other machines (submitit), so everything between the two
sides goes through the sweep folder, which every launcher shares with its jobs:

- the sweep writes ``mlflow_sweep.json`` (its run id) before any job starts; each job (``SweepJob``) reads
  it and tags its run with ``mlflow.parentRunId``, which is how MLflow nests runs across processes;
- each job leaves ``dlexp_job.json`` in its own folder (its run, or the earlier run it reused, or its error);
  the end of the sweep reads them back into the jobs table and names the best job.

Stopping: ``kill`` of the sweep's process ends it like Ctrl-C; jobs that their launcher killed on the way
(joblib SIGKILLs its workers when the sweep stops or a job raises) are ended KILLED by the sweep's end.

Resuming: rerunning the same sweep command reuses the same parent run, so a resumed sweep stays one group in
the UI. Each job run carries its config and code hashes (dlexp.tracking.store.config_hash, code_hash); with
``tracking.resume`` a job whose config already FINISHED in this sweep, with the same code, is skipped and
reuses that run. Runs outside the sweep (a standalone run, another sweep) are never reused, and a run made
by other code is named in a warning and trained again.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dlexp.errors import find_user_error
from dlexp.interrupts import Requeued, can_take_sigterm, release_sigterm, take_sigterm
from dlexp.logfile import report_end
from dlexp.reports.metric_names import SUMMARY_METRICS
from dlexp.sweeps.search.pruning import PRUNED_TAG
from dlexp.sweeps.search.space import searched_params
from dlexp.tracking.naming import SWEPT_KEYS_TAG, override_labels, short_overrides, sweep_run_name, swept_keys
from dlexp.tracking.store import job_run
from dlexp.tracking.where import sweep_report

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
JOB_FILE = "dlexp_job.json"
SWEEP_HASH_TAG = "dlexp.sweep_hash"
PARENT_TAG = "mlflow.parentRunId"
ORPHAN_REASON = "Interrupted: the launcher ended the job's process with the sweep"
DONE = {"FINISHED", "PRUNED"}  # job statuses that are results, not failures


def sweep_hash(config: DictConfig) -> str:
    """A sweep's identity: its experiment, its command-line overrides and its sweeper's search space."""
    import hashlib

    identity = {
        "experiment": config.tracking.experiment_name,
        "overrides": sorted(OmegaConf.to_container(config.hydra.overrides.task)),
        "search_space": searched_params(config) or None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class SweepRun(Callback):
    """Opens the sweep's MLflow run before the jobs start and writes the jobs table when they are done."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.sweep_dir: Path | None = None
        self.best_metric = "val_acc_mean"
        self.best_metric_mode = "auto"
        self.jobs_on_this_machine = True
        self.took_sigterm = False
        self.swept: list[str] = []
        self.where = ("", "")  # the store's URI and the experiment's name, for the closing lines
        self.register_as: str | None = None  # tracking.register_as: the registered model the best job joins

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dlexp.errors import DlexpError
        from dlexp.reports.metric_names import unknown_metric
        from dlexp.tracking.store import higher_is_better

        try:  # a bad metric or mode would otherwise surface only when the jobs are done (or never)
            if (complaint := unknown_metric("tracking.best_metric", str(config.tracking.best_metric))) is not None:
                raise DlexpError(complaint)
            higher_is_better(str(config.tracking.best_metric), str(config.tracking.best_metric_mode))
        except DlexpError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        from dlexp.tracking import offline

        offline.prepare(config.tracking)  # bounded store calls here and in the jobs it starts
        try:
            self.open_run(config)
        except Exception as error:  # Hydra would only warn and run every job untracked: stop instead
            from dlexp.tracking.store import one_line

            reason = find_user_error(error) or f"{config.tracking.uri}: {one_line(error)}"
            print(f"error: the sweep's MLflow run could not be opened: {reason}", file=sys.stderr)
            sys.exit(2)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / SWEEP_FILE).write_text(json.dumps({"run_id": self.run_id, "swept": self.swept,
                                                             "jobs": count_jobs(config)}))
        # Jobs in this process (basic launcher) or its workers (joblib), not on a cluster (submitit).
        launcher = str(config.hydra.launcher.get("_target_", ""))
        self.jobs_on_this_machine = not any(name in launcher for name in ("submitit", "slurm"))
        atexit.register(self.finish, completed=False)  # a job raised or was interrupted: end the run anyway
        if can_take_sigterm():  # `kill` of the sweep ends it like Ctrl-C, not silently with runs left RUNNING
            take_sigterm()
            self.took_sigterm = True

    def open_run(self, config: DictConfig) -> None:
        """Create the store and the experiment if needed, and the sweep's run (or reopen the same sweep's)."""
        from mlflow.tracking import MlflowClient

        from dlexp.config.paths import absolute_path, absolute_uri
        from dlexp.tracking.store import setup_experiment

        tracking = config.tracking
        start = Path(str(config.hydra.runtime.cwd))  # where jobs read relative paths from (dlexp.config.paths)
        uri = absolute_uri(str(tracking.uri), start)
        artifacts = absolute_path(str(tracking.artifact_location), start) if tracking.artifact_location else None
        # Creating the store here, once, keeps parallel jobs from racing through its schema migrations.
        experiment_id = setup_experiment(uri, tracking.experiment_name, artifacts)
        client = MlflowClient()
        identity = sweep_hash(config)
        previous = client.search_runs(
            [experiment_id], filter_string=f"tags.`{SWEEP_HASH_TAG}` = '{identity}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        ) if tracking.resume else []
        overrides = " ".join(config.hydra.overrides.task)
        search_space = searched_params(config)
        self.swept = swept_keys(config.hydra.overrides.task, search_space)
        if previous:
            self.run_id = previous[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            log.info("resuming sweep run %s", self.run_id)
        else:
            run = client.create_run(experiment_id, run_name=sweep_run_name(self.swept),
                                    tags={SWEEP_HASH_TAG: identity, "dlexp.kind": "sweep",
                                          "dlexp.overrides": overrides, SWEPT_KEYS_TAG: " ".join(self.swept)})
            self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        self.best_metric = str(tracking.best_metric)
        self.best_metric_mode = str(tracking.best_metric_mode)
        self.where = (uri, str(tracking.experiment_name))
        self.register_as = tracking.get("register_as") or None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self.finish(completed=True)
        if failed:
            for row in failed:
                reason = row["error"] or f"its run ended {row['status']}"
                print(f"error: job #{row['job']} ({row['overrides']}): {reason}", file=sys.stderr)
            sys.exit(2)

    def finish(self, completed: bool) -> list[dict]:
        """Log the jobs table and the best job on the sweep run and end it; returns the jobs that failed.

        FINISHED when every job finished; otherwise KILLED if a job was interrupted, else FAILED.
        """
        if self.run_id is None:
            return []
        run_id, self.run_id = self.run_id, None
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        from dlexp.tracking.store import higher_is_better

        client = MlflowClient()
        if self.took_sigterm:
            release_sigterm()
        if self.jobs_on_this_machine:  # none of its jobs can still be running now
            end_orphaned_job_runs(client, self.experiment_id, run_id)
        rows = jobs_table(client, self.experiment_id, self.sweep_dir, self.swept)
        statuses = {row["status"] for row in rows}
        if completed and statuses <= DONE and rows:
            status = RunStatus.FINISHED
        else:
            status = RunStatus.KILLED if "KILLED" in statuses else RunStatus.FAILED
        log_jobs_table(client, run_id, rows, self.best_metric, self.best_metric_mode, self.sweep_dir)
        client.set_terminated(run_id, RunStatus.to_string(status))
        uri, experiment_name = self.where
        best = best_row(rows, self.best_metric, higher_is_better(self.best_metric, self.best_metric_mode))
        print(sweep_report(self.sweep_dir, client.get_run(run_id), experiment_name, uri, rows, best,
                           self.best_metric), flush=True)
        if best is not None and self.register_as:
            print(register_best_job(client, str(self.register_as), best, self.best_metric,
                                    higher_is_better(self.best_metric, self.best_metric_mode)), flush=True)
        return [row for row in rows if row["status"] not in DONE]


def register_best_job(client, name: str, best: dict, metric: str, higher: bool) -> str:
    """The closing line about ``tracking.register_as`` (dlexp.tracking.registry.register_best); a registry
    that refuses is said in that line, the sweep's results stand."""
    from mlflow.exceptions import MlflowException

    from dlexp.tracking.registry import register_best

    try:
        line = register_best(client, name, best["run_id"], metric, float(best[metric]), higher)
    except MlflowException as error:
        line = f"not registered as {name!r}: {str(error).splitlines()[0]}"
    return f"  registry:     {line}"


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will run (for progress lines), or None where the sweeper does not say."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:  # Optuna
        return int(sweeper.n_trials)
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
        return len(BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)[0])
    except Exception:  # noqa: BLE001 (another sweeper: progress lines without a total)
        return None


def report_progress(sweep_dir: Path) -> None:
    """One line after each job: jobs done of all, and how many failed (from the records in the sweep folder,
    so jobs in other processes count too)."""
    try:
        records = [json.loads(path.read_text()) for path in sweep_dir.glob(f"*/{JOB_FILE}")]
        total = json.loads((sweep_dir / SWEEP_FILE).read_text()).get("jobs")
    except (OSError, ValueError):  # a record being written by a parallel job: the next line counts it
        return
    failed = sum(1 for record in records if record.get("error"))
    log.info("sweep: %d%s jobs done%s", len(records), f" of {total}" if total else "",
             f", {failed} failed" if failed else "")


def end_orphaned_job_runs(client, experiment_id: str, sweep_run_id: str) -> None:
    """End KILLED the job runs of the sweep that are still RUNNING, with their fold runs.

    A job's own process ends its run on every path it survives (``dlexp.tracking.store.mlflow_run``), but not
    SIGKILL, which is how joblib stops the other workers once a job raised or the sweep was interrupted.
    Each such job also gets the record and ``FAILED.txt`` its folder would have got.
    """
    def running_children(parent_id: str) -> list:
        return client.search_runs([experiment_id], max_results=1000, filter_string=(
            f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"))

    for job in running_children(sweep_run_id):
        for run in [*running_children(job.info.run_id), job]:
            client.set_tag(run.info.run_id, "dlexp.error", ORPHAN_REASON)
            client.set_terminated(run.info.run_id, "KILLED")
        folder = job.data.tags.get("dlexp.output_dir")
        if folder and Path(folder).is_dir() and "dlexp.sweep_job" in job.data.tags:
            (Path(folder) / "FAILED.txt").write_text(f"KILLED: {ORPHAN_REASON}\nMLflow run: {job.info.run_id}\n")
            SweepJob(sweep_run_id, int(job.data.tags["dlexp.sweep_job"]), Path(folder)).write_record(
                job.info.run_id, reused=False, error=ORPHAN_REASON)


def job_folders(sweep_dir: Path) -> list[Path]:
    """Every Hydra job folder of the sweep (Hydra saves ``.hydra/hydra.yaml`` in each)."""
    return [path.parent.parent for path in sweep_dir.rglob(".hydra/hydra.yaml")]


#: The jobs table's own columns and the metrics a job's run has: no swept key's column may take their names.
TAKEN_COLUMNS = frozenset(("job", "status", "reused", "name", "overrides", "run_id", "error", "jobs",
                           "jobs_finished", "test_acc_grouped", *SUMMARY_METRICS))


def jobs_table(client, experiment_id: str, sweep_dir: Path, swept: Sequence[str] = ()) -> list[dict]:
    """One row per job: number, its value of each ``swept`` key (a column each, by short key: the UI's table
    cuts long cells), status, whether it reused an earlier run, name, overrides, run id, error, metrics.

    A job killed before it wrote its record is found by its folder's tag on its run, if it started one.
    """
    rows = []
    for folder in job_folders(sweep_dir):
        hydra_cfg = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra
        record_file = folder / JOB_FILE
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        if not record and (run := job_run(client, experiment_id, folder)) is not None:
            record = {"run_id": run.info.run_id}
        task = list(hydra_cfg.overrides.task)
        row = {"job": int(hydra_cfg.job.num), **short_overrides(task, swept, TAKEN_COLUMNS), "status": "MISSING",
               "reused": record.get("reused", False), "name": override_labels(task, swept or None),
               "overrides": " ".join(task), "run_id": record.get("run_id"), "error": record.get("error")}
        if row["run_id"]:
            run = client.get_run(row["run_id"])
            row["status"] = "PRUNED" if PRUNED_TAG in run.data.tags else run.info.status
            row["error"] = row["error"] or run.data.tags.get("dlexp.error")
            row.update(run.data.metrics)
        elif row["error"]:
            row["status"] = "FAILED"
        rows.append(row)
    return sorted(rows, key=lambda row: row["job"])



def best_row(rows: list[dict], metric: str, higher: bool) -> dict | None:
    """The FINISHED job with the highest ``metric`` (``higher``) or the lowest; None if none has it."""
    scored = [row for row in rows
              if row["status"] == "FINISHED" and not math.isnan(row.get(metric, math.nan))]
    if not scored:
        return None
    return (max if higher else min)(scored, key=lambda row: row[metric])


TABLE_ARTIFACT = "sweep_jobs.json"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # what MlflowClient.log_table sets: the UI shows such tables


def log_table_artifact(client, run_id: str, table, sweep_dir: Path) -> None:
    """``table`` as the run's ``sweep_jobs.json``, replacing an earlier one (a resumed sweep logs it again).

    ``MlflowClient.log_table`` would append the new rows to the old file, so every job of a resumed sweep
    would be listed twice; this writes the same format (pandas ``orient="split"``) and marks it a table.
    """
    path = sweep_dir / TABLE_ARTIFACT
    table.to_json(path, orient="split", index=False, date_format="iso")
    client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    if (entry := {"path": TABLE_ARTIFACT, "type": "table"}) not in logged:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))


def log_jobs_table(client, run_id: str, rows: list[dict], metric: str, mode: str, sweep_dir: Path) -> None:
    """The table as ``sweep_jobs.json`` (MLflow's table artifact) and ``sweep_jobs.csv``; names the best job
    by ``metric``, highest or lowest as ``dlexp.tracking.store.higher_is_better(metric, mode)`` says."""
    import pandas as pd

    from dlexp.tracking.store import higher_is_better

    table = pd.DataFrame(rows)
    table.to_csv(sweep_dir / "sweep_jobs.csv", index=False)
    if rows:
        log_table_artifact(client, run_id, table, sweep_dir)
    client.log_artifact(run_id, str(sweep_dir / "sweep_jobs.csv"))
    counts = table["status"].value_counts().to_dict() if rows else {}
    client.log_metric(run_id, "jobs", len(rows))
    client.log_metric(run_id, "jobs_finished", counts.get("FINISHED", 0))
    note = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    higher = higher_is_better(metric, mode)
    rule = f"best by {metric} ({'higher' if higher else 'lower'} is better)"
    client.set_tag(run_id, "dlexp.best_rule", rule)
    if (best := best_row(rows, metric, higher)) is not None:
        client.set_tag(run_id, "dlexp.best_job", f"#{best['job']} {best['name']}")
        client.set_tag(run_id, "dlexp.best_run_id", best["run_id"])
        client.log_metric(run_id, f"best_{metric}", best[metric])
        note = f"Best job #{best['job']} ({best['name']}): {metric} = {best[metric]:.4f}, {rule}. {note}"
    client.set_tag(run_id, "mlflow.note.content", note)


def job_sweep_dir(hydra_cfg: DictConfig) -> Path:
    """A job's sweep folder: a relative ``hydra.sweep.dir`` is from where the sweep started (``hydra.runtime.cwd``),
    not from the job's own folder, which ``hydra.job.chdir=True`` makes the job's working directory."""
    return Path(str(hydra_cfg.runtime.cwd)) / str(hydra_cfg.sweep.dir)


@dataclass
class SweepJob:
    """The job side of a tracked sweep: its parent run, its folder, and the record it leaves there."""

    parent_run_id: str
    num: int
    output_dir: Path
    swept: list[str] = field(default_factory=list)  # the sweep's swept keys: what names the job's run

    @classmethod
    def current(cls, hydra_cfg: DictConfig) -> SweepJob | None:
        """The running Hydra job as part of a tracked sweep, or None (single run, or no SweepRun callback)."""
        from hydra.types import RunMode

        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_file = job_sweep_dir(hydra_cfg) / SWEEP_FILE
        if not sweep_file.exists():
            return None
        sweep = json.loads(sweep_file.read_text())
        return cls(sweep["run_id"], int(hydra_cfg.job.num), Path(hydra_cfg.runtime.output_dir),
                   sweep.get("swept", []))

    @property
    def tags(self) -> dict[str, str]:
        return {PARENT_TAG: self.parent_run_id, "dlexp.sweep_job": str(self.num), SWEPT_KEYS_TAG: " ".join(self.swept)}

    def run(self, cfg: DictConfig, train: Callable[[dict[str, str]], dict]) -> float:
        """Skip the job if its config already FINISHED in this sweep with this code (``tracking.resume``),
        else ``train(tags)``.

        Returns the job's ``tracking.best_metric`` for sweepers. A user error fails only this job (NaN is
        returned, the sweep goes on and exits 2 at its end); the record is written on every path.
        """
        from dlexp.experiment import run_alone

        def steps(tags: dict[str, str]):
            return train(tags)
            yield  # a generator that trains without handing out a request

        return run_alone(self.steps(cfg, steps))

    def steps(self, cfg: DictConfig, steps: Callable[[dict[str, str]], Generator[Any, Any, dict]],
              ) -> Generator[Any, Any, float]:
        """:meth:`run` in steps: ``steps(tags)`` is the job's run in steps (dlexp.experiment.experiment_steps,
        returning the summary); what it yields (a training request) is yielded on, what is sent or thrown back
        goes to it. Returns the job's ``tracking.best_metric``, as :meth:`run`."""
        from dlexp.sweeps.search.pruning import is_pruned, record_pruned
        from dlexp.tracking.store import one_line, setup_experiment

        tracking = cfg.tracking
        experiment_id = setup_experiment(tracking.uri, tracking.experiment_name, tracking.artifact_location)
        if tracking.resume and (previous := self.reusable_run(experiment_id, cfg)) is not None:
            self.write_record(previous.info.run_id, reused=True)
            return previous.data.metrics.get(tracking.best_metric, math.nan)
        error = pruned = None
        requeued = False
        try:
            summary = yield from steps(self.tags)
            return float(summary.get(tracking.best_metric, math.nan))
        except BaseException as exc:
            requeued = isinstance(exc, Requeued)  # stopped to go on in its next attempt, which leaves the record
            if is_pruned(exc):  # a search's pruner stopped this trial: a result, not a failure
                pruned = str(exc)
                return math.nan
            if (user_error := find_user_error(exc)) is None:
                error = one_line(exc)
                raise
            error = str(user_error)
            report_end(f"[job {self.num}] error: {error}")  # on stderr and in the job's log file (dlexp.log)
            return math.nan
        finally:
            if not requeued:
                run_id = self.own_run_id(experiment_id)
                if pruned:
                    record_pruned(run_id, self.output_dir, pruned)
                self.write_record(run_id, reused=False, error=error, pruned=bool(pruned))
                if cfg.trainer.get("progress", True):
                    report_progress(self.output_dir.parent)

    def reusable_run(self, experiment_id: str, cfg: DictConfig):
        """This sweep's FINISHED run of the same config made by the same code, or None.

        A run of the config that other code made is named in a warning: it is trained again, not reused.
        """
        from dlexp.tracking.store import (
            CODE_HASH_TAG,
            code_hash,
            config_hash,
            find_finished_run,
            finished_with_other_code,
        )

        hashed = config_hash(cfg)
        if (previous := find_finished_run(experiment_id, hashed, self.parent_run_id)) is not None:
            from dlexp.tracking.datasets import data_changed

            if (change := data_changed(previous, cfg.dataset)) is None:
                log.info("job #%d skipped: its config already FINISHED in this sweep with this code, as run %s",
                         self.num, previous.info.run_id)
                return previous
            log.warning("job #%d: its data changed since run %s (%s); training it again", self.num,
                        previous.info.run_id, change)
            return None
        for other in finished_with_other_code(experiment_id, hashed, self.parent_run_id)[:1]:
            log.warning("job #%d: its config FINISHED as run %s, but with other code (%s %s, now %s); "
                        "training it again", self.num, other.info.run_id, CODE_HASH_TAG,
                        str(other.data.tags.get(CODE_HASH_TAG, "none"))[:12], code_hash()[:12])
        return None

    def own_run_id(self, experiment_id: str) -> str | None:
        """The run this job started, if it got that far."""
        from mlflow.tracking import MlflowClient

        run = job_run(MlflowClient(), experiment_id, self.output_dir)
        return run.info.run_id if run else None

    def write_record(self, run_id: str | None, reused: bool, error: str | None = None,
                     pruned: bool = False) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"job": self.num, "run_id": run_id, "reused": reused, "error": error, "pruned": pruned}
        (self.output_dir / JOB_FILE).write_text(json.dumps(record, indent=2))
