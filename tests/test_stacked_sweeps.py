"""The stacked launcher (issue #24): jobs of a sweep that differ only in stackable values train as one stacked model,
and every job stays a job (its runs, pictures, files, record, faults of its own)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sweep_support import TINY, run_dlexp, runs_by_kind, sqlite_store, stop_when

from dlexp.sweeps.stacked_launcher import group_jobs, stacking_key

STACKED_LINE = re.compile(r"training (\d+) jobs \((\d+) members\) as one stacked model")


def key(*overrides: str) -> str | None:
    return stacking_key(compose_config(["+experiment=spiral", *overrides]))


def test_jobs_differing_in_stackable_values_share_a_key_and_others_do_not():
    base = key()
    for stackable in ("optimizer.lr=0.3", "trainer.seed=7", "optimizer.weight_decay=0.01", "trainer.patience=3",
                      "trainer.min_delta=0.01", "trainer.max_epochs=20", "model.dropout=0.2", "scheduler.gamma=0.5",
                      "scheduler.step_size=10", "optimizer.betas=[0.8,0.99]", "optimizer.eps=1e-6", "scheduler=cosine"):
        assert key(stackable) == base, stackable
    for other in ("model.hidden_dims=[16]", "trainer.batch_size=25", "trainer.folds=3", "optimizer=sgd",
                  "model.activation=tanh", "loss=nll",
                  "tracking.experiment_name=other"):
        assert key(other) != base, other
    assert key("trainer.strategy=sequential") is None
    assert key("trainer.strategy=batched") != base  # the strategy asked for is part of the config
    assert key("trainer.strategy=batched", "optimizer.lr=0.5") == key("trainer.strategy=batched")


def test_groups_keep_the_jobs_order_and_size_limit():
    assert group_jobs(["a", "b", "a", None, "b", "a"]) == [[0, 2, 5], [1, 4], [3]]
    assert group_jobs(["a", "a", "a"], max_jobs=2) == [[0, 1], [2]]
    assert group_jobs([None, None]) == [[0], [1]]


def summary_numbers(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k != "train_seconds"}


def job_folders(sweep: Path) -> dict[str, Path]:
    """overrides (as the job ran them) -> job folder."""
    return {" ".join(OmegaConf.load(f / ".hydra" / "overrides.yaml")): f
            for f in sweep.iterdir() if (f / ".hydra").is_dir()}


@pytest.mark.full  # three dlexp processes, ~40 s
def test_a_stacked_job_equals_the_same_job_alone_and_an_early_stopped_member_stops_alone(tmp_path):
    setup = [*TINY, "trainer.max_epochs=25", "trainer.checkpoint_every=null"]
    sweep = run_dlexp("-m", *setup, "optimizer.lr=0.05,0.003", "trainer.patience=2,null",
                      *sqlite_store(tmp_path))
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    output = sweep.stdout + sweep.stderr
    assert STACKED_LINE.findall(output) == [("4", "8")]  # one stacked model of 4 jobs x 2 folds
    folders = job_folders(tmp_path / "sweep")
    assert len(folders) == 4
    epochs = {o: json.loads((f / "summary.json").read_text())["epochs_run_mean"] for o, f in folders.items()}
    # patience=2 stops its members early (lr 0.05 is noisy); patience=null trains every member 25 epochs
    for overrides, mean in epochs.items():
        if "trainer.patience=null" in overrides:
            assert mean == 25, (overrides, mean)
    assert min(mean for o, mean in epochs.items() if "trainer.patience=2" in o) < 25

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, folds = runs_by_kind(client, "spiral")
    assert len(sweeps) == 1 and len(jobs) == 4 and len(folds) == 8
    assert {r.info.status for r in [*sweeps, *jobs, *folds]} == {"FINISHED"}
    for job in jobs:  # each its own run under the sweep, with its fold runs, pictures and model
        assert job.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
        assert sum(f.data.tags["mlflow.parentRunId"] == job.info.run_id for f in folds) == 2
        plots = {a.path for a in client.list_artifacts(job.info.run_id, "plots")}
        assert len(plots) >= 5, plots
        assert job.data.metrics["val_acc_mean"] > 0.2
        assert (Path(job.data.tags["dlexp.output_dir"]) / "dlexp.log").read_text().count("fold 2/2") == 1

    picks = ("optimizer.lr=0.05 trainer.patience=2", "optimizer.lr=0.003 trainer.patience=null")
    for number, picked in enumerate(picks):
        alone_dir = tmp_path / f"alone{number}"
        alone = run_dlexp(*setup, *picked.split(), f"tracking.uri=sqlite:///{tmp_path}/alone.db",
                          f"tracking.artifact_location={tmp_path}/alone_artifacts", f"hydra.run.dir={alone_dir}")
        assert alone.returncode == 0, alone.stderr[-3000:]
        stacked_dir = next(f for o, f in folders.items() if all(p in o.split() for p in picked.split()))
        assert summary_numbers(stacked_dir) == summary_numbers(alone_dir)
        a, b = torch.load(stacked_dir / "model.pt"), torch.load(alone_dir / "model.pt")
        state_a = a if isinstance(a, dict) else a.state_dict()
        state_b = b if isinstance(b, dict) else b.state_dict()
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.full
def test_a_diverging_member_or_a_bad_value_fails_only_its_job_and_two_widths_make_two_models(tmp_path):
    # lr=-1 fails in its job's set-up (Adam refuses it), lr=1e20 diverges in training: each fails its job alone.
    result = run_dlexp("-m", *TINY, "optimizer.lr=1e20,0.01,-1", "model.hidden_dims=[8],[16]",
                       *sqlite_store(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    assert STACKED_LINE.findall(output) == [("2", "4"), ("2", "4")]  # a stacked model per width
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, _ = runs_by_kind(client, "spiral")
    status = {(r.data.params["optimizer.lr"], r.data.params["model.hidden_dims"]): r.info.status for r in jobs}
    assert status == {("1e+20", "[8]"): "FAILED", ("1e+20", "[16]"): "FAILED",
                      ("0.01", "[8]"): "FINISHED", ("0.01", "[16]"): "FINISHED"}  # lr=-1 never got a run
    assert sweeps[0].info.status == "FAILED"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: job #")]
    assert len(errors) == 4
    assert sum("optimizer.lr=1e+20" in e and "diverged" in e for e in errors) == 2
    assert sum("optimizer.lr=-1" in e and "lr" in e.split("):", 1)[1] for e in errors) == 2
    table = (tmp_path / "sweep" / "sweep_jobs.csv").read_text().splitlines()
    assert len(table) == 7 and sum(",FINISHED," in row for row in table) == 2
    assert sum(",FAILED," in row for row in table) == 4


@pytest.mark.full
def test_sigterm_mid_sweep_ends_every_jobs_runs_killed_and_the_rerun_resumes(tmp_path):
    sweep = ["-m", "+experiment=spiral", "trainer.folds=2", "trainer.max_epochs=400", "trainer.patience=null",
             "plots.grid_resolution=20", "trainer.checkpoint_every=5", "optimizer.lr=0.01,0.003", "trainer.seed=1,2",
             "tracking.log_models=false",
             *sqlite_store(tmp_path)]
    checkpoint = tmp_path / "sweep" / "3" / "checkpoints" / "batched.pt"
    code, stderr = stop_when(checkpoint.exists, *sweep)
    assert code == 143, stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    sweeps, jobs, folds = runs_by_kind(client, "spiral")
    assert len(jobs) == 4 and {r.info.status for r in [*sweeps, *jobs]} == {"KILLED"}
    # A fold that stopped before the signal stays FINISHED (as alone); none is left RUNNING.
    assert {r.info.status for r in folds} <= {"KILLED", "FINISHED"} and "KILLED" in {r.info.status for r in folds}
    for job in jobs:
        folder = Path(job.data.tags["dlexp.output_dir"])
        assert (folder / "FAILED.txt").read_text().startswith("KILLED")
        assert any((folder / "checkpoints").glob("*.pt"))  # its training state, or its finished folds
    assert "interrupted: stopped by SIGTERM" in stderr

    rerun = run_dlexp(*sweep, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    output = rerun.stdout + rerun.stderr
    assert "continuing after epoch" in output and STACKED_LINE.search(output)
    sweeps_after, jobs_after, folds_after = runs_by_kind(client, "spiral")
    assert {r.info.run_id for r in jobs_after} == {r.info.run_id for r in jobs}  # the same runs, continued
    assert {r.info.status for r in [*sweeps_after, *jobs_after, *folds_after]} == {"FINISHED"}
    assert all(r.data.metrics["epochs_run_mean"] == 400 for r in jobs_after)


@pytest.mark.full
def test_a_search_stacks_its_batches_and_records_pruned_and_failed_trials(tmp_path):
    import optuna
    from optuna.trial import TrialState

    # With the sampler's seed 7 the two batches of 3 draw lr 1e-5, 0.01, 1e20 and then 0.01, 1e20, 1e-5 (dropout
    # varies): in the second batch, stacked, one member diverges, one is pruned at its first report (the first
    # batch finished a trial to compare with) and one finishes.
    result = run_dlexp("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3",
                       "hydra.sweeper.params=null", "hydra.sweeper.sampler.seed=7",
                       "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.report_every=2", *TINY,
                       "trainer.max_epochs=6", "optimizer.lr=choice(0.01, 0.00001, 1e20)",
                       "model.dropout=interval(0.0, 0.1)", "tracking.experiment_name=stacked_search",
                       *sqlite_store(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]  # failed trials: the search exits 2 at its end
    assert "Traceback" not in result.stderr
    assert STACKED_LINE.findall(result.stdout + result.stderr) == [("3", "6"), ("3", "6")]
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert [t.params["optimizer.lr"] for t in trials] == [1e-5, 0.01, 1e20, 0.01, 1e20, 1e-5]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert max(trials[5].intermediate_values) == 2  # stopped at its first report, its batch trained on
    assert set(trials[3].intermediate_values) == {2, 4, 6}
    assert all("diverged" in trials[n].user_attrs["dlexp.error"] for n in (2, 4))

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    _, jobs, folds = runs_by_kind(client, "stacked_search")
    by_run = {r.info.run_id: r for r in jobs}
    expected = {TrialState.COMPLETE: "FINISHED", TrialState.FAIL: "FAILED", TrialState.PRUNED: "KILLED"}
    for trial in trials:
        run = by_run[trial.user_attrs["dlexp.run_id"]]
        assert run.info.status == expected[trial.state], (trial.number, run.info.status)
        assert run.data.tags["dlexp.trial"] == str(trial.number)
    pruned_run = by_run[trials[5].user_attrs["dlexp.run_id"]]
    assert "trial 5 pruned" in pruned_run.data.tags["dlexp.pruned"]
    assert "RUNNING" not in {r.info.status for r in [*jobs, *folds]}
    table = (tmp_path / "sweep" / "sweep_jobs.csv").read_text()
    assert table.count(",PRUNED,") == 1 and table.count(",FAILED,") == 2 and table.count(",FINISHED,") == 3


def test_the_launcher_runs_each_jobs_steps_in_its_own_context_and_returns_in_order(tmp_path, monkeypatch):
    """The orchestration alone (training replaced): each job's steps see their own HydraConfig and folder,
    a job failing in its set-up fails alone, the stacked call gets the waiting jobs' requests in order, the
    results go back to each job, and the JobReturns come back in the jobs' order."""
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    from dlexp.experiment import WAITING_FOR_PICTURES
    from dlexp.sweeps import stacked_launcher

    seen, trained = [], []

    def steps(cfg):
        hydra_cfg = HydraConfig.get()
        seen.append((int(hydra_cfg.job.num), Path(hydra_cfg.runtime.output_dir).name, cfg.optimizer.lr))
        if cfg.optimizer.lr < 0:
            raise ValueError("bad lr")
        results = yield f"request of job {hydra_cfg.job.num}"
        assert HydraConfig.get().job.num == hydra_cfg.job.num  # back in its own context
        yield WAITING_FOR_PICTURES
        return results

    def task(cfg):
        raise AssertionError("a stacked group runs the steps, not the task function")

    task.steps = steps
    monkeypatch.setattr(stacked_launcher, "stackable_parts", lambda jobs: [jobs])
    monkeypatch.setattr(stacked_launcher, "train_together",
                        lambda requests: trained.append(list(requests)) or [f"results for {r}" for r in requests])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", ["+experiment=spiral", f"hydra.sweep.dir={tmp_path}/sweep"],
                         return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        launcher = stacked_launcher.StackedLauncher()
        launcher.setup(hydra_context=context, task_function=task, config=config)
        returns = launcher.launch([["+experiment=spiral", f"optimizer.lr={lr}"] for lr in (0.1, -1, 0.2)], 4)
    assert seen == [(4, "4", 0.1), (5, "5", -1), (6, "6", 0.2)]
    assert trained == [["request of job 4", "request of job 6"]]
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.COMPLETED]
    assert returns[0].return_value == "results for request of job 4"
    assert returns[2].return_value == "results for request of job 6"
    assert str(returns[1]._return_value) == "bad lr"
    assert all((tmp_path / "sweep" / str(n) / ".hydra" / "overrides.yaml").exists() for n in (4, 5, 6))
