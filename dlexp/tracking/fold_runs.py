"""Each fold's nested MLflow run, live while it trains (training hooks).

A fold's run is created when the fold starts, its per-epoch ``train_loss``, ``val_loss``, ``val_acc`` and
``lr`` reach the store every ``FLUSH_SECONDS`` while it trains (so the UI's charts grow during the run), and
it is closed FINISHED when the fold stops, with its best epoch, test accuracy and two pictures. The job's
run carries the tag ``dlexp.running_fold`` (the folds still training) until training ends.

Runs are addressed by id through ``MlflowClient`` (not MLflow's active-run stack), because batched training
runs all folds at once. Every write goes through one writer thread (dlexp.tracking.background) in order and is made
in the helper process that also draws the pictures, so a fold's run ends only after everything it promised
is in the store, and the store's work does not take turns with training. A fold that stopped is finished,
and stays so when the run is interrupted later (batched training included); folds still training end with
the job.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry

from dlexp.interrupts import Requeued
from dlexp.tracking.background import HelperClient, Writer
from dlexp.tracking.naming import fold_run_name
from dlexp.tracking.store import delete_tag_if_present, one_line
from dlexp.training.loop import FoldResult, TrainingHooks

FLUSH_SECONDS = 2.0  # how often a running fold's new epochs are written
RUNNING_FOLD_TAG = "dlexp.running_fold"
HISTORY_KEYS = ("train_loss", "val_loss", "val_acc", "lr")


class FoldRuns(TrainingHooks):
    """Live fold runs under ``job_run_id``; use as a context manager around training.

    ``evaluate(result)`` returns the fold's best model (weights loaded) so the test accuracy and the
    decision regions can be computed as the fold stops; ``pictures(result, model)`` returns the futures
    of the fold's PNGs (rendered in the helper process).
    """

    def __init__(self, job_run_id: str, experiment_id: str, n_folds: int, job_name: str | None,
                 evaluate: Callable[[FoldResult], torch.nn.Module],
                 test_accuracy: Callable[[torch.nn.Module], float],
                 pictures: Callable[[FoldResult, torch.nn.Module], list], writer: Writer | None = None,
                 flush_seconds: float | None = None, logged: dict | None = None) -> None:
        self.writer = writer or Writer()
        self.client = HelperClient(self.writer, mlflow.get_tracking_uri())  # the writer thread's calls
        self.job_run_id, self.experiment_id, self.n_folds = job_run_id, experiment_id, n_folds
        self.job_name = job_name
        self.evaluate, self.test_accuracy, self.pictures = evaluate, test_accuracy, pictures
        self.writer.every(flush_seconds or FLUSH_SECONDS, self._flush)
        self.epochs: collections.deque = collections.deque()  # (fold, epoch, metrics, ms): the training side
        self.run_ids: dict[int, str] = {}  # fold -> run id (written by the writer thread)
        self.unsent: dict[int, list[Metric]] = collections.defaultdict(list)  # (writer thread)
        self.running: list[int] = []  # folds training now (training thread)
        self.tagged = False  # the job run has the running-fold tag (writer thread)
        #: fold -> dlexp.tracking.resume.LoggedFold: a continued run's fold runs, reused; epochs they hold are
        #: not logged again, and a FINISHED one is left as it is
        self.logged = logged or {}

    # ---------------------------------------------------------------- training thread (hooks)

    def fold_start(self, fold: int) -> None:
        self.writer.check()
        self.running.append(fold)
        self.writer.submit(self._open, fold)
        self.writer.submit(self._tag_running, self._running_text())

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((fold, epoch, metrics, int(time.time() * 1000)))
        if self.writer.error is not None:
            self.writer.check()

    def fold_end(self, result: FoldResult) -> None:
        self.writer.check()
        result.train_indices, result.val_indices = result.train_indices.cpu(), result.val_indices.cpu()
        model = self.evaluate(result)
        result.test_acc = self.test_accuracy(model)
        if (logged := self.logged.get(result.fold)) is not None and logged.finished:
            self.running.remove(result.fold)  # its run is complete already (an earlier attempt closed it)
            self.writer.submit(self._tag_running, self._running_text())
            return
        futures = self.pictures(result, model)
        self.running.remove(result.fold)
        self.writer.submit(self._close, result.fold, {
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "best_val_acc": result.best_val_acc, "epochs_run": result.epochs_run, "test_acc": result.test_acc,
        }, {"fold": result.fold, "n_train": len(result.train_indices), "n_val": len(result.val_indices)},
            futures)
        self.writer.submit(self._tag_running, self._running_text())

    def _running_text(self) -> str:
        return f"{', '.join(map(str, self.running))} of {self.n_folds}" if self.running else ""

    # ---------------------------------------------------------------- writer thread

    def _open(self, fold: int) -> None:
        if (logged := self.logged.get(fold)) is not None:
            self.run_ids[fold] = logged.run_id
            if not logged.finished:
                self.client.update_run(logged.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        tags = context_registry.resolve_tags({"mlflow.parentRunId": self.job_run_id, "dlexp.fold": str(fold)})
        self.run_ids[fold] = self.client.create_run(self.experiment_id, run_name=fold_run_name(self.job_name, fold),
                                                    tags=tags)

    def _tag_running(self, text: str) -> None:
        if text:
            self.client.set_tag(self.job_run_id, RUNNING_FOLD_TAG, text)
        elif self.tagged:
            delete_tag_if_present(self.client, self.job_run_id, RUNNING_FOLD_TAG)
        self.tagged = bool(text)

    def _flush(self) -> None:
        """Write every epoch reported so far, one batch per fold run (each epoch once: taken off the queue).
        Epochs of a fold whose run is not created yet (its creation is still queued) wait for the next flush."""
        while self.epochs:
            fold, epoch, metrics, ms = self.epochs.popleft()
            logged = self.logged.get(fold)
            if logged is not None and logged.finished:
                continue
            last = logged.last_step if logged is not None else {}
            self.unsent[fold] += [Metric(key, float(value), ms, epoch) for key, value in metrics.items()
                                  if epoch > last.get(key, 0)]
        for fold in [fold for fold in self.unsent if fold in self.run_ids]:
            metrics = self.unsent.pop(fold)
            for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
                self.client.log_batch(self.run_ids[fold], metrics=metrics[start:start + 1000], synchronous=True)

    def _close(self, fold: int, metrics: dict, params: dict, futures: list) -> None:
        self._flush()
        run_id, now = self.run_ids[fold], int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
        for future in futures:
            self.client.log_artifact(run_id, self.writer.wait_for(future))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    # ---------------------------------------------------------------- the end

    def __enter__(self) -> FoldRuns:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """After training: wait until every fold run is complete. On an error or interrupt: folds that
        stopped are still completed (their pictures are due in a moment); folds that were training end
        with the job's status; a second Ctrl-C while waiting drops what is left and ends those KILLED too."""
        if error is None:
            self.writer.submit(self._flush)
            self.writer.submit(self._tag_running, "")
            self.writer.drain()
            return
        status = RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED
        self.writer.submit(self._flush)
        try:
            self.writer.drain()
        except KeyboardInterrupt:
            status = RunStatus.KILLED
        except Exception:  # noqa: BLE001 (the run already fails with the error that got us here)
            pass
        finally:
            self.writer.abort()
        if isinstance(error, Requeued):  # the job's next attempt continues these fold runs: they stay RUNNING
            return
        journal = self.writer.journal
        if journal is not None and journal.offline:  # the server is away: the folds' ends wait for the sync
            for fold in self.running:
                if fold in self.run_ids:
                    journal.record("set_tag", self.run_ids[fold], "dlexp.error", one_line(error))
                    journal.record("set_terminated", self.run_ids[fold], RunStatus.to_string(status))
            return
        client = MlflowClient()  # here: the helper process may be gone (SIGTERM to the process group)
        # The store, not run_ids: the helper may have created a fold run as it was stopped, before its id came back.
        for run in client.search_runs([self.experiment_id], filter_string=(
                f"tags.`mlflow.parentRunId` = '{self.job_run_id}' and attributes.status = 'RUNNING'")):
            client.set_tag(run.info.run_id, "dlexp.error", one_line(error))
            client.set_terminated(run.info.run_id, RunStatus.to_string(status))
        if self.tagged:
            delete_tag_if_present(client, self.job_run_id, RUNNING_FOLD_TAG)


def fold_pictures(writer: Writer, result: FoldResult, model: torch.nn.Module, fold_dir: Path, data, grid,
                  device) -> list:
    """A fold's loss curve, and for 2-D points its decision regions with its validation points marked."""
    label = f"fold {result.fold}"
    futures = [writer.render("plot_loss_curves", fold_dir / "loss_curve.png", {label: result.history},
                      {label: result.best_epoch})]
    if grid is not None:
        from dlexp.reports.run_files import predict_regions

        x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
        is_val = np.zeros(len(y_train), dtype=bool)
        is_val[result.val_indices.numpy()] = True
        futures.append(writer.render(
            "plot_decision_boundary", fold_dir / "decision_boundary.png", predict_regions(model, grid, device),
            grid, x_train, y_train, data.class_names,
            f"{label}: best epoch {result.best_epoch}, val acc {result.best_val_acc:.1%}",
            marked=is_val, marked_label="validation"))
    return futures

