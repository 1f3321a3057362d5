"""``python -m dlexp.inspect``: exact output shapes and parameter counts of configured models, no training."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dlexp.errors import DlexpError
from dlexp.inspect import input_spec, summarize_model
from dlexp.models.cnn import ConvNet
from dlexp.models.mlp import MLP

ROOT = Path(__file__).resolve().parents[1]

CONV_5x3x2 = ["model=cnn", "model.channels=[5]", "model.kernel_sizes=[3,2]", "model.strides=1",
              "model.paddings=0", "model.pool=1", "model.hidden_dims=[]", "+inspect.input_shape=[1,30,40]",
              "+inspect.num_classes=5"]


def run_inspect(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, with this checkout's package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dlexp.inspect", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def table_rows(output: str) -> list[tuple[str, str, str]]:
    """``(layer, output shape, params)`` for each row of torchinfo's table."""
    rows = re.findall(r"^[│├└─\s]*(\w+) \(\w+\)\s+(\[[\d, ]+\])\s+([\d,]+|--)\s*$", output, re.MULTILINE)
    assert rows, output
    return rows


def test_inspect_conv_5_filters_kernel_3x2_on_1x30x40(tmp_path):
    done = run_inspect(*CONV_5x3x2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("Conv2d", "[1, 5, 28, 39]", "35") in table_rows(done.stdout)
    # The same shape from a forward pass through the model the config builds.
    net = ConvNet((1, 30, 40), 5, channels=[5], kernel_sizes=[3, 2], strides=1, paddings=0, pool=1,
                  hidden_dims=[])
    assert net.features(torch.zeros(1, 1, 30, 40)).shape == (1, 5, 28, 39)
    assert list(tmp_path.iterdir()) == [], "inspecting must not write run folders or logs"


def test_inspect_spiral_mlp_counts_2437_parameters(tmp_path):
    done = run_inspect("+experiment=spiral", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert table_rows(done.stdout) == [("MLP", "[1, 5]", "--"),
                                       ("Linear", "[1, 64]", "192"), ("ReLU", "[1, 64]", "--"),
                                       ("Linear", "[1, 32]", "2,080"), ("ReLU", "[1, 32]", "--"),
                                       ("Linear", "[1, 5]", "165")]
    assert "Total params: 2,437" in done.stdout


@pytest.mark.parametrize("widths", [[2, 64, 32, 5], [2, 8, 3], [784, 128, 64, 10], [5, 3, 3, 3, 3, 2]])
def test_mlp_parameter_count_formula_matches_inspection(widths):
    formula = sum(n_in * n_out + n_out for n_in, n_out in pairwise(widths))
    model = MLP((widths[0],), widths[-1], widths[1:-1])
    stats = summarize_model(model, (widths[0],))
    assert stats.total_params == formula == sum(p.numel() for p in model.parameters())
    assert f"Total params: {formula:,}" in str(stats)
    linear = [row for row in stats.summary_list if row.class_name == "Linear"]
    assert [row.num_params for row in linear] == [a * b + b for a, b in pairwise(widths)]
    assert [row.output_size for row in linear] == [[1, width] for width in widths[1:]]


def test_inspect_default_cnn_config_on_images():
    """conf/model/cnn.yaml as the insects experiment composes it (read from the files, not copied here), on
    its image size: each conv block's output shape and the parameter count follow from the file's values."""
    cfg = compose_config(["+experiment=insects"])
    model = cfg.model
    assert model._target_ == "dlexp.models.cnn.ConvNet"
    height, width = cfg.dataset.image_size
    net = instantiate(model, input_shape=(3, height, width), num_classes=3)
    stats = summarize_model(net, (3, height, width))

    kernel, stride, padding, pool = model.kernel_sizes, model.strides, model.paddings, model.pool
    assert all(isinstance(v, int) for v in (kernel, stride, padding, pool)), "extend this test for per-layer lists"
    channels_in, params, shapes = 3, 0, []
    for channels in model.channels:  # conv arithmetic, then the pool
        height = ((height + 2 * padding - kernel) // stride + 1) // pool
        width = ((width + 2 * padding - kernel) // stride + 1) // pool
        params += channels * (channels_in * kernel * kernel + 1)
        shapes.append([1, channels, height, width])
        channels_in = channels
    widths = [channels_in * height * width, *model.hidden_dims, 3]
    params += sum(n_in * n_out + n_out for n_in, n_out in pairwise(widths))
    block_ends = [row.output_size for row in stats.summary_list
                  if row.class_name == ("MaxPool2d" if pool > 1 else "Conv2d")]
    assert block_ends == shapes
    assert stats.total_params == params == sum(p.numel() for p in net.parameters())


def test_inspect_keeps_the_model_on_its_device_and_mode():
    model = MLP((2,), 5, [8])
    model.train()
    summarize_model(model, (2,))
    assert next(model.parameters()).device.type == "cpu" and model.training


def test_inspect_bad_model_for_the_data_is_one_line_error(tmp_path):
    done = run_inspect("model=cnn", cwd=tmp_path)  # a CNN on 2-D points
    assert done.returncode == 2
    assert done.stderr.startswith("error: model: ConvNet needs (channels, height, width) inputs"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(("given", "message"), [
    ({"input_shape": [0, 3], "num_classes": 2}, "inspect.input_shape=[0, 3]: expected a list of positive"),
    ({"input_shape": [1, 30, 40], "num_classes": 0}, "inspect.num_classes=0: expected a positive number"),
])
def test_inspect_bad_input_spec(given, message):
    with pytest.raises(DlexpError, match=re.escape(message)):
        input_spec(OmegaConf.create({"inspect": given}))


def test_input_spec_from_dataset_or_overrides():
    cfg = OmegaConf.create({"dataset": {"_target_": "dlexp.data.spiral.generate_point_data", "arms": 3,
                                        "points_per_arm": 10}})
    assert input_spec(cfg) == ((2,), 3)
    cfg.inspect = {"input_shape": [1, 30, 40]}
    assert input_spec(cfg) == ((1, 30, 40), 3)
