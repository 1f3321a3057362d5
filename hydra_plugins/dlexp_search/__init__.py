"""dlexp's Hydra plugins (the search sweeper); hydra_plugins itself stays a namespace package."""
