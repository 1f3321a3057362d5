"""Where a search's Optuna study lives, and how its trials (jobs, maybe on other machines) find it.

The study is kept in its own Optuna storage, never in MLflow's tables: by default the SQLite file
``optuna.db`` beside the project's ``mlflow.db`` (or beside whatever SQLite store ``tracking.uri`` names),
or any database URL in ``hydra.sweeper.storage`` (a team's PostgreSQL/MySQL, for cluster searches). Its
name comes from the sweep's identity (experiment, command-line overrides, search space), so running the
same command again continues the same study.

Jobs learn which trial they are from ``search.json`` in the sweep folder, which every launcher shares
with its jobs (as ``mlflow_sweep.json``): nothing is added to the jobs' configs, so a trial's config hash,
MLflow params and overrides are the ones the same command without a search would have.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from dlexp import PROJECT_ROOT
from dlexp.errors import DlexpError

HANDOFF_FILE = "search.json"
STUDY_FILE = "optuna.db"
INTERRUPTED_ATTR = "dlexp.interrupted"  # user attr of trials that were running when a search was stopped


def default_storage(tracking_uri: str) -> str:
    """``sqlite:///<folder of the SQLite MLflow store>/optuna.db``; the project folder for a server."""
    folder = Path(tracking_uri[len("sqlite:///"):]).parent if tracking_uri.startswith("sqlite:///") else PROJECT_ROOT
    return f"sqlite:///{folder / STUDY_FILE}"


def open_storage(url: str):
    """An Optuna RDB storage for ``url``; SQLite files get write-ahead logging and a 60 s lock wait, as
    parallel trials report into the same file the sweeper writes to."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        database = Path(url[len("sqlite:///"):])
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(database, timeout=60) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as error:
            raise DlexpError(f"hydra.sweeper.storage={url}: cannot open a SQLite file there ({error})") from None
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DlexpError(f"hydra.sweeper.storage={hide_password(url)}: cannot open the study's database "
                         f"({reason})") from None


def hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (for logs and tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show it as given
        return url


def write_handoff(sweep_dir: Path, content: dict[str, Any]) -> None:
    """Replace ``search.json`` atomically: jobs of the previous batch may still be reading it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    temporary = sweep_dir / f".{HANDOFF_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(content, indent=2))
    temporary.replace(sweep_dir / HANDOFF_FILE)


def read_handoff(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / HANDOFF_FILE
    return json.loads(path.read_text()) if path.exists() else None
