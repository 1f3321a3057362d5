"""dlexp: Hydra-configured deep-learning experiments with k-fold training and MLflow tracking."""

# where the configs and the shipped data are, and where stores go (a checkout or an installed wheel)
from dlexp.locations import CONF_DIR, DATA_DIR, PROJECT_ROOT  # noqa: F401

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${dlexp.root:}`` in a config is where the store and caches go, ``${dlexp.data:}`` the shipped data
    (see dlexp.locations), so default paths are absolute and independent of the folder a job runs in."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dlexp.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("dlexp.data", lambda: str(DATA_DIR), replace=True)


_register_resolvers()
