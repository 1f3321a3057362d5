"""k-fold spiral training: the course's loop against dlexp one-by-one and dlexp batched.

    python benchmarks/kfold_spiral.py                  # both data sets, 5 repeats, prints a Markdown table
    python benchmarks/kfold_spiral.py --repeats 3 --data data

Every variant trains the course set-up (MLP 2-64-32-5, Adam 0.01, StepLR 50 x0.8, batch 50, at most 500
epochs, patience 30, the same 5 stratified folds, seed 42) in its own fresh process, so peak memory is
that variant's alone; the variants alternate within each repeat, so machine load hits them alike. Every
worker imports the same modules, so their memory differs only by what training uses. The whole command
``python -m dlexp +experiment=spiral`` (start-up, MLflow logging and the 16 plots included) is timed as
a process too, against the course loop's whole process, into a throw-away MLflow store.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dlexp, not another installed copy
DATA_SETS = {"data/ (shipped)": ROOT / "data",
             "../shared/seed-data (course)": ROOT.parent / "shared" / "seed-data"}
HIDDEN, LR, STEP_SIZE, GAMMA = (64, 32), 0.01, 50, 0.8
BATCH, MAX_EPOCHS, PATIENCE, FOLDS, SEED = 50, 500, 30, 5, 42
VARIANTS = {
    "course": "(a) course loop: DataLoader, fold after fold",
    "sequential": "(b) dlexp one-by-one",
    "batched": "(c) dlexp batched",
}


def rss_mb() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def load(data_dir: Path):
    from dlexp.data.points import load_point_files

    return load_point_files(str(data_dir / "trainData.txt"), str(data_dir / "testData.txt"))


def course_loop(data, folds) -> tuple[list[float], list[int]]:
    """The course's training loop as students write it: a DataLoader of samples, one fold after another."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    accuracies, epochs = [], []
    for fold, (train_idx, val_idx) in enumerate(folds, start=1):
        torch.manual_seed(SEED + fold)
        model = nn.Sequential(nn.Linear(2, HIDDEN[0]), nn.ReLU(), nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU(),
                              nn.Linear(HIDDEN[1], data.n_classes))
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
        criterion = nn.CrossEntropyLoss()
        loader = DataLoader(TensorDataset(data.x_train[train_idx], data.y_train[train_idx]), batch_size=BATCH,
                            shuffle=True)
        x_val, y_val = data.x_train[val_idx], data.y_train[val_idx]
        best_loss, waited, best_state = float("inf"), 0, None
        for epoch in range(1, MAX_EPOCHS + 1):  # noqa: B007 (the epoch count is reported)
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = criterion(model(x_val), y_val).item()
            if val_loss < best_loss:
                best_loss, waited, best_state = val_loss, 0, copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= PATIENCE:
                    break
            scheduler.step()
        epochs.append(epoch)
        model.load_state_dict(best_state)
        with torch.no_grad():
            accuracies.append((model(data.x_test).argmax(dim=1) == data.y_test).float().mean().item())
    return accuracies, epochs


def fold_objects(data, fold: int):
    import torch
    from torch import nn

    from dlexp.models.mlp import MLP
    from dlexp.training.losses import ClassificationLoss

    torch.manual_seed(SEED + fold)
    model = MLP(data.input_shape, data.n_classes, hidden_dims=HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
    return model, optimizer, scheduler, ClassificationLoss(nn.CrossEntropyLoss())


def dlexp_folds(data, folds, strategy: str) -> tuple[list[float], list[int]]:
    """dlexp's trainers on the same folds: ``train_fold`` one by one, or ``train_folds_batched``."""
    import torch

    from dlexp.training.batched import train_folds_batched
    from dlexp.training.loop import train_fold

    folds = [(torch.as_tensor(train), torch.as_tensor(val)) for train, val in folds]
    generators = [torch.Generator().manual_seed(SEED * 1000 + fold) for fold in range(1, len(folds) + 1)]
    objects = [fold_objects(data, fold) for fold in range(1, len(folds) + 1)]
    if strategy == "batched":
        model, optimizer, scheduler, loss_fn = objects[0]
        results = train_folds_batched([o[0] for o in objects], optimizer, scheduler, loss_fn, data.x_train,
                                      data.y_train, folds, BATCH, MAX_EPOCHS, PATIENCE, generators)
    else:
        results = []
        for fold, (train, val) in enumerate(folds, start=1):
            model, optimizer, scheduler, loss_fn = objects[fold - 1]
            results.append(train_fold(fold, model, optimizer, scheduler, loss_fn, data.x_train, data.y_train,
                                      train, val, BATCH, MAX_EPOCHS, PATIENCE, generators[fold - 1]))
    with torch.no_grad():
        return ([(model.eval()(data.x_test).argmax(dim=1) == data.y_test).float().mean().item()
                 for model, *_ in objects], [r.epochs_run for r in results])


def worker(variant: str, data_dir: Path, threads: int) -> None:
    """One timed training in this process; prints a JSON line."""
    started_process = time.perf_counter()
    import torch
    import torch._dynamo  # noqa: F401  (torch.optim loads it on first use, ~1 s: start-up, not training)

    import dlexp.training.batched  # noqa: F401  (every worker imports the same modules: equal baseline memory)
    import dlexp.training.loop  # noqa: F401
    from dlexp.data.splits import kfold_indices

    torch.set_num_threads(threads)
    data = load(data_dir)
    folds = kfold_indices(data.y_train.numpy(), FOLDS, SEED, stratify=True)
    before = rss_mb()
    started = time.perf_counter()
    if variant == "course":
        accuracies, epochs = course_loop(data, folds)
    else:
        accuracies, epochs = dlexp_folds(data, folds, variant)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "process_seconds": time.perf_counter() - started_process,
                      "test_acc_mean": statistics.mean(accuracies), "peak_mb": peak,
                      "training_mb": peak - before, "threads": torch.get_num_threads(), "epochs": epochs}))


def run_process(command: list[str]) -> tuple[str, float, float]:
    """Runs ``command`` to its end: its stdout, wall seconds and peak RSS in MB (from ``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return out.read(), seconds, usage.ru_maxrss / 1024


def run_worker(variant: str, data_dir: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--data", str(data_dir),
               "--threads", str(threads)]
    stdout, seconds, peak_mb = run_process(command)
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall": seconds, "process_peak_mb": peak_mb}


def run_command(data_dir: Path, store: Path, threads: int) -> dict:
    """The whole ``python -m dlexp +experiment=spiral`` on ``data_dir``, logging into ``store``."""
    command = [sys.executable, "-m", "dlexp", "+experiment=spiral",
               f"dataset.train_path={data_dir / 'trainData.txt'}",
               f"dataset.test_path={data_dir / 'testData.txt'}",
               f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
               f"tracking.artifact_location={store / 'artifacts'}",
               f"trainer.num_threads={threads}", f"hydra.run.dir={store / 'runs' / str(time.time_ns())}"]
    _, seconds, peak_mb = run_process(command + ["hydra/job_logging=disabled"])
    summary = json.loads(max((store / "runs").glob("*/summary.json"), key=os.path.getmtime).read_text())
    return {"wall": seconds, "test_acc_mean": summary["test_acc_fold_mean"], "process_peak_mb": peak_mb}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", action="append", help="a folder with trainData.txt and testData.txt")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every variant, the course loop's too (default 1, see README)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data[0]), args.threads)
        return

    data_sets = {Path(d).name: Path(d) for d in args.data} if args.data else DATA_SETS
    runs = [(variant, args.threads) for variant in VARIANTS]
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {args.repeats} repeats, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    for name, data_dir in data_sets.items():
        if not (data_dir / "trainData.txt").is_file():
            print(f"skipping {name}: {data_dir} has no trainData.txt\n")
            continue
        rows: dict[tuple, list[dict]] = {run: [] for run in runs + [("command", None)]}
        with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
            # Warm-up: creates the MLflow store and fills the disk cache, as for any user's second run.
            run_command(data_dir, Path(tmp), args.threads)
            for repeat in range(args.repeats):
                for variant, threads in runs:
                    rows[(variant, threads)].append(run_worker(variant, data_dir, threads))
                rows[("command", None)].append(run_command(data_dir, Path(tmp), args.threads))
                print(f"  {name}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        course = median(rows[("course", args.threads)], "seconds")
        course_process = median(rows[("course", args.threads)], "wall")
        print(f"### {name}\n")
        print("| variant | threads | training s (median) | vs (a) | test acc (fold mean) | epochs per fold "
              "| peak RSS MB | training's own MB |")
        print("|---|---|---|---|---|---|---|---|")
        for variant, threads in runs:
            r = rows[(variant, threads)]
            print(f"| {VARIANTS[variant]} | {r[0]['threads']} | {median(r, 'seconds'):.2f} | "
                  f"{course / median(r, 'seconds'):.1f}x | {median(r, 'test_acc_mean'):.2%} | "
                  f"{'/'.join(map(str, r[0]['epochs']))} | "
                  f"{median(r, 'peak_mb'):.0f} | {median(r, 'training_mb'):.0f} |")
        command = rows[("command", None)]
        course_peak = median(rows[("course", args.threads)], "process_peak_mb")
        print(f"\n| whole process, start to end | wall s (median) | vs (a) process | peak RSS MB |\n"
              f"|---|---|---|---|\n"
              f"| (a) course loop script | {course_process:.2f} | 1.00 | {course_peak:.0f} |\n"
              f"| `python -m dlexp +experiment=spiral` (auto) | {median(command, 'wall'):.2f} | "
              f"{median(command, 'wall') / course_process:.2f} | {median(command, 'process_peak_mb'):.0f} |\n")
        print("All runs (s): " + "; ".join(
            f"{variant}: "
            + ", ".join(f"{row.get('seconds', row['wall']):.2f}" for row in r)
            for (variant, threads), r in rows.items()) + "\n")


if __name__ == "__main__":
    main()
