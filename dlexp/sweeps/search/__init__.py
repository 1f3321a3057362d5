"""Hyperparameter search on Optuna's ask-and-tell API, as a Hydra sweeper (``hydra/sweeper=search``).

space: Hydra's range syntax -> Optuna distributions; study: where the study lives and how jobs find it;
sweeper: the ask/launch/tell loop; pruning: the trial side (intermediate scores, TrialPruned); report:
pictures, best parameters and the command that reruns them, on the sweep's MLflow run.
"""
