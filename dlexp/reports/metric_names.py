"""The names of a run's headline metrics (dlexp.reports.summary.summarise), importable without torch.

Settings that name a metric (``tracking.best_metric``) are checked against these before any training
(dlexp.config.validation): a job returns ``summary[best_metric]`` to its sweeper, so no other name can ever
have a value there.
"""

#: Every number ``summarise`` returns, each logged as an MLflow metric of the job's run, in its order.
SUMMARY_METRICS = ("test_acc", "best_fold", "best_val_loss", "test_acc_last_fold", "test_acc_fold_mean",
                   "test_acc_fold_std", "test_acc_ensemble", "val_acc_mean", "epochs_run_mean", "train_seconds")


def unknown_metric(setting: str, name: str) -> str | None:
    """The one-line complaint about ``setting=name`` when ``name`` is no summary metric, else None; it lists
    the valid names, the closest first when there is one (``val_accuracy`` -> ``val_acc_mean``)."""
    if name in SUMMARY_METRICS:
        return None
    import difflib

    close = difflib.get_close_matches(name, SUMMARY_METRICS, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{setting}={name}: no job reports that metric; {hint}expected one of {', '.join(SUMMARY_METRICS)}"
