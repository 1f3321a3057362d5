"""Relative paths in settings are read from the folder dlexp was started in, whatever ``hydra.job.chdir`` says.

With ``hydra.job.chdir=True`` Hydra runs each job inside its run folder, so ``dataset.train_path=data/x.txt``
or ``tracking.uri=sqlite:///rel.db`` would be looked for (or created) there: a data file "not found", a store
made inside the run folder while the closing lines name another. Hydra keeps the folder the command started in
as ``hydra.runtime.cwd`` (set when the config is loaded, in the launching process, so jobs of every launcher
carry it); :func:`absolute_paths` makes every path-valued setting absolute against it, as
``hydra.utils.to_absolute_path`` does, before anything reads them.

Which settings are paths: those listed in ``PATH_KEYS`` and ``URI_KEYS``, and any other whose last part is
named like one (``*_path``, ``*_dir``, ``*_file``, ``csv``, ``images``, ``*location``, ``*root``), so a dataset
of one's own with ``data_dir`` or ``labels_file`` is covered too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Path-valued settings of dlexp's own configs (files, folders, zips, caches, artifact folders).
PATH_KEYS = ("dataset.train_path", "dataset.test_path", "dataset.csv", "dataset.images", "dataset.cache_dir",
             "tracking.artifact_location")
#: Settings holding a database URL whose SQLite file may be relative (``sqlite:///rel.db``).
URI_KEYS = ("tracking.uri",)
PATH_NAME = re.compile(r"(^|_)(path|dir|file|csv|images|location|root)$")
SQLITE = "sqlite:///"


def absolute_path(value: str, start: Path) -> str:
    """``value`` against ``start`` if it is a relative filesystem path; URIs (``s3://``, ``file:``) and
    absolute paths stay as they are. ``~`` is the user's home, as in a shell."""
    if "://" in value or value.startswith("file:"):
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() and str(path) == value else os.path.normpath(start / path)


def absolute_uri(uri: str, start: Path) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////START/rel.db``; other URIs (servers, absolute SQLite files,
    ``sqlite://`` in memory) stay as they are."""
    if not uri.startswith(SQLITE) or uri.startswith(SQLITE + "/"):
        return uri
    rest = uri[len(SQLITE):]
    if rest in ("", ":memory:") or rest.startswith("file:"):
        return uri
    return SQLITE + absolute_path(rest, start)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def absolute_paths(cfg: DictConfig, start: str | Path) -> dict[str, str]:
    """Make every relative path-valued setting of ``cfg`` (a job's config) absolute against ``start``, in place;
    returns ``{key: new value}`` of those it changed. ``hydra.*`` is Hydra's own and left alone."""
    start = Path(start)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    changed: dict[str, str] = {}
    for key, value in _leaves(resolved):
        if not isinstance(value, str) or not value.strip():
            continue
        if key in URI_KEYS:
            new = absolute_uri(value, start)
        elif key in PATH_KEYS or PATH_NAME.search(key.rsplit(".", 1)[-1]):
            new = absolute_path(value, start)
        else:
            continue
        if new != value:
            OmegaConf.update(cfg, key, new, merge=False)
            changed[key] = new
    return changed
