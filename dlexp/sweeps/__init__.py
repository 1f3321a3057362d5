"""Many jobs: a multirun as one MLflow run with a jobs table (``sweep``), the SLURM launcher (``slurm``) and the
Optuna search sweeper (``search``)."""
