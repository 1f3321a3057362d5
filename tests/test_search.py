"""dlexp's hyperparameter search (hydra/sweeper=search, dlexp/sweeps/search/) as users run it: failed trials are
results, a stopped search resumes, trials are pruned, the direction follows the metric, parallel trials."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from importlib import metadata

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState
from sweep_support import ROOT, TINY, run_dlexp, runs_by_kind, sqlite_store, stop_when

from dlexp.sweeps.search.space import parse_search_space
from dlexp.sweeps.search.study import INTERRUPTED_ATTR

SEARCH = ["-m", "hydra/sweeper=search"]


def load_study(tmp_path) -> optuna.Study:
    """The only study in the search's default storage, optuna.db beside the test's mlflow.db."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def client_for(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def test_search_space_from_config_and_command_line():
    space = parse_search_space(
        {"optimizer.lr": "tag(log, interval(0.0003, 0.03))", "model.hidden_dims": "choice([32], [64,32])",
         "trainer.batch_size": "choice(25, 50)"},
        ["+experiment=spiral", "optimizer.lr=choice(0.01, 1e20)", "trainer.batch_size=25",
         "trainer.seed=int(interval(1, 9))", "trainer.patience=range(5, 8)", "model.dropout=interval(0, 0.5)"])
    dists = space.distributions
    assert dists["optimizer.lr"] == optuna.distributions.CategoricalDistribution([0.01, 1e20])  # CLI wins
    assert "trainer.batch_size" not in dists  # a fixed value on the command line replaces the range
    assert dists["model.hidden_dims"].choices == ("[32]", "[64,32]")
    assert dists["trainer.seed"] == optuna.distributions.IntDistribution(1, 9)
    assert dists["trainer.patience"].choices == (5, 6, 7)  # range excludes its end, as in Hydra
    assert dists["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert space.overrides({"optimizer.lr": 1e20, "model.hidden_dims": "[64,32]", "trainer.seed": 3}) == [
        "+experiment=spiral", "trainer.batch_size=25", "optimizer.lr=1e+20", "model.hidden_dims=[64,32]",
        "trainer.seed=3"]


@pytest.mark.full
def test_diverging_trial_fails_alone_and_the_search_goes_on(tmp_path):
    # The command: the lr=1e20 trial diverges; hydra-optuna-sweeper died there with Optuna's
    # "Values were told..." traceback after 2 of 4 trials, leaving no results file. The command line's ranges are
    # the whole space (the dropout range varies the good trials, for the slice and importance pictures).
    result = run_dlexp(*SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", *TINY,
                       "optimizer.lr=choice(0.01, 1e20)", "model.dropout=interval(0.0, 0.3)",
                       "tracking.experiment_name=diverge", *sqlite_store(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr  # 3 epochs: the pruner gets no report, and the user is told so
    assert ("hydra.sweeper.report_every=10 is more than trainer.max_epochs=3: no trial reports a score, so none "
            "is pruned (set report_every to at most 3)") in output

    study = load_study(tmp_path)
    trials = study.get_trials()
    assert len(trials) == 4
    for trial in trials:
        expected = TrialState.FAIL if trial.params["optimizer.lr"] == 1e20 else TrialState.COMPLETE
        assert trial.state == expected, (trial.number, trial.params, trial.state)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    good = [t for t in trials if t.state == TrialState.COMPLETE]
    assert failed and len(good) >= 2  # the sampler's seed draws 1e20 for 2 of the 4 trials
    assert all("training diverged" in t.user_attrs["dlexp.error"] for t in failed)
    # One `error: job #N (...)` line per failed trial; jobs are numbered by their trial.
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: job #")]
    assert sorted(int(line.split("#")[1].split()[0]) for line in error_lines) == sorted(t.number for t in failed)
    assert all("optimizer.lr=1e+20" in line and "training diverged" in line for line in error_lines)

    client = client_for(tmp_path)
    sweeps, jobs, folds = runs_by_kind(client, "diverge")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FAILED"  # like a grid sweep with a failed job
    by_run = {r.info.run_id: r for r in jobs}
    for trial in trials:
        run = by_run[trial.user_attrs["dlexp.run_id"]]
        assert run.info.status == ("FAILED" if trial.state == TrialState.FAIL else "FINISHED")
        assert run.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
    assert "RUNNING" not in {r.info.status for r in [*sweeps, *jobs, *folds]}

    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    best = max(good, key=lambda t: t.value)
    assert results.best_value == pytest.approx(best.value) and results.best_params["optimizer.lr"] == 0.01
    assert dict(results.trials) == {"COMPLETE": len(good), "PRUNED": 0, "FAIL": len(failed), "INTERRUPTED": 0}
    assert results.best_value == pytest.approx(by_run[results.best_run_id].data.metrics["val_acc_mean"])
    # The sweep run carries the pictures, the best parameters and the command that reruns them.
    sweep = client.get_run(sweeps[0].info.run_id)
    pictures = {a.path for a in client.list_artifacts(sweep.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/slice.png", "search/param_importances.png"} <= pictures
    assert all((tmp_path / "sweep" / p).stat().st_size > 5000 for p in pictures)
    assert sweep.data.tags["dlexp.best_command"] == results.best_command
    assert "optimizer.lr=0.01" in results.best_command.split()
    rerun = run_dlexp(*shlex.split(results.best_command)[3:], f"hydra.run.dir={tmp_path / 'rerun'}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "val_acc_mean" in (tmp_path / "rerun" / "summary.json").read_text()


@pytest.mark.full
def test_max_failures_stops_a_hopeless_search_with_one_line(tmp_path):
    result = run_dlexp(*SEARCH, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1",
                       "hydra.sweeper.max_failures=1", *TINY, "optimizer.lr=choice(1e20)",
                       "tracking.experiment_name=hopeless", *sqlite_store(tmp_path))
    assert result.returncode == 2
    assert "error: search stopped: 1 trials failed (hydra.sweeper.max_failures=1)" in result.stderr
    assert [t.state for t in load_study(tmp_path).get_trials()] == [TrialState.FAIL]


def count_done(tmp_path) -> int:
    # Open the study only once a trial's job has ended (its record is in the sweep folder): before that the
    # search may still be creating the storage's schema, and a second process doing the same at that
    # moment fails on alembic's version row (seen once in CI).
    if not any((tmp_path / "sweep").glob("*/dlexp_job.json")):
        return 0
    try:
        study = load_study(tmp_path)
    except ValueError:  # the study is not created yet
        return 0
    return sum(t.state == TrialState.COMPLETE for t in study.get_trials())


@pytest.mark.full
def test_sigterm_then_the_same_command_continues_the_same_study(tmp_path):
    command = [*SEARCH, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none", *TINY,
               "trainer.max_epochs=8", "tracking.experiment_name=resume_search", *sqlite_store(tmp_path)]
    returncode, stderr = stop_when(lambda: count_done(tmp_path) >= 2, *command)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    first = {t.number: t for t in load_study(tmp_path).get_trials()}
    assert "RUNNING" not in {t.state.name for t in first.values()}  # the cut-off trial ended FAIL at once
    finished_before = {n: t.user_attrs["dlexp.run_id"] for n, t in first.items() if t.state == TrialState.COMPLETE}
    assert len(finished_before) >= 2

    # The same command again, in a new sweep folder as Hydra's timestamped default would give.
    command[command.index(f"hydra.sweep.dir={tmp_path}/sweep")] = f"hydra.sweep.dir={tmp_path}/sweep2"
    second = run_dlexp(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = load_study(tmp_path).get_trials()
    counted = [t for t in trials if INTERRUPTED_ATTR not in t.user_attrs]
    interrupted = [t for t in trials if INTERRUPTED_ATTR in t.user_attrs]
    assert len(counted) == 6 and {t.state for t in counted} == {TrialState.COMPLETE}
    # A seeded sampler restarted as it was would propose the first run's configurations again.
    assert len({repr(sorted(t.params.items())) for t in counted}) == 6
    assert len(interrupted) == len(first) - len(finished_before) and {t.state for t in interrupted} == {
        TrialState.FAIL}
    # The finished trials were not run again: the second run launched only the others.
    launched = sorted(int(p.name) for p in (tmp_path / "sweep2").iterdir() if p.name.isdigit())
    assert len(launched) == 6 - len(finished_before)
    assert not set(launched) & set(finished_before)
    client = client_for(tmp_path)
    sweeps, jobs, _ = runs_by_kind(client, "resume_search")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"  # one sweep run, resumed
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweeps[0].info.run_id}
    assert sum(r.info.status == "FINISHED" for r in jobs) == 6
    for number, run_id in finished_before.items():
        assert {t.number: t for t in counted}[number].user_attrs["dlexp.run_id"] == run_id


@pytest.mark.full
@pytest.mark.parametrize("strategy", ["sequential", "batched"])
def test_hopeless_trials_are_pruned_in_the_study_and_in_mlflow(tmp_path, strategy):
    # Only the learning rate is searched; with the sampler's seed 2 the trials draw lr 0.01, 0.01, 0.01, 1e-5.
    # Trials 1 and 2 repeat trial 0's config (they reuse its run); trial 3 cannot learn in 6 epochs and the
    # median pruner, with one trial to compare against, stops it at its first report.
    result = run_dlexp(*SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1", "hydra.sweeper.params=null",
                       "hydra.sweeper.sampler.seed=2", "hydra.sweeper.pruner.n_startup_trials=1",
                       "hydra.sweeper.report_every=2", *TINY, "trainer.max_epochs=6",
                       "optimizer.lr=choice(0.01, 0.00001)", f"trainer.strategy={strategy}",
                       "tracking.experiment_name=prune", *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]  # pruned trials are results, not failures
    trials = load_study(tmp_path).get_trials()
    assert [t.params["optimizer.lr"] for t in trials] == [0.01, 0.01, 0.01, 1e-5]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert len({t.user_attrs["dlexp.run_id"] for t in trials[:3]}) == 1  # the same config is not retrained
    # Every 2nd epoch: of all folds at once, or of fold 1 then fold 2 (steps 6 + epoch) one by one.
    steps = {2, 4, 6, 8, 10, 12} if strategy == "sequential" else {2, 4, 6}
    assert set(trials[0].intermediate_values) == steps
    last = max(trials[3].intermediate_values)
    assert last <= 6  # pruned during its first fold, either way
    assert trials[3].intermediate_values[last] < trials[0].intermediate_values[last]
    pruned = trials[3:]

    client = client_for(tmp_path)
    sweeps, jobs, _ = runs_by_kind(client, "prune")
    assert sweeps[0].info.status == "FINISHED"
    by_run = {r.info.run_id: r for r in jobs}
    for trial in (trials[0], trials[3]):  # the ones that trained
        run = by_run[trial.user_attrs["dlexp.run_id"]]
        assert run.data.tags["dlexp.trial"] == str(trial.number)
        if trial.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and f"trial {trial.number} pruned" in run.data.tags["dlexp.pruned"]
            folder = tmp_path / "sweep" / str(trial.user_attrs["dlexp.job"])
            assert (folder / "FAILED.txt").read_text().startswith("PRUNED: ")
            assert not (folder / "summary.json").exists()
        else:
            assert run.info.status == "FINISHED" and "dlexp.pruned" not in run.data.tags
    table = (tmp_path / "sweep" / "sweep_jobs.csv").read_text()
    assert table.count(",PRUNED,") == len(pruned)
    assert f"{len(pruned)} PRUNED" in sweeps[0].data.tags["mlflow.note.content"]


@pytest.mark.full
def test_a_search_on_a_loss_minimises_it(tmp_path):
    result = run_dlexp(*SEARCH, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none",
                       *TINY, "tracking.best_metric=best_val_loss", "tracking.experiment_name=loss",
                       *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.get_trials()]
    assert len(values) == 3 and len(set(values)) == 3
    assert study.best_value == min(values)
    assert all(not t.intermediate_values for t in study.get_trials())  # pruner=none: nothing reported
    _, jobs, _ = runs_by_kind(client_for(tmp_path), "loss")
    best = min(jobs, key=lambda r: r.data.metrics["best_val_loss"])
    assert study.best_trial.user_attrs["dlexp.run_id"] == best.info.run_id
    assert study.best_value == pytest.approx(best.data.metrics["best_val_loss"])


@pytest.mark.full
def test_parallel_trials_report_to_the_study_from_their_worker_processes(tmp_path):
    result = run_dlexp(*SEARCH, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=4",
                       "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.n_startup_trials=2", *TINY,
                       "hydra.sweeper.report_every=1", "tracking.experiment_name=parallel_search",
                       *sqlite_store(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr and "so none is pruned" not in result.stderr
    trials = load_study(tmp_path).get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.intermediate_values for t in trials)  # the workers reached the study through its storage
    sweeps, jobs, _ = runs_by_kind(client_for(tmp_path), "parallel_search")
    assert len(sweeps) == 1 and len(jobs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweeps[0].info.run_id}
    assert {t.user_attrs["dlexp.run_id"] for t in trials} == {r.info.run_id for r in jobs}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            run = next(r for r in jobs if r.info.run_id == trial.user_attrs["dlexp.run_id"])
            assert trial.value == pytest.approx(run.data.metrics["val_acc_mean"])


def test_bad_search_settings_are_one_line_errors(tmp_path):
    result = run_dlexp(*SEARCH, "hydra.sweeper.n_trials=0", *TINY, *sqlite_store(tmp_path))
    assert result.returncode == 2 and "error: hydra.sweeper.n_trials=0: expected an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_dependencies_have_current_optuna_and_no_hydra_optuna_sweeper():
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("hydra-optuna-sweeper")
    assert int(metadata.version("optuna").split(".")[0]) >= 5
    setup = (ROOT / "setup.cfg").read_text()
    assert "hydra-optuna-sweeper" not in setup and "optuna>=5" in setup
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    # dlexp's own requirements come from its installed metadata: reinstall (pip install -e .) after a change.
    assert check.returncode == 0, check.stdout + check.stderr


class FakeTrial:
    """Records what a reporter tells its trial; prunes when told to."""

    number = 7

    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.reports[-1][1] == self.prune_at


def fold_result(fold: int, best_val_acc: float, best_val_loss: float):
    import torch

    from dlexp.training.loop import FoldResult

    return FoldResult(fold=fold, train_indices=torch.arange(2), val_indices=torch.arange(2),
                      best_val_acc=best_val_acc, best_val_loss=best_val_loss)


def test_reporter_reports_every_few_epochs_of_the_folds_in_training():
    from dlexp.sweeps.search.pruning import TrialReporter

    # One by one (max_epochs 3): fold 2's epochs are steps 3 + epoch; the value is the mean of the folds begun.
    trial = FakeTrial()
    reporter = TrialReporter(trial, maximise=True, report_every=2, max_epochs=3)
    for fold, scores in ((1, (0.1, 0.3, 0.2)), (2, (0.5, 0.4, 0.6))):
        reporter.fold_start(fold)
        for epoch, score in enumerate(scores, start=1):
            reporter.epoch_end(fold, epoch, {"val_acc": score, "val_loss": 1.0})
        reporter.fold_end(fold_result(fold, max(scores), 1.0))
    assert trial.reports == [(0.3, 2), (pytest.approx((0.3 + 0.5) / 2), 5)]

    trial = FakeTrial()
    reporter = TrialReporter(trial, maximise=False, report_every=2, max_epochs=4)  # minimising: validation loss
    reporter.fold_start(1)
    reporter.fold_start(2)
    for epoch in (1, 2, 3, 4):
        reporter.epoch_end(1, epoch, {"val_acc": 0.0, "val_loss": 1.0 / epoch})
        if epoch <= 2:
            reporter.epoch_end(2, epoch, {"val_acc": 0.0, "val_loss": 3.0 - epoch})
        if epoch == 2:
            reporter.fold_end(fold_result(2, 0.0, 1.0))  # fold 2 stops early; its best loss stays in the mean
    assert trial.reports == [(pytest.approx((0.5 + 1.0) / 2), 2), (pytest.approx((0.25 + 1.0) / 2), 4)]

    reporter = TrialReporter(FakeTrial(prune_at=2), maximise=True, report_every=2, max_epochs=3)
    reporter.fold_start(1)
    reporter.epoch_end(1, 1, {"val_acc": 0.2, "val_loss": 1.0})
    with pytest.raises(optuna.TrialPruned, match="trial 7 pruned after fold 1, epoch 2: intermediate score 0.2000"):
        reporter.epoch_end(1, 2, {"val_acc": 0.1, "val_loss": 1.0})


def test_a_trial_that_cannot_reach_its_study_trains_without_pruning(tmp_path, caplog):
    import json

    from dlexp.sweeps.search.pruning import trial_hooks
    from dlexp.training.loop import NO_HOOKS

    (tmp_path / "search.json").write_text(json.dumps({
        "storage": f"sqlite:///{tmp_path}/optuna.db", "study": "missing", "report_every": 10,
        "pruner": {"_target_": "optuna.pruners.MedianPruner"}, "trials": {"3": 3}}))
    assert trial_hooks(tmp_path, 3, max_epochs=60) is NO_HOOKS
    assert "trial 3: cannot reach the study missing" in caplog.text
    assert trial_hooks(tmp_path, 4, max_epochs=60) is NO_HOOKS  # not a trial of this search


def test_pruners_by_name_and_by_target():
    from dlexp.errors import DlexpError
    from dlexp.sweeps.search.sweeper import SearchSweeperImpl

    def spec(pruner):
        return SearchSweeperImpl(pruner=pruner).pruner_spec()

    assert spec("median") == {"_target_": "optuna.pruners.MedianPruner"}
    assert spec("halving") == {"_target_": "optuna.pruners.SuccessiveHalvingPruner"}
    assert spec("hyperband") == {"_target_": "optuna.pruners.HyperbandPruner"}
    assert spec("none") is None and spec(None) is None
    percentile = OmegaConf.create({"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0})
    assert spec(percentile) == {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0}
    with pytest.raises(DlexpError, match=r"hydra.sweeper.pruner=mediam: expected median, halving, hyperband, none"):
        spec("mediam")
