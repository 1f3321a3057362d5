"""``python -m dlexp.sync RUN_FOLDER``: send the MLflow writes a tracking server missed (dlexp.tracking.sync)."""

import sys

from dlexp.tracking.sync import main


def cli(prog: str = "python -m dlexp.sync") -> None:
    """``dlexp sync ...`` (see dlexp.__main__.SUBCOMMANDS) and ``python -m dlexp.sync ...``."""
    sys.exit(main(prog=prog))


if __name__ == "__main__":
    cli()
