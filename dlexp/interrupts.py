"""SIGTERM handled like Ctrl-C, so a stopped run or sweep ends KILLED in MLflow instead of vanishing.

By default SIGTERM ends Python at once: no ``finally``, no exit handler, so MLflow runs would stay RUNNING.
Raising ``Interrupted`` (a ``KeyboardInterrupt``) instead takes the same path as Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Raised by a termination signal; MLflow runs end KILLED as after Ctrl-C (dlexp.tracking.store)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


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
