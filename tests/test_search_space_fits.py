"""The search's space: the ready one fits the chosen model (one line names the keys it cannot search), and a space
the user gives (hydra.sweeper.params, e.g. from an hparams_search config, or ranges on the command line) is the
whole space searched."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dlexp.sweeps.search.space import parse_search_space, ready_space_note, searched_params, space_params


def compose_search(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["hydra/sweeper=search", *overrides], return_hydra_config=True)


def sweeper_params(cfg: DictConfig, arguments: list[str]) -> tuple[dict, list[str]]:
    return space_params(cfg.hydra.sweeper.params, dict(cfg.hydra.sweeper.ready_params), arguments, cfg)


@pytest.mark.parametrize(("overrides", "searched", "left_out"), [
    (["+experiment=spiral"], ["optimizer.lr", "model.hidden_dims", "model.dropout", "trainer.batch_size"], []),
    (["+experiment=insects"], ["optimizer.lr", "model.hidden_dims", "model.dropout", "trainer.batch_size"], []),
    # the command: "Could not override 'model.hidden_dims'" before any trial
    (["+experiment=insects", "model=resnet18"], ["optimizer.lr", "trainer.batch_size"],
     ["model.hidden_dims", "model.dropout"]),
    (["+experiment=insects", "model=mobilenet_v3_small"], ["optimizer.lr", "trainer.batch_size"],
     ["model.hidden_dims", "model.dropout"]),
])
def test_the_ready_space_fits_the_chosen_model(overrides, searched, left_out):
    cfg = compose_search(overrides)
    params, missing = sweeper_params(cfg, overrides)
    assert list(params) == searched and missing == left_out
    note = ready_space_note(missing, params, cfg)
    if left_out:
        assert note.startswith("the ready search space cannot search model.hidden_dims, model.dropout: not keys of "
                               "this config (model dlexp.models.backbones.torchvision_classifier); searching "
                               "optimizer.lr, trainer.batch_size.") and "\n" not in note
    else:
        assert note is None
    assert searched_params(cfg) == params  # what names the sweep and its hash


def test_a_space_in_a_config_file_is_the_whole_space():
    cfg = compose_search(["+experiment=spiral", "+hydra.sweeper.params={model.dropout: 'interval(0.0, 0.5)'}"])
    params, missing = sweeper_params(cfg, ["+experiment=spiral"])
    assert params == {"model.dropout": "interval(0.0, 0.5)"} and missing == []
    space = parse_search_space(params, ["+experiment=spiral", "trainer.batch_size=25"])
    assert list(space.distributions) == ["model.dropout"] and "trainer.batch_size=25" in space.fixed


def test_ranges_on_the_command_line_are_the_whole_space():
    arguments = ["+experiment=spiral", "optimizer.lr=tag(log, interval(0.001, 0.1))", "trainer.folds=3"]
    cfg = compose_search(["+experiment=spiral", "trainer.folds=3"])
    params, missing = sweeper_params(cfg, arguments)
    assert params == {} and missing == []
    assert list(parse_search_space(params, arguments).distributions) == ["optimizer.lr"]


def test_fixed_values_on_the_command_line_keep_the_ready_space_without_those_keys():
    arguments = ["+experiment=spiral", "trainer.batch_size=25"]
    cfg = compose_search(arguments)
    params, _ = sweeper_params(cfg, arguments)
    space = parse_search_space(params, arguments)
    assert list(space.distributions) == ["optimizer.lr", "model.hidden_dims", "model.dropout"]
