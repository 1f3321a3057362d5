"""What checkpoints cost the spiral's training: dlexp's own k-fold training with and without them.

    python benchmarks/checkpoint_cost.py              # 3 repeats, prints a Markdown table
    python benchmarks/checkpoint_cost.py --repeats 5

The course's spiral set-up (``+experiment=spiral``: MLP 2-64-32-5, Adam 0.01, StepLR 50 x0.8, batch 50, at
most 500 epochs, patience 30, 5 folds, seed 42) trained by ``dlexp.experiment.train_folds`` in this process,
one by one and batched, with checkpoints off, at the default ``trainer.checkpoint_every`` (30s), every 10
epochs and every epoch, into a temporary folder. The variants alternate within each repeat, so the machine's
load hits them alike; medians of the repeats. Saves are counted from the files' writes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dlexp, not another installed copy
VARIANTS = {"off": None, "30s (default)": "30s", "every 10 epochs": 10, "every epoch": 1}


def train(cfg, data, folds, strategy: str, every, folder: Path) -> tuple[float, int, list[int]]:
    import torch

    from dlexp.experiment import configure_torch, train_folds
    from dlexp.training.checkpoint import Checkpoints, parse_every

    device = configure_torch(cfg.trainer)
    checkpoints = None
    saves = [0]
    if every is not None:
        checkpoints = Checkpoints(folder, {"config_hash": "bench", "code_hash": "bench"}, parse_every(every))
        real_save = checkpoints.save

        def counted(name, state):
            saves[0] += 1
            real_save(name, state)

        checkpoints.save = counted
    started = time.perf_counter()
    results = [r for r, _ in train_folds(cfg, data, folds, data.x_train.to(device), data.y_train.to(device),
                                         torch.device("cpu"), strategy, checkpoints=checkpoints)]
    return time.perf_counter() - started, saves[0], [r.epochs_run for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from hydra import compose, initialize_config_dir

    from dlexp.config.build import build
    from dlexp.data.splits import kfold_indices

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=spiral", "trainer.progress=false"])
    data = build("dataset", cfg.dataset)
    folds = kfold_indices(data.y_train.numpy(), cfg.trainer.folds, cfg.trainer.seed, cfg.trainer.stratify, data.groups)
    rows = []
    for strategy in ("sequential", "batched"):
        seconds = {name: [] for name in VARIANTS}
        saves, epochs = {}, {}
        for _ in range(args.repeats):
            for name, every in VARIANTS.items():
                with tempfile.TemporaryDirectory() as folder:
                    took, saves[name], epochs[name] = train(cfg, data, folds, strategy, every, Path(folder))
                seconds[name].append(took)
        base = statistics.median(seconds["off"])
        for name in VARIANTS:
            median = statistics.median(seconds[name])
            rows.append(f"| {strategy} | {name} | {median:.2f} | {100 * (median / base - 1):+.1f}% | {saves[name]} "
                        f"| {'/'.join(map(str, epochs[name]))} | {', '.join(f'{s:.2f}' for s in seconds[name])} |")
    print("| strategy | checkpoint_every | training s (median) | vs off | saves | epochs per fold | all runs (s) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
