"""The spiral generator and the shipped data it made."""

from __future__ import annotations

import numpy as np

from dlexp import PROJECT_ROOT
from dlexp.data.points import load_point_files
from dlexp.data.spiral import generate_point_data, main, make_spiral


def test_generator_is_seeded_and_shaped():
    x, y = make_spiral(arms=3, points_per_arm=50, noise=0.1, seed=7)
    x2, y2 = make_spiral(arms=3, points_per_arm=50, noise=0.1, seed=7)
    assert x.shape == (150, 2) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.bincount(y).tolist() == [50, 50, 50]
    assert np.abs(x).max() <= 1.0 + 1e-6
    assert not np.array_equal(x, make_spiral(arms=3, points_per_arm=50, noise=0.1, seed=8)[0])


def test_generated_point_data_splits_train_and_test():
    data = generate_point_data(arms=7, points_per_arm=100, test_fraction=0.25, seed=1)
    assert data.n_classes == 7 and len(data.y_test) == 175 and len(data.y_train) == 525


def test_command_reproduces_the_shipped_data(tmp_path):
    """`python -m dlexp.data.spiral` with its defaults writes exactly what data/ holds."""
    main(["--out", str(tmp_path)])
    for name in ("trainData.txt", "testData.txt"):
        assert (tmp_path / name).read_text() == (PROJECT_ROOT / "data" / name).read_text()
    data = load_point_files(str(tmp_path / "trainData.txt"), str(tmp_path / "testData.txt"))
    assert (len(data.y_train), len(data.y_test), data.n_classes) == (1200, 300, 5)
