"""One Hydra job of ``python -m dlexp`` in steps around training (what dlexp.__main__.main runs).

:func:`job_steps` is a generator: set-up up to the job's training request (a
dlexp.experiment.TrainingRequest, yielded when its folds train batched), then, with the fold results sent
back (or the exception that stopped training thrown in), the rest of the job. ``main`` runs it with
dlexp.experiment.run_alone; the stacked launcher (dlexp.sweeps.stacked_launcher) runs the steps of several
jobs, each in its own Hydra job context, and trains their requests as one stacked model in between.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Generator
from contextlib import nullcontext
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlexp.config.paths import absolute_paths
from dlexp.config.validation import validate_config
from dlexp.errors import find_user_error
from dlexp.interrupts import Requeued, sigterm_as_interrupt
from dlexp.logfile import report_end
from dlexp.sweeps.sweep import SweepJob, job_sweep_dir
from dlexp.tracking.where import label_job_output, report_failed_run, report_run


def job_steps(cfg: DictConfig) -> Generator[Any, Any, float]:
    """The job's run in steps; returns the job's ``tracking.best_metric`` (a validation score) for sweepers.

    A user mistake ends with its one line and exit 2, an interrupt with exit 128 + the signal (``SystemExit``,
    as ``python -m dlexp`` exits); in a sweep a user mistake fails only its job (dlexp.sweeps.sweep.SweepJob).
    """
    hydra_cfg = HydraConfig.get()
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    absolute_paths(cfg, hydra_cfg.runtime.cwd)  # relative paths: from where dlexp started, even with job.chdir
    job = SweepJob.current(hydra_cfg)
    try:
        if job is None:
            validate_config(cfg)  # a single run's typo is reported before the heavy imports
        from dlexp.experiment import experiment_steps

        with sigterm_as_interrupt(), label_job_output(job.num) if job else nullcontext():
            if job is not None:  # a sweep's job: resumable, nested under the sweep's run
                from dlexp.sweeps.search.pruning import trial_hooks  # a search's trial reports to its pruner

                hooks = trial_hooks(job_sweep_dir(hydra_cfg), int(hydra_cfg.job.num), int(cfg.trainer.max_epochs))

                def summary_steps(tags: dict[str, str]):
                    outcome = yield from experiment_steps(cfg, output_dir, overrides, hooks=hooks,
                                                          extra_tags={**tags, **getattr(hooks, "tags", {})})
                    return outcome.summary

                score = yield from job.steps(cfg, summary_steps)
                report_run(cfg, output_dir, job.num)
                return score
            summary = (yield from experiment_steps(cfg, output_dir, overrides)).summary
        report_run(cfg, output_dir)  # where the results went: the last lines of the command
    except Exception as error:
        if (user_error := find_user_error(error)) is None:
            raise  # a bug: keep its traceback
        report_failed_run(cfg, output_dir)
        report_end(f"error: {user_error}")  # on stderr and in the run's log file (dlexp.log)
        sys.exit(2)
    except Requeued:  # SLURM's warning of a time limit or preemption: the launcher requeues the job
        raise
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM as Interrupted
        report_failed_run(cfg, output_dir)
        from dlexp.tracking.offline import pending_in

        ended = ("the MLflow run ended KILLED" if pending_in(output_dir) is None else "the MLflow run's end "
                 f"(KILLED) is not in the store yet: send it with python -m dlexp.sync {output_dir}")
        report_end(f"interrupted: {str(interrupt) or 'Ctrl-C'}; {ended}", logging.WARNING)
        sys.exit(128 + getattr(interrupt, "signum", signal.SIGINT))
    return summary.get(cfg.tracking.best_metric, float("nan"))
