"""``hydra/launcher=stacked`` (dlexp's default for ``-m``): the jobs of a batch that differ only in values that keep
the model's shapes train together as one stacked model of (job, fold) members, in this process.

Hydra's basic launcher runs each job start to end with ``hydra.core.utils.run_job``. This one composes every job's
config the same way, then groups the jobs whose configs are equal but for :data:`STACKABLE` keys (and the LR
schedule) and whose ``trainer.strategy`` allows batched training. A job alone in its group runs as the
basic launcher runs it. A group runs each job in steps (the task function's ``steps``, dlexp.job.job_steps):

1. every job's set-up, in its own Hydra job context (output folder, HydraConfig, log file, its MLflow run),
   up to its training request (a dlexp.experiment.TrainingRequest: its folds as a
   dlexp.training.stacked.StackedJob);
2. one :func:`dlexp.training.stacked.train_stacked` call for the requests that share their data and batch size;
3. every job's finish (fold logging, pictures, files, model), back in its own context, with its fold results or
   the exception that stopped its members (a pruned trial, a broken store): first up to where it waits for its
   pictures (dlexp.experiment.WAITING_FOR_PICTURES), for every job, so the helper process draws one job's
   pictures while this process finishes the next; then each job's wait and files.

So every job stays a job: its MLflow run nested under the sweep, fold runs, live metrics (training hooks address
runs by id), pictures, record for the jobs table, resume and faults of its own. A job whose set-up fails (a bad
value) fails alone; a job that finds it cannot train batched (dlexp.training.batched.batching_obstacle) trains in
its set-up step, by itself. Ctrl-C or SIGTERM while a group trains stops every member at the end of the epoch
(checkpointed, dlexp.training.checkpoint.stop_at_epoch_end); each job of the group then ends its runs KILLED as
it would alone, and a rerun of the sweep resumes them. The ``JobReturn`` list goes back in the jobs' order.

The job context mirrors ``hydra.core.utils.run_job`` (Hydra 1.3), which cannot be left and re-entered; MLflow's
active-run stack is part of it (a job's fluent ``mlflow.*`` calls go to its own run).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

#: Config keys whose values may differ between the jobs of one stacked model: each (job, fold) member has its own.
STACKABLE = ("optimizer.lr", "optimizer.betas", "optimizer.eps", "optimizer.weight_decay", "optimizer.momentum",
             "optimizer.alpha", "trainer.seed", "trainer.patience", "trainer.min_delta", "trainer.max_epochs",
             "model.dropout")
#: Whole config groups that may differ: the LR schedule, its kind and numbers (each job steps its own scheduler;
#: dlexp.training.batched.batching_obstacle keeps out the kinds batched training cannot follow).
STACKABLE_GROUPS = ("scheduler",)
STRATEGIES_THAT_STACK = ("auto", "batched")


def stacking_key(task_cfg: DictConfig) -> str | None:
    """What jobs of one stacked model share: the resolved config without the stackable values (a JSON text);
    None for a job that never stacks (``trainer.strategy=sequential``, or a config that does not resolve here)."""
    try:
        config = OmegaConf.to_container(task_cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only the job itself can resolve: it runs alone
        return None
    if str((config.get("trainer") or {}).get("strategy", "auto")) not in STRATEGIES_THAT_STACK:
        return None
    for key in STACKABLE:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for group in STACKABLE_GROUPS:
        config.pop(group, None)
    return json.dumps(config, sort_keys=True, default=str)


def group_jobs(keys: Sequence[str | None], max_jobs: int | None = None) -> list[list[int]]:
    """Indices of the jobs that train together, in the order of each group's first job: equal keys, at most
    ``max_jobs`` jobs per group (None: no limit); a None key is a group of its own."""
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key if key is not None else ("alone", index), []).append(index)
    result = []
    for members in groups.values():
        size = max_jobs or len(members)
        result.extend(members[start:start + size] for start in range(0, len(members), size))
    return sorted(result, key=lambda members: members[0])


class StackedLauncher(Launcher):
    """``hydra.launcher`` settings are documented in conf/hydra/launcher/stacked.yaml."""

    def __init__(self, stack: bool = True, max_jobs: int | None = None) -> None:
        super().__init__()
        self.stack, self.max_jobs = stack, max_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        if self.max_jobs is not None and (isinstance(self.max_jobs, bool) or not isinstance(self.max_jobs, int)
                                          or self.max_jobs < 1):
            import sys

            print(f"error: hydra.launcher.max_jobs={self.max_jobs!r}: expected an integer >= 1 or null",
                  file=sys.stderr)
            sys.exit(2)

    def steps_function(self) -> Callable | None:
        """The task function's steps (a generator function of the task config), or None: it runs whole."""
        steps = getattr(self.task_function, "steps", None)
        if isinstance(steps, str):
            from hydra.utils import get_method

            steps = get_method(steps)
        return steps if self.stack else None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dlexp.interrupts import sigterm_as_interrupt

        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs locally", len(job_overrides))
        configs = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)
        steps = self.steps_function()
        groups = (group_jobs([self.key_of(config) for config in configs], self.max_jobs) if steps is not None
                  else [[index] for index in range(len(configs))])
        stacked = [group for group in groups if len(group) > 1]
        if stacked:
            log.info("differing only in stackable values (one model each where batched training applies): %s",
                     "; ".join("jobs " + ", ".join(f"#{initial_job_idx + i}" for i in group) for group in stacked))
        returns: list[JobReturn | None] = [None] * len(configs)
        with sigterm_as_interrupt():  # Ctrl-C's path for SIGTERM too, where nothing took it already
            for group in groups:
                if len(group) == 1:
                    returns[group[0]] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                                config=configs[group[0]], job_dir_key="hydra.sweep.dir",
                                                job_subdir_key="hydra.sweep.subdir")
                else:
                    jobs = [SteppedJob(self.hydra_context, steps, configs[index], self.config) for index in group]
                    run_group(jobs)
                    for index, job in zip(group, jobs, strict=True):
                        returns[index] = job.ret
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def key_of(self, config: DictConfig) -> str | None:
        """:func:`stacking_key` of a job's task config, resolved as the job would (its HydraConfig set)."""
        original = HydraConfig.instance().cfg
        try:
            HydraConfig.instance().set_config(config)
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            return stacking_key(task_cfg)
        finally:
            HydraConfig.instance().cfg = original


class SteppedJob:
    """One Hydra job run in steps, each step inside the job's own context (as ``hydra.core.utils.run_job``
    sets it: HydraConfig, output folder and working directory, logging to its log file, ``hydra.job.env_set``,
    the callbacks' ``on_job_start``/``on_job_end``), plus its MLflow active-run stack.

    ``request`` is the training request the job's steps are waiting on (None: not waiting); ``ret`` its
    ``JobReturn`` once it ended.
    """

    def __init__(self, hydra_context: HydraContext, steps: Callable, config: DictConfig,
                 launcher_config: DictConfig) -> None:
        self.hydra_context, self.steps_function, self.config = hydra_context, steps, config
        self.launcher_config = launcher_config
        self.steps = None
        self.request = None
        self.ended = False
        self.runs: list = []  # MLflow's active-run stack while the job is not running
        self.ret = JobReturn()
        self.chdir = False
        self.entered = False

    @property
    def waiting(self) -> bool:
        """Started and not ended: it holds open runs, which an interrupt must end."""
        return self.steps is not None and not self.ended

    def prepare(self) -> DictConfig:
        """The job's output folder, its saved configs and ``on_job_start``, as ``run_job`` does; the task config."""
        config, original = self.config, HydraConfig.instance().cfg
        try:
            return self._prepare(config)
        finally:
            HydraConfig.instance().cfg = original

    def _prepare(self, config: DictConfig) -> DictConfig:
        HydraConfig.instance().set_config(config)
        output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                  str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        self.ret.cfg = task_cfg
        self.ret.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        self.ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.chdir = bool(config.hydra.job.chdir)  # dlexp's config sets it (false); version_base 1.3's default
        self.ret.working_dir = output_dir if self.chdir else os.getcwd()
        return task_cfg

    @contextmanager
    def context(self) -> Iterator[None]:
        """Inside the job's context; the launcher's is back after it."""
        from mlflow.tracking import fluent

        from dlexp.tracking.where import label_job_output

        old_cwd, original = os.getcwd(), HydraConfig.instance().cfg
        HydraConfig.instance().set_config(self.config)
        try:
            with ExitStack() as stack:
                if self.chdir:
                    os.chdir(self.config.hydra.runtime.output_dir)
                configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)
                if self.entered:  # the job's steps labelled its console lines in their first step
                    stack.enter_context(label_job_output(int(self.config.hydra.job.num)))
                stack.enter_context(env_override(self.config.hydra.job.env_set))
                fluent._active_run_stack.set(self.runs)
                self.entered = True
                try:
                    yield
                finally:
                    self.runs = list(fluent._active_run_stack.get())
                    fluent._active_run_stack.set([])
                    _flush_loggers()
        finally:
            HydraConfig.instance().cfg = original
            if self.chdir:
                os.chdir(old_cwd)
            configure_log(self.launcher_config.hydra.hydra_logging, self.launcher_config.hydra.verbose)

    def advance(self, results: Any = None, error: BaseException | None = None) -> None:
        """Run the job's next step: its set-up (first call), or its finish with ``results`` (or ``error``
        thrown in). An exception of the job ends it FAILED, as ``run_job`` records it; an interrupt
        (``BaseException``) ends it and is raised."""
        if self.ended:
            return
        task_cfg = self.prepare() if self.steps is None else None
        with self.context():
            try:
                if self.steps is None:
                    if self.config.hydra.output_subdir is not None:
                        folder = Path(self.config.hydra.runtime.output_dir) / str(self.config.hydra.output_subdir)
                        _save_config(task_cfg, "config.yaml", folder)
                        _save_config(self.ret.hydra_cfg, "hydra.yaml", folder)
                        _save_config(self.config.hydra.overrides.task, "overrides.yaml", folder)
                    self.hydra_context.callbacks.on_job_start(config=self.config, task_function=self.steps_function)
                    self.steps = self.steps_function(task_cfg)
                    self.request = next(self.steps)
                elif error is not None:
                    self.request = self.steps.throw(error)
                else:
                    self.request = self.steps.send(results)
            except StopIteration as end:
                self.end(JobStatus.COMPLETED, end.value)
            except Exception as failure:
                self.end(JobStatus.FAILED, failure)
            except BaseException:
                self.ended, self.request = True, None
                raise

    def end(self, status: JobStatus, value: Any) -> None:
        self.ended, self.request = True, None
        self.ret.status, self.ret.return_value = status, value
        self.ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        self.hydra_context.callbacks.on_job_end(config=self.config, job_return=self.ret)


class _AllCheckpoints:
    """Several jobs' checkpoints as ``stop_at_epoch_end`` sees one job's: a stop signal goes to each of them."""

    def __init__(self, checkpoints: Sequence) -> None:
        self.all = [c for c in checkpoints if c is not None]
        self.every = next((c.every for c in self.all if c.every is not None), None)

    @property
    def stop_signal(self) -> int | None:
        return next((c.stop_signal for c in self.all if c.stop_signal is not None), None)

    @stop_signal.setter
    def stop_signal(self, signum: int | None) -> None:
        for checkpoints in self.all:
            checkpoints.stop_signal = signum


def run_group(jobs: list[SteppedJob]) -> None:
    """Set up every job, train their requests together, finish every job (see the module's text).

    An interrupt (or a job's ``SystemExit``) is thrown into every job still holding open runs, so each ends them
    as it would alone, and then raised.
    """
    from dlexp.experiment import WAITING_FOR_PICTURES

    try:
        for job in jobs:
            job.advance()
        for part in stackable_parts([job for job in jobs if job.request not in (None, WAITING_FOR_PICTURES)]):
            outcomes = train_together([job.request for job in part])
            stopped = None
            for job, outcome in zip(part, outcomes, strict=True):
                try:
                    job.advance(error=outcome) if isinstance(outcome, BaseException) else job.advance(outcome)
                except BaseException as error:  # noqa: BLE001 - a stop asked after the last epoch: the others too
                    stopped = stopped or error
            if stopped is not None:
                raise stopped
            finish(part)
        finish(jobs)  # those that trained in their set-up (one by one) or had nothing left to train
    except BaseException as interrupt:
        raised = None
        for job in jobs:
            if job.waiting:
                try:
                    job.advance(error=interrupt)
                except BaseException as error:  # noqa: BLE001 - each job ends its runs; the first end is raised
                    raised = raised or error
        raise (raised or interrupt) from None


def finish(jobs: list[SteppedJob]) -> None:
    """Run each job to its end: wait for its pictures (drawn meanwhile) and write its files; steps that ask
    to train again (dlexp's ask once) train alone."""
    from dlexp.experiment import WAITING_FOR_PICTURES

    for job in jobs:
        while job.request is not None:
            if job.request == WAITING_FOR_PICTURES:
                job.advance(None)
            else:
                job.advance(*alone(job.request))


def stackable_parts(jobs: list[SteppedJob]) -> list[list[SteppedJob]]:
    """The waiting jobs split into those whose requests can be one ``train_stacked`` call: the same data
    (``x``, ``y`` equal) and batch size, and nothing against stacking them
    (dlexp.training.stacked.stacking_obstacle, e.g. dropout before the first layer). Their configs differ only
    in stackable values, so this holds unless the data depends on such a value; a job that cannot join trains
    in a part of its own."""
    import torch

    from dlexp.training.stacked import stacking_obstacle

    parts: list[list[SteppedJob]] = []
    for job in jobs:
        request = job.request
        for part in parts:
            first = part[0].request
            if (first.batch_size == request.batch_size and first.x.shape == request.x.shape
                    and first.x.device == request.x.device and torch.equal(first.x, request.x)
                    and torch.equal(first.y, request.y)):
                if (obstacle := stacking_obstacle([first.job, request.job])) is None:
                    part.append(job)
                    break
                log.info("job #%s trains by itself: %s", job.config.hydra.job.num, obstacle)
        else:
            parts.append([job])
    return parts


def train_together(requests: list) -> list:
    """:func:`dlexp.training.stacked.train_stacked` on the requests; per request its fold results or its
    exception. A first Ctrl-C/SIGTERM stops every member at the end of the epoch (checkpoints saved) and raises."""
    from dlexp.experiment import train_alone
    from dlexp.training.checkpoint import stop_at_epoch_end
    from dlexp.training.stacked import train_stacked

    first = requests[0]
    if len(requests) > 1:
        log.info("training %d jobs (%d members) as one stacked model", len(requests),
                 sum(len(request.job.models) for request in requests))
    outcomes, started = None, time.perf_counter()
    try:
        with stop_at_epoch_end(_AllCheckpoints([request.checkpoints for request in requests])):
            if len(requests) > 1:
                outcomes = train_stacked([r.job for r in requests], first.x, first.y, first.batch_size)
            else:  # as it trains alone
                try:
                    outcomes = [train_alone(first.job, first.x, first.y, first.batch_size)]
                except Exception as error:  # noqa: BLE001 - the job's own failure, thrown into its steps
                    outcomes = [error]
    except BaseException:
        if outcomes is None:
            raise
        # asked to stop after the last epoch: the results count; each job stops after logging them
    for request in requests:
        request.seconds = time.perf_counter() - started
    return outcomes


def alone(request) -> tuple[Any, BaseException | None]:
    """``(results, None)`` or ``(None, error)`` of training one request by itself."""
    outcome = train_together([request])[0]
    return (None, outcome) if isinstance(outcome, BaseException) else (outcome, None)
