"""Stacked sweeps (issue #24), training only: N spiral jobs as one stack against the same jobs one after another.

    python benchmarks/stacked_training.py                      # 1, 6 and 24 jobs, 3 repeats, Markdown tables
    python benchmarks/stacked_training.py --jobs 6 --repeats 1 --no-course
    python benchmarks/stacked_training.py --scaling            # one training step's cost as the stack grows

Every job is the course set-up on data/ (MLP 2-64-32-5, Adam, StepLR 50 x0.8, batch 50, at most 500 epochs,
patience 30, 5 stratified folds) with its own lr, weight decay and seed: 1 job = lr 0.01 seed 1; 6 jobs = lr
{0.03, 0.01, 0.003} x seed {1, 2} (the issue's sweep); 24 jobs = lr {0.03, 0.01, 0.003} x weight decay {0, 1e-4}
x seed {1, 2, 3, 4}. "one after another" trains each job's folds batched (train_folds_batched), job after job,
as a sweep does today; "stacked" trains all jobs' folds as one stack (train_stacked). Each variant runs in a fresh
process (1 torch thread), so its peak memory is its own; variants alternate within each repeat. Training time
excludes imports and data loading; CPU time is the process's user+system time over the same span. The digest
of every job's histories and best weights shows both variants trained to the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH, MAX_EPOCHS, PATIENCE, FOLDS, STEP_SIZE, GAMMA, HIDDEN = 50, 500, 30, 5, 50, 0.8, (64, 32)
SWEEPS = {
    1: [(0.01, 0.0, 1)],
    6: [(lr, 0.0, seed) for lr, seed in itertools.product((0.03, 0.01, 0.003), (1, 2))],
    24: [(lr, wd, seed) for lr, wd, seed in itertools.product((0.03, 0.01, 0.003), (0.0, 1e-4), (1, 2, 3, 4))],
}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def make_job(data, lr: float, weight_decay: float, seed: int):
    """One job as dlexp.experiment builds it: each fold's weights and data order seeded from (seed, fold)."""
    import torch
    from torch import nn

    from dlexp.data.splits import fold_seed, kfold_indices
    from dlexp.models.mlp import MLP
    from dlexp.training.losses import ClassificationLoss
    from dlexp.training.stacked import StackedJob

    folds = [(torch.as_tensor(t), torch.as_tensor(v)) for t, v in kfold_indices(data.y_train.numpy(), FOLDS, seed)]
    models = []
    for fold in range(1, FOLDS + 1):
        torch.manual_seed(fold_seed(seed, fold, "weights"))
        models.append(MLP((2,), data.n_classes, hidden_dims=list(HIDDEN)))
    optimizer = torch.optim.Adam(models[0].parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
    generators = [torch.Generator().manual_seed(fold_seed(seed, fold, "order")) for fold in range(1, FOLDS + 1)]
    return StackedJob(models, optimizer, scheduler, ClassificationLoss(nn.CrossEntropyLoss()), folds, generators,
                      MAX_EPOCHS, PATIENCE)


def digest(outcomes) -> str:
    """A hash of every job's fold histories, best epochs and best weights."""
    sha = hashlib.sha256()
    for results in outcomes:
        for result in results:
            sha.update(repr((result.history, result.best_epoch, result.epochs_run)).encode())
            for tensor in result.state_dict.values():
                sha.update(tensor.numpy().tobytes())
    return sha.hexdigest()[:12]


def worker(variant: str, n_jobs: int) -> None:
    import torch

    from dlexp.data.points import load_point_files

    torch.set_num_threads(1)
    data = load_point_files(str(ROOT / "data" / "trainData.txt"), str(ROOT / "data" / "testData.txt"))
    x, y = data.x_train, data.y_train
    if variant == "course":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from kfold_spiral import course_loop

        from dlexp.data.splits import kfold_indices

        before, cpu, start = rss_mb(), time.process_time(), time.perf_counter()
        course_loop(data, kfold_indices(y.numpy(), FOLDS, 42))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "peak": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024, "before": before, "digest": "-", "epochs": 0}))
        return
    from dlexp.training.batched import train_folds_batched
    from dlexp.training.stacked import train_stacked

    before, cpu, start = rss_mb(), time.process_time(), time.perf_counter()
    jobs = [make_job(data, *spec) for spec in SWEEPS[n_jobs]]
    if variant == "stacked":
        outcomes = train_stacked(jobs, x, y, BATCH)
    else:
        outcomes = [train_folds_batched(j.models, j.optimizer, j.scheduler, j.loss_fn, x, y, j.folds, BATCH,
                                        j.max_epochs, j.patience, j.generators) for j in jobs]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    epochs = sum(r.epochs_run for results in outcomes for r in results)
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "peak": peak, "before": before,
                      "digest": digest(outcomes), "epochs": epochs}))


def step_scaling(repeats: int = 7, steps: int = 50) -> None:
    """What a stack's training step costs as its rows grow (one job of 5 folds, 6 jobs, 24 jobs): forward,
    hand-written backward and each job's fused Adam on random batches of 50, best of ``repeats`` runs of
    ``steps`` steps (the least disturbed by other processes). Prints a Markdown table."""
    import torch

    from dlexp.models.mlp import MLP
    from dlexp.training.batched import StackedAdam, StackedMLP, smoothed_targets

    torch.set_num_threads(1)
    macs = sum(a * b for a, b in zip((2, *HIDDEN), (*HIDDEN, 5), strict=True))  # multiply-adds per sample
    print("| rows (jobs x 5 folds) | ms per step | us per row and step | GFLOP/s in the matrix products |")
    print("|---|---|---|---|")
    for rows in (5, 30, 120):
        torch.manual_seed(0)
        models = [MLP((2,), 5, hidden_dims=list(HIDDEN)) for _ in range(rows)]
        stacked = StackedMLP(models)
        weights = stacked.weights.clone()
        stacked.bind(weights, [FOLDS] * (rows // FOLDS))
        parts = weights.split(FOLDS)
        adams = [StackedAdam(torch.optim.Adam(models[0].parameters(), lr=0.01), part) for part in parts]
        x, y = torch.randn(rows, BATCH, 2), torch.randint(0, 5, (rows, BATCH))
        weight = torch.full((rows, BATCH, 1), 1 / BATCH)
        neg_targets = -smoothed_targets(y, 5, 0.0, torch.float32) * weight
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                _, grad = stacked.logits_and_grad(x, neg_targets, weight)
                for adam, part, g in zip(adams, parts, grad.split(FOLDS), strict=True):
                    adam.step(part, g, 0.01, None)
            best = min(best, (time.perf_counter() - start) / steps)
        flops = 2 * 3 * rows * BATCH * macs  # forward, weight gradients, input gradients
        print(f"| {rows} ({rows // FOLDS} x 5) | {best * 1e3:.2f} | {best / rows * 1e6:.0f} | "
              f"{flops / best / 1e9:.1f} |")


def run(variant: str, n_jobs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", variant, "--jobs", str(n_jobs)], capture_output=True,
                         text=True, check=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 6, 24], choices=sorted(SWEEPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-course", action="store_true", help="leave out the course loop (one job, reference)")
    parser.add_argument("--scaling", action="store_true", help="only the cost of one step as the stack grows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling:
        step_scaling()
        return
    if args.worker:
        worker(args.worker, args.jobs[0])
        return
    cases = ([] if args.no_course else [("course", 1)]) + [(v, n) for n in args.jobs for v in ("sequential", "stacked")]
    rows: dict = {case: [] for case in cases}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for repeat in range(args.repeats):
        for case in cases:
            rows[case].append(run(*case))
            print(f"repeat {repeat + 1} {case}: {rows[case][-1]}", file=sys.stderr, flush=True)
    print(f"Measured {started} - {time.strftime('%H:%M UTC', time.gmtime())}, load average at the end "
          f"{os.getloadavg()[0]:.1f} (2 cores), {args.repeats} repeats, medians.\n")
    print("| jobs | variant | training s | CPU s | vs one after another | vs course loop (1 job) | peak RSS MB "
          "| training's own MB | fold-epochs | digest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    course = statistics.median(r["seconds"] for r in rows[("course", 1)]) if ("course", 1) in rows else None
    for variant, n in cases:
        r = rows[(variant, n)]
        seconds = statistics.median(x["seconds"] for x in r)
        sequential = statistics.median(x["seconds"] for x in rows[("sequential", n)]) if variant != "course" else None
        print(f"| {n} | {variant} | {seconds:.2f} | {statistics.median(x['cpu'] for x in r):.2f} | "
              f"{sequential / seconds:.1f}x | " if sequential else f"| {n} | {variant} | {seconds:.2f} | "
              f"{statistics.median(x['cpu'] for x in r):.2f} | - | ", end="")
        print(f"{seconds / course:.2f} | " if course else "- | ", end="")
        print(f"{statistics.median(x['peak'] for x in r):.0f} | "
              f"{statistics.median(x['peak'] - x['before'] for x in r):.0f} | {r[0]['epochs']} | "
              f"{', '.join(sorted({x['digest'] for x in r}))} |")
    print("\nAll runs (s): " + "; ".join(f"{v} {n}: " + ", ".join(f"{x['seconds']:.2f}" for x in rows[(v, n)])
                                         for v, n in cases))


if __name__ == "__main__":
    main()
