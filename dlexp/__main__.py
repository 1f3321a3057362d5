"""``python -m dlexp [+experiment=NAME] [overrides]``: run one experiment per Hydra job."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlexp.errors import find_user_error
from dlexp.sweep import SweepJob
from dlexp.validation import validate_config

log = logging.getLogger("dlexp")


class Interrupted(KeyboardInterrupt):
    """Raised by a termination signal, so MLflow runs end KILLED like after Ctrl-C (dlexp.tracking)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Interrupted`` while a job runs.

    Left alone where a launcher already handles SIGTERM (submitit does, for cluster preemption) and off the
    main thread, where Python cannot install handlers.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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

        with sigterm_as_interrupt():
            if job is not None:  # a sweep's job: resumable, nested under the sweep's run
                return job.run(cfg, lambda tags: run_experiment(cfg, output_dir, overrides, extra_tags=tags))
            summary = run_experiment(cfg, output_dir, overrides)
    except Exception as error:
        if (user_error := find_user_error(error)) is None:
            raise  # a bug: keep its traceback
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM as Interrupted
        print(f"interrupted: {interrupt or 'Ctrl-C'}; the MLflow run ended KILLED", file=sys.stderr)
        sys.exit(128 + getattr(interrupt, "signum", signal.SIGINT))
    return summary.get(cfg.tracking.best_metric, float("nan"))


#: CPython looks for reference cycles every 700 new objects and rescans all older ones on a schedule that
#: start-up hits 9 times, because importing torch, MLflow and Hydra creates ~750,000 long-lived objects:
#: 1.4 s of a 9 s run (measured). Every 50,000 new objects: 0.2 s, and no full rescan in a spiral run.
GC_THRESHOLDS = (50_000, 50, 10)


if __name__ == "__main__":
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        main()
    finally:
        # The process ends here: spare the interpreter's final collection those ~750,000 objects, another
        # 1.2-1.7 s (measured). Exit handlers still run and MLflow's runs are already ended.
        gc.freeze()
