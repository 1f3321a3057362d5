"""``python -m dlexp [+experiment=NAME] [overrides]``: run one experiment per Hydra job."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlexp.errors import DlexpError

log = logging.getLogger("dlexp")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the reported test accuracy, so sweepers (e.g. Optuna) can optimise it."""
    from dlexp.experiment import run_experiment  # heavy imports after Hydra has parsed the command line

    hydra_cfg = HydraConfig.get()
    try:
        summary = run_experiment(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))
    except DlexpError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return summary["test_acc"]


if __name__ == "__main__":
    main()
