"""The search space in Hydra's own syntax, as Optuna distributions, and a trial's values as overrides.

``interval(a, b)`` is a float range, ``int(interval(a, b))`` an integer one, ``tag(log, ...)`` puts either on
a log scale; ``choice(a, b, ...)`` and ``range(a, b)`` are categorical (``range`` is exclusive of ``b``, as
in Hydra's basic sweeper). Choices that are not plain values (``[64,32]``) are kept as their override text.
A range on the command line replaces the config's ``params`` for the same key; overrides that are not
ranges are fixed for every trial.

Which space is searched (:func:`space_params`): the user's, when ``hydra.sweeper.params`` (e.g. from an
``hparams_search/*.yaml`` config) or the command line gives any range; only otherwise the sweeper's
``ready_params``, without the keys the composed config does not have (the MLP's widths on a ResNet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError

log = logging.getLogger(__name__)
_ABSENT = object()


@dataclass
class SearchSpace:
    """Optuna distributions by key, the overrides every trial shares, and which choices are override text."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    as_text: set[str] = field(default_factory=set)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's command-line overrides: the fixed ones, then one ``key=value`` per searched key."""
        searched = [f"{key}={value if key in self.as_text else Override._get_value_element_as_str(value)}"
                    for key, value in params.items()]
        return [*self.fixed, *searched]


def space_params(params: dict[str, str] | None, ready: dict[str, str] | None, arguments: list[str],
                 config: DictConfig | None) -> tuple[dict[str, str], list[str]]:
    """The ``key: range`` pairs to search besides the command line's, and the ready keys left out.

    ``params`` (the user's) when they or ``arguments`` hold a range: then they are the whole space. Else
    ``ready`` without the keys ``config`` (the composed config) lacks; those are returned as left out.
    """
    if params or any(o.is_sweep_override() for o in _parse(arguments)):
        return dict(params or {}), []
    kept = {k: v for k, v in (ready or {}).items()
            if config is None or OmegaConf.select(config, k, default=_ABSENT) is not _ABSENT}
    return kept, [k for k in (ready or {}) if k not in kept]


def searched_params(config: DictConfig) -> dict[str, str]:
    """The ``key: range`` pairs a sweep's config searches besides its command line (any sweeper's
    ``hydra.sweeper.params``; the search's fitted ready space when the user gives none)."""
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    params, _ = space_params(sweeper.get("params"), sweeper.get("ready_params"),
                             list(config.hydra.overrides.task), config)
    return params


def ready_space_note(left_out: list[str], kept: dict[str, str], config: DictConfig | None) -> str | None:
    """One line on the ready keys a model cannot take, or None when all fit."""
    if not left_out:
        return None
    target = OmegaConf.select(config, "model._target_", default="?") if config is not None else "?"
    return (f"the ready search space cannot search {', '.join(left_out)}: not keys of this config (model "
            f"{target}); searching {', '.join(kept) or 'nothing'}. Give your own space with ranges on the command "
            "line or hydra.sweeper.params (e.g. an hparams_search config)")


def _parse(arguments: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(arguments)
    except HydraException as error:
        raise DlexpError(f"hydra.sweeper.params: {str(error).splitlines()[0]}") from None


def parse_search_space(params: dict[str, str] | None, arguments: list[str]) -> SearchSpace:
    """``params`` (the sweeper config's ``key: range`` pairs) and the command line's overrides."""
    parser = OverridesParser.create()
    texts = [f"{key}={value}" for key, value in (params or {}).items()]
    try:
        from_config = parser.parse_overrides(texts)
        from_command = parser.parse_overrides(arguments)
    except HydraException as error:
        raise DlexpError(f"hydra.sweeper.params: {str(error).splitlines()[0]}") from None
    space = SearchSpace()
    for override in [*from_config, *from_command]:
        key = override.get_key_element()
        if not override.is_sweep_override():
            space.distributions.pop(key, None)  # a fixed value on the command line replaces the config's range
            space.fixed.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
            continue
        space.distributions[key] = distribution(override, space.as_text)
    return space


def distribution(override: Override, as_text: set[str]):
    """The Optuna distribution of one sweep override (``choice``, ``range`` or ``interval``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    if override.is_choice_sweep() or override.is_range_sweep():
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        if not all(isinstance(choice, str | int | float | bool) for choice in choices):
            as_text.add(key)  # lists, dicts or null: Optuna stores their override text
            choices = [Override._get_value_element_as_str(choice) for choice in choices]
        if len(set(map(repr, choices))) < len(choices):
            raise DlexpError(f"{key}: the choices {choices} repeat a value")
        return CategoricalDistribution(choices)
    if override.is_interval_sweep():
        interval = override.value()
        low, high, log = interval.start, interval.end, "log" in interval.tags
        if not low < high or (log and low <= 0):
            raise DlexpError(f"{key}: interval({low}, {high}): expected low < high"
                             + (" and low > 0 on a log scale" if log else ""))
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise DlexpError(f"{override.input_line}: not a search range (choice, range or interval)")
