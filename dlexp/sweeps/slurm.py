"""Hydra's submitit SLURM launcher, made to survive what clusters do to jobs (conf/hydra/launcher/slurm.yaml).

Hydra's launcher waits for each job's result in turn and raises the first failure, a multi-line submitit
error, losing the others; and under submitit a job ignores SIGTERM (submitit keeps USR2 for its timeouts and
preemption), so ``scancel`` or a requeue killed it after ``KillWait`` with its MLflow run left RUNNING. Here:

- in the job, SIGTERM raises ``Interrupted`` like Ctrl-C (at the end of the epoch, after a checkpoint), so a
  cancelled or requeued job ends its run KILLED (with the folds it finished) before SLURM's SIGKILL; a
  requeued job then continues that run from its checkpoints (dlexp.tracking.resume);
- in the job, SLURM's warning signal before its time limit (and at a preemption, where the cluster sends it)
  stops training at the end of the epoch, after a checkpoint, leaves the runs RUNNING, and submitit requeues
  the job (``max_num_timeout`` times at most for time limits): the next attempt continues the same runs and the
  sweep sees one job that ended FINISHED (:class:`TimeLimitWarning`);
- in the sweep, every job is waited for (SLURM is asked at least every ``POLL_SECONDS``, so a job that dies
  silently is noticed soon), and a job that left no result does not stop the sweep: its run, if still
  RUNNING, is ended (KILLED if SLURM cancelled the job, else FAILED), its folder gets the record and
  ``FAILED.txt`` a failing job leaves, and the sweeper gets NaN for it, as for a job that failed with a
  user error; the sweep's end lists it with one line and exits 2 (dlexp.sweeps.sweep.SweepRun);
- Ctrl-C of the sweep cancels its jobs, which then end their runs KILLED.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from dlexp.interrupts import Requeued, take_requeue_signal, take_sigterm

log = logging.getLogger(__name__)

#: How often the sweep asks SLURM (``sacct``) about its jobs at most; submitit alone backs off to 10 min.
POLL_SECONDS = 10
#: How long Ctrl-C of the sweep waits for its cancelled jobs to end their runs.
CANCEL_WAIT_SECONDS = 60


class SlurmLauncher(HydraSlurmLauncher):
    """Hydra's ``submitit_slurm`` launcher (same options) that reports a dead job instead of raising."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs in the job, on the node: SIGTERM (scancel, requeue) ends the job's runs KILLED; SLURM's warning
        of a time limit or preemption checkpoints and requeues it (:class:`TimeLimitWarning`)."""
        take_sigterm()
        warning = TimeLimitWarning.take(int(self.params.get("max_num_timeout", 0)))
        try:
            return super().__call__(*args, **kwargs)
        except Requeued as stop:
            if warning is not None:
                warning.requeue(stop)  # does not return: submitit requeues the job and ends this process
            raise
        except SystemExit:  # dlexp's exit after an interruption: if it was the warning, the sweep says so
            if warning is None or warning.decision is not False:
                raise
            overrides, _, num = args[:3]
            returned = self.failed_return(list(overrides), num, warning.not_requeued())
            note_error(Path(returned.working_dir), str(returned._return_value))
            return returned
        finally:
            if warning is not None:
                warning.ignore()  # the job's work is over: a warning now must not requeue (and rerun) it

    def failed_return(self, overrides: list[str], num: int, error: Exception) -> JobReturn:
        """A FAILED JobReturn with ``error``, for a job whose task ended without one (in the job, after
        Hydra's ``run_job``: its config and folder made again as it makes them)."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            import submitit

            sweep_config.hydra.job.id, sweep_config.hydra.job.num = submitit.JobEnvironment().job_id, num
        folder = Path(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir)).absolute()
        with open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(folder)
        task_cfg = OmegaConf.masked_copy(sweep_config, [key for key in sweep_config if key != "hydra"])
        return JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=OmegaConf.create({"hydra": sweep_config.hydra}),
                         working_dir=str(folder), task_name=str(sweep_config.hydra.job.name),
                         status=JobStatus.FAILED, _return_value=error)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for num, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        job_params = [(list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
                      for num, overrides in zip(numbers, job_overrides, strict=True)]
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        try:
            wait_for(jobs)
        except KeyboardInterrupt:
            cancel(jobs)
            raise
        return [self.job_return(job, list(overrides), num)
                for job, overrides, num in zip(jobs, job_overrides, numbers, strict=True)]

    def executor(self):
        """The submitit executor with this launcher's parameters, built as Hydra's launcher builds it."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items() if key not in init_keys})
        return executor

    def job_return(self, job, overrides: list[str], num: int) -> JobReturn:
        """The job's own JobReturn, or, for a job that left none, one with NaN after recording why."""
        error = job.exception()  # None, or why there is no result (submitit's multi-line text)
        if error is None:
            returned = job.results()[0]
            if returned.status == JobStatus.FAILED and type(returned._return_value).__name__ == "UncompletedJobError":
                # Wall time reached and not requeued (SLURM's warning, TimeLimitWarning): the job ended its run
                # KILLED and left its record; the sweep goes on and lists it at the end.
                log.error("job #%d (%s): %s", num, " ".join(filter_overrides(overrides)), returned._return_value)
                returned.status, returned.return_value = JobStatus.COMPLETED, math.nan
            return returned
        state = job.state.split()[0] if job.state else "UNKNOWN"
        reason = f"SLURM job {job.job_id} ended {state} without a result (log: {job.paths.stderr})"
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = num
        folder = record_dead_job(sweep_config, reason, killed=state in {"CANCELLED", "PREEMPTED", "TIMEOUT"})
        with open_dict(sweep_config.hydra.runtime):  # as Hydra sets it for a job that runs (sweepers read it)
            sweep_config.hydra.runtime.output_dir = str(folder)
        log.error("job #%d (%s): %s", num, " ".join(filter_overrides(overrides)), reason)
        task_cfg = OmegaConf.masked_copy(sweep_config, [key for key in sweep_config if key != "hydra"])
        return JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=OmegaConf.create({"hydra": sweep_config.hydra}),
                         working_dir=str(folder), task_name=str(sweep_config.hydra.job.name),
                         status=JobStatus.COMPLETED, _return_value=math.nan)


class TimeLimitWarning:
    """SLURM's warning signal (submitit's ``--signal=USR2@signal_delay_s``: ``signal_delay_s`` seconds before
    the job's time limit, and at a preemption where the cluster sends it), made dlexp's in the job.

    submitit's own handler requeues the job at once, wherever training is, and the job's end in between
    (``sys.exit``) ended its MLflow runs. Here the signal stops training at the end of the epoch, after a
    checkpoint (dlexp.training.checkpoint.stop_at_epoch_end), with ``Requeued``: the MLflow runs stay RUNNING;
    then submitit's handler does what it does (it calls the launcher's ``checkpoint``, which resubmits the
    same call, requeues the job with ``scontrol requeue`` and exits), and the next attempt continues the runs
    from the checkpoints (dlexp.tracking.resume). When submitit will not requeue (the time limit was reached
    more than ``max_num_timeout`` times), the stop is a plain ``Interrupted``: the runs end KILLED with their
    checkpoints, which the same command run again continues.
    """

    def __init__(self, signum: int, handler, max_num_timeout: int) -> None:
        self.signum, self.handler = signum, handler  # handler: submitit's SignalHandler.checkpoint_and_try_requeue
        self.max_num_timeout = max_num_timeout
        self.decision: bool | None = None

    @classmethod
    def take(cls, max_num_timeout: int) -> TimeLimitWarning | None:
        """Take submitit's signal in this job's process; None where submitit did not install its handler."""
        import submitit

        signum = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        handler = signal.getsignal(signum)
        if not hasattr(getattr(handler, "__self__", None), "has_timed_out"):
            return None
        warning = cls(signum, handler, max_num_timeout)
        take_requeue_signal(signum, warning.will_requeue)
        return warning

    def will_requeue(self) -> bool:
        """Whether submitit will requeue the job, by its own rule (submitit 1.5, ``SignalHandler.
        checkpoint_and_try_requeue``): a signal after min(0.8 x limit, limit - 10 min) of run time is a
        timeout, and a job is requeued after a preemption or its first ``max_num_timeout`` timeouts. Decided
        once, when the signal stops the job; submitit's handler is given the same answer when it runs."""
        if self.decision is None:
            owner = self.handler.__self__
            timed_out = owner.has_timed_out()
            owner.has_timed_out = lambda: timed_out
            self.decision = owner._delayed._timeout_countdown - timed_out >= 0
            if not self.decision:
                log.warning("%s: the time limit was reached more than hydra.launcher.max_num_timeout=%d times; "
                            "the job is not requeued: its runs end KILLED with their checkpoints (the same command "
                            "again continues them)", signal.Signals(self.signum).name, self.max_num_timeout)
        return self.decision

    def ignore(self) -> None:
        """From now on the signal is only logged: the job's work is over, and submitit is saving its result
        and ending the process. (A warning there used to raise ``Requeued`` inside submitit's ``process_job``,
        after it had saved the result: the job's process failed, and its last attempt ended FAILED in SLURM's
        accounting although the sweep had the job's result.)"""
        signal.signal(self.signum, self._ignored)

    @staticmethod
    def _ignored(signum: int, frame) -> None:
        log.warning("%s: the job's work is done; the warning is ignored", signal.Signals(signum).name)

    def not_requeued(self) -> Exception:
        """The job's error when the warning came once too often (a one-line ``UncompletedJobError``, as
        submitit's own: :meth:`SlurmLauncher.job_return` lists it)."""
        from submitit.core.utils import UncompletedJobError

        return UncompletedJobError(
            f"time limit reached, not requeued (hydra.launcher.max_num_timeout={self.max_num_timeout} requeues used "
            "up); its MLflow run ended KILLED with its checkpoints: the same command again continues it")

    def requeue(self, stop: Requeued) -> None:
        """After training stopped with its checkpoints: submitit's handler requeues the job and exits."""
        owner = self.handler.__self__
        signal.signal(signal.SIGTERM, owner.bypass)  # `scontrol requeue` sends SIGTERM: the job is leaving anyway
        log.warning("%s: checkpoint saved; the job is requeued and continues its MLflow run in its next attempt",
                    signal.Signals(self.signum).name)
        self.handler(self.signum, None)


def note_error(folder: Path, error: str) -> None:
    """Put ``error`` in the record a job left in ``folder`` (what the jobs table and the sweep's end say)."""
    import json

    from dlexp.sweeps.sweep import JOB_FILE

    record_file = folder / JOB_FILE
    if record_file.is_file():
        record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "error": error}, indent=2))


def wait_for(jobs: list, timeout: float | None = None) -> bool:
    """Wait until every job has a result or SLURM says it ended; False if ``timeout`` came first."""
    started = last_poll = time.monotonic()
    while not all(job.done() for job in jobs):  # result files each time; sacct on submitit's own schedule
        time.sleep(1)
        now = time.monotonic()
        if timeout is not None and now - started > timeout:
            return False
        if now - last_poll > POLL_SECONDS:
            jobs[0].watcher.update()  # one sacct call for all of the sweep's jobs
            last_poll = now
    return True


def cancel(jobs: list) -> None:
    """scancel the jobs that are still going and give them time to end their runs KILLED."""
    pending = [job for job in jobs if not job.done()]
    if not pending:
        return
    log.warning("cancelling %d SLURM jobs of the interrupted sweep", len(pending))
    for job in pending:
        job.cancel(check=False)
    wait_for(pending, timeout=CANCEL_WAIT_SECONDS)


def record_dead_job(sweep_config: DictConfig, reason: str, killed: bool) -> Path:
    """Leave what a job that died without a word could not: its run ended, its record, ``FAILED.txt``.

    A job that got as far as starting its run is found through the run's folder tag; one that never started
    gets its Hydra folder here (``.hydra/hydra.yaml``), so the sweep's jobs table lists it too.
    """
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from dlexp.sweeps.sweep import PARENT_TAG, SWEEP_FILE, SweepJob, job_folders
    from dlexp.tracking.store import job_run

    num = int(sweep_config.hydra.job.num)
    sweep_dir = Path(str(sweep_config.hydra.sweep.dir)).resolve()
    folder = next((path for path in job_folders(sweep_dir)
                   if OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra.job.num == num), None)
    if folder is None:
        folder = sweep_dir / str(sweep_config.hydra.sweep.subdir)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({"hydra": sweep_config.hydra}), folder / ".hydra" / "hydra.yaml")
    sweep_file = sweep_dir / SWEEP_FILE
    if not sweep_file.exists():  # no tracked sweep (no SweepRun callback): nothing more to record
        return folder
    import json

    client = MlflowClient()
    experiment = client.get_experiment_by_name(str(sweep_config.tracking.experiment_name))
    run = job_run(client, experiment.experiment_id, folder) if experiment else None
    status = RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED)
    if run is not None and run.info.status == "RUNNING":
        folds = client.search_runs([experiment.experiment_id], max_results=1000, filter_string=(
            f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
        for ended in [*folds, run]:
            client.set_tag(ended.info.run_id, "dlexp.error", reason)
            client.set_terminated(ended.info.run_id, status)
        (folder / "FAILED.txt").write_text(f"{status}: {reason}\nMLflow run: {run.info.run_id}\n")
    parent = json.loads(sweep_file.read_text())["run_id"]
    SweepJob(parent, num, folder).write_record(run.info.run_id if run else None, reused=False, error=reason)
    return folder
