"""``dlexp inspect [+experiment=NAME] [overrides]``: the configured model's layers, untrained.

Also ``python -m dlexp.inspect``. Same configs and overrides as ``dlexp``. Prints each layer's output shape
and parameter count and the totals (torchinfo's table) for the model the run would build, with the dataset's
input shape and class count. ``+inspect.input_shape=[1,30,40] +inspect.num_classes=3`` sets them instead of loading the
dataset, e.g. to try a conv stack on any image size. Every training run logs the same table as the
artifact ``model_summary.txt`` and the total as the param ``model.n_params`` (:func:`log_model_summary`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
import torchinfo
from omegaconf import DictConfig, ListConfig
from torchinfo.enums import Units

from dlexp.config.build import build
from dlexp.errors import DlexpError
from dlexp.locations import CONF_DIR

SUMMARY_FILE = "model_summary.txt"


def summarize_model(model: torch.nn.Module, input_shape: Sequence[int], depth: int = 4
                    ) -> torchinfo.ModelStatistics:
    """torchinfo's statistics for one forward pass of a batch of 1 on the model's own device.

    ``str()`` of the result is the table; ``total_params`` and ``summary_list`` (one row per layer with
    ``output_size`` and ``num_params``) hold the numbers.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    # input_data (not input_size) keeps the model where it is; torchinfo would move it to CUDA otherwise.
    stats = torchinfo.summary(model, input_data=torch.zeros(1, *input_shape, device=device), depth=depth,
                              col_names=("output_size", "num_params"), row_settings=("var_names",),
                              mode="eval", verbose=0)
    # Exact mult-add count: torchinfo 1.8's unit label prints as "Units.MEGABYTES" on Python 3.11.
    stats.formatting.macs_units = Units.NONE
    return stats


def model_summary_text(stats: torchinfo.ModelStatistics, input_shape: Sequence[int], num_classes: int) -> str:
    return f"input shape {tuple(input_shape)} (shown as a batch of 1), {num_classes} classes\n{stats}\n"


def log_model_summary(stats: torchinfo.ModelStatistics, input_shape: Sequence[int], num_classes: int,
                      output_dir: Path) -> None:
    """Into the active MLflow run: the table as ``model_summary.txt`` and the param ``model.n_params``."""
    import mlflow  # here, so that inspecting from the command line does not pay for importing MLflow

    path = Path(output_dir) / SUMMARY_FILE
    path.write_text(model_summary_text(stats, input_shape, num_classes))
    mlflow.log_artifact(str(path))
    mlflow.log_param("model.n_params", stats.total_params)


def _positive_ints(key: str, value, example: str) -> list[int]:
    values = list(value) if isinstance(value, Sequence | ListConfig) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise DlexpError(f"{key}={value}: expected {example}")
    return values


def input_spec(cfg: DictConfig) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` from ``inspect.*`` overrides, else from the configured dataset."""
    given = cfg.get("inspect") or {}
    shape, classes = given.get("input_shape"), given.get("num_classes")
    if shape is None or classes is None:
        data = build("dataset", cfg.dataset)
        shape = data.input_shape if shape is None else shape
        classes = data.n_classes if classes is None else classes
    shape = _positive_ints("inspect.input_shape", shape, "a list of positive sizes such as [1,30,40]")
    (classes,) = _positive_ints("inspect.num_classes", classes, "a positive number of classes")
    return tuple(shape), classes


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        input_shape, num_classes = input_spec(cfg)
        model = build("model", cfg.model, input_shape=input_shape, num_classes=num_classes)
        print(f"model {cfg.model._target_}")
        print(model_summary_text(summarize_model(model, input_shape), input_shape, num_classes), end="")
    except DlexpError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def cli(prog: str = "python -m dlexp.inspect") -> None:
    """``dlexp inspect ...`` (see dlexp.__main__.SUBCOMMANDS) and ``python -m dlexp.inspect ...``: the
    arguments are Hydra's (``prog`` is unused: Hydra names the app itself)."""
    # Inspecting writes nothing: no run folder, no .hydra/ copy of the config, no log file.
    sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                 "hydra/hydra_logging=disabled"]
    main()


if __name__ == "__main__":
    cli()
