"""Your own model: the contract (dlexp.models) is checked on the first batch before training, one line naming
the class and what was expected; a model that keeps it gets its own config keys and trains."""

from __future__ import annotations

import pytest
import torch
from conftest import QUICK, compose_config
from torch import nn

from dlexp.data.spiral import generate_point_data
from dlexp.errors import DlexpError
from dlexp.experiment import build_fold_objects, run_experiment
from dlexp.models.contract import check_model


class Tiny(nn.Module):
    """Keeps the contract: (N, features) -> (N, num_classes) logits; ``width`` is its own config key."""

    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


class WrongShape(Tiny):
    def forward(self, x):
        return self.net(x)[:, :2]


class NanOutput(Tiny):
    def forward(self, x):
        return self.net(x) * float("nan")


class NoParameters(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.layers = [nn.Linear(input_shape[0], num_classes)]  # a plain list: not registered

    def forward(self, x):
        return self.layers[0](x)


class ExpectsImages(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


class ReturnsTuple(Tiny):
    def forward(self, x):
        return self.net(x), x


class IntegerOutput(Tiny):
    def forward(self, x):
        return self.net(x).argmax(dim=1, keepdim=True).expand(-1, 3)


NAME = "test_model_contract."


@pytest.mark.parametrize(("kind", "message"), [
    (WrongShape, f"model: {NAME}WrongShape.forward returned shape (8, 2) for a batch of shape (8, 2); expected logits "
                 "of shape (N, num_classes) = (8, 3)"),
    (NanOutput, f"model: {NAME}NanOutput.forward returned NaN values for the first batch before any training"),
    (NoParameters, f"model: {NAME}NoParameters has no trainable parameters; expected layers"),
    (ExpectsImages, f"model: {NAME}ExpectsImages cannot take the data's batches: a torch.float32 batch of shape (8, 2) "
                    "(N x input_shape=(2,)) raised RuntimeError: "),
    (ReturnsTuple, f"model: {NAME}ReturnsTuple.forward returned tuple; expected one tensor of logits"),
    (IntegerOutput, f"model: {NAME}IntegerOutput.forward returned torch.int64 values; expected floating-point"),
])
def test_a_model_breaking_the_contract_is_one_line_naming_the_class(kind, message):
    data = generate_point_data(arms=3, points_per_arm=20)
    cfg = compose_config(["+experiment=spiral", "~model", f"+model._target_={NAME}{kind.__name__}",
                          "trainer.batch_size=8"])
    with pytest.raises(DlexpError) as error:
        build_fold_objects(cfg, data, torch.device("cpu"), seed=0, check=True)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text, text


def test_the_check_leaves_the_model_as_it_was():
    data = generate_point_data(arms=3, points_per_arm=20)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model(model, data, batch_size=8)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_of_ones_own_gets_its_keys_and_the_data_shape_and_trains(store, tmp_path):
    overrides = ["+experiment=spiral", "dataset=spiral_generated", "dataset.arms=3", "dataset.points_per_arm=40",
                 "~model", f"+model._target_={NAME}Tiny", "+model.width=5", *QUICK, *store["overrides"]]
    cfg = compose_config(overrides)
    objects = build_fold_objects(cfg, generate_point_data(arms=3, points_per_arm=40), torch.device("cpu"), 0)
    assert isinstance(objects.model, Tiny) and objects.model.width == 5
    assert sum(p.numel() for p in objects.model.parameters()) == (2 * 5 + 5) + (5 * 3 + 3)
    summary = run_experiment(cfg, tmp_path / "run", overrides)
    (run,) = store["client"].search_runs([store["client"].get_experiment_by_name("spiral").experiment_id],
                                         filter_string=f"tags.`dlexp.output_dir` = '{tmp_path / 'run'}'")
    assert run.info.status == "FINISHED" and run.data.params["model._target_"] == f"{NAME}Tiny"
    assert run.data.params["model.width"] == "5" and run.data.params["model.n_params"] == "33"
    assert 0 <= summary["test_acc"] <= 1
