"""User-facing errors: one clear line, no traceback, a non-zero exit."""


class DlexpError(Exception):
    """A mistake in the user's input (file, config value, override) that dlexp can explain in one line.

    The entrypoint prints ``error: <message>`` and exits with status 2; anything else is a bug and keeps
    its traceback.
    """


def find_user_error(error: BaseException) -> DlexpError | None:
    """The DlexpError behind ``error``: Hydra's instantiate wraps what a ``_target_`` raises in its own
    InstantiationException (``raise ... from``), which would otherwise hide the one-line message."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DlexpError):
            return seen
        seen = seen.__cause__
    return None
