"""Models built from the ``model`` config group."""
