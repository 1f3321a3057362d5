"""Work taken off the training thread: PNGs rendered in a helper process, MLflow writes on a writer thread.

Measured on the 2-core machine (benchmarks/README.md): a run's 16 PNGs cost more CPU than the batched
training itself, and matplotlib holds the GIL while it draws, so a thread would only take turns with
training. A helper process draws on the second core instead; it imports matplotlib, numpy and MLflow (not
scikit-learn or torch's export machinery: what needs them is done in the training process, which has them
loaded), starts once per dlexp process and serves every run and sweep job in it.

MLflow writes (SQLite or HTTP) go through one writer thread in order, so a fold's run is closed only after
its metrics and pictures are in, and training never waits for the store. The writer thread only hands the
calls over: they run in the helper process too (``HelperClient``), because MLflow's store spends ~100 us of
Python per metric value, and a thread of the training process doing that holds the GIL between training's
many small torch calls (measured: a thread writing metrics without pause made batched training 4x slower).
Both ends report their errors to the training thread (``Writer.check``), which stops the run like any other
error.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dlexp.errors import DlexpError
from dlexp.interrupts import ignore_requeue_signal

log = logging.getLogger(__name__)

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_registered = False


def _start_helper() -> None:
    """In the helper process: Ctrl-C reaches the whole process group, but only dlexp's own process decides
    what to do with it (finish or drop the pictures); the helper must not die mid-picture."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ignore_requeue_signal()  # SLURM's warning before a time limit, likewise (dlexp.sweeps.slurm)
    import mlflow.tracking  # noqa: F401  (loaded once, before the first write or picture is asked for)

    import dlexp.reports.plots  # noqa: F401


def _render(function: str, path: str, args: tuple, kwargs: dict) -> str:
    from dlexp.reports import plots

    return str(getattr(plots, function)(Path(path), *args, **kwargs))


_clients: dict[str, object] = {}  # tracking URI -> MlflowClient, in the process that makes the calls


def _store_call(tracking_uri: str, method: str, args: tuple, kwargs: dict) -> object:
    """``MlflowClient(tracking_uri).<method>(*args, **kwargs)``; a new run is returned as its id."""
    from mlflow.tracking import MlflowClient

    if tracking_uri not in _clients:
        _clients[tracking_uri] = MlflowClient(tracking_uri)
    result = getattr(_clients[tracking_uri], method)(*args, **kwargs)
    return result.info.run_id if method == "create_run" else result


def _shutdown() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def picture_pool() -> ProcessPoolExecutor:
    """The helper process (started on first use; fresh Python, so no torch or MLflow state is copied)."""
    global _pool, _registered
    with _pool_lock:
        if _pool is not None and getattr(_pool, "_broken", False):  # the helper died: the next run gets a new one
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_helper)
            if not _registered:
                atexit.register(_shutdown)
                _registered = True
        return _pool


def helper_possible() -> bool:
    """False inside a worker of joblib's loky (the parallel launcher): a process it spawns inherits the start
    method 'loky', which plain multiprocessing does not know. Those jobs already fill the cores; they draw
    their pictures themselves."""
    return multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver")


def render(function: str, path: Path, *args, **kwargs) -> Future:
    """``dlexp.reports.plots.<function>(path, *args, **kwargs)`` in the helper process; the future gives the path."""
    if not helper_possible():
        future: Future = Future()
        future.set_result(_render(function, str(path), args, kwargs))
        return future
    return picture_pool().submit(_render, function, str(path), args, kwargs)


def run_in_helper(function: Callable, *args) -> Future:
    """``function(*args)`` in the helper process, after what it was given before (``function`` must be
    importable by name: a module's top-level function); here, at once, where there is no helper."""
    if not helper_possible():
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # noqa: BLE001 (given to the future's reader, as the helper would)
            future.set_exception(error)
        return future
    return picture_pool().submit(function, *args)


def start_helper() -> None:
    """Start the helper process now, so its imports overlap with the run's own start-up."""
    if helper_possible():
        picture_pool().submit(int)


class HelperDied(DlexpError):
    """A helper process ended abruptly (``BrokenProcessPool``: killed, out of memory, a crash): the run ends
    FAILED with this one line, as with any other error it cannot go past."""


def helper_died() -> HelperDied:
    return HelperDied("dlexp's helper process (it draws the run's pictures and makes its MLflow writes) ended "
                      "abruptly (killed, or out of memory?): the writes it had not made are lost")


class HelperClient:
    """``MlflowClient``'s methods for the writer thread, made in the helper process (``Writer.store_call``);
    ``create_run`` returns the new run's id."""

    def __init__(self, writer: Writer, tracking_uri: str) -> None:
        self.writer, self.tracking_uri = writer, tracking_uri

    def __getattr__(self, method: str) -> Callable:
        return functools.partial(self.writer.store_call, self.tracking_uri, method)


class Aborted(Exception):
    """The writer was told to stop (a second Ctrl-C, or the run ended KILLED while writes were pending)."""


_MARK = object()  # a drain's marker in the queue


class Writer:
    """One thread that runs MLflow writes in the order they were submitted.

    ``every(seconds, flush)`` also runs ``flush`` whenever the queue has been idle that long (live metrics).
    The first error stops the writer; ``check`` raises it on the submitting thread.
    """

    def __init__(self, name: str = "dlexp-writer") -> None:
        self.tasks: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.aborted = threading.Event()
        self.periodic: tuple[float, Callable[[], None]] | None = None
        self.futures: list[Future] = []
        #: a run logging to a server: its writes the server did not take (dlexp.tracking.offline.Journal)
        self.journal = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """On an error or interrupt, drop what is pending (never stopping a write midway)."""
        if error is not None:
            self.abort()
        else:
            self.close()

    def render(self, function: str, path: Path, *args, here: bool = False, **kwargs) -> Future:
        """A picture from the helper process (see :func:`render`), cancelled if the writer aborts; ``here``
        draws it in this process instead (after training, while the helper draws others)."""
        if here:
            future: Future = Future()
            future.set_result(_render(function, str(path), args, kwargs))
            return future
        future = render(function, path, *args, **kwargs)
        self.futures.append(future)
        return future

    def log_artifact(self, client, run_id: str, picture: Future, artifact_path: str | None = None) -> None:
        """Log ``picture``'s file on ``run_id`` once it is drawn (in order with the other writes)."""
        self.submit(lambda: client.log_artifact(run_id, self.wait_for(picture), artifact_path))

    def store_call(self, tracking_uri: str, method: str, *args, **kwargs) -> object:
        """An ``MlflowClient`` call made in the helper process (in order with its pictures), waited for here.
        An abort drops it if it has not started; one that has is waited for (never stopped mid-write).
        With a ``journal``, a call the server does not answer, and every later one, is recorded there instead
        (dlexp.tracking.offline)."""
        journal = self.journal
        if journal is not None and journal.offline:
            return journal.record(method, *args, **kwargs)
        try:
            return self._store_call(tracking_uri, method, args, kwargs)
        except Aborted:
            raise
        except Exception as error:
            from dlexp.tracking.offline import unreachable

            if journal is None or not unreachable(error):
                raise
            journal.go_offline(error)
            return journal.record(method, *args, **kwargs)

    def _store_call(self, tracking_uri: str, method: str, args: tuple, kwargs: dict) -> object:
        if not helper_possible():
            return _store_call(tracking_uri, method, args, kwargs)
        # picture_pool() replaces a helper already known to have died; one that dies now fails in wait_for
        future = picture_pool().submit(_store_call, tracking_uri, method, args, kwargs)
        return self.wait_for(future, finish_started=True)

    def every(self, seconds: float, task: Callable[[], None]) -> None:
        self.periodic = (seconds, task)

    def submit(self, task: Callable, *args) -> None:
        self.tasks.put((task, args))

    def check(self) -> None:
        """Raise the writer's error, if it had one, where the run can end on it."""
        if isinstance(self.error, HelperDied):
            raise self.error
        if isinstance(self.error, BrokenProcessPool):
            raise helper_died() from self.error
        if self.error is not None:
            raise RuntimeError(f"drawing or logging the run's pictures and metrics failed: "
                               f"{type(self.error).__name__}: {self.error}") from self.error

    def wait_for(self, future: Future, finish_started: bool = False) -> object:
        """A picture's (or store call's) result, waiting in short steps so an abort is noticed: the abort
        cancels it, or, with ``finish_started``, waits for it if it has started (a write is never stopped
        midway). A helper that died raises :class:`HelperDied`."""
        while True:
            if self.aborted.is_set() and (future.cancel() or not finish_started):
                raise Aborted
            try:
                return future.result(timeout=0.1)
            except TimeoutError:
                continue
            except BrokenProcessPool as error:
                raise helper_died() from error

    def drain(self) -> None:
        """Wait until everything submitted so far is written; raise the writer's error, if any."""
        done = threading.Event()
        self.tasks.put((_MARK, (done,)))
        while not done.wait(0.1):
            if not self.thread.is_alive():
                break
        self.check()

    def abort(self) -> None:
        """Drop what is queued, stop after the current write (never mid-write) and wait for that."""
        self.aborted.set()
        for future in self.futures:
            future.cancel()
        self.tasks.put(None)
        self.thread.join()

    def close(self) -> None:
        self.tasks.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while True:
            try:
                timeout = self.periodic[0] if self.periodic else None
                item = self.tasks.get(timeout=timeout)
            except queue.Empty:
                item = (self.periodic[1], ())
            if item is None or self.aborted.is_set():
                return
            task, args = item
            if task is _MARK:
                args[0].set()
                continue
            if self.error is not None:
                continue  # stopped at the first error; drain() reports it
            try:
                task(*args)
            except Aborted:
                return
            except BaseException as error:  # noqa: BLE001 (reported to the training thread by check())
                log.debug("background write failed", exc_info=True)
                self.error = error
