"""Every shipped experiment composes with every option of every group and builds its objects (no training):
an experiment sets only keys every option of a group has, and an incompatible pair is one line saying why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dlexp.config.build import build
from dlexp.data.contract import check_data
from dlexp.errors import DlexpError
from dlexp.experiment import build_fold_objects

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
GROUPS = ("model", "dataset", "optimizer", "scheduler", "loss")
IMAGE_MODELS = {"cnn", "resnet18", "mobilenet_v3_small"}
IMAGE_DATASETS = {"insects", "image_folder"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def flat_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return keys


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiment_sets_only_keys_every_option_of_the_group_has(experiment):
    """spiral.yaml used to write model.hidden_dims into whatever model was chosen (issue 19)."""
    config = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    for group in GROUPS:
        for key in flat_keys(config.get(group) or OmegaConf.create({})):
            for option in options(group):
                assert OmegaConf.select(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), key,
                                        default="<absent>") != "<absent>", (
                    f"experiment/{experiment}.yaml sets {group}.{key}, which {group}/{option}.yaml lacks: "
                    f"move it into the {group} option")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny data for the options that need files: an image CSV + folder, a class-folder tree, a table."""
    root = tmp_path_factory.mktemp("compose")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = []
    for i in range(24):
        cls = ["bee", "wasp", "fly"][i % 3]
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        (root / "tree" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "tree" / cls / f"{i}.png")
        rows.append(f"{i}.png,{cls},s{i % 12}\n")
    (root / "insects.csv").write_text("filename,species,sample\n" + "".join(rows))
    table = ["a,b,c,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{rng.normal():.3f},{'xyz'[i % 3]}"
                               for i in range(30)]
    (root / "table.csv").write_text("\n".join(table) + "\n")
    return {"root": root}


def dataset_overrides(option: str, files: dict[str, Path]) -> list[str]:
    root = files["root"]
    return {
        "insects": [f"dataset.csv={root / 'insects.csv'}", f"dataset.images={root / 'img'}"],
        "image_folder": [f"dataset.root={root / 'tree'}"],
        "table": [f"dataset.path={root / 'table.csv'}", "dataset.label_column=label"],
    }.get(option, []) + (["dataset.cache_dir=null", "dataset.num_workers=0", "dataset.image_size=[32,32]"]
                         if option in IMAGE_DATASETS else [])


CASES = [(experiment, group, option) for experiment in EXPERIMENTS for group in GROUPS for option in options(group)]


def incompatible(model: str, dataset: str) -> bool:
    return model in IMAGE_MODELS and dataset not in IMAGE_DATASETS


@pytest.mark.parametrize(("experiment", "group", "option"), CASES, ids=["-".join(case) for case in CASES])
def test_every_experiment_builds_with_every_option(files, experiment, group, option):
    model, dataset = choices(experiment, group, option)
    cfg = compose_config([f"+experiment={experiment}", f"{group}={option}", "trainer.batch_size=4",
                          *dataset_overrides(dataset, files)])
    data = load(cfg.dataset)
    if incompatible(model, dataset):
        with pytest.raises(DlexpError) as error:
            build_fold_objects(cfg, data, torch.device("cpu"), seed=0, check=True)
        message = str(error.value)
        assert "\n" not in message and f"height, width) inputs, got shape {data.input_shape}" in message, message
        return
    objects = build_fold_objects(cfg, data, torch.device("cpu"), seed=0, check=True)
    assert sum(p.numel() for p in objects.model.parameters()) > 0
    assert objects.optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    with torch.no_grad():
        x = data.x_train[:4] if data.eval_transform is None else data.eval_transform(data.x_train[:4])
        loss = objects.loss_fn(objects.model.eval()(x), data.y_train[:4])
    assert torch.isfinite(loss)


_LOADED: dict[str, object] = {}


def load(node: DictConfig):
    """The dataset of ``node``, checked; loaded once per distinct dataset config (the cases share them)."""
    key = OmegaConf.to_yaml(node)
    if key not in _LOADED:
        _LOADED[key] = check_data(build("dataset", node), node._target_)
    return _LOADED[key]


def choices(experiment: str, group: str, option: str) -> tuple[str, str]:
    """The (model, dataset) options of the experiment with ``group=option``."""
    config = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    chosen = {key.split("/")[-1]: value for d in config.defaults for key, value in d.items()}
    chosen[group] = option
    return chosen["model"], chosen["dataset"]
