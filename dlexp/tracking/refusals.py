"""MLflow's refusals while a run is set up, as one line that says what to do.

Setting up a run (opening the store, finding or creating the experiment, starting the run) fails for
reasons that are the user's to fix, not bugs: the experiment was deleted in the UI, the artifact folder
cannot be written, the store was made by another MLflow version, the store's file or folder is read-only.
MLflow raises them as ``MlflowException`` (or SQLAlchemy's and the OS's errors) deep in its own stack;
:func:`refusal` turns each into a :class:`~dlexp.errors.DlexpError` naming the setting to change, so the
single-run path (``python -m dlexp``) and the sweep path (``-m``) both end with ``error: ...`` and exit 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from dlexp.errors import DlexpError


def deleted_experiment(uri: str, name: str, experiment_id: str) -> DlexpError:
    """An experiment deleted in MLflow (UI's Delete, ``delete_experiment``) keeps its name until it is purged,
    so neither it nor a new one of that name can take runs."""
    return DlexpError(
        f"tracking.experiment_name={name}: that experiment (id {experiment_id}) is deleted in {uri}; restore it "
        f"(MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment_id}) or choose "
        "another tracking.experiment_name")


def check_artifact_folder(location: str | None, setting: str) -> None:
    """Raise :class:`DlexpError` when a local artifact location (a path or ``file:`` URI) cannot be written.

    ``setting`` names where the location comes from (``tracking.artifact_location=...`` or the experiment's
    own). The folder is created if missing (MLflow would create it at the first artifact, after training
    has begun). Other schemes (``mlflow-artifacts:``, ``s3://``) are the server's or the cloud's to check.
    """
    if not location:
        return
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(unquote(parsed.path) if parsed.scheme == "file" else location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DlexpError(f"{setting}: cannot create the artifact folder {folder} ({error.strerror}); choose a "
                         "folder you can write (tracking.artifact_location, or another "
                         "tracking.experiment_name for an experiment made elsewhere)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DlexpError(f"{setting}: the artifact folder {folder} is not writable (permission denied); make it "
                         "writable or choose another folder (tracking.artifact_location, or another "
                         "tracking.experiment_name for an experiment made elsewhere)")


def check_store_writable(uri: str, database: Path) -> None:
    """A SQLite store (and its folder: SQLite writes its journal beside it) must be writable."""
    for path, what in ((database, "store file"), (database.parent, "store's folder")):
        if path.exists() and not os.access(path, os.W_OK):
            raise DlexpError(f"tracking.uri={uri}: the {what} {path} is not writable (permission denied); make "
                             "it writable or choose another tracking.uri")


_SCHEMA = re.compile(r"found version (\S+?),? but expected (\S+?)\.")


def schema_advice(uri: str, message: str) -> str | None:
    """What to do about a store whose schema is not this MLflow's: upgrade an older one, or use the newer
    MLflow that made it (``mlflow db upgrade`` cannot go back). None when ``message`` is not about that."""
    if "database schema" not in message:
        return None
    match = _SCHEMA.search(message)
    found = match.group(1) if match else "?"
    import mlflow

    if schema_is_known(found):
        return (f"tracking.uri={uri}: the store was made by an older MLflow (schema {found}); back it up, then "
                f"run `mlflow db upgrade {uri}`, or choose another tracking.uri")
    return (f"tracking.uri={uri}: the store was made by a newer MLflow than this one ({mlflow.__version__}; "
            f"schema {found} is unknown to it); use that MLflow version, or choose another tracking.uri")


def schema_is_known(revision: str) -> bool:
    """Whether this MLflow's migrations include ``revision`` (then the store is older, not newer)."""
    try:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 (alembic's "no such revision" has several types across versions)
        return False


def refusal(uri: str, experiment_name: str, error: BaseException) -> DlexpError:
    """The one-line error for what MLflow (or the database under it) refused while setting up a run."""
    text = " ".join(str(error).split())
    if (advice := schema_advice(uri, text)) is not None:
        return DlexpError(advice)
    if "readonly database" in text or "read-only" in text or "Permission denied" in text:
        return DlexpError(f"tracking.uri={uri}: the store is not writable ({text[:300]}); make it writable or "
                          "choose another tracking.uri")
    deleted = re.search(r"deleted experiment", text)
    if deleted:
        return DlexpError(f"tracking.experiment_name={experiment_name}: that experiment is deleted in {uri}; "
                          "restore it (mlflow experiments restore) or choose another tracking.experiment_name")
    return DlexpError(f"tracking.uri={uri}: MLflow refused to set up a run in experiment '{experiment_name}' "
                      f"({type(error).__name__}: {text[:300]}); check the store, or choose another tracking.uri "
                      "or tracking.experiment_name")
