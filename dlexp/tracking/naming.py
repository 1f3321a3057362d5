"""Run names a person can tell apart in MLflow's runs table: what differs between runs, not what they share.

MLflow's table shows a run by its name, cut at the column's width, and nests sweep -> job -> fold. So:

- a sweep's job is named by its own value of each swept key, short keys first: ``lr=0.01 hidden_dims=[64,32]``;
- a sweep by what it sweeps and when: ``sweep lr×seed 2026-11-25 15:40``;
- a fold by its number and its job: ``fold 3 of lr=0.01 hidden_dims=[64,32]``;
- a single run by its dataset and its overrides (``spiral lr=0.003``), or the time when it has none.

Where a run is logged (``tracking.*``) and Hydra's own settings are never part of a name. All names come
from here, so the sweep's process, its jobs and the jobs table agree.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

#: Override keys that say where or how a run is logged or shown, not what it trains.
NOT_IN_NAMES = ("tracking.", "hydra.", "hydra/")
#: The tag on a sweep's run and its jobs' runs listing the swept keys (space-separated, in command order).
SWEPT_KEYS_TAG = "dlexp.swept_keys"
MAX_NAME_LENGTH = 250
TIME_FORMAT = "%Y-%m-%d %H:%M"


def split_override(override: str) -> tuple[str, str]:
    """``+optimizer.lr=0.01`` -> ``("optimizer.lr", "0.01")``; Hydra's ``+``, ``++`` and ``~`` prefixes go."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def short_value(value: str) -> str:
    """A value as short as it stays readable: a float to 4 significant digits (Optuna's trials give 15), a
    path by its file name."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None and math.isfinite(number) and not value.lstrip("-").isdigit():
        return f"{number:.4g}"
    if "/" in value and not value.startswith(("[", "{", "'", '"')):
        return value.rstrip("/").rsplit("/", 1)[-1]
    return value


def short_keys(keys: Sequence[str], taken: Collection[str] = ()) -> dict[str, str]:
    """Each dotted key by its last part (``optimizer.lr`` -> ``lr``), unless two keys share that part
    (``dataset.seed`` and ``trainer.seed`` stay whole) or it is ``taken`` (a column of its own)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: part if last.count(part) == 1 and part not in taken else key
            for key, part in zip(keys, last, strict=True)}


def short_overrides(overrides: Iterable[str], keys: Iterable[str] | None = None,
                    taken: Collection[str] = ()) -> dict[str, str]:
    """``{short key: short value}`` of the overrides, in their order; only ``keys`` if given, never the
    logging ones (``tracking.*``). The jobs table's columns of swept values: a short key that is ``taken``
    (the table's own columns, the metrics) stays whole, so a swept ``dataset.name`` never overwrites ``name``."""
    wanted = None if keys is None else set(keys)
    pairs = [split_override(o) for o in overrides]
    pairs = [(k, v) for k, v in pairs
             if not k.startswith(NOT_IN_NAMES) and (wanted is None or k in wanted)]
    names = short_keys([k for k, _ in pairs], taken)
    return {names[k]: short_value(v) for k, v in pairs}


def override_labels(overrides: Iterable[str], keys: Iterable[str] | None = None) -> str:
    """``lr=0.01 hidden_dims=[64,32]``: :func:`short_overrides` as one space-separated label."""
    return " ".join(f"{k}={v}" if v else k for k, v in short_overrides(overrides, keys).items())


def swept_keys(sweep_overrides: Iterable[str], search_space: Iterable[str] = ()) -> list[str]:
    """The keys a sweep varies: command-line overrides with several values (``lr=0.1,0.01``, ``range``,
    ``choice``, ``interval``) and its sweeper's search space (``hydra.sweeper.params``), in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [override.key_or_group for override in OverridesParser.create().parse_overrides(list(sweep_overrides))
            if override.is_sweep_override()]
    keys += [str(key) for key in search_space if str(key) not in keys]
    return [key for key in keys if not key.startswith(NOT_IN_NAMES)]


def job_run_name(overrides: Sequence[str], dataset_name: str, swept: Sequence[str] | None = None,
                 explicit: str | None = None, now: datetime | None = None) -> str:
    """A job's run name: ``explicit`` (``tracking.run_name``) if set; in a sweep (``swept`` keys) its own
    values of the swept keys; else the dataset and the overrides (``spiral lr=0.003``), or the dataset and
    the time when there are none. The experiment's selection (``+experiment=spiral``) says nothing new."""
    if explicit:
        return str(explicit)[:MAX_NAME_LENGTH]
    if swept and (labels := override_labels(overrides, swept)):
        return labels[:MAX_NAME_LENGTH]
    own = [o for o in overrides if split_override(o)[0] != "experiment"]
    labels = override_labels(own) or (now or datetime.now()).strftime(TIME_FORMAT)
    return f"{dataset_name} {labels}"[:MAX_NAME_LENGTH]


def sweep_run_name(swept: Sequence[str], started: datetime | None = None) -> str:
    """``sweep lr×seed 2026-11-25 15:40``: what the sweep varies and when it started."""
    what = "×".join(short_keys(list(swept)).values())
    when = (started or datetime.now()).strftime(TIME_FORMAT)
    return " ".join(part for part in ("sweep", what, when) if part)[:MAX_NAME_LENGTH]


def fold_run_name(job_name: str | None, fold: int) -> str:
    """``fold 3 of lr=0.01 hidden_dims=[64,32]``: a fold named by its job reads alone too (in search results
    and charts, where it is not under its job). The fold comes first: the UI's name column shows about 20
    characters, and under its job a fold's own number is what tells it from its siblings."""
    return f"fold {fold} of {job_name}" if job_name else f"fold {fold}"
