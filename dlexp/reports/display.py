"""Showing a run's pictures and log lines where the user is: inline in Jupyter, else their paths.

A notebook's kernel shows nothing of the ``dlexp`` logger (Python's root logger has no handler there and
drops INFO), so ``visible_logs`` gives it handlers of its own for the length of an API call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dlexp.notebook import in_notebook

#: Hydra's default job log format (hydra/job_logging/default), so lines read as the command's do.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def show_pictures(paths: Sequence[Path], width: int | None = None, dpi: int = 100) -> None:
    """Display PNGs inline in Jupyter, each ``width`` pixels wide (default: its own size); elsewhere print
    their paths (a script's matplotlib is headless: dlexp.reports.plots draws with Agg).

    Each picture is one matplotlib figure exactly its size, which the notebook's inline backend shows; not
    ``IPython.display.Image``, so that dlexp does not need IPython installed to run.
    """
    if not in_notebook():
        print("pictures (shown inline in Jupyter):", *map(str, paths), sep="\n  ")
        return
    import matplotlib.image
    import matplotlib.pyplot as plt

    for path in paths:
        image = matplotlib.image.imread(str(path))
        height, own_width = image.shape[:2]
        scale = (width or own_width) / own_width
        figure = plt.figure(figsize=(own_width * scale / dpi, height * scale / dpi), dpi=dpi)
        axes = figure.add_axes((0, 0, 1, 1))
        axes.imshow(image, interpolation="antialiased")
        axes.set_axis_off()
        plt.show()


@contextmanager
def visible_logs(level: int | str | None, log_file: Path | None = None) -> Iterator[None]:
    """While inside: the ``dlexp`` logger's lines from ``level`` up go to ``sys.stdout`` (and to
    ``log_file`` when given; its folder must exist by the first line), and not on to the root logger (no
    doubled lines where it has handlers). ``level=None`` leaves logging as it is. The logger's level,
    handlers and propagation are restored on the way out."""
    if level is None:
        yield
        return
    logger = logging.getLogger("dlexp")
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:  # opened at the first line, so a run stopped by a config mistake leaves no folder
        handlers.append(logging.FileHandler(log_file, delay=True))
    saved = logger.level, logger.propagate
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
