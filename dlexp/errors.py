"""User-facing errors: one clear line, no traceback, a non-zero exit."""


class DlexpError(Exception):
    """A mistake in the user's input (file, config value, override) that dlexp can explain in one line.

    The entrypoint prints ``error: <message>`` and exits with status 2; anything else is a bug and keeps
    its traceback.
    """
