"""Progress of the long steps in the terminal: decoding images, each fold's epochs, batched folds.

On a terminal (stderr is a TTY) or in Jupyter a tqdm bar (tqdm.auto: a widget in a notebook) that
disappears when its step ends, so the lines a run prints stay the same; elsewhere (CI, SLURM log files) a
plain log line every ``LOG_SECONDS`` instead of bar redraws. ``trainer.progress=false`` turns both off.
Training pays one clock read per epoch and fold; the bar is redrawn at most every ``REDRAW_SECONDS``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from dlexp.notebook import in_notebook
from dlexp.training.loop import FoldResult, TrainingHooks

log = logging.getLogger(__name__)

LOG_SECONDS = 10.0  # without a terminal: a line at most this often
REDRAW_SECONDS = 0.2  # on a terminal: redraw the bar at most this often

_enabled = True


def configure(enabled: bool) -> None:
    """Progress on or off for this process (``trainer.progress``)."""
    global _enabled
    _enabled = bool(enabled)


def on_terminal() -> bool:
    """A terminal (stderr is a TTY), or a Jupyter kernel: where a bar can redraw itself."""
    return sys.stderr.isatty() or in_notebook()


class _Reporter:
    """A bar on a terminal, a log line every ``LOG_SECONDS`` elsewhere; ``show`` is cheap between those."""

    def __init__(self, description: str, total: int, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.bar = None
        self.last = time.monotonic()
        if on_terminal():
            from tqdm.auto import tqdm  # in Jupyter the notebook's widget bar, else tqdm's text bar

            self.bar = tqdm(total=total, desc=description, unit=unit, leave=False, file=sys.stderr,
                            dynamic_ncols=True, mininterval=REDRAW_SECONDS)
            self.every = REDRAW_SECONDS
        else:
            self.every = LOG_SECONDS

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def show(self, done: int, text: Callable[[], str]) -> None:
        """Report ``done`` of ``total``; ``text()`` (the details) is built only when something is shown."""
        if time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        if self.bar is not None:
            self.bar.set_postfix_str(text(), refresh=False)
            self.bar.update(done - self.bar.n)
        else:
            details = text()
            log.info("%s: %d/%d %ss%s", self.description, done, self.total, self.unit,
                     f", {details}" if details else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track(items: Iterable, total: int, description: str, unit: str,
          size: Callable[[object], int] = lambda item: 1) -> Iterator:
    """Yield ``items`` while reporting how many of ``total`` are done (each item counts ``size(item)``)."""
    if not _enabled:
        yield from items
        return
    reporter = _Reporter(description, total, unit)
    done = 0
    try:
        for item in items:
            done += size(item)
            reporter.show(done, str)
            yield item
    finally:
        reporter.close()


class TrainingProgress(TrainingHooks):
    """Epochs of the fold training now (one by one), or of all folds at once and how many still run
    (batched): epoch, training and validation loss, best validation loss so far."""

    def __init__(self, n_folds: int, max_epochs: int, batched: bool) -> None:
        self.n_folds, self.max_epochs, self.batched = n_folds, max_epochs, batched
        self.reporter: _Reporter | None = None
        self.best: dict[int, float] = {}
        self.last: dict[int, dict] = {}
        self.running = 0

    def fold_start(self, fold: int) -> None:
        self.best[fold] = float("inf")
        self.running += 1
        if self.reporter is None:
            what = f"{self.n_folds} folds at once" if self.batched else f"fold {fold}/{self.n_folds}"
            self.reporter = _Reporter(what, self.max_epochs, "epoch")

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        if metrics["val_loss"] < self.best[fold]:
            self.best[fold] = metrics["val_loss"]
        self.last[fold] = metrics
        reporter = self.reporter
        if reporter is not None and reporter.due():
            reporter.show(epoch, lambda: self._text(fold, metrics))

    def _text(self, fold: int, metrics: dict[str, float]) -> str:
        if self.batched:
            best = min(self.best.values())
            return f"{self.running} of {self.n_folds} folds training, lowest val loss {best:.4f}"
        return (f"train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
                f"best {self.best[fold]:.4f}")

    def fold_end(self, result: FoldResult) -> None:
        self.running -= 1
        if not self.batched or self.running == 0:
            self.close()

    def close(self) -> None:
        """Take the bar off the terminal (also when training stops on an error)."""
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None


class NoProgress(TrainingHooks):
    def close(self) -> None:
        pass


def training_progress(n_folds: int, max_epochs: int, batched: bool) -> TrainingProgress | NoProgress:
    """Progress hooks for training, or silent ones when ``trainer.progress`` is off."""
    return TrainingProgress(n_folds, max_epochs, batched) if _enabled else NoProgress()
