"""One experiment, start to end: config -> objects -> k-fold training -> evaluation -> MLflow.

``run_experiment`` is what the ``python -m dlexp`` entrypoint calls for each Hydra job; tests call it
directly with a composed config. This file is the story of a run; the details live next to what they are
about: live fold runs in dlexp.tracking.fold_runs, the run's pictures and files in dlexp.reports.run_files, the
headline numbers and text in dlexp.reports.summary, progress in dlexp.training.progress, off-thread work in
dlexp.tracking.background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from dlexp.config.build import build, build_partial
from dlexp.config.validation import validate_config
from dlexp.data.contract import check_data
from dlexp.data.digest import context_digests, data_digest
from dlexp.data.protocol import ExperimentData
from dlexp.data.split_checks import check_data_split
from dlexp.data.splits import kfold_indices
from dlexp.errors import DlexpError
from dlexp.inspect import log_model_summary, summarize_model
from dlexp.models.contract import check_model
from dlexp.reports import plots
from dlexp.reports.run_files import (
    CLASS_METRIC_PREFIX,
    classification_pictures,
    data_picture,
    run_pictures,
    write_run_files,
)
from dlexp.reports.summary import accuracy, class_probabilities, class_report, summarise, summary_text
from dlexp.tracking import offline
from dlexp.tracking.background import HelperClient, Writer, start_helper
from dlexp.tracking.datasets import DATA_DIGEST_TAG, log_datasets
from dlexp.tracking.fold_runs import FoldRuns, fold_pictures
from dlexp.tracking.keys import KEYS_ARTIFACT, run_keys
from dlexp.tracking.naming import SWEPT_KEYS_TAG, job_run_name
from dlexp.tracking.resume import job_checkpoints, logged_folds, params_to_log, resumed_tags
from dlexp.tracking.store import flatten, git_commit, job_tags, mlflow_run, setup_experiment
from dlexp.training import progress
from dlexp.training.batched import batching_obstacle, train_folds_batched
from dlexp.training.checkpoint import Checkpoints, parse_every, replay_finished, stop_at_epoch_end
from dlexp.training.devices import resolve_device
from dlexp.training.loop import NO_HOOKS, FoldResult, HookList, TrainingHooks, train_fold

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "batched", "sequential")


def configure_torch(trainer: DictConfig) -> torch.device:
    """Threads and seed for reproducible runs; returns the device to train on."""
    if trainer.num_threads:
        torch.set_num_threads(int(trainer.num_threads))
    torch.manual_seed(trainer.seed)
    np.random.seed(trainer.seed)
    return resolve_device(str(trainer.device))


@dataclass
class FoldObjects:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    loss_fn: torch.nn.Module


def build_fold_objects(cfg: DictConfig, data: ExperimentData, device: torch.device, seed: int,
                       check: bool = False) -> FoldObjects:
    """A fresh model, optimizer, scheduler and loss from the config; ``seed`` fixes the initial weights.
    ``check``: run the model on the first batch first (dlexp.models.contract), one line if it breaks the contract."""
    torch.manual_seed(seed)
    model = build("model", cfg.model, input_shape=data.input_shape, num_classes=data.n_classes)
    if check:
        check_model(model, data, int(cfg.trainer.batch_size))
    model = model.to(device)
    optimizer = build_partial("optimizer", cfg.optimizer, model.parameters())
    scheduler = build_partial("scheduler", cfg.scheduler, optimizer) if cfg.get("scheduler") else None
    loss_fn = build("loss", cfg.loss).to(device)
    return FoldObjects(model, optimizer, scheduler, loss_fn)


def choose_strategy(requested: str, objects: FoldObjects, data) -> str:
    """``batched`` (all folds as one stacked model) where it applies, else ``sequential``.

    ``auto`` picks batched only when :func:`dlexp.training.batched.batching_obstacle` finds nothing against it.
    """
    if requested not in STRATEGIES:
        raise DlexpError(f"trainer.strategy={requested!r}: expected one of {', '.join(STRATEGIES)}")
    if requested == "sequential":
        return requested
    obstacle = batching_obstacle(objects.model, objects.optimizer, objects.scheduler, objects.loss_fn)
    if obstacle is None and data.train_transform is not None:
        obstacle = "the data is transformed per batch (image augmentation)"
    if obstacle and requested == "batched":
        raise DlexpError(f"trainer.strategy=batched does not apply here: {obstacle}; use auto or sequential")
    return "sequential" if obstacle else "batched"


def fold_setup(cfg: DictConfig, data: ExperimentData, folds: list, device: torch.device,
               checkpoints: Checkpoints | None) -> tuple[list, list, Callable[[int], FoldObjects], dict]:
    """What training the folds starts from: each fold's (train, val) index tensors on ``device``, each fold's
    data-order generator, a builder of fold ``k``'s fresh objects, and the folds finished in an earlier attempt
    (fold -> result) by ``checkpoints``."""
    from dlexp.data.splits import fold_seed

    trainer = cfg.trainer
    fold_indices = [(torch.as_tensor(train, device=device), torch.as_tensor(val, device=device))
                    for train, val in folds]
    generators = [torch.Generator().manual_seed(fold_seed(trainer.seed, fold, "order"))
                  for fold in range(1, len(folds) + 1)]

    def objects_of(fold: int) -> FoldObjects:
        return build_fold_objects(cfg, data, device, seed=fold_seed(trainer.seed, fold, "weights"))

    done = {fold: result for fold in range(1, len(folds) + 1)
            if checkpoints is not None and (result := checkpoints.finished(fold)) is not None}
    if done:
        log.info("folds %s finished in an earlier attempt: not trained again", ", ".join(map(str, sorted(done))))
    return fold_indices, generators, objects_of, done


def train_folds(cfg: DictConfig, data: ExperimentData, folds: list, x: torch.Tensor, y: torch.Tensor,
                device: torch.device, strategy: str, hooks: TrainingHooks = NO_HOOKS,
                checkpoints: Checkpoints | None = None) -> Iterator[tuple[FoldResult, torch.nn.Module]]:
    """Train every fold with ``trainer.strategy``; yields each fold's result and its model (best weights).

    Sequential training yields each fold as it finishes; batched training yields them all at the end.
    Both give fold ``k`` the same initial weights and the same data order (seeds of their own for each
    (seed, fold), see dlexp.data.splits.fold_seed), and both tell ``hooks`` of every epoch and fold as training goes.
    ``trainer.patience=null`` is no early stopping: a fold's first epoch always sets a best, so it can never
    go ``max_epochs`` epochs without improving.
    With ``checkpoints`` (dlexp.training.checkpoint), folds that finished in an earlier attempt are not
    trained again (the hooks hear of them as if they were), an interrupted one continues from its checkpoint,
    and every fold is checkpointed as it trains.
    """
    trainer = cfg.trainer
    patience = trainer.max_epochs if trainer.patience is None else trainer.patience
    fold_indices, generators, objects_of, done = fold_setup(cfg, data, folds, device, checkpoints)
    first = objects_of(1)
    log.info("training %d folds %s", len(folds), "at once" if strategy == "batched" else "one by one")
    if strategy == "batched":
        batched = BatchedFolds([first] + [objects_of(fold) for fold in range(2, len(folds) + 1)], fold_indices,
                               generators, trainer, hooks, checkpoints, done)
        results = None if batched.job is None else train_alone(batched.job, x, y, int(trainer.batch_size))
        yield from batched.finish(results)
        return
    for fold, (train_idx, val_idx) in enumerate(fold_indices, start=1):
        objects = first if fold == 1 else objects_of(fold)
        if fold in done:
            yield replay_finished(done[fold], objects.model, hooks), objects.model
            continue
        result = train_fold(
            fold, objects.model, objects.optimizer, objects.scheduler, objects.loss_fn, x, y,
            train_idx, val_idx,
            batch_size=trainer.batch_size, max_epochs=trainer.max_epochs, patience=patience,
            generator=generators[fold - 1], min_delta=trainer.min_delta,
            train_transform=data.train_transform, eval_transform=data.eval_transform, hooks=hooks,
            checkpoint=checkpoints.epochs(f"fold_{fold}") if checkpoints is not None else None,
        )
        if checkpoints is not None:
            checkpoints.finish(result)
        yield result, objects.model


class BatchedFolds:
    """A job's folds trained as one stacked model: the request (:class:`dlexp.training.stacked.StackedJob`,
    None when every fold finished in an earlier attempt) and what becomes of its results.

    ``objects[k]`` are fold ``k + 1``'s model, optimizer, scheduler and loss (fold 1's optimizer and scheduler
    give the hyper-parameters); ``done`` maps folds finished in an earlier attempt to their results.
    """

    def __init__(self, objects: list[FoldObjects], fold_indices: list, generators: list, trainer: DictConfig,
                 hooks: TrainingHooks, checkpoints: Checkpoints | None, done: dict[int, FoldResult]) -> None:
        from dlexp.training.stacked import StackedJob

        self.models = [o.model for o in objects]
        self.hooks, self.checkpoints, self.done = hooks, checkpoints, done
        patience = trainer.max_epochs if trainer.patience is None else trainer.patience
        self.job = None if len(done) == len(objects) else StackedJob(
            self.models, objects[0].optimizer, objects[0].scheduler, objects[0].loss_fn, fold_indices, generators,
            max_epochs=int(trainer.max_epochs), patience=int(patience), min_delta=float(trainer.min_delta),
            hooks=hooks, checkpoint=checkpoints.epochs("batched") if checkpoints is not None else None)

    def finish(self, results: list[FoldResult] | None) -> Iterator[tuple[FoldResult, torch.nn.Module]]:
        """Each fold's result and model, as :func:`train_folds` yields them; ``results`` are the trained ones
        (None when nothing was trained). A diverged fold raises its error after the others are yielded."""
        if results is None:
            results = [replay_finished(self.done[fold], self.models[fold - 1], self.hooks)
                       for fold in sorted(self.done)]
        elif self.checkpoints is not None:
            for result in results:
                if result.diverged is None:
                    self.checkpoints.finish(result)
            self.checkpoints.remove("batched")
        yield from ((r, m) for r, m in zip(results, self.models, strict=True) if r.diverged is None)
        if diverged := next((r.diverged for r in results if r.diverged is not None), None):
            raise diverged  # after the finished folds are logged, like one-by-one training


def train_alone(job, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[FoldResult]:
    """One job's folds as one stacked model (dlexp.training.batched.train_folds_batched); hooks' errors raise."""
    return train_folds_batched(
        job.models, job.optimizer, job.scheduler, job.loss_fn, x, y, job.folds, batch_size=batch_size,
        max_epochs=job.max_epochs, patience=job.patience, generators=job.generators, min_delta=job.min_delta,
        hooks=job.hooks, checkpoint=job.checkpoint)


#: What :func:`experiment_steps` yields once its pictures are all asked for, before it waits for them; it is
#: sent ``None`` to go on.
WAITING_FOR_PICTURES = "waiting for pictures"


@dataclass
class TrainingRequest:
    """What :func:`experiment_steps` yields: its folds to train (``job``, a StackedJob) on ``x``/``y`` in
    batches of ``batch_size``. It is sent back the fold results (``list[FoldResult]``) or thrown the exception
    that stopped its training. ``checkpoints`` take a stop signal (dlexp.training.checkpoint.stop_at_epoch_end).
    """

    job: object
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    checkpoints: Checkpoints | None
    seconds: float | None = None  # how long training took: set by a launcher that trains it with others


def batched_steps(cfg: DictConfig, data: ExperimentData, folds: list, x: torch.Tensor, y: torch.Tensor,
                  device: torch.device, hooks: TrainingHooks, checkpoints: Checkpoints | None,
                  ) -> Generator[TrainingRequest, list[FoldResult], Iterator[tuple[FoldResult, torch.nn.Module]]]:
    """Batched training in steps: yields the request for the folds to train (none when every fold finished in an
    earlier attempt), is sent their results, and returns each fold's result and model as :func:`train_folds`
    yields them."""
    fold_indices, generators, objects_of, done = fold_setup(cfg, data, folds, device, checkpoints)
    log.info("training %d folds at once", len(folds))
    batched = BatchedFolds([objects_of(fold) for fold in range(1, len(folds) + 1)], fold_indices, generators,
                           cfg.trainer, hooks, checkpoints, done)
    results = None
    if batched.job is not None:
        request = TrainingRequest(batched.job, x, y, int(cfg.trainer.batch_size), checkpoints)
        results = yield request
        if request.seconds is not None and checkpoints is not None:
            # trained with other jobs, whose set-up came between: the training time is the stacked model's
            checkpoints.started = time.perf_counter() - request.seconds
    return batched.finish(results)


@dataclass
class ExperimentOutcome:
    """What a finished run leaves in memory besides its files and MLflow run (for dlexp.api).

    ``results[i]`` and ``models[i]`` are fold ``results[i].fold``'s result and model (best weights, on the
    training device); ``best_model`` is the reported model (lowest validation loss), one of ``models``.
    """

    summary: dict
    run_id: str
    results: list[FoldResult]
    models: list[torch.nn.Module]
    best_model: torch.nn.Module
    data: ExperimentData


def run_experiment(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None,
                   extra_tags: dict[str, str] | None = None, hooks: TrainingHooks = NO_HOOKS) -> dict:
    """Train with k-fold CV as ``cfg`` says, write pictures and a summary to ``output_dir``, log to MLflow.

    ``extra_tags`` go on the run as well (a sweep job passes ``mlflow.parentRunId`` to nest under its sweep);
    ``hooks`` hear of every epoch and fold (a search's trial reports to its pruner through them).
    Returns the summary numbers (dlexp.reports.summary.summarise); :func:`experiment_outcome` returns more.
    """
    return experiment_outcome(cfg, output_dir, overrides, extra_tags, hooks).summary


def experiment_outcome(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None,
                       extra_tags: dict[str, str] | None = None,
                       hooks: TrainingHooks = NO_HOOKS) -> ExperimentOutcome:
    """:func:`run_experiment`, returning the run id, fold results and models as well as the summary."""
    return run_alone(experiment_steps(cfg, output_dir, overrides, extra_tags, hooks))


def run_alone(steps: Generator[TrainingRequest, list[FoldResult], object]) -> object:
    """Run ``steps`` (:func:`experiment_steps`, or a job's steps around them) to the end, training each
    request they yield alone (:func:`train_alone`); returns what they return.

    A first SIGTERM or Ctrl-C while training stops at the end of the epoch, checkpointed
    (dlexp.training.checkpoint.stop_at_epoch_end); an error of training is raised inside ``steps``.
    """
    try:
        request = next(steps)
        while True:
            if request == WAITING_FOR_PICTURES:
                request = steps.send(None)
                continue
            results = None
            try:
                with stop_at_epoch_end(request.checkpoints):
                    results = train_alone(request.job, request.x, request.y, request.batch_size)
            except BaseException as error:  # noqa: BLE001 - the steps end their runs as this says, and raise it
                if results is None:
                    request = steps.throw(error)
                    continue
                # asked to stop after the last epoch: the results count; the steps stop after logging them
            request = steps.send(results)
    except StopIteration as end:
        return end.value


def experiment_steps(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None,
                     extra_tags: dict[str, str] | None = None, hooks: TrainingHooks = NO_HOOKS,
                     ) -> Generator[TrainingRequest, list[FoldResult], ExperimentOutcome]:
    """:func:`experiment_outcome` in steps around training, for a launcher that trains several jobs' folds as
    one stacked model (dlexp.sweeps.stacked_launcher): everything before training happens up to the first
    ``yield``, which hands out a :class:`TrainingRequest` when the folds train batched; the caller sends back
    its fold results (or throws the exception that stopped it, which ends the run as it would alone) and the
    rest (fold logging, pictures, files, models) runs to the outcome, the generator's return value, with one
    more ``yield`` of :data:`WAITING_FOR_PICTURES` (sent ``None``) before it waits for its pictures.
    Sequential training (folds one by one) happens inside the steps and yields nothing.
    """
    validate_config(cfg)
    checkpoint_every = parse_every(cfg.trainer.get("checkpoint_every"))
    offline.prepare(cfg.tracking)  # bounded store calls, before the helper process starts
    progress.configure(trainer_progress(cfg))
    start_helper()  # the picture process starts while the data loads
    log_models = bool(OmegaConf.select(cfg, "tracking.log_models", default=True))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg.trainer
    device = configure_torch(trainer)
    data: ExperimentData = check_data(build("dataset", cfg.dataset), cfg.dataset.get("_target_", "?"))
    # data.groups: image data split by specimen, so no specimen is in two folds
    folds = kfold_indices(data.y_train.numpy(), trainer.folds, trainer.seed, trainer.stratify, data.groups)
    split_check = check_data_split(data, folds)  # a class never tested or missing from a fold: WARNING lines
    eval_transform = data.eval_transform
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    grid = (plots.decision_grid([data.x_train, data.x_test], cfg.plots.grid_resolution)
            if data.n_features == 2 else None)

    # Building the objects once up front stops a bad model/optimizer/scheduler value before any output.
    probe = build_fold_objects(cfg, data, device, seed=trainer.seed, check=True)
    model_stats = summarize_model(probe.model, data.input_shape)
    strategy = choose_strategy(trainer.strategy, probe, data)
    experiment_id = setup_experiment(cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_location)
    tags = {"dlexp.overrides": " ".join(overrides or []), "dlexp.output_dir": str(output_dir),
            "dlexp.dataset": data.name, **job_tags(cfg), **data_tags(cfg), **(extra_tags or {})}
    if (split_note := data.split_note()) is not None:
        tags["dlexp.split"] = split_note
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    # User text (config keys, class names) as keys MLflow takes, made now: MLflow refuses a bad key only when it
    # is logged, for per-class metrics after training.
    params, renamed_keys = run_keys(flatten(cfg), data.class_names, CLASS_METRIC_PREFIX)
    plot_dir = output_dir / "plots"
    run_name = job_run_name(overrides or [], data.name, tags.get(SWEPT_KEYS_TAG, "").split(), cfg.tracking.run_name)
    use_system_metrics(cfg)
    # An interrupted run of this job continues (dlexp.tracking.resume): its checkpoints move to output_dir.
    checkpoints, resumed = job_checkpoints(cfg, experiment_id, output_dir, tags.get("mlflow.parentRunId"),
                                           checkpoint_every, tags.get(DATA_DIGEST_TAG))
    journal = offline.journal_for(output_dir, str(cfg.tracking.uri))  # a server's writes it did not take
    with (checkpoints, mlflow_run(run_name, tags=resumed_tags(tags, resumed), failure_file=output_dir / "FAILED.txt",
                                  run_id=resumed and resumed.info.run_id, journal=journal) as run, Writer() as writer):
        writer.journal = journal
        client, run_id = HelperClient(writer, mlflow.get_tracking_uri()), run.info.run_id
        mlflow.log_params(params_to_log(params, resumed))
        if renamed_keys and not resumed:  # the original names of the keys that had to change
            mlflow.log_dict(renamed_keys, KEYS_ARTIFACT)
        if not resumed:
            log_datasets(cfg.dataset, data, context_digests(cfg.dataset))
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        mlflow.log_artifact(str(output_dir / "config_resolved.yaml"))
        log_model_summary(model_stats, data.input_shape, data.n_classes, output_dir)
        writer.log_artifact(client, run_id, data_picture(writer, plot_dir, data), "plots")

        def best_model_of(result: FoldResult) -> torch.nn.Module:
            probe.model.load_state_dict(result.state_dict)
            return probe.model

        fold_runs = FoldRuns(
            run_id, run.info.experiment_id, len(folds), run_name, evaluate=best_model_of,
            test_accuracy=lambda model: accuracy(class_probabilities(model, x_test, eval_transform), y_test),
            pictures=lambda result, model: fold_pictures(writer, result, model, fold_dir(output_dir, result.fold),
                                                         data, grid, device),
            writer=writer, logged=resumed and logged_folds(mlflow.MlflowClient(), experiment_id, run_id))
        shown = progress.training_progress(len(folds), trainer.max_epochs, batched=strategy == "batched")
        checkpoints.start_clock()
        results: list[FoldResult] = []
        models: list[torch.nn.Module] = []
        training_hooks = HookList([fold_runs, shown, hooks])
        with fold_runs, closing(shown):
            if strategy == "batched":
                trained = yield from batched_steps(cfg, data, folds, x_train, y_train, device, training_hooks,
                                                   checkpoints)
            else:
                trained = train_folds(cfg, data, folds, x_train, y_train, device, strategy,
                                      hooks=training_hooks, checkpoints=checkpoints)
            with stop_at_epoch_end(checkpoints):
                for result, model in trained:
                    log.info("fold %d/%d: %d epochs, best epoch %d, val loss %.4f, val acc %.2f%%, test acc %.2f%%",
                             result.fold, len(folds), result.epochs_run, result.best_epoch, result.best_val_loss,
                             100 * result.best_val_acc, 100 * result.test_acc)
                    results.append(result)
                    models.append(model)
        seconds = checkpoints.elapsed()  # earlier attempts' training included

        ensemble = torch.stack([class_probabilities(m, x_test, eval_transform) for m in models]).mean(dim=0)
        summary = summarise(results, accuracy(ensemble, y_test), seconds)
        best_model = models[summary["best_fold"] - 1]
        client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                                          for k, v in summary.items() if not isinstance(v, dict)])
        predicted = class_probabilities(best_model, x_test, eval_transform).argmax(dim=1).cpu()
        summary["test_per_class"] = class_report(data.class_names, data.y_test, predicted, split_check.untested)
        summary["split_warnings"] = split_check.warnings
        # The helper process draws the run's pictures while this one draws the classification ones, or, where
        # it logs the run's models (below), all of them.
        for picture in [*run_pictures(writer, plot_dir, summary, results, best_model, data, device, grid),
                        *classification_pictures(writer, plot_dir, summary, data, predicted, here=not log_models)]:
            writer.log_artifact(client, run_id, picture, "plots")
        if log_models:  # after the metrics, which MLflow links to the models; here, while the helper draws
            from dlexp.tracking.models import log_run_models

            log_run_models(writer, mlflow.get_tracking_uri(), run_id, best_model, models, data)
        # A launcher finishing several jobs lets the next job's work here overlap this one's pictures in the helper.
        yield WAITING_FOR_PICTURES
        writer.drain()  # every picture is in the store before the model and summary are written
        for path in write_run_files(output_dir, summary, best_model, data):
            client.log_artifact(run_id, str(path))
    log.info("\n%s", summary_text(summary, data))
    if journal is not None and journal.offline:
        raise DlexpError(journal.message(output_dir))
    return ExperimentOutcome(summary, run_id, results, models, best_model, data)


def data_tags(cfg: DictConfig) -> dict[str, str]:
    """The data digest a resumed sweep compares (dlexp.data.digest.data_digest), as the tag
    ``dlexp.data_digest``; none for generated data (its config is its content)."""
    digest = data_digest(cfg.dataset)
    return {DATA_DIGEST_TAG: digest} if digest else {}


def use_system_metrics(cfg: DictConfig) -> None:
    """``tracking.system_metrics``: MLflow's own CPU/memory (GPU) sampling on the job's run, or none (the
    switch is MLflow's process-wide one, set for every run so sweep jobs in one process follow their own
    config). Needs psutil."""
    if OmegaConf.select(cfg, "tracking.system_metrics", default=False):
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()


def fold_dir(output_dir: Path, fold: int) -> Path:
    return output_dir / "folds" / f"fold_{fold}"


def trainer_progress(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "trainer.progress", default=True))
