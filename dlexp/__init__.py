"""dlexp: Hydra-configured deep-learning experiments with k-fold training and MLflow tracking.

From Python or a notebook (dlexp.api; imported on first use, so ``import dlexp`` stays cheap):
``dlexp.run(overrides)`` trains one experiment and returns a :class:`~dlexp.api.RunResult` (run id,
summary, per-fold table, models, pictures); ``dlexp.sweep(overrides)`` runs a sweep and returns its jobs
table; ``dlexp.load_runs(experiment)`` reads an experiment's runs from any MLflow store as a DataFrame;
``dlexp.compose(overrides)`` gives the composed config, ``dlexp.model_summary(overrides)`` the model's layers.
"""

import os
from pathlib import Path

# MLflow 3's usage telemetry off unless the user turned it on: its client thread sets and unsets an environment
# variable (_MLFLOW_TELEMETRY_SESSION_ID) while requests reads os.environ for proxies in another thread, which
# failed a requeued SLURM job's first store call with KeyError('_MLFLOW_TELEMETRY_SESSION_ID') (seen in
# tests/test_cluster.py); and dlexp's machines reach no internet to send it to.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# where the configs and the shipped data are, and where stores go (a checkout or an installed wheel)
from dlexp.locations import CONF_DIR, DATA_DIR, PROJECT_ROOT  # noqa: F401

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${dlexp.root:}`` in a config is where the store and caches go, ``${dlexp.data:}`` the shipped data
    (see dlexp.locations), so default paths are absolute and independent of the folder a job runs in."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dlexp.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("dlexp.data", lambda: str(DATA_DIR), replace=True)
    # ${dlexp.cwd:}: the folder dlexp was started in (a project of one's own keeps its store there), taken once
    # at import so a job that changes folder still means the same one. Hydra's ${hydra:runtime.cwd} is not set
    # where a sweep's callbacks resolve the config.
    started_in = str(Path.cwd())
    OmegaConf.register_new_resolver("dlexp.cwd", lambda: started_in, replace=True)


_register_resolvers()


#: The public API, in dlexp.api (loaded on first access).
__all__ = ["PROJECT_ROOT", "RunResult", "SweepResult", "compose", "load_runs", "model_summary", "run", "sweep"]
_API = {"RunResult", "SweepResult", "compose", "load_runs", "model_summary", "run", "sweep"}


def __getattr__(name: str):
    if name in _API:
        from dlexp import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
