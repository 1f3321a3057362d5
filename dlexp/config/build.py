"""Building objects from config nodes, with user mistakes turned into one-line errors."""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig


def importable_cwd() -> None:
    """Put the folder dlexp runs in on ``sys.path``, so a ``_target_`` such as ``mynet.TinyNet`` finds the
    user's ``mynet.py`` there: ``python -m dlexp`` does this itself, the ``dlexp`` console script (whose
    ``sys.path[0]`` is its bin/ folder) and a launcher's worker processes do not. Appended, not prepended, so
    a file in that folder never shadows an installed package. Jobs keep the launch folder (hydra.job.chdir:
    false), so it is the user's folder.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def target_not_found(key: str, target: str) -> str:
    """Why ``target`` (``module.name``) cannot be found, in one line: the module, or the name in it."""
    import importlib

    module, _, name = target.rpartition(".")
    try:
        found = importlib.import_module(module) if module else None
    except ImportError as error:
        return (f"{key}: cannot import {target} ({type(error).__name__}: {error}); expected "
                f"{module.replace('.', '/')}.py in the folder dlexp runs in ({os.getcwd()}) or its folder on "
                "PYTHONPATH")
    except Exception as error:  # noqa: BLE001 - the user's module fails as it is imported (a SyntaxError, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{key}: importing {module} for {target} failed: {type(error).__name__}: {first}"
    if found is None:
        return f"{key}: _target_={target!r}: expected module.name, e.g. mynet.TinyNet"
    return f"{key}: {module} ({getattr(found, '__file__', '?')}) has no {name!r}; expected the class or function " \
           "the _target_ names"


def build(key: str, node: DictConfig, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, ...)``; a failure names the config key instead of a traceback.

    A :class:`DlexpError` raised by the target (bad file, bad value) comes through unchanged; any other
    failure to build (unknown argument, wrong type) becomes a DlexpError naming ``key`` and the target.
    """
    from dlexp.errors import DlexpError

    importable_cwd()
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DlexpError):
            raise cause from None
        reason = str(cause or error).strip().splitlines()[0] if str(cause or error).strip() else repr(cause)
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        if isinstance(cause, ImportError) and str(cause).startswith("Error loading"):  # Hydra's _locate
            raise DlexpError(target_not_found(key, str(target))) from None
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
