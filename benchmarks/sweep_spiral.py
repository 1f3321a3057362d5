"""Whole commands against the course loop's script, side by side: the 6-job and 24-job spiral sweeps (stacked, the
default launcher, and one job at a time), the single command, and progress on a terminal against
trainer.progress=false.

    python benchmarks/sweep_spiral.py --repeats 3                 # sweeps, single command, course script
    python benchmarks/sweep_spiral.py --repeats 3 --no-one-by-one # without the one-job-at-a-time sweeps
    python benchmarks/sweep_spiral.py --repeats 2 --progress      # + batched spiral / bee experiment, progress on/off

Every command runs in its own process, alternating within each repeat so machine load hits them alike;
medians. The dlexp commands log into one throw-away store (created by a warm-up run, as for any user's
second run) with ``tracking.resume=false``, so every sweep runs all its jobs. "Progress on" runs on a
pseudo-terminal (a tqdm bar is drawn), "off" with ``trainer.progress=false``; their training seconds come
from the runs' summary.json. Besides wall time, each command's CPU seconds (user + system, its child processes
included) and peak memory (the largest resident set of the command or any of its processes) are reported, from
``os.wait4``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["-m", "+experiment=spiral", "optimizer.lr=0.03,0.01,0.003", "trainer.seed=1,2"]
SWEEP_24 = ["-m", "+experiment=spiral", "optimizer.lr=0.03,0.01,0.003", "optimizer.weight_decay=0,1e-5,1e-4,1e-3",
            "trainer.seed=1,2"]
ONE_BY_ONE = "hydra.launcher.stack=false"  # the stacked launcher as Hydra's basic one: each job by itself
INSECTS = ROOT.parent / "shared" / "seed-data" / "insects"


#: the last command's CPU seconds (user + system, with its reaped child processes) and peak resident set (MiB)
USAGE = {"cpu": 0.0, "peak_mib": 0.0}


def run(command: list[str], on_terminal: bool = False, cwd: Path = ROOT) -> float:
    """Wall seconds of ``command`` run to its end in ``cwd`` (on a pseudo-terminal when asked); its CPU time and
    peak memory go to :data:`USAGE`."""
    started = time.perf_counter()
    if not on_terminal:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"{command} failed ({process.returncode})")
        USAGE.update(cpu=usage.ru_utime + usage.ru_stime, peak_mib=usage.ru_maxrss / 1024)
        return time.perf_counter() - started
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    while select.select([leader], [], [], 600)[0]:
        try:
            if not os.read(leader, 65536):
                break
        except OSError:
            break
    os.close(leader)
    if process.wait():
        raise RuntimeError(f"{command} failed")
    return time.perf_counter() - started


def dlexp(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dlexp", *args, f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            f"tracking.artifact_location={store / 'artifacts'}", "tracking.resume=false"]


def last_train_seconds(folder: Path) -> float:
    return json.loads(max(folder.glob("*/summary.json"), key=os.path.getmtime).read_text())["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--progress", action="store_true", help="time progress on against off")
    parser.add_argument("--no-one-by-one", action="store_true", help="leave out the sweeps one job at a time")
    parser.add_argument("--no-24", action="store_true", help="leave out the 24-job sweeps")
    parser.add_argument("--baseline", type=Path, help="another dlexp checkout (e.g. before a change): its sweep "
                        "and single command run alongside")
    args = parser.parse_args()
    course = [sys.executable, str(ROOT / "benchmarks" / "kfold_spiral.py"), "--worker", "course", "--data",
              str(ROOT / "data")]
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    peak: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        store = Path(tmp)
        runs = store / "runs"
        run(dlexp(store, "+experiment=spiral", "trainer.max_epochs=2", f"hydra.run.dir={runs / 'warm'}"))
        commands = {
            "course loop script": (course, False, ROOT),
            "single command": (dlexp(store, "+experiment=spiral", f"hydra.run.dir={runs / '${now:%H-%M-%S-%f}'}"),
                               False, ROOT),
        }
        sweeps = {"6-job sweep": SWEEP} if args.no_24 else {"6-job sweep": SWEEP, "24-job sweep": SWEEP_24}
        for name, sweep in sweeps.items():
            folder = f"hydra.sweep.dir={store / 'sweeps' / '${now:%H-%M-%S-%f}'}"
            commands[name] = (dlexp(store, *sweep, folder), False, ROOT)
            if not args.no_one_by_one:
                commands[f"{name}, one job at a time"] = (dlexp(store, *sweep, ONE_BY_ONE, folder), False, ROOT)
        if args.baseline:
            for name in ("6-job sweep", "single command"):
                commands[f"{name} ({args.baseline})"] = (commands[name][0], False, args.baseline.resolve())
        if args.progress:
            for state, terminal in (("on (terminal)", True), ("off", False)):
                commands[f"spiral, progress {state}"] = (dlexp(
                    store, "+experiment=spiral", f"trainer.progress={str(terminal).lower()}",
                    f"hydra.run.dir={store / ('spiral_' + state[:2].strip()) / '${now:%H-%M-%S-%f}'}"), terminal, ROOT)
            if (INSECTS / "Insects.csv").is_file():
                for state, terminal in (("on (terminal)", True), ("off", False)):
                    commands[f"bee experiment, progress {state}"] = (dlexp(
                        store, "+experiment=insects", f"dataset.csv={INSECTS / 'Insects.csv'}",
                        f"trainer.progress={str(terminal).lower()}",
                        f"hydra.run.dir={store / ('bee_' + state[:2].strip()) / '${now:%H-%M-%S-%f}'}"), terminal,
                        ROOT)
        for repeat in range(args.repeats):
            for name, (command, terminal, cwd) in commands.items():
                rows.setdefault(name, []).append(run(command, terminal, cwd))
                if not terminal:
                    cpu.setdefault(name, []).append(USAGE["cpu"])
                    peak.setdefault(name, []).append(USAGE["peak_mib"])
                print(f"  {name}: {rows[name][-1]:.2f} s, CPU {USAGE['cpu']:.1f} s, peak {USAGE['peak_mib']:.0f} MiB "
                      f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
                if "progress" in name:
                    folder = store / (("bee_" if "bee" in name else "spiral_") + ("on" if terminal else "of"))
                    rows.setdefault(name + ", training s", []).append(last_train_seconds(folder))
            print(f"repeat {repeat + 1}/{args.repeats} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    course_s = statistics.median(rows["course loop script"])
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end, {args.repeats} repeats, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    single_peak = statistics.median(peak["single command"])
    print("| command | wall s (median) | vs course script | CPU s (median) | peak MiB (median) | vs single command "
          "| all runs (wall s) |\n|---|---|---|---|---|---|---|")
    for name, values in rows.items():
        ratio = "" if "training s" in name else f"{statistics.median(values) / course_s:.2f}"
        cpu_s = f"{statistics.median(cpu[name]):.1f}" if name in cpu else ""
        peak_mib = f"{statistics.median(peak[name]):.0f}" if name in peak else ""
        vs_single = f"{statistics.median(peak[name]) / single_peak:.2f}" if name in peak else ""
        print(f"| {name} | {statistics.median(values):.2f} | {ratio} | {cpu_s} | {peak_mib} | {vs_single} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
