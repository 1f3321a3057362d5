"""Checkpoints of a job's training, so an interrupted job continues where it was and ends bit-identical.

A job's run folder holds ``checkpoints/``:

- ``fold_K.pt`` while fold K trains one by one, ``batched.pt`` while all folds train at once: everything the
  next epoch depends on (weights, optimizer, scheduler, early-stopping state, best weights so far, the
  history, the generator that orders the batches and torch's global generator, which draws dropout masks),
  saved at an epoch's end every ``trainer.checkpoint_every`` and when the job is stopped (SIGTERM, Ctrl-C);
- ``fold_K.done.pt`` once fold K has finished: its result with its best weights, so it is never trained again.

Files are written to a temporary name and renamed over the old one (``os.replace``), so a job killed while
saving leaves the previous checkpoint intact. Each file carries the config and code hashes of the job that
wrote it (dlexp.tracking.store.config_hash, code_hash); a file written by another config or other code is
not used (one WARNING line says why). While a job trains, it holds an exclusive lock on
``checkpoints/lock``: a second command never continues a job that is still running.

Where a job finds the folder of its interrupted predecessor (the same MLflow run): dlexp.tracking.resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from dlexp.errors import DlexpError
from dlexp.training.loop import EarlyStopping, FoldResult, TrainingHooks

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "lock"


@dataclass(frozen=True)
class Every:
    """How often an epoch's end saves a checkpoint: every ``epochs`` epochs, or once ``seconds`` have passed
    since the last save (whichever is set)."""

    epochs: int | None = None
    seconds: float | None = None


def parse_every(value) -> Every | None:
    """``trainer.checkpoint_every``: an int (epochs), ``"30s"`` / ``"2m"`` (seconds, minutes), or null / 0 /
    ``false`` (no checkpoints). Raises DlexpError naming the key and value otherwise."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Every(epochs=value)
    text = str(value).strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units and float(text[:-1]) > 0:
            return Every(seconds=float(text[:-1]) * units[text[-1]])
    except ValueError:
        pass
    raise DlexpError(f"trainer.checkpoint_every={value!r}: expected a number of epochs (e.g. 10), a time "
                     "(e.g. 30s, 5m) or null for no checkpoints")


class Checkpoints:
    """A job's checkpoint folder: finished folds, the running fold's (or the batch's) state, the lock.

    ``identity`` (config and code hashes) is stored in every file and must match for a file to be used.
    ``elapsed()`` is the training time of this job so far, earlier attempts included (up to their last
    checkpoint): what the summary's ``train_seconds`` reports after a resume.
    """

    def __init__(self, folder: Path, identity: dict[str, str], every: Every | None) -> None:
        self.folder, self.identity, self.every = Path(folder), dict(identity), every
        self.previous_seconds = 0.0
        self.started = time.perf_counter()
        self.stop_signal: int | None = None  # set by a signal taken by ``stop_at_epoch_end``
        self._lock = None

    # ---------------------------------------------------------------- files

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def lock(self) -> bool:
        """Take the folder's lock (held until ``unlock``); False if another live process holds it."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open while the job trains)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle
        return True

    def clear(self) -> None:
        """Remove every checkpoint file in the folder (the lock file stays): a new run of a job starts from
        nothing, whatever an earlier run that is not continued (finished, failed, other data) left there."""
        for path in self.folder.glob("*.pt"):
            path.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def start_clock(self) -> None:
        """Training starts now (``elapsed`` counts from here, plus the earlier attempts' time)."""
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.started

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def save(self, name: str, state: dict) -> None:
        """``state`` to ``name.pt`` atomically (a temporary file renamed over the old one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        temporary = path.with_name(path.name + ".tmp")
        torch.save({**state, "identity": self.identity, "seconds": self.elapsed()}, temporary)
        os.replace(temporary, path)

    def load(self, name: str) -> dict | None:
        """The state saved as ``name``, or None if there is none or it is not this job's (a WARNING says why)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 (an unreadable checkpoint is not used; training redoes it)
            log.warning("checkpoint %s cannot be read (%s); not used", path, str(error).splitlines()[0][:200])
            return None
        theirs = state.get("identity", {})
        for key in ("config_hash", "code_hash", "data_digest"):
            if theirs.get(key, "") != self.identity.get(key, ""):
                what = {"config_hash": "another config", "code_hash": "other code", "data_digest": "other data"}[key]
                log.warning("checkpoint %s was written by %s (dlexp.%s %s, now %s); not used", path, what, key,
                            str(theirs.get(key))[:12], str(self.identity.get(key))[:12])
                return None
        self.previous_seconds = max(self.previous_seconds, float(state.get("seconds", 0.0)))
        return state

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    # ---------------------------------------------------------------- finished folds

    def finished(self, fold: int) -> FoldResult | None:
        """Fold ``fold``'s result (best weights in ``state_dict``) if it finished in an earlier attempt."""
        state = self.load(f"fold_{fold}.done")
        return None if state is None else result_from_state(state["result"])

    def finish(self, result: FoldResult) -> None:
        """Keep a finished fold's result and best weights; its in-training checkpoint is no longer needed."""
        self.save(f"fold_{result.fold}.done", {"result": result_state(result)})
        self.remove(f"fold_{result.fold}")

    def epochs(self, name: str) -> EpochCheckpoint | None:
        """The per-epoch checkpoint ``name`` (``fold_K`` or ``batched``), or None when checkpoints are off."""
        return EpochCheckpoint(self, name) if self.every is not None else None


class EpochCheckpoint:
    """What a training loop calls: ``restore()`` once before its first epoch, ``epoch_end(...)`` after each.

    ``epoch_end`` saves when ``every`` says so, and always when the job was asked to stop (``Checkpoints.
    stop_signal``), which it then does by raising :class:`dlexp.interrupts.Interrupted`.
    """

    def __init__(self, owner: Checkpoints, name: str) -> None:
        self.owner, self.name = owner, name
        self.last_epoch, self.last_time = 0, time.monotonic()

    def restore(self) -> dict | None:
        state = self.owner.load(self.name)
        if state is not None:
            self.last_epoch = int(state["epoch"])
            log.info("checkpoint %s: continuing after epoch %d", self.owner.path(self.name), self.last_epoch)
        return state

    def due(self, epoch: int) -> bool:
        every = self.owner.every
        if every.epochs is not None:
            return epoch - self.last_epoch >= every.epochs
        return time.monotonic() - self.last_time >= every.seconds

    def epoch_end(self, epoch: int, state: Callable[[], dict]) -> None:
        """After epoch ``epoch`` (everything stepped, the scheduler included): save if due or stopping."""
        stopping = self.owner.stop_signal
        if stopping is not None or self.due(epoch):
            self.save(epoch, state)
        if stopping is not None:
            from dlexp.interrupts import stop_error

            log.warning("stopped after epoch %d; checkpoint saved in %s", epoch, self.owner.path(self.name))
            raise stop_error(stopping)

    def save(self, epoch: int, state: Callable[[], dict]) -> None:
        """Save epoch ``epoch``'s state now, due or not (a stacked job whose neighbour was stopped)."""
        self.owner.save(self.name, {"epoch": epoch, **state()})
        self.last_epoch, self.last_time = epoch, time.monotonic()

    def remove(self) -> None:
        self.owner.remove(self.name)


# ---------------------------------------------------------------- what a fold's state is

RESULT_FIELDS = ("fold", "train_indices", "val_indices", "history", "best_epoch", "best_val_loss", "best_val_acc",
                 "epochs_run", "state_dict", "test_acc")


def result_state(result: FoldResult) -> dict:
    """A FoldResult as plain containers and tensors (what ``torch.load(weights_only=True)`` reads back)."""
    state = {name: getattr(result, name) for name in RESULT_FIELDS}
    state["history"] = {key: list(values) for key, values in result.history.items()}
    state["train_indices"], state["val_indices"] = result.train_indices.cpu(), result.val_indices.cpu()
    state["diverged"] = str(result.diverged) if result.diverged is not None else None
    return state


def result_from_state(state: dict) -> FoldResult:
    from dlexp.training.loop import TrainingDiverged

    result = FoldResult(**{name: state[name] for name in RESULT_FIELDS})
    if state.get("diverged"):
        result.diverged = TrainingDiverged(state["diverged"], result)
    return result


def fold_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, stopper: EarlyStopping,
               generator: torch.Generator, result: FoldResult) -> dict:
    """Everything one-by-one training's next epoch depends on (``dlexp.training.loop.train_fold``)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "stopper": dict(vars(stopper)), "generator": generator.get_state(), "rng": torch.get_rng_state(),
            "result": result_state(result)}


def restore_fold_state(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                       stopper: EarlyStopping, generator: torch.Generator, result: FoldResult,
                       hooks: TrainingHooks) -> int:
    """Put ``fold_state``'s ``state`` back and tell ``hooks`` of the epochs it holds; returns its epoch."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    vars(stopper).update(state["stopper"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    saved = result_from_state(state["result"])
    for key, values in saved.history.items():  # in place: the training loop appends to these lists
        result.history[key][:] = values
    for name in ("best_epoch", "best_val_loss", "best_val_acc", "epochs_run", "state_dict"):
        setattr(result, name, getattr(saved, name))
    replay_epochs(result, hooks)
    return int(state["epoch"])


def replay_epochs(result: FoldResult, hooks: TrainingHooks, count: int | None = None) -> None:
    """Tell ``hooks`` of the first ``count`` epochs in ``result.history`` (all by default) as training did;
    the live fold runs (dlexp.tracking.fold_runs) skip the epochs the store already holds."""
    keys = list(result.history)
    count = len(result.history[keys[0]]) if count is None else count
    for index in range(count):
        hooks.epoch_end(result.fold, index + 1, {key: result.history[key][index] for key in keys})


def replay_finished(result: FoldResult, model: torch.nn.Module, hooks: TrainingHooks) -> FoldResult:
    """A fold that finished in an earlier attempt: ``model`` gets its best weights and ``hooks`` hear of it as
    training would have told them (start, every epoch, end); returns ``result``."""
    model.load_state_dict(result.state_dict)
    hooks.fold_start(result.fold)
    replay_epochs(result, hooks)
    hooks.fold_end(result)
    return result


# ---------------------------------------------------------------- stopping at an epoch's end

def _takes(signum: int) -> bool:
    """Whether the signal's handler now is the one dlexp would replace (Python's Ctrl-C, dlexp's or the default
    SIGTERM); a launcher's own handler (submitit's) stays."""
    from dlexp import interrupts

    current = signal.getsignal(signum)
    if signum == signal.SIGINT:
        return current is signal.default_int_handler
    return current in (signal.SIG_DFL, interrupts._raise_interrupted)


@contextmanager
def stop_at_epoch_end(checkpoints: Checkpoints | None) -> Iterator[None]:
    """While training: the first SIGTERM or Ctrl-C lets the current epoch end and saves a checkpoint before
    the job stops (``EpochCheckpoint.epoch_end`` raises ``Interrupted``); a second one stops at once. A signal
    that announces a requeue (``dlexp.interrupts.take_requeue_signal``: SLURM's warning before a time limit or
    a preemption) does the same with ``Requeued``, and a SIGTERM besides it does not change that plan.

    Only in the main thread and with checkpoints on; otherwise signals act as they did.
    """
    if checkpoints is None or checkpoints.every is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    from dlexp.interrupts import requeue_signals, stop_error

    # SLURM's warning before a time limit or a preemption too, where a launcher made it dlexp's (dlexp.sweeps.slurm)
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, *requeue_signals()) if _takes(s)]
    previous = {s: signal.getsignal(s) for s in signals}

    def ask_to_stop(signum: int, frame) -> None:
        pending, requeues = checkpoints.stop_signal, requeue_signals()
        if pending is not None and (pending == signum or (pending not in requeues and signum not in requeues)):
            raise stop_error(signum)
        if pending in requeues:  # a SIGTERM after SLURM's warning: the requeue it announced stays the plan
            return
        checkpoints.stop_signal = signum
        log.warning("%s: stopping at the end of this epoch, after saving a checkpoint (send it again to stop "
                    "at once)", signal.Signals(signum).name)

    for s in signals:
        signal.signal(s, ask_to_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            # only where ours is still the handler: a training whose generator is finalised late (garbage
            # collection of an abandoned dlexp.experiment.experiment_steps) must not put back stale handlers
            # over those of a training that started since
            if signal.getsignal(s) is ask_to_stop:
                signal.signal(s, handler)
    if checkpoints.stop_signal is not None:  # asked between epochs or after the last one: stop now
        raise stop_error(checkpoints.stop_signal)
