"""A dataset of one's own for dlexp: two interleaved half-moons (scikit-learn), as a PointData."""

import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

from dlexp.data.points import PointData


def moons(n: int = 400, noise: float = 0.15, test_fraction: float = 0.25, seed: int = 0) -> PointData:
    """``n`` points in 2-D (float32), class 0 the upper moon and 1 the lower; a stratified test share."""
    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return PointData(x_train=torch.tensor(x_train, dtype=torch.float32), y_train=torch.tensor(y_train),
                     x_test=torch.tensor(x_test, dtype=torch.float32), y_test=torch.tensor(y_test),
                     class_names=["upper", "lower"], name="moons")
