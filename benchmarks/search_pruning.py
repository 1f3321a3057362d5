"""A 30-trial spiral search with pruning (the median pruner, the default; successive halving) against none.

    python benchmarks/search_pruning.py                     # 3 sampler seeds, prints a Markdown table
    python benchmarks/search_pruning.py --seeds 1 2 --trials 30 --out results.jsonl
    python benchmarks/search_pruning.py --variants "median pruner" "median pruner, stacked" \
        "successive halving, stacked"

Each search is the whole command a user runs (``python -m dlexp -m hydra/sweeper=search +experiment=spiral``,
the shipped search space of conf/hydra/sweeper/search.yaml), into a throw-away MLflow store and study. The
first three variants run trials one after another, each by itself (``hydra.sweeper.n_jobs=1``, the stacked
launcher with ``stack=false``: the search before issue 24); the "stacked" ones ask for the shipped
``hydra.sweeper.n_jobs`` trials per batch and train the stackable ones of a batch as one model. The variants
alternate within every seed (the order swaps from seed to seed), so machine load hits them alike; ``uptime``
is recorded before each search. Reported: wall time, the best validation score (``val_acc_mean``) the search
found, and how many trials were pruned.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The course's 5 folds, but at most 60 epochs (not 500) so 9 searches of 30 trials fit in about 25 minutes on
#: the 2-core machine; smaller decision-boundary pictures. Training is still most of a full trial's time.
SETUP = ["+experiment=spiral", "trainer.folds=5", "trainer.max_epochs=60", "plots.grid_resolution=30"]
#: Trials one after another, each by itself: the search as it was before stacked sweeps (issue 24).
ONE_BY_ONE = ["hydra.sweeper.n_jobs=1", "hydra.launcher.stack=false"]
VARIANTS = {"no pruning": ["hydra.sweeper.pruner=none", *ONE_BY_ONE],
            "median pruner": ["hydra.sweeper.pruner=median", *ONE_BY_ONE],
            "successive halving": ["hydra.sweeper.pruner=halving", *ONE_BY_ONE],
            # issue 24: batches of the shipped hydra.sweeper.n_jobs trials, the stackable ones as one model
            "median pruner, stacked": ["hydra.sweeper.pruner=median"],
            "successive halving, stacked": ["hydra.sweeper.pruner=halving"]}
DEFAULT_VARIANTS = ["no pruning", "median pruner", "successive halving"]


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def cpu_of_children() -> float:
    """User + system CPU seconds of this process's finished child processes (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_search(seed: int, trials: int, variant: list[str]) -> dict:
    """One search in its own temporary store; its wall time and what it found."""
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "dlexp", "-m", "hydra/sweeper=search", f"hydra.sweeper.n_trials={trials}",
                   f"hydra.sweeper.sampler.seed={seed}", *variant, *SETUP,
                   f"tracking.uri=sqlite:///{folder}/mlflow.db", f"tracking.artifact_location={folder}/artifacts",
                   f"hydra.sweep.dir={folder}/sweep", "tracking.experiment_name=bench"]
        load_before = load()
        started, cpu_before = time.perf_counter(), cpu_of_children()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - started, cpu_of_children() - cpu_before
        if result.returncode not in (0, 2):
            raise RuntimeError(result.stderr[-3000:])
        results = OmegaConf.load(Path(folder) / "sweep" / "optimization_results.yaml")
        return {"seconds": seconds, "cpu_seconds": cpu, "best": float(results.best_value), "load_before": load_before,
                "load_after": load(), **{k.lower(): int(v) for k, v in results.trials.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=None, help="append each search's figures here (JSON lines)")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {name: [] for name in args.variants}
    for index, seed in enumerate(args.seeds):
        order = list(args.variants) if index % 2 == 0 else list(reversed(args.variants))
        for name in order:
            row = {"variant": name, "seed": seed, **run_search(seed, args.trials, VARIANTS[name])}
            rows[name].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")
    print("\n| search | wall time, s (median) | CPU s (median) | best val_acc_mean (median) | pruned trials | "
          "per seed (s, best) |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        per_seed = ", ".join(f"seed {r['seed']}: {r['seconds']:.0f} s, {r['best']:.2%}" for r in runs)
        print(f"| {name} | {statistics.median(r['seconds'] for r in runs):.0f} | "
              f"{statistics.median(r['cpu_seconds'] for r in runs):.0f} | "
              f"{statistics.median(r['best'] for r in runs):.2%} | "
              f"{statistics.median(r['pruned'] for r in runs):.0f} of {args.trials} | {per_seed} |")


if __name__ == "__main__":
    main()
