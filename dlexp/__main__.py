"""``dlexp [+experiment=NAME] [overrides]`` (or ``python -m dlexp``): run one experiment per Hydra job.

``dlexp server ...`` and ``dlexp inspect ...`` run :mod:`dlexp.server` and :mod:`dlexp.inspect` (also
``python -m dlexp.server`` / ``python -m dlexp.inspect``); any other arguments are Hydra's.
"""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import sys
from contextlib import nullcontext

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlexp.config.paths import absolute_paths
from dlexp.config.validation import validate_config
from dlexp.errors import find_user_error
from dlexp.interrupts import Requeued, sigterm_as_interrupt
from dlexp.locations import CONF_DIR
from dlexp.logfile import report_end
from dlexp.sweeps.sweep import SweepJob, job_sweep_dir
from dlexp.tracking.where import label_job_output, report_failed_run, report_run

log = logging.getLogger("dlexp")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the job's ``tracking.best_metric`` (a validation score), so sweepers can optimise it."""
    hydra_cfg = HydraConfig.get()
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    absolute_paths(cfg, hydra_cfg.runtime.cwd)  # relative paths: from where dlexp started, even with job.chdir
    job = SweepJob.current(hydra_cfg)
    try:
        if job is None:
            validate_config(cfg)  # a single run's typo is reported before the heavy imports
        from dlexp.experiment import run_experiment

        with sigterm_as_interrupt(), label_job_output(job.num) if job else nullcontext():
            if job is not None:  # a sweep's job: resumable, nested under the sweep's run
                from dlexp.sweeps.search.pruning import trial_hooks  # a search's trial reports to its pruner

                hooks = trial_hooks(job_sweep_dir(hydra_cfg), int(hydra_cfg.job.num),
                                    int(cfg.trainer.max_epochs))
                score = job.run(cfg, lambda tags: run_experiment(cfg, output_dir, overrides, extra_tags=tags,
                                                                 hooks=hooks))
                report_run(cfg, output_dir, job.num)
                return score
            summary = run_experiment(cfg, output_dir, overrides)
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


#: CPython looks for reference cycles every 700 new objects and rescans all older ones on a schedule that
#: start-up hits 9 times, because importing torch, MLflow and Hydra creates ~750,000 long-lived objects:
#: 1.4 s of a 9 s run (measured). Every 50,000 new objects: 0.2 s, and no full rescan in a spiral run.
GC_THRESHOLDS = (50_000, 50, 10)


def register_plugins() -> None:
    """Hydra finds plugins by scanning the ``hydra_plugins`` package, which misses ours in an editable install
    (``pip install -e .`` maps them with an import hook the scan does not see): register dlexp's search
    sweeper (``hydra/sweeper=search``) and SLURM launcher (``hydra/launcher=slurm``) the documented way."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scans hydra_plugins (re-running the modules it finds)
    from hydra_plugins.dlexp_search.dlexp_search import SearchSweeper
    from hydra_plugins.dlexp_slurm_launcher import SlurmLauncher

    found = {f"{plugin.__module__}.{plugin.__qualname__}" for plugin in plugins.discover()}
    for plugin in SearchSweeper, SlurmLauncher:  # those the scan found (a wheel install) are listed once
        if f"{plugin.__module__}.{plugin.__qualname__}" not in found:
            plugins.register(plugin)


#: ``dlexp NAME ...`` runs the module's ``cli()`` with the remaining arguments; Hydra's overrides always hold
#: a ``=`` (or are options), so a bare word cannot be mistaken for one.
SUBCOMMANDS = {"server": "dlexp.server", "inspect": "dlexp.inspect", "sync": "dlexp.sync"}


def cli() -> None:
    """The ``dlexp`` command (console script) and ``python -m dlexp``: a sub-command, or Hydra's app."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        name = sys.argv.pop(1)
        importlib.import_module(SUBCOMMANDS[name]).cli(prog=f"dlexp {name}")
        return
    gc.set_threshold(*GC_THRESHOLDS)
    register_plugins()
    try:
        main()
    except KeyboardInterrupt as interrupt:  # a sweep's own process (a job reports its own, in main)
        print(f"interrupted: {str(interrupt) or 'Ctrl-C'}; the sweep's unfinished runs end KILLED", file=sys.stderr)
        sys.exit(128 + getattr(interrupt, "signum", signal.SIGINT))
    finally:
        # The process ends here: spare the interpreter's final collection those ~750,000 objects, another
        # 1.2-1.7 s (measured). Exit handlers still run and MLflow's runs are already ended.
        gc.freeze()


if __name__ == "__main__":
    cli()
