"""A sweep started from Python: ``python -m dlexp -m OVERRIDES`` in a child process, its output passed on.

Why a child process and not Hydra's multirun in this one: a multirun configures the process's logging
from hydra/job_logging (the root logger of a notebook's kernel), its sweep callback takes over SIGTERM and
registers exit handlers, and it ends a failed sweep with ``sys.exit(2)``; none of that belongs in a
notebook's kernel, while a child runs exactly what the ``dlexp`` command runs (same launchers, sweepers,
resume and jobs table). The cost is the child's start-up (importing torch, MLflow and Hydra), once per
sweep, not per job: measured in benchmarks/README.md ("Sweeps from Python").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dlexp
from dlexp.errors import DlexpError
from dlexp.sweeps.sweep import SWEEP_FILE

JOBS_CSV = "sweep_jobs.csv"
STOP_SECONDS = 60.0  # after Ctrl-C: how long the child may take to end its runs KILLED


@dataclass
class SweepProcess:
    """What the child left: its exit status, every line it printed, and the sweep folder."""

    returncode: int
    lines: list[str]
    sweep_dir: Path

    @property
    def errors(self) -> list[str]:
        """The ``error: ...`` lines (dlexp's one-line reports of a user mistake)."""
        return [line.strip() for line in self.lines if line.lstrip().startswith(("error:", "[job"))
                and "error:" in line]


def default_sweep_dir(now: float | None = None) -> Path:
    """``outputs/multirun/<date>/<time>`` under the current folder, as conf/config.yaml's hydra.sweep.dir."""
    return Path.cwd() / "outputs" / "multirun" / time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(now))


def sweep_command(overrides: list[str], sweep_dir: Path) -> list[str]:
    """The command line: this Python, ``-m dlexp -m``, the overrides and ``hydra.sweep.dir``."""
    return [sys.executable, "-m", "dlexp", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]


def child_environment() -> dict[str, str]:
    """This environment, with this dlexp first on the child's path (the child imports the same code even
    where ``python -m dlexp`` would find another copy) and unbuffered output (lines arrive as printed)."""
    package_parent = str(Path(dlexp.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1"}


def run_sweep_process(overrides: list[str], sweep_dir: Path, echo: bool = True) -> SweepProcess:
    """Run the sweep to its end, printing its output lines to ``sys.stdout`` as they come when ``echo``.

    Ctrl-C (a notebook's interrupt button) is passed on to the child as SIGINT, which ends the sweep's
    runs KILLED like Ctrl-C in a terminal; the KeyboardInterrupt is then raised here.
    """
    process = subprocess.Popen(sweep_command(overrides, sweep_dir), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env=child_environment())
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            remaining, _ = process.communicate(timeout=STOP_SECONDS)
            if echo and remaining:
                print(remaining, end="", flush=True)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return SweepProcess(process.returncode, lines, sweep_dir)


def sweep_run_id(sweep_dir: Path) -> str | None:
    """The sweep's MLflow run id (written by dlexp.sweeps.sweep.SweepRun before any job starts), or None."""
    try:
        return json.loads((sweep_dir / SWEEP_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def check_finished(process: SweepProcess) -> None:
    """Raise unless the sweep got as far as its jobs table (``sweep_jobs.csv``): DlexpError with its
    ``error:`` lines for a user mistake (exit 2), RuntimeError with its last lines otherwise.

    A sweep whose jobs table exists has run; failed jobs show in the table (``status``, ``error``).
    """
    if process.returncode == 0 or (process.returncode == 2 and (process.sweep_dir / JOBS_CSV).is_file()):
        return
    if process.returncode == 2 and process.errors:
        raise DlexpError("; ".join(line.removeprefix("error: ") for line in process.errors))
    tail = "".join(process.lines[-20:])
    raise RuntimeError(f"the sweep in {process.sweep_dir} ended with exit status {process.returncode}; "
                       f"its last lines:\n{tail}")
