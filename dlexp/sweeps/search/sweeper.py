"""dlexp's hyperparameter search: a Hydra sweeper that drives an Optuna study with ask and tell.

Every batch asks the study for ``n_jobs`` trials, launches them as ordinary Hydra jobs through whatever
launcher is configured (basic, joblib, submitit), and tells the study what each returned. A trial that
fails (an exception, a NaN score, a diverged loss) is a result, FAIL, not the end of the search; one that
its pruner stopped is PRUNED. Hydra only instantiates sweepers from the ``hydra_plugins`` package, so
``hydra_plugins/dlexp_search`` holds the class Hydra sees; the work is done here.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError
from dlexp.sweeps.search.space import SearchSpace, parse_search_space, ready_space_note, space_params
from dlexp.sweeps.search.study import INTERRUPTED_ATTR, default_storage, hide_password, open_storage, write_handoff

log = logging.getLogger(__name__)

RUN_ID_ATTR = "dlexp.run_id"
JOB_ATTR = "dlexp.job"
ERROR_ATTR = "dlexp.error"


#: ``hydra.sweeper.pruner=NAME``: median stops a trial below the median of earlier trials at the same step;
#: halving (successive halving) keeps only the best quarter at each rung, so it stops most trials early.
PRUNERS = {"median": "optuna.pruners.MedianPruner", "halving": "optuna.pruners.SuccessiveHalvingPruner",
           "hyperband": "optuna.pruners.HyperbandPruner"}


class SearchSweeperImpl(Sweeper):
    """``hydra.sweeper`` settings are documented in conf/hydra/sweeper/search.yaml."""

    def __init__(self, n_trials: int = 20, n_jobs: int = 1, params: DictConfig | None = None,
                 ready_params: DictConfig | None = None,
                 sampler: DictConfig | None = None, pruner: DictConfig | str | None = "median",
                 report_every: int = 10, max_failures: int | None = None, storage: str | None = None,
                 study_name: str | None = None) -> None:
        self.n_trials, self.n_jobs, self.report_every, self.max_failures = n_trials, n_jobs, report_every, max_failures
        self.params = OmegaConf.to_container(params) if params is not None else {}
        self.ready_params = OmegaConf.to_container(ready_params) if ready_params is not None else {}
        self.sampler_config, self.pruner_config = sampler, pruner
        self.storage_url, self.study_name = storage, study_name
        self.config: DictConfig | None = None
        self.launcher = None
        self.asked: list[int] = []  # the numbers of the trials this run of the search asked for

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        try:
            self.check_settings()
            params, left_out = space_params(self.params, self.ready_params, arguments, self.config)
            if note := ready_space_note(left_out, params, self.config):
                log.warning("%s", note)
            space = parse_search_space(params, arguments)
            if not space.distributions:
                raise DlexpError("hydra.sweeper.params: nothing to search; give ranges such as "
                                 "'optimizer.lr=tag(log, interval(0.0001, 0.1))'")
            pruner = self.pruner_spec()
            self.warn_if_nothing_reports(pruner, space)
            study = self.open_study()
        except DlexpError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        returns = self.run_trials(study, space, pruner)
        from dlexp.sweeps.search.report import report_search

        report_search(study, self.storage_url, space, self.sweep_dir, self.config)
        if (failure := all_failed(study, self.asked)) is not None:
            # Never a success: the sweep's run ends FAILED (SweepRun's exit handler) and the command exits 2.
            print(f"error: {failure}", file=sys.stderr)
            sys.exit(2)
        return returns

    @property
    def sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir)).resolve()

    def check_settings(self) -> None:
        for key, value, low in (("n_trials", self.n_trials, 1), ("n_jobs", self.n_jobs, 1),
                                ("report_every", self.report_every, 1), ("max_failures", self.max_failures, 1)):
            if (value is not None or key != "max_failures") and not (
                    isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise DlexpError(f"hydra.sweeper.{key}={value!r}: expected an integer >= {low}"
                                 + (" or null" if key == "max_failures" else ""))

    def warn_if_nothing_reports(self, pruner: dict[str, Any] | None, space: SearchSpace) -> None:
        """Trials report every ``report_every`` epochs: with fewer epochs than that, nothing can be pruned."""
        max_epochs = OmegaConf.select(self.config, "trainer.max_epochs", default=None)
        if (pruner is not None and isinstance(max_epochs, int) and "trainer.max_epochs" not in space.distributions
                and max_epochs < self.report_every):
            log.warning("hydra.sweeper.report_every=%d is more than trainer.max_epochs=%d: no trial reports a "
                        "score, so none is pruned (set report_every to at most %d)", self.report_every, max_epochs,
                        max_epochs)

    # -- the study -------------------------------------------------------------------------------------

    def open_study(self):
        """Create the study or continue the same command's; trials left RUNNING by a stopped search FAIL."""
        import optuna

        from dlexp.sweeps.sweep import sweep_hash
        from dlexp.tracking.store import higher_is_better

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        tracking = self.config.tracking
        direction = "maximize" if higher_is_better(str(tracking.best_metric),
                                                   str(tracking.get("best_metric_mode", "auto"))) else "minimize"
        from dlexp.config.paths import absolute_uri

        # Absolute, as jobs open it from their own folders (hydra.job.chdir=True runs them in their run folders).
        start = Path(str(self.config.hydra.runtime.cwd))
        default = default_storage(absolute_uri(str(tracking.uri), start))
        self.storage_url = absolute_uri(str(self.storage_url or default), start)
        name = self.study_name or f"{tracking.experiment_name}-{sweep_hash(self.config)[:16]}"
        if not tracking.resume and not self.study_name:
            name += time.strftime("-%Y%m%d-%H%M%S")  # tracking.resume=false: a new study, as a new sweep run
        self.study_name = name
        storage = open_storage(self.storage_url)
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
        if (sampler := self.make_sampler(len(study.get_trials(deepcopy=False)))) is not None:
            study.sampler = sampler
        if study.direction.name.lower() != direction:
            raise DlexpError(f"hydra.sweeper.study_name={name}: that study {study.direction.name.lower()}s, but "
                             f"tracking.best_metric={tracking.best_metric} is to {direction}; name another study")
        for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
            fail_interrupted(study, trial.number, "running when an earlier run of the search was stopped")
        done = sum(INTERRUPTED_ATTR not in t.user_attrs for t in study.get_trials(deepcopy=False))
        log.info("study %s in %s (%s %s): %d of %d trials done", name, hide_password(self.storage_url),
                 direction, tracking.best_metric, done, self.n_trials)
        return study

    def make_sampler(self, trials_so_far: int):
        """The configured sampler; a seeded one continuing a study gets ``seed + trials so far``, or it
        would propose the very configurations it proposed before the search was stopped."""
        from hydra.utils import instantiate

        if not self.sampler_config:
            return None
        config = OmegaConf.to_container(self.sampler_config, resolve=True)
        if trials_so_far and config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + trials_so_far
        return instantiate(config)

    def pruner_spec(self) -> dict[str, Any] | None:
        """The pruner as a ``_target_`` mapping jobs rebuild (a pruner is not stored with the study)."""
        config = self.pruner_config
        if config is None or (isinstance(config, str) and config.lower() in ("none", "null", "")):
            return None
        if isinstance(config, str):
            if config.lower() not in PRUNERS:
                raise DlexpError(f"hydra.sweeper.pruner={config}: expected {', '.join(PRUNERS)}, none, or a mapping "
                                 "with _target_ (e.g. optuna.pruners.PercentilePruner)")
            return {"_target_": PRUNERS[config.lower()]}
        return OmegaConf.to_container(config, resolve=True)

    # -- the trials -------------------------------------------------------------------------------------

    def run_trials(self, study, space: SearchSpace, pruner: dict[str, Any] | None) -> list[JobReturn]:
        """Ask, launch and tell in batches of ``n_jobs`` until ``n_trials`` trials are done (in total,
        over every run of the same command) or ``max_failures`` trials failed."""
        from optuna.trial import TrialState

        handoff = {"storage": self.storage_url, "study": study.study_name, "pruner": pruner,
                   "report_every": self.report_every, "trials": {}}
        returns: list[JobReturn] = []
        while True:
            trials = study.get_trials(deepcopy=False)
            next_number = len(trials)  # the number of the next batch's first trial
            done = [t for t in trials if INTERRUPTED_ATTR not in t.user_attrs]
            failures = sum(t.state == TrialState.FAIL for t in done)
            if self.max_failures is not None and failures >= self.max_failures:
                print(f"error: search stopped: {failures} trials failed (hydra.sweeper.max_failures="
                      f"{self.max_failures})", file=sys.stderr)
                break
            remaining = self.n_trials - len(done)
            if remaining <= 0:
                break
            batch = []
            try:
                batch = [study.ask(space.distributions) for _ in range(min(self.n_jobs, remaining))]
                self.asked.extend(trial.number for trial in batch)
                first_job = batch[0].number
                for offset, trial in enumerate(batch):
                    handoff["trials"][str(first_job + offset)] = trial.number
                write_handoff(self.sweep_dir, handoff)
                results = self.launcher.launch([space.overrides(t.params) for t in batch],
                                               initial_job_idx=first_job)
                for offset, (trial, result) in enumerate(zip(batch, results, strict=True)):
                    tell(study, trial, result, first_job + offset)
            except BaseException:  # interrupted (Ctrl-C, SIGTERM) or the launcher broke: no trial left RUNNING
                # Also a trial asked just as the interrupt came, before it was in ``batch``.
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.number >= next_number:
                        fail_interrupted(study, trial.number, "running when the search was stopped")
                raise
            returns.extend(results)
        return returns


def all_failed(study, numbers: list[int]) -> str | None:
    """The complaint when every one of trials ``numbers`` (those one run of the search asked) FAILed, else None
    (also when it asked none: a resumed search with nothing left to do)."""
    from optuna.trial import TrialState

    trials = [trial for trial in study.get_trials(deepcopy=False) if trial.number in set(numbers)]
    if not trials or any(trial.state != TrialState.FAIL for trial in trials):
        return None
    first = trials[0]
    reason = first.user_attrs.get(ERROR_ATTR) or first.user_attrs.get(INTERRUPTED_ATTR) or "no reason recorded"
    return (f"search: all {len(trials)} trials failed, so it has no result (trial {first.number}: {reason}); "
            "see search_trials.csv in the sweep folder")


def tell(study, trial, result: JobReturn, job: int) -> None:
    """Tell the study one job's outcome: its score, PRUNED (per the job's record) or FAIL."""
    import json

    from optuna.trial import TrialState

    from dlexp.sweeps.sweep import JOB_FILE

    record_file = Path(str(result.hydra_cfg.hydra.runtime.output_dir)) / JOB_FILE if result.hydra_cfg else None
    record = json.loads(record_file.read_text()) if record_file and record_file.exists() else {}
    trial.set_user_attr(JOB_ATTR, job)
    if record.get("run_id"):
        trial.set_user_attr(RUN_ID_ATTR, record["run_id"])
    if result.status == JobStatus.FAILED:
        error = result._return_value
        trial.set_user_attr(ERROR_ATTR, f"{type(error).__name__}: {error}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        return
    if record.get("pruned"):
        study.tell(trial, state=TrialState.PRUNED)
        return
    value = result.return_value
    if not isinstance(value, int | float) or not math.isfinite(value):
        trial.set_user_attr(ERROR_ATTR, record.get("error") or f"the job returned {value!r}")
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, float(value))


def fail_interrupted(study, number: int, reason: str) -> None:
    """Mark a trial that was cut off FAIL and not counted in ``n_trials``: the next run replaces it."""
    from optuna.trial import TrialState

    storage = study._storage  # user attrs of a trial this process did not ask for need its storage id
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return
    storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
