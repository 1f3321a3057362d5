"""CPU time of a spiral job's pictures, per picture kind, against the CPU time of the job's training.

Trains the course job (``+experiment=spiral``: MLP 2-64-32-5, Adam 0.01, StepLR 50 x0.8, batch 50, at most 500
epochs, patience 30, 5 folds, seed 42) batched as dlexp does, then draws the job's 16 PNGs from the real
results (histories, best epochs, each fold's decision regions on the 300 x 300 grid) as the helper process
draws them: one after another in one process, warm, ``--repeats`` times each. Times are CPU time
(``time.process_time``), so the load of a shared machine inflates them less than wall time.

    python benchmarks/pictures_spiral.py                      # data/, 5 repeats, PNGs into /tmp/pictures_spiral
    python benchmarks/pictures_spiral.py --profile decision_boundary   # cProfile of one kind, top 25 by tottime
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kfold_spiral import BATCH, FOLDS, MAX_EPOCHS, PATIENCE, SEED, fold_objects, load  # noqa: E402


def train(data):
    """The course job's training, batched; returns (results, trained models, CPU seconds)."""
    import torch

    from dlexp.data.splits import kfold_indices
    from dlexp.training.batched import train_folds_batched

    folds = [(torch.as_tensor(t), torch.as_tensor(v))
             for t, v in kfold_indices(data.y_train.numpy(), FOLDS, SEED, stratify=True)]
    generators = [torch.Generator().manual_seed(SEED * 1000 + fold) for fold in range(1, FOLDS + 1)]
    started = time.process_time()
    objects = [fold_objects(data, fold) for fold in range(1, FOLDS + 1)]
    _, optimizer, scheduler, loss_fn = objects[0]
    results = train_folds_batched([o[0] for o in objects], optimizer, scheduler, loss_fn, data.x_train,
                                  data.y_train, folds, BATCH, MAX_EPOCHS, PATIENCE, generators)
    seconds = time.process_time() - started
    models = []
    for (model, *_), result in zip(objects, results, strict=True):
        model.load_state_dict(result.state_dict)
        models.append(model.eval())
    return results, models, seconds


def job_pictures(data, results, models, out: Path, resolution: int):
    """The job's 16 pictures as (kind, callable) pairs, with the arguments dlexp gives them, plus the CPU
    seconds of predicting the regions (the training process does that: 6 grids a job)."""
    import numpy as np
    import torch

    from dlexp.reports import plots
    from dlexp.reports.run_files import predict_regions
    from dlexp.reports.summary import class_probabilities

    device = torch.device("cpu")
    grid = plots.decision_grid([data.x_train, data.x_test], resolution)
    started = time.process_time()
    regions = [predict_regions(m, grid, device) for m in models]
    predict_seconds = (time.process_time() - started) / len(models)
    x_train, y_train = data.x_train.numpy(), data.y_train.numpy()
    x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
    names = data.class_names
    best = min(range(len(results)), key=lambda i: results[i].best_val_loss)
    predicted = class_probabilities(models[best], data.x_test).argmax(dim=1).numpy()
    wrong = predicted != y_test
    pictures = []
    for i, r in enumerate(results):
        label = f"fold {r.fold}"
        is_val = np.zeros(len(y_train), dtype=bool)
        is_val[r.val_indices.numpy()] = True
        pictures.append(("fold loss curve", lambda r=r, label=label: plots.plot_loss_curves(
            out / f"fold_{r.fold}_loss_curve.png", {label: r.history}, {label: r.best_epoch})))
        pictures.append(("decision boundary", lambda r=r, i=i, label=label, is_val=is_val:
                         plots.plot_decision_boundary(
                             out / f"fold_{r.fold}_decision_boundary.png", regions[i], grid, x_train, y_train, names,
                             f"{label}: best epoch {r.best_epoch}, val acc {r.best_val_acc:.1%}", marked=is_val,
                             marked_label="validation")))
    title = f"fold {best + 1} model on the test set: {1 - wrong.mean():.1%}"
    pictures += [
        ("data", lambda: plots.plot_data(out / "data.png", x_train, y_train, x_test, y_test, names)),
        ("loss curves (5 folds)", lambda: plots.plot_loss_curves(
            out / "loss_curves.png", {f"fold {r.fold}": r.history for r in results},
            {f"fold {r.fold}": r.best_epoch for r in results})),
        ("decision boundary", lambda: plots.plot_decision_boundary(
            out / "decision_boundary_train.png", regions[best], grid, x_train, y_train, names,
            f"fold {best + 1} model, train points")),
        ("decision boundary", lambda: plots.plot_decision_boundary(
            out / "decision_boundary_test.png", regions[best], grid, x_test, y_test, names,
            f"fold {best + 1} model, test points: {1 - wrong.mean():.1%}", marked=wrong)),
        ("confusion matrix", lambda: plots.plot_confusion_matrix(
            out / "confusion_matrix.png", plots.confusion_counts(y_test, predicted, len(names)), names, title)),
        ("per-class accuracy", lambda: plots.plot_per_class_accuracy(
            out / "per_class_accuracy.png", plots.per_class_accuracy(y_test, predicted, len(names)), names, title)),
    ]
    return pictures, predict_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pictures_spiral"))
    parser.add_argument("--profile", help="a picture kind to profile (e.g. decision_boundary, data)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    data = load(args.data)
    results, models, train_seconds = train(data)
    args.out.mkdir(parents=True, exist_ok=True)
    pictures, predict_seconds = job_pictures(data, results, models, args.out, args.resolution)
    first = time.process_time()
    for _, draw in pictures:  # the helper's first job: imports and font cache, paid once per process
        draw()
    first = time.process_time() - first
    if args.profile:
        kind = args.profile.replace("_", " ")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.repeats):
            for name, draw in pictures:
                if name == kind:
                    draw()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        pstats.Stats(profile).sort_stats("cumtime").print_stats(40)
        return
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, draw in pictures:
            started = time.process_time()
            draw()
            times.setdefault(name, []).append(time.process_time() - started)
    counts = {name: sum(1 for n, _ in pictures if n == name) for name in times}
    sizes = {p.name: p.stat().st_size for p in args.out.glob("*.png")}
    print(f"load average {os.getloadavg()[0]:.1f}; training (5 folds batched, CPU) {train_seconds:.2f} s; "
          f"epochs {[r.epochs_run for r in results]}")
    print("| picture | per job | CPU ms each (median) | min | max |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        # a kind drawn n times per job gives n values per repeat: per picture
        print(f"| {name} | {counts[name]} | {1000 * statistics.median(values):.0f} | {1000 * min(values):.0f} "
              f"| {1000 * max(values):.0f} |")
    per_job = sum(counts[name] * statistics.median(values) for name, values in times.items())
    print(f"regions of one model on the {args.resolution}^2 grid (training process, 6 a job): "
          f"{1000 * predict_seconds:.0f} ms CPU")
    print(f"a job's 16 pictures (warm, medians): {per_job:.2f} s CPU; first pass (cold helper) {first:.2f} s; "
          f"+ regions {6 * predict_seconds:.2f} s; training {train_seconds:.2f} s; "
          f"pictures / training {per_job / train_seconds:.2f}")
    print(f"PNG sizes: total {sum(sizes.values()) / 1024:.0f} KiB, largest {max(sizes.values()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
