"""Checks of the composed config before any work starts: one line naming the key, value and what is allowed.

Hydra already rejects overrides of keys that do not exist and unknown config group options. This module
checks the values: types and ranges that would otherwise fail deep inside training, or worse, not fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dlexp.errors import DlexpError
from dlexp.reports.metric_names import SUMMARY_METRICS, unknown_metric


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _positive_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and v > 0), "a number > 0"


def _non_negative_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and v >= 0), "a number >= 0"


def _widths() -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        return isinstance(value, list | ListConfig) and len(value) > 0 and all(
            _is_int(v) and v >= 1 for v in value)
    return ok, "a non-empty list of positive integers, e.g. [64,32]"


#: key -> (check, what is allowed). A key missing from the config is not checked (other groups, other
#: models); a present key must pass.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "trainer.folds": _int_at_least(2),
    "trainer.max_epochs": _int_at_least(1),
    "trainer.batch_size": _int_at_least(1),
    # 0 has two readings (no early stopping; stop at the first epoch without improvement): neither is taken.
    "trainer.patience": ((lambda v: _is_int(v) and v >= 1),
                         "an integer >= 1 (epochs without a lower validation loss before a fold stops), "
                         "or null for no early stopping"),
    "trainer.min_delta": _non_negative_number(),
    "trainer.seed": _int_at_least(0),
    "trainer.num_threads": _int_at_least(0),
    "trainer.stratify": ((lambda v: isinstance(v, bool)), "true or false"),
    "trainer.progress": ((lambda v: isinstance(v, bool)), "true or false"),
    "optimizer.lr": _positive_number(),
    "model.hidden_dims": _widths(),
    "model.channels": _widths(),
    "plots.grid_resolution": _int_at_least(2),
    "tracking.uri": ((lambda v: isinstance(v, str) and "://" in v or str(v).startswith("sqlite:")),
                     "a tracking URI such as sqlite:///ABS/PATH/mlflow.db or http://127.0.0.1:5000"),
    "tracking.experiment_name": ((lambda v: isinstance(v, str) and v.strip() != ""), "a non-empty name"),
    "tracking.best_metric": ((lambda v: v in SUMMARY_METRICS),
                             f"a summary metric, one of {', '.join(SUMMARY_METRICS)}"),
    "tracking.best_metric_mode": ((lambda v: v in ("auto", "max", "min")),
                                  "auto (from the metric's name), max or min"),
}


NULLABLE = {"trainer.num_threads", "trainer.patience"}  # null: torch's default threads; no early stopping
_ABSENT = object()


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`DlexpError` for the first value that is not allowed; check the device exists."""
    for key, (ok, allowed) in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or (value is None and key in NULLABLE):
            continue
        if key == "tracking.best_metric" and (complaint := unknown_metric(key, str(value))) is not None:
            raise DlexpError(complaint)  # names the closest valid metric too
        if not ok(value):
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig | DictConfig) else value
            raise DlexpError(f"{key}={shown!r}: expected {allowed}")
    from dlexp.training.devices import resolve_device

    resolve_device(str(OmegaConf.select(cfg, "trainer.device", default="cpu")))
