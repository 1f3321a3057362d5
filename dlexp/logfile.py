"""The last line of a run that ends early (``error: ...``, ``interrupted: ...``), on the terminal and in its log.

Hydra's job logging (hydra/job_logging, default: a console handler on stdout and a file handler writing
``<run folder>/dlexp.log``, both on the root logger) would print an ``ERROR`` record on the terminal too,
with a timestamp, on stdout. The terminal keeps its one plain line on stderr, and the record goes to the file
handlers only, so a log read later (a SLURM job's, a sweep job's) says why the run ended, without the
terminal showing it twice.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("dlexp")


def file_handlers(logger: logging.Logger) -> list[logging.FileHandler]:
    """The file handlers a record of ``logger`` reaches (its own and its ancestors' while they propagate)."""
    found: list[logging.FileHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += [h for h in current.handlers if isinstance(h, logging.FileHandler) and h not in found]
        current = current.parent if current.propagate else None
    return found


def report_end(line: str, level: int = logging.ERROR) -> None:
    """Print ``line`` on stderr and write it, as a ``level`` record of the ``dlexp`` logger (the log's own
    format, e.g. ``[time][dlexp][ERROR] - error: ...``), to every log file that logger writes to."""
    print(line, file=sys.stderr)
    if not log.isEnabledFor(level):
        return
    record = log.makeRecord(log.name, level, __file__, 0, line, None, None)
    for handler in file_handlers(log):
        if record.levelno >= handler.level:
            handler.handle(record)
