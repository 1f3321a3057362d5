"""Hydra instantiates sweepers only from the ``hydra_plugins`` package: this is where it finds dlexp's search
(``_target_`` in conf/hydra/sweeper/search.yaml). The implementation is dlexp.sweeps.search.sweeper."""

from dlexp.sweeps.search.sweeper import SearchSweeperImpl


class SearchSweeper(SearchSweeperImpl):
    """dlexp's Optuna search (dlexp.sweeps.search.sweeper.SearchSweeperImpl)."""
