"""dlexp's stacked launcher (:class:`dlexp.sweeps.stacked_launcher.StackedLauncher`), registered where Hydra looks
for launchers: Hydra instantiates only plugin classes defined under the ``hydra_plugins`` namespace package, so the
class that conf/hydra/launcher/stacked.yaml names lives here; the code is in dlexp/sweeps/stacked_launcher.py.
"""

# The module, not its class: Hydra's plugin scan lists every plugin class a module's namespace holds.
from dlexp.sweeps import stacked_launcher


class StackedLauncher(stacked_launcher.StackedLauncher):
    """Jobs that differ only in stackable values train as one stacked model (see dlexp.sweeps.stacked_launcher)."""
