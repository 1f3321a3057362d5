"""dlexp's SLURM launcher (:class:`dlexp.sweeps.slurm.SlurmLauncher`), registered where Hydra looks for launchers.

Hydra instantiates only plugin classes defined under the ``hydra_plugins`` namespace package, so the class
that conf/hydra/launcher/slurm.yaml names lives here; the code is in dlexp/sweeps/slurm.py.
"""

# The module, not its class: Hydra's plugin scan lists every plugin class a module's namespace holds.
from dlexp.sweeps import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    """Hydra's submitit SLURM launcher that survives cluster faults (see dlexp.sweeps.slurm)."""
