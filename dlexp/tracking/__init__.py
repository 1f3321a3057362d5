"""Tracking in MLflow: the store and a job's run (``store``), each fold's live nested run (``fold_runs``), run
names (``naming``), the helper process that takes pictures and writes off the training thread (``background``)
and where a command's results went (``where``)."""
