"""Which interrupted run a job continues, and what of it the store already holds.

A job (single run or a sweep's job) that starts with ``tracking.resume=true`` looks in its experiment for the
latest run with the same config hash and the same parent (no parent for a single run; the sweep's run for a
sweep's job, which a rerun of the same sweep command reuses). If that run was interrupted (KILLED, or RUNNING
with no process behind it; not FAILED, not FINISHED) and its run folder (its ``dlexp.output_dir`` tag) still
has ``checkpoints/``, the job continues that MLflow run: the run's checkpoints and
fold pictures move into the new run folder (every command gets a new Hydra folder; the old one gets
``RESUMED.txt`` saying where they went), and the run's ``dlexp.output_dir`` tag follows them.

Not continued: a run made by other code (``dlexp.code_hash``; one WARNING line, the job starts a new run), a
pruned search trial (a result), and a run whose folder's lock is held (its process is still training).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dlexp.tracking.datasets import DATA_DIGEST_TAG
from dlexp.training.checkpoint import CHECKPOINT_DIR, Checkpoints, Every

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
OUTPUT_DIR_TAG = "dlexp.output_dir"
FOLD_TAG = "dlexp.fold"
RESUMED_TAG = "dlexp.resumed"  # how many times the run was continued
#: Statuses of a run that was stopped rather than failing: KILLED (Ctrl-C, SIGTERM, scancel, a requeue) or still
#: RUNNING with nothing behind it (SIGKILL, a crashed node, a server that went away). A FAILED run (an error)
#: is not continued: the next command starts a new run, as before.
INTERRUPTED = ("KILLED", "RUNNING")
ERROR_TAG = "dlexp.error"  # why an attempt ended: cleared when the run is continued
MOVED_FOLDERS = (CHECKPOINT_DIR, "folds")  # what a continued run takes from its earlier folder
HISTORY_KEYS = ("train_loss", "val_loss", "val_acc", "lr")


def find_interrupted_run(client, experiment_id: str, config_hash_value: str, code_hash_value: str,
                         parent_run_id: str | None, data_digest: str | None = None):
    """The run this job continues, or None (see the module's docstring for which)."""
    from dlexp.sweeps.search.pruning import PRUNED_TAG
    from dlexp.tracking.store import CODE_HASH_TAG, CONFIG_HASH_TAG

    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{config_hash_value}'",
        order_by=["attributes.start_time DESC"], max_results=200)
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) != parent_run_id:
            continue
        if run.info.status not in INTERRUPTED or PRUNED_TAG in tags:
            return None  # the latest run of this config is a result, or it failed: a new run
        folder = tags.get(OUTPUT_DIR_TAG)
        if not folder or not (Path(folder) / CHECKPOINT_DIR).is_dir():
            return None
        if tags.get(CODE_HASH_TAG) != code_hash_value:
            log.warning("run %s of this config was interrupted, but other code made it (%s %s, now %s): its "
                        "checkpoints are not used; training from the start in a new run", run.info.run_id,
                        CODE_HASH_TAG, str(tags.get(CODE_HASH_TAG))[:12], code_hash_value[:12])
            return None
        if data_digest and tags.get(DATA_DIGEST_TAG, data_digest) != data_digest:
            log.warning("run %s of this config was interrupted, but its data changed since (%s %s, now %s): its "
                        "checkpoints are not used; training from the start in a new run", run.info.run_id,
                        DATA_DIGEST_TAG, tags[DATA_DIGEST_TAG][:12], data_digest[:12])
            return None
        return run
    return None


def take_over(run, output_dir: Path, checkpoints: Checkpoints) -> bool:
    """Move ``run``'s checkpoints and fold pictures into ``output_dir`` (whose ``checkpoints`` is
    ``checkpoints.folder``) and lock them; False (nothing moved) if another process holds their lock."""
    old = Path(run.data.tags[OUTPUT_DIR_TAG])
    if old.resolve() == output_dir.resolve():
        return checkpoints.lock()
    probe = Checkpoints(old / CHECKPOINT_DIR, checkpoints.identity, None)
    if not probe.lock():
        log.warning("run %s is still training in another process (lock %s held); starting a new run",
                    run.info.run_id, old / CHECKPOINT_DIR)
        return False
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in MOVED_FOLDERS:
            if (old / name).exists() and not (output_dir / name).exists():
                shutil.move(str(old / name), str(output_dir / name))
        (old / "RESUMED.txt").write_text(f"MLflow run {run.info.run_id} was continued in {output_dir}; its "
                                         f"checkpoints and fold pictures moved there\n")
    finally:
        probe.unlock()
    return checkpoints.lock()


@dataclass
class LoggedFold:
    """A fold run the store already holds: its id, whether it FINISHED, and per history metric the last
    epoch (step) it holds (epochs up to there are not logged again)."""

    run_id: str
    finished: bool
    last_step: dict[str, int] = field(default_factory=dict)


def logged_folds(client, experiment_id: str, job_run_id: str) -> dict[int, LoggedFold]:
    """The fold runs under ``job_run_id`` by fold number (the latest one where a fold has several)."""
    from dlexp.tracking.store import delete_tag_if_present

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{job_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    folds: dict[int, LoggedFold] = {}
    for run in runs:
        if FOLD_TAG not in run.data.tags:
            continue
        finished = run.info.status == "FINISHED"
        if not finished and ERROR_TAG in run.data.tags:  # this fold continues: its interruption is over
            delete_tag_if_present(client, run.info.run_id, ERROR_TAG)
        last_step = {} if finished else {
            key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=0)
            for key in HISTORY_KEYS}
        folds[int(run.data.tags[FOLD_TAG])] = LoggedFold(run.info.run_id, finished, last_step)
    return folds


def job_checkpoints(cfg, experiment_id: str, output_dir: Path, parent_run_id: str | None,
                    every: Every | None, data_digest: str | None = None):
    """The job's checkpoints in ``output_dir`` (locked while the job runs) and the run it continues (None:
    a new run, whose checkpoint folder is emptied). ``tracking.resume=false`` always starts a new run.
    ``data_digest`` (dlexp.data.digest) is part of the checkpoints' identity: a run whose data changed is
    not continued."""
    from mlflow.tracking import MlflowClient

    from dlexp.tracking.store import code_hash, config_hash, delete_tag_if_present

    identity = {"config_hash": config_hash(cfg), "code_hash": code_hash(), "data_digest": data_digest or ""}
    checkpoints = Checkpoints(Path(output_dir) / CHECKPOINT_DIR, identity, every)
    if cfg.tracking.resume:
        run = find_interrupted_run(MlflowClient(), experiment_id, identity["config_hash"], identity["code_hash"],
                                   parent_run_id, data_digest)
        if run is not None and take_over(run, Path(output_dir), checkpoints):
            log.info("continuing the interrupted run %s (%s) from its checkpoints", run.info.run_id,
                     run.info.run_name)
            # The interruption is over: the run says so no more (it ends as this attempt does).
            (Path(output_dir) / "FAILED.txt").unlink(missing_ok=True)
            if ERROR_TAG in run.data.tags:
                delete_tag_if_present(MlflowClient(), run.info.run_id, ERROR_TAG)
            return checkpoints, run
    if checkpoints.lock():  # a new run: what an earlier run left in this folder (a sweep job's) is not its own
        checkpoints.clear()
    return checkpoints, None


def resumed_tags(tags: dict[str, str], resumed) -> dict[str, str]:
    """The job's tags, plus how many times its run was continued when it is ``resumed``."""
    if resumed is None:
        return tags
    return {**tags, RESUMED_TAG: str(int(resumed.data.tags.get(RESUMED_TAG, "0")) + 1)}


def params_to_log(params: dict[str, str], resumed) -> dict[str, str]:
    """The params a run still lacks: a continued run keeps the ones it has (MLflow cannot change a param; the
    keys that may differ between attempts, such as ``trainer.checkpoint_every``, do not change what it trains)."""
    if resumed is None:
        return params
    return {key: value for key, value in params.items() if key not in resumed.data.params}
