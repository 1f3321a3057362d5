"""User-facing errors: one clear line, no traceback, a non-zero exit."""


class DlexpError(Exception):
    """A mistake in the user's input (file, config value, override) that dlexp can explain in one line.

    The entrypoint prints ``error: <message>`` and exits with status 2; anything else is a bug and keeps
    its traceback.
    """


def user_error(error: BaseException) -> DlexpError | None:
    """The :class:`DlexpError` behind ``error``, if any.

    Hydra's ``instantiate`` wraps what a configured class raises (e.g. a model rejecting its input shape)
    in its own exception; the user's one-line message is its cause.
    """
    while error is not None and not isinstance(error, DlexpError):
        error = error.__cause__
    return error
