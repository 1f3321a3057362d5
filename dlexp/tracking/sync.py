"""Send a run folder's MLflow writes that the server did not take (dlexp.tracking.offline) once it is back.

``python -m dlexp.sync FOLDER [FOLDER ...] [--uri URI]`` replays each ``mlflow_pending.jsonl`` under the
folders (a run folder, or a sweep folder with a job folder each) in order, against the server the run logged
to (or ``--uri``). Nothing is sent twice: a metric value the run already holds at that step, a param it
already has, are left out (a write may have reached the server just before it stopped answering), and the
progress is kept beside the file, so an interrupted sync continues where it stopped. Runs created while the
server was away get created once, and the file's later writes go to them. When every write is in, the file
is renamed ``mlflow_pending.jsonl.sent``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dlexp.errors import DlexpError
from dlexp.tracking.offline import DEFAULT_TIMEOUT, PENDING_FILE, PLACEHOLDER, bound_store_calls, decode

log = logging.getLogger(__name__)

PROGRESS_SUFFIX = ".progress.json"  # beside the journal: writes sent so far and the ids of runs created


def substitute(value, ids: dict[str, str]):
    """``value`` with every placeholder run id replaced by the run the sync created for it."""
    if isinstance(value, str) and value.startswith(PLACEHOLDER):
        if value not in ids:
            raise DlexpError(f"a write refers to run {value}, which this journal never creates")
        return ids[value]
    if isinstance(value, list):
        return [substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, ids) for k, v in value.items()}
    return value


class Replayer:
    """Sends one journal's writes with ``client``, leaving out what the store already holds."""

    def __init__(self, client) -> None:
        self.client = client
        self.history: dict[tuple[str, str], set[tuple[int, float]]] = {}

    def logged(self, run_id: str, key: str) -> set[tuple[int, float]]:
        if (run_id, key) not in self.history:
            self.history[run_id, key] = {(m.step, m.value) for m in self.client.get_metric_history(run_id, key)}
        return self.history[run_id, key]

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), **kwargs) -> None:
        new_metrics = [m for m in metrics if (m.step, m.value) not in self.logged(run_id, m.key)]
        have = self.client.get_run(run_id).data.params if params else {}
        new_params = [p for p in params if have.get(p.key) != p.value]
        if new_metrics or new_params or tags:
            self.client.log_batch(run_id, metrics=new_metrics, params=new_params, tags=list(tags))
        for m in new_metrics:
            self.logged(run_id, m.key).add((m.step, m.value))

    def delete_tag(self, run_id: str, key: str) -> None:
        from dlexp.tracking.store import delete_tag_if_present

        delete_tag_if_present(self.client, run_id, key)

    def call(self, method: str, args: list, kwargs: dict):
        own = getattr(self, method, None) if method in ("log_batch", "delete_tag") else None
        return (own or getattr(self.client, method))(*args, **kwargs)


def sync_journal(path: Path, uri: str | None = None) -> int:
    """Send ``path``'s writes; returns how many were sent now. Raises DlexpError if the server is away."""
    from mlflow.tracking import MlflowClient

    from dlexp.tracking.store import check_server

    lines = path.read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    uri = uri or header["tracking_uri"]
    check_server(uri)
    progress_file = path.with_name(path.name + PROGRESS_SUFFIX)
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {"sent": 0, "ids": {}}
    replayer = Replayer(MlflowClient(uri))
    sent = 0
    for index in range(progress["sent"], len(records)):
        record = records[index]
        args = substitute(decode(record["args"]), progress["ids"])
        kwargs = substitute(decode(record["kwargs"]), progress["ids"])
        result = replayer.call(record["method"], args, kwargs)
        if record["method"] == "create_run":
            progress["ids"][record["placeholder"]] = result.info.run_id
        progress["sent"] = index + 1
        progress_file.write_text(json.dumps(progress))
        sent += 1
    path.rename(path.with_name(path.name + ".sent"))
    progress_file.unlink(missing_ok=True)
    return sent


def journals(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        if not folder.is_dir():
            raise DlexpError(f"{folder}: no such run folder")
        found += sorted(folder.rglob(PENDING_FILE))
    return found


def main(argv: list[str] | None = None, prog: str = "python -m dlexp.sync") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders (or sweep folders) to send")
    parser.add_argument("--uri", help="the tracking server to send to (default: the one the run logged to)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds one store call may take, retries included (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bound_store_calls(args.timeout)
    try:
        found = journals(args.folders)
        if not found:
            print(f"nothing to send: no {PENDING_FILE} under {', '.join(map(str, args.folders))}")
            return 0
        for path in found:
            count = sync_journal(path, args.uri)
            print(f"{path.parent}: {count} MLflow writes sent")
    except DlexpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
