"""dlexp: Hydra-configured deep-learning experiments with k-fold training and MLflow tracking."""

from pathlib import Path

__version__ = "0.1.0"

#: The project checkout (dlexp is installed editable with ``pip install -e .``): it holds conf/, data/
#: and the default MLflow store, so every path the configs default to is absolute and independent of
#: the folder Hydra runs a job in.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _register_resolvers() -> None:
    """``${dlexp.root:}`` in a config is the project checkout, so default paths are absolute."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("dlexp.root", lambda: str(PROJECT_ROOT), replace=True)


_register_resolvers()
