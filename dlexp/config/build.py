"""Building objects from config nodes, with user mistakes turned into one-line errors."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig


def build(key: str, node: DictConfig, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, ...)``; a failure names the config key instead of a traceback.

    A :class:`DlexpError` raised by the target (bad file, bad value) comes through unchanged; any other
    failure to build (unknown argument, wrong type) becomes a DlexpError naming ``key`` and the target.
    """
    from dlexp.errors import DlexpError

    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DlexpError):
            raise cause from None
        reason = str(cause or error).strip().splitlines()[0] if str(cause or error).strip() else repr(cause)
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        raise DlexpError(f"{key}: cannot build {target}: {reason}") from None


def build_partial(key: str, node: DictConfig, *args: Any) -> Any:
    """Build a ``_partial_: true`` node and call it with ``args`` (an optimizer with the parameters, a
    scheduler with the optimizer); a bad argument or value in the config is a DlexpError naming ``key``."""
    from dlexp.errors import DlexpError

    factory = build(key, node)
    try:
        return factory(*args)
    except (TypeError, ValueError) as error:
        raise DlexpError(f"{key}: cannot build {node.get('_target_', '?')}: {error}") from None
