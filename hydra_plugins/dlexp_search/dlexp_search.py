"""Hydra instantiates sweepers only from the ``hydra_plugins`` package: this is where it finds dlexp's search
(``_target_`` in conf/hydra/sweeper/search.yaml). The implementation is dlexp.sweeps.search.sweeper."""

# The module, not its class: Hydra's plugin scan lists every plugin class a module's namespace holds.
from dlexp.sweeps.search import sweeper


class SearchSweeper(sweeper.SearchSweeperImpl):
    """dlexp's Optuna search (dlexp.sweeps.search.sweeper.SearchSweeperImpl)."""
