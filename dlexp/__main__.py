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

import hydra
from omegaconf import DictConfig

from dlexp.locations import CONF_DIR

log = logging.getLogger("dlexp")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the job's ``tracking.best_metric`` (a validation score), so sweepers can optimise it.

    The job runs in steps (dlexp.job.job_steps) trained alone here; the stacked launcher
    (``hydra/launcher=stacked``) runs the steps of several jobs and trains them together.
    """
    from dlexp.experiment import run_alone
    from dlexp.job import job_steps

    return run_alone(job_steps(cfg))


#: How the stacked launcher (dlexp.sweeps.stacked_launcher) runs a job in steps: Hydra hands launchers the
#: undecorated task function, which carries them.
main.__wrapped__.steps = "dlexp.job.job_steps"


#: CPython looks for reference cycles every 700 new objects and rescans all older ones on a schedule that
#: start-up hits 9 times, because importing torch, MLflow and Hydra creates ~750,000 long-lived objects:
#: 1.4 s of a 9 s run (measured). Every 50,000 new objects: 0.2 s, and no full rescan in a spiral run.
GC_THRESHOLDS = (50_000, 50, 10)


def register_plugins() -> None:
    """Hydra finds plugins by scanning the ``hydra_plugins`` package, which misses ours in an editable install
    (``pip install -e .`` maps them with an import hook the scan does not see): register dlexp's search
    sweeper (``hydra/sweeper=search``), SLURM launcher (``hydra/launcher=slurm``) and stacked launcher
    (``hydra/launcher=stacked``) the documented way."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scans hydra_plugins (re-running the modules it finds)
    from hydra_plugins.dlexp_search.dlexp_search import SearchSweeper
    from hydra_plugins.dlexp_slurm_launcher import SlurmLauncher
    from hydra_plugins.dlexp_stacked_launcher import StackedLauncher

    found = {f"{plugin.__module__}.{plugin.__qualname__}" for plugin in plugins.discover()}
    # those the scan found (a wheel install) are listed once
    for plugin in SearchSweeper, SlurmLauncher, StackedLauncher:
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
