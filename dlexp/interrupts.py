"""SIGTERM handled like Ctrl-C, so a stopped run or sweep ends KILLED in MLflow instead of vanishing.

By default SIGTERM ends Python at once: no ``finally``, no exit handler, so MLflow runs would stay RUNNING.
Raising ``Interrupted`` (a ``KeyboardInterrupt``) instead takes the same path as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Raised by a termination signal; MLflow runs end KILLED as after Ctrl-C (dlexp.tracking.store)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Requeued(Interrupted):
    """Raised by a signal that announces a requeue (SLURM's warning before a time limit or a preemption,
    dlexp.sweeps.slurm): the job stops to continue in its next attempt, so its MLflow runs stay RUNNING
    (dlexp.tracking.store.mlflow_run) and the next attempt continues them (dlexp.tracking.resume). Code that
    does not know it sees an ``Interrupted``."""


#: Signals that announce a requeue -> the function that says, when one arrives, whether a requeue follows.
_requeue_signals: dict[int, Callable[[], bool]] = {}


def stop_error(signum: int) -> Interrupted:
    """What stops the job for signal ``signum``: ``Requeued`` if it announces a requeue that will happen
    (``take_requeue_signal``), else ``Interrupted``."""
    will_requeue = _requeue_signals.get(signum)
    return Requeued(signum) if will_requeue is not None and will_requeue() else Interrupted(signum)


def _raise_interrupted(signum: int, frame) -> None:
    raise stop_error(signum)


def take_requeue_signal(signum: int, will_requeue: Callable[[], bool]) -> None:
    """From now on ``signum`` stops the job (at once, or at an epoch's end while it trains, after a
    checkpoint: dlexp.training.checkpoint.stop_at_epoch_end) with ``Requeued`` when ``will_requeue()``, else
    with ``Interrupted``. Main thread only."""
    _requeue_signals[signum] = will_requeue
    signal.signal(signum, _raise_interrupted)


def requeue_signals() -> list[int]:
    return list(_requeue_signals)


def ignore_requeue_signal() -> None:
    """In a child process of a submitit job (dlexp's helper process, DataLoader workers): SLURM sends its
    warning (``SIGUSR2``, or submitit's ``SUBMITIT_PREEMPT_SIGNAL``) to every process of the job, and its
    default action ends a process; only the job's own process acts on it (it stops at an epoch's end and the
    children with it), so a child ignores it instead of dying mid-write."""
    if "SUBMITIT_FOLDER" in os.environ:  # set by submitit in the job, inherited by its children
        signal.signal(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")), signal.SIG_IGN)


def can_take_sigterm() -> bool:
    """True where SIGTERM is still Python's default and this is the main thread (the only one that may
    install handlers). A launcher that handles SIGTERM itself (submitit does, for cluster preemption) keeps it.
    """
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)


def take_sigterm() -> None:
    """From now on SIGTERM raises ``Interrupted`` in the main thread."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


def release_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` inside the block, where nothing else handles it already."""
    if not can_take_sigterm():
        yield
        return
    take_sigterm()
    try:
        yield
    finally:
        release_sigterm()
