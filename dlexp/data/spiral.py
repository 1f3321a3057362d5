"""The k-arm spiral of the course's point classification task, generated from a seed.

Each arm starts at the origin and winds outwards to radius 1; points are spaced evenly along the radius
and jittered in angle by ``noise`` radians, so more noise or more arms make the task harder.

Regenerate the shipped data with ``python -m dlexp.data.spiral`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from dlexp import PROJECT_ROOT
from dlexp.data.points import PointData, write_point_table
from dlexp.errors import DlexpError


def make_spiral(
    arms: int = 5, points_per_arm: int = 300, noise: float = 0.12, turns: float = 0.85, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: ``arms * points_per_arm`` points in [-1, 1]^2 and their arm index."""
    if arms < 2:
        raise DlexpError(f"dataset.arms={arms}: a spiral needs at least 2 arms")
    if points_per_arm < 2:
        raise DlexpError(f"dataset.points_per_arm={points_per_arm}: needs at least 2")
    if noise < 0:
        raise DlexpError(f"dataset.noise={noise}: must be >= 0")
    rng = np.random.default_rng(seed)
    radius = np.linspace(0.0, 1.0, points_per_arm)
    xs, ys = [], []
    for arm in range(arms):
        angle = 2 * math.pi * (arm / arms - turns * radius) + rng.normal(0.0, noise, points_per_arm)
        xs.append(np.column_stack([radius * np.cos(angle), radius * np.sin(angle)]))
        ys.append(np.full(points_per_arm, arm))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def split_train_test(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and hold out ``test_fraction`` of the points as the test set."""
    if not 0 < test_fraction < 1:
        raise DlexpError(f"dataset.test_fraction={test_fraction}: must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def generate_point_data(
    arms: int = 5,
    points_per_arm: int = 300,
    noise: float = 0.12,
    turns: float = 0.85,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> PointData:
    """A spiral made in memory, so a sweep can vary the data's difficulty without files."""
    x, y = make_spiral(arms, points_per_arm, noise, turns, seed)
    x_train, y_train, x_test, y_test = split_train_test(x, y, test_fraction, seed)
    return PointData(
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        class_names=[str(arm) for arm in range(arms)],
        name=f"spiral{arms}",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a spiral dataset in the course's point-table format.")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "data", help="folder for the two files")
    parser.add_argument("--arms", type=int, default=5)
    parser.add_argument("--points-per-arm", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.12, help="angular jitter in radians")
    parser.add_argument("--turns", type=float, default=0.85, help="how far each arm winds")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, y = make_spiral(args.arms, args.points_per_arm, args.noise, args.turns, args.seed)
    x_train, y_train, x_test, y_test = split_train_test(x, y, args.test_fraction, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_point_table(args.out / "trainData.txt", x_train, y_train)
    write_point_table(args.out / "testData.txt", x_test, y_test)
    print(f"wrote {len(y_train)} training and {len(y_test)} test points to {args.out}")


if __name__ == "__main__":
    main()
