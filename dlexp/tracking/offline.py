"""A tracking server that goes away: bounded store calls, and the writes it missed kept in the run folder.

Every MLflow call to a server takes at most ``tracking.timeout`` seconds, retries included: MLflow's client
reads its HTTP timeout and retries from environment variables at each call (mlflow/environment_variables.py:
``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``,
``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER``), and the helper process that makes the writes inherits them. By
default MLflow retries 7 times with a 120 s timeout each: many minutes before a dead server is noticed.

When a call to a server fails for want of an answer, the run goes *offline*: that call and every later
MLflow write of the run (in order) are appended to ``mlflow_pending.jsonl`` in the run folder instead,
while training goes on and the run folder gets everything it would have (model, summary, pictures). The run
ends with one ``error:`` line naming that file and ``python -m dlexp.sync RUN_FOLDER`` (dlexp.tracking.sync),
which sends the writes once the server is back. Runs a server never answered for still hold what they got
before; nothing claims FINISHED in the store until the sync.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PENDING_FILE = "mlflow_pending.jsonl"
PLACEHOLDER = "offline-"  # the id of a run created while offline, until the sync creates it
DEFAULT_TIMEOUT = 60.0


def is_server(uri: str) -> bool:
    return str(uri).startswith(("http://", "https://"))


def bound_store_calls(seconds: float) -> None:
    """Make every MLflow HTTP call of this process (and of processes it starts) end within ``seconds``.

    Three tries (two retries) of ``(seconds - 5) / 3`` each, waits of 1 and 2 s between them plus at most 1 s
    of jitter each (urllib3's ``backoff_factor * 2 ** (n - 1)``): at most ``seconds`` in all.
    """
    seconds = max(float(seconds), 8.0)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "2"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(int((seconds - 5) / 3), 1))


@contextmanager
def one_quick_try():
    """Store calls inside make one try of a few seconds (after the server has gone: just ending the run)."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the server did not answer (refused, timed out, reset, 5xx after retries),
    as opposed to answering that the call is wrong."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError
                      | TimeoutError):
            return True
        text = str(seen)
        if "API request to" in text and any(word in text for word in (
                "Max retries exceeded", "Connection", "timed out", "Read timed out", "too many 5")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def encode(value):
    """MLflow entities and containers as JSON (``decode`` reverses it)."""
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, Metric):
        return {"__metric__": [value.key, value.value, value.timestamp, value.step]}
    if isinstance(value, Param):
        return {"__param__": [value.key, value.value]}
    if isinstance(value, RunTag):
        return {"__tag__": [value.key, value.value]}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def decode(value):
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "__metric__" in value:
            return Metric(*value["__metric__"])
        if "__param__" in value:
            return Param(*value["__param__"])
        if "__tag__" in value:
            return RunTag(*value["__tag__"])
        return {k: decode(v) for k, v in value.items()}
    return value


class Journal:
    """A run's MLflow writes that the server did not take, in order, in ``RUN_FOLDER/mlflow_pending.jsonl``.

    ``offline`` turns true at the first unanswered call (``go_offline``); from then on every write of the run
    is recorded here (``record``) and none is tried, so their order is kept for the sync.
    """

    def __init__(self, folder: Path, tracking_uri: str) -> None:
        self.path = Path(folder) / PENDING_FILE
        self.tracking_uri = tracking_uri
        self.reason: str | None = None
        self.since: str | None = None
        self.count = 0
        self.lock = threading.Lock()

    @property
    def offline(self) -> bool:
        return self.reason is not None

    def go_offline(self, error: BaseException) -> None:
        from dlexp.tracking.store import one_line

        with self.lock:
            if self.reason is not None:
                return
            self.reason, self.since = one_line(error)[:300], time.strftime("%H:%M:%S")
        log.warning("the tracking server %s stopped answering (%s); training goes on and what is left to log "
                    "is kept in %s", self.tracking_uri, self.reason, self.path)

    def record(self, method: str, *args, **kwargs):
        """Append the call ``MlflowClient.<method>(*args, **kwargs)``; a ``create_run`` returns a placeholder
        id that later records use and the sync replaces."""
        result = f"{PLACEHOLDER}{uuid.uuid4().hex}" if method == "create_run" else None
        line = {"method": method, "args": encode(list(args)), "kwargs": encode(kwargs)}
        if result is not None:
            line["placeholder"] = result
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            with self.path.open("a") as file:
                if new:
                    file.write(json.dumps({"tracking_uri": self.tracking_uri}) + "\n")
                file.write(json.dumps(line) + "\n")
            self.count += 1
        return result

    def call(self, method: str, *args, **kwargs):
        """``MlflowClient(tracking_uri).<method>(...)`` in this process, or recorded once offline."""
        if self.offline:
            return self.record(method, *args, **kwargs)
        from mlflow.tracking import MlflowClient

        try:
            return getattr(MlflowClient(self.tracking_uri), method)(*args, **kwargs)
        except Exception as error:
            if not unreachable(error):
                raise
            self.go_offline(error)
            return self.record(method, *args, **kwargs)

    def message(self, folder: Path) -> str:
        """The run's closing ``error:`` line (without the prefix)."""
        return (f"the tracking server {self.tracking_uri} stopped answering at {self.since} ({self.reason}); "
                f"the run's results are complete in {folder}, but {self.count} MLflow writes (metrics, tags, "
                f"artifacts, its end) are not in the store: they are kept in {self.path}; send them once the "
                f"server is back with: python -m dlexp.sync {folder}")


def journal_for(folder: Path, tracking_uri: str) -> Journal | None:
    """The run's journal when it logs to a server (a local store that fails is an error, not an absence)."""
    return Journal(folder, tracking_uri) if is_server(tracking_uri) else None


def pending_in(folder: Path) -> Path | None:
    """The run folder's journal of writes not yet sent, if it has one."""
    path = Path(folder) / PENDING_FILE
    return path if path.is_file() else None


def end_run(journal: Journal, run_id: str, status: str) -> None:
    """End MLflow's active run ``run_id`` with ``status`` on the server, or in the journal once offline (the
    active run is then left with one quick try that changes nothing the store says)."""
    import mlflow

    journal.call("set_terminated", run_id, status)
    if not journal.offline:
        mlflow.end_run(status)
        return
    with one_quick_try():
        try:
            mlflow.end_run("RUNNING")  # ends the active run here; the store keeps saying RUNNING
        except Exception as error:  # noqa: BLE001 (the server is away: that is known and reported)
            log.debug("ending the run offline: %s", error)


def prepare(tracking) -> None:
    """Bound every store call when ``tracking.uri`` is a server (``tracking.timeout`` seconds, retries in)."""
    if is_server(str(tracking.uri)):
        bound_store_calls(float(tracking.get("timeout") or DEFAULT_TIMEOUT))


def log_metrics(journal: Journal | None, metrics: dict[str, float]) -> None:
    """``mlflow.log_metrics(metrics)`` on the active run; with a ``journal``, recorded there once offline."""
    import mlflow

    if journal is None:
        mlflow.log_metrics(metrics)
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    journal.call("log_batch", mlflow.active_run().info.run_id,
                 metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
