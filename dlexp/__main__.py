"""``python -m dlexp [+experiment=NAME] [overrides]``: run one experiment per Hydra job."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlexp.config.validation import validate_config
from dlexp.errors import find_user_error
from dlexp.interrupts import sigterm_as_interrupt
from dlexp.sweeps.sweep import SweepJob
from dlexp.tracking.where import label_job_output, report_failed_run, report_run

log = logging.getLogger("dlexp")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the job's ``tracking.best_metric`` (a validation score), so sweepers can optimise it."""
    hydra_cfg = HydraConfig.get()
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    job = SweepJob.current(hydra_cfg)
    try:
        if job is None:
            validate_config(cfg)  # a single run's typo is reported before the heavy imports
        from dlexp.experiment import run_experiment

        with sigterm_as_interrupt(), label_job_output(job.num) if job else nullcontext():
            if job is not None:  # a sweep's job: resumable, nested under the sweep's run
                from dlexp.sweeps.search.pruning import trial_hooks  # a search's trial reports to its pruner

                hooks = trial_hooks(Path(str(hydra_cfg.sweep.dir)), int(hydra_cfg.job.num),
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
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM as Interrupted
        report_failed_run(cfg, output_dir)
        from dlexp.tracking.offline import pending_in

        ended = ("the MLflow run ended KILLED" if pending_in(output_dir) is None else "the MLflow run's end "
                 f"(KILLED) is not in the store yet: send it with python -m dlexp.sync {output_dir}")
        print(f"interrupted: {str(interrupt) or 'Ctrl-C'}; {ended}", file=sys.stderr)
        sys.exit(128 + getattr(interrupt, "signum", signal.SIGINT))
    return summary.get(cfg.tracking.best_metric, float("nan"))


#: CPython looks for reference cycles every 700 new objects and rescans all older ones on a schedule that
#: start-up hits 9 times, because importing torch, MLflow and Hydra creates ~750,000 long-lived objects:
#: 1.4 s of a 9 s run (measured). Every 50,000 new objects: 0.2 s, and no full rescan in a spiral run.
GC_THRESHOLDS = (50_000, 50, 10)


def register_search_sweeper() -> None:
    """Hydra finds plugins by scanning the ``hydra_plugins`` package, which misses ours in an editable install
    (``pip install -e .``): register dlexp's search sweeper (``hydra/sweeper=search``) the documented way."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.dlexp_search.dlexp_search import SearchSweeper

    Plugins.instance().register(SearchSweeper)


if __name__ == "__main__":
    gc.set_threshold(*GC_THRESHOLDS)
    register_search_sweeper()
    try:
        main()
    except KeyboardInterrupt as interrupt:  # a sweep's own process (a job reports its own, in main)
        print(f"interrupted: {str(interrupt) or 'Ctrl-C'}; the sweep's unfinished runs end KILLED", file=sys.stderr)
        sys.exit(128 + getattr(interrupt, "signum", signal.SIGINT))
    finally:
        # The process ends here: spare the interpreter's final collection those ~750,000 objects, another
        # 1.2-1.7 s (measured). Exit handlers still run and MLflow's runs are already ended.
        gc.freeze()
