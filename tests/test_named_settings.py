"""Settings that name something are checked against what exists before any training (issue #23 fault 5), and
a search whose trials all fail never reports success."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import compose_config
from optuna.trial import TrialState
from sweep_support import TINY, run_dlexp, sqlite_store

from dlexp.config.validation import validate_config
from dlexp.errors import DlexpError
from dlexp.reports.metric_names import SUMMARY_METRICS
from dlexp.reports.summary import summarise
from dlexp.sweeps.search.sweeper import ERROR_ATTR, all_failed
from dlexp.tracking.where import sweep_report
from dlexp.training.loop import FoldResult


def test_the_metric_names_are_the_numbers_a_job_reports():
    results = [FoldResult(fold, torch.arange(3), torch.arange(2), best_val_loss=0.5 - fold / 10, best_val_acc=0.8,
                          epochs_run=4, test_acc=0.7) for fold in (1, 2)]
    summary = summarise(results, 0.75, 1.0)
    assert tuple(k for k, v in summary.items() if not isinstance(v, dict)) == SUMMARY_METRICS


@pytest.mark.parametrize(("metric", "closest"), [("val_accuracy", "val_acc_mean"), ("test_accuracy", "test_acc"),
                                                 ("val_loss", "best_val_loss"), ("zzz", None)])
def test_a_best_metric_no_job_reports_is_refused_listing_the_valid_names(metric, closest):
    with pytest.raises(DlexpError) as refused:
        validate_config(compose_config(["+experiment=spiral", f"tracking.best_metric={metric}"]))
    message = str(refused.value)
    assert message.startswith(f"tracking.best_metric={metric}: no job reports that metric; ")
    assert message.endswith("expected one of " + ", ".join(SUMMARY_METRICS))
    assert (f"did you mean {closest}?" in message) if closest else "did you mean" not in message
    for valid in SUMMARY_METRICS:  # every name a job reports passes
        validate_config(compose_config(["+experiment=spiral", f"tracking.best_metric={valid}"]))


def study_of(states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study()
    for state in states:
        trial = study.ask()
        trial.set_user_attr(ERROR_ATTR, "the job returned nan")
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    return study


def test_a_search_whose_trials_all_fail_has_no_success():
    failed = study_of([TrialState.FAIL, TrialState.FAIL])
    assert all_failed(failed, [0, 1]) == ("search: all 2 trials failed, so it has no result (trial 0: the job "
                                          "returned nan); see search_trials.csv in the sweep folder")
    assert all_failed(study_of([TrialState.FAIL, TrialState.COMPLETE]), [0, 1]) is None
    assert all_failed(study_of([TrialState.FAIL, TrialState.PRUNED]), [0, 1]) is None
    assert all_failed(failed, []) is None  # a resumed search with nothing left to run
    # Earlier runs' trials do not count: this run's one trial failed.
    assert all_failed(study_of([TrialState.COMPLETE, TrialState.FAIL]), [1]).startswith("search: all 1 trials")


def test_a_sweep_without_a_best_job_says_so():
    run = SimpleNamespace(info=SimpleNamespace(status="FAILED", run_name="s", run_id="r", experiment_id="1",
                                               artifact_uri="file:///s/artifacts/1/r/artifacts"))
    rows = [{"job": 0, "status": "FAILED", "name": "lr=0.1"}]
    text = sweep_report(Path("/s"), run, "e", "sqlite:///x.db", rows, None, "val_acc_mean")
    assert "  best job:     none (no FINISHED job has a value of val_acc_mean)" in text.splitlines()


@pytest.mark.full
@pytest.mark.parametrize("sweep", [["optimizer.lr=0.1,0.01"],
                                   ["hydra/sweeper=search", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]])
def test_a_sweep_or_search_with_a_metric_no_job_reports_stops_before_training(tmp_path, sweep):
    """The issue's steps: the search trained every trial, recorded all FAIL and exited 0 as FINISHED."""
    result = run_dlexp("-m", *TINY, *sqlite_store(tmp_path), "tracking.best_metric=val_accuracy", *sweep)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: tracking.best_metric=val_accuracy: no job reports that metric; did you mean "
                      f"val_acc_mean? expected one of {', '.join(SUMMARY_METRICS)}"]
    assert not list((tmp_path / "sweep").glob("*/dlexp_job.json"))  # no job ran


def test_a_model_name_torchvision_lacks_is_refused_listing_the_valid_names():
    from dlexp.models.backbones import torchvision_classifier

    with pytest.raises(DlexpError, match=r"^model.name='resnet19': not a torchvision classification model; did you "
                                         r"mean resnet18\? expected one of alexnet, .*, resnet18, .*wide_resnet50_2$"):
        torchvision_classifier("resnet19", (3, 16, 16), 2)
