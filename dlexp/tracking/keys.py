"""User text as MLflow keys: class names in ``test_acc_class.<name>`` metrics, config keys as params.

MLflow (mlflow/utils/validation.py) takes a metric or param key only if it has letters, digits, ``_ - . space
/`` (and ``:`` except on Windows), does not read as another path once normalised (``a/``, ``a//b``, ``./a``,
``..``) and has at most 250 characters; anything else fails at the ``log_*`` call, which for per-class metrics
came after training. :func:`mlflow_keys` maps every name to a key MLflow accepts, computed (and checked with
MLflow's own validation) before training starts:

- a name MLflow accepts is its own key;
- another is sanitised: each character MLflow refuses becomes ``_``, and ``/`` too where it would make a path
  MLflow refuses (``Halictus sp./`` -> ``Halictus sp._``); ``:`` goes as well, so a key works on any server;
- two names never share a key: a sanitised name whose key is taken (``a/b`` beside ``a_b``) or one cut to fit
  the length limit gets ``-`` and six hex digits of its SHA-1 (``a_b-3c2d1e``), the same in every run.

The originals stay visible: :func:`renamed` lists the keys that differ from their names, which the run logs
as a table (``mlflow_keys.json``: key -> name).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, path_not_unique, validate_param_and_metric_name

from dlexp.errors import DlexpError

#: Characters every MLflow store takes in a key on every platform (Windows servers refuse ``:``).
_REFUSED = re.compile(r"[^\w.\- /]")
KEYS_ARTIFACT = "mlflow_keys.json"


def is_valid_key(key: str) -> bool:
    """What MLflow's ``_validate_metric_name`` / ``_validate_param_name`` accept, plus its length limit."""
    return (bool(key) and bool(validate_param_and_metric_name(key)) and _REFUSED.search(key) is None
            and not path_not_unique(key) and len(key) <= MAX_ENTITY_KEY_LENGTH)


def sanitise(key: str) -> str:
    """``key`` with every character MLflow refuses as ``_``; ``/`` too where the key would read as a path."""
    key = _REFUSED.sub("_", key)
    if path_not_unique(key):
        key = key.replace("/", "_")
    if path_not_unique(key):  # "." or ".." alone
        key = key.replace(".", "_")
    return key or "_"


def _tag(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:6]


def mlflow_keys(names: Iterable[str], prefix: str = "") -> dict[str, str]:
    """``{name: prefix + key}`` with every key valid for MLflow and no two names sharing one.

    ``names`` are the user's texts (class names, config keys); ``prefix`` is dlexp's own part
    (``test_acc_class.``). Raises :class:`DlexpError` only if the prefix itself leaves no room for a key.
    """
    names = list(dict.fromkeys(str(name) for name in names))
    room = MAX_ENTITY_KEY_LENGTH - len(prefix)
    if room < 8:
        raise DlexpError(f"MLflow key prefix {prefix!r} is too long for MLflow's {MAX_ENTITY_KEY_LENGTH}-character "
                         "keys")
    keys: dict[str, str] = {}
    changed: dict[str, bool] = {}
    for name in names:
        key = prefix + name
        if is_valid_key(key):
            keys[name], changed[name] = key, False
        else:
            keys[name], changed[name] = prefix + sanitise(name)[:room], True
    counts: dict[str, int] = {}
    for key in keys.values():
        counts[key] = counts.get(key, 0) + 1
    taken = {key for name, key in keys.items() if not changed[name]}
    for name in names:
        if changed[name] and (counts[keys[name]] > 1 or keys[name] in taken or len(sanitise(name)) > room):
            keys[name] = f"{keys[name][:MAX_ENTITY_KEY_LENGTH - 7]}-{_tag(name)}"
    for name, key in keys.items():  # MLflow's own check, before any run logs them
        if not is_valid_key(key) or list(keys.values()).count(key) > 1:
            raise DlexpError(f"{name!r}: no MLflow key could be made for it (tried {key!r})")
    return keys


def run_keys(params: dict[str, str], class_names: Iterable[str],
             class_prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """A run's params under valid keys, and the table ``{key: original}`` of every param key and per-class metric
    key (``class_prefix`` + class name) that is not its original text; called before the run starts."""
    param_keys = mlflow_keys(params)
    class_keys = mlflow_keys(class_names, class_prefix)
    table = {**renamed(param_keys), **renamed(class_keys, class_prefix)}
    return {param_keys[name]: value for name, value in params.items()}, table


def renamed(keys: dict[str, str], prefix: str = "") -> dict[str, str]:
    """``{key: name}`` of the names whose key is not ``prefix + name`` (what the run's key table lists)."""
    return {key: name for name, key in keys.items() if key != prefix + name}
