"""What logging a run's MLflow models (issue 21) costs the single spiral command, and what each model costs.

Part 1, whole commands: ``python -m dlexp +experiment=spiral trainer.progress=false`` with
``tracking.log_models=false`` against the default (models logged), alternating (off, on, on, off, ...) so
machine load hits both alike; each run is a fresh process with a fresh SQLite store in a temporary folder.
Per run: wall seconds, CPU seconds (user + sys of the whole process tree: ``getrusage(RUSAGE_CHILDREN)``
around each child, which counts the helper process too, since the command waits for it), the tail (the
last fold's log line to the closing lines, from the run's log) and the training seconds the run reports;
then the medians and the load average (1 min) before and after each run.

Part 2, ``--per-model K`` (in this process, no training): the spiral's two models (``model``, an MLP
2-64-32-5, and the 5 folds' ``ensemble``) logged K times onto one run of a fresh SQLite store, as a
sweep's jobs in one process log theirs; the process is set up as the training process is when it logs them
(torch, MLflow, an optimizer created, which imports ``torch._dynamo``); CPU and wall seconds of the first
logging (the rest of torch.export's machinery, MLflow's model modules) and the median of the later ones.

    python benchmarks/model_logging.py --repeats 4
    python benchmarks/model_logging.py --repeats 0 --per-model 6     # part 2 only
    git archive <commit> | tar -x -C /tmp/base                        # an earlier version as a third variant:
    python benchmarks/model_logging.py --repeats 4 --before /tmp/base
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dlexp, in this process and (PYTHONPATH) in the commands
COMMAND = ["-m", "dlexp", "+experiment=spiral", "trainer.progress=false"]
VARIANTS = {"off": ["tracking.log_models=false"], "on": []}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
FOLD_LINE = re.compile(r"\]\[dlexp\.experiment\]\[INFO\] - fold \d+/\d+:")
CLOSING_LINE = "results of this run"
TRAINING = re.compile(r"^training time: ([\d.]+) s", re.MULTILINE)


def children_cpu() -> float:
    """User + sys seconds of every waited-for child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stamp(line: str) -> datetime | None:
    match = STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def tail_seconds(log: str) -> float | None:
    """Seconds from the last fold's line to the closing lines, or None if the log lacks either."""
    last_fold = closing = None
    for line in log.splitlines():
        if FOLD_LINE.search(line):
            last_fold = stamp(line)
        elif CLOSING_LINE in line and stamp(line):
            closing = stamp(line)
    if last_fold is None or closing is None:
        return None
    return (closing - last_fold).total_seconds()


def run_once(folder: Path, variant: str, root: Path = ROOT) -> dict:
    """One spiral command of the checkout ``root`` in ``folder`` (its store, run folder and artifacts); its
    figures."""
    command = [sys.executable, *COMMAND, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
               f"hydra.run.dir={folder / 'run'}", *VARIANTS.get(variant, [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    log = done.stdout + done.stderr
    models, expected = len(list(folder.rglob("MLmodel"))), 0 if variant == "off" else 2  # model, ensemble
    if models != expected:
        sys.exit(f"error: the {variant} run in {folder} logged {models} MLflow models, expected {expected}")
    training = TRAINING.search(log)
    return {"variant": variant, "wall": wall, "cpu": cpu, "tail": tail_seconds(log),
            "training": float(training.group(1)) if training else None,
            "load": (load_before, os.getloadavg()[0])}


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def commands(repeats: int, out: Path, before: Path | None = None) -> None:
    """Part 1; with ``before`` (another checkout), its command with models logged is a third variant."""
    runs = []
    variants = [*VARIANTS, *(["before"] if before else [])]
    for repeat in range(repeats):
        order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]  # each first in turn
        for variant in order:
            result = run_once(out / f"{repeat}-{variant}", variant, before if variant == "before" else ROOT)
            runs.append(result)
            print(f"repeat {repeat + 1} {variant:6}: wall {result['wall']:.1f} s, CPU {result['cpu']:.1f} s, "
                  f"tail {fmt(result['tail'])} s, training {fmt(result['training'])} s, "
                  f"load {result['load'][0]:.1f} -> {result['load'][1]:.1f}", flush=True)
    print(f"\nmedians of {repeats} (seconds):\n\n| variant | wall | CPU | tail | training | load (1 min) |\n"
          "|---|---|---|---|---|---|")
    medians = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        medians[variant] = {key: median([r[key] for r in mine]) for key in ("wall", "cpu", "tail", "training")}
        loads = [x for r in mine for x in r["load"]]
        print(f"| {variant} | {' | '.join(fmt(medians[variant][k]) for k in ('wall', 'cpu', 'tail', 'training'))} "
              f"| {min(loads):.1f}-{max(loads):.1f} |")
    off = medians["off"]
    for variant in variants[1:]:
        on = medians[variant]
        tail = (f", tail {on['tail'] - off['tail']:+.1f} s" if on["tail"] is not None and off["tail"] is not None
                else "")
        print(f"models logged ({variant}) against off: wall {on['wall'] - off['wall']:+.1f} s "
              f"({100 * (on['wall'] / off['wall'] - 1):+.0f}%), CPU {on['cpu'] - off['cpu']:+.1f} s "
              f"({100 * (on['cpu'] / off['cpu'] - 1):+.0f}%){tail}")


def per_model(times: int, out: Path) -> None:
    """Part 2: the spiral's two models logged ``times`` times in this process (see the module docstring)."""
    import mlflow

    from dlexp.tracking import models

    started_cpu, started = time.process_time(), time.perf_counter()
    data, networks = spiral_data_and_models()
    items = models.models_to_log(networks[0], networks, data)
    mlflow.set_tracking_uri(f"sqlite:///{out / 'per_model.db'}")
    run_id = mlflow.MlflowClient().create_run(mlflow.set_experiment("per-model").experiment_id).info.run_id
    setup = (time.process_time() - started_cpu, time.perf_counter() - started)
    print(f"\nper model, in one process ({times} times the spiral's 2 models; setup: imports, data, store "
          f"{setup[0]:.1f} s CPU / {setup[1]:.1f} s wall)")
    rows = []
    for i in range(times):
        cpu, wall = time.process_time(), time.perf_counter()
        models.log_models_for(mlflow.get_tracking_uri(), run_id, items)
        rows.append((time.process_time() - cpu, time.perf_counter() - wall))
        print(f"  logging {i + 1}: {rows[-1][0]:.2f} s CPU, {rows[-1][1]:.2f} s wall (2 models)", flush=True)
    if times > 1:
        later = rows[1:]
        print(f"first: {rows[0][0]:.2f} s CPU / {rows[0][1]:.2f} s wall for 2 models; later, median per model: "
              f"{median([c for c, _ in later]) / 2:.2f} s CPU / {median([w for _, w in later]) / 2:.2f} s wall")


def spiral_data_and_models():
    """The spiral data as the command loads it and its 5 fold models (untrained: logging does not care)."""
    import torch
    from hydra import compose, initialize_config_dir

    from dlexp.config.build import build

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=spiral"])
    data = build("dataset", cfg.dataset)
    torch.manual_seed(0)
    networks = [build("model", cfg.model, input_shape=data.input_shape, num_classes=data.n_classes).eval()
                for _ in range(5)]
    # as in the training process, where the models are logged: creating an optimizer imports torch._dynamo
    torch.optim.Adam(networks[0].parameters())
    return data, networks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="pairs of commands (off, on); 0: none")
    parser.add_argument("--per-model", type=int, default=4, metavar="K",
                        help="log the spiral's 2 models K times in this process (part 2); 0: skip")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run the command (models logged) from another checkout, e.g. a `git worktree` "
                             "of the commit before a change")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (stores, run folders)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="model_logging_"))
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"folder {out}", flush=True)
    try:
        if args.repeats:
            commands(args.repeats, out, args.before.resolve() if args.before else None)
        if args.per_model:
            per_model(args.per_model, out)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
