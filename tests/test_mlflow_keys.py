"""User text as MLflow keys (issue #23 fault 6): class names and config keys MLflow would refuse."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, compose_config
from mlflow.utils.validation import _validate_metric_name, _validate_param_name
from omegaconf import open_dict
from sweep_support import runs_by_kind

from dlexp.data.spiral import generate_point_data
from dlexp.tracking.keys import mlflow_keys, renamed

#: Names a user can write that MLflow refuses as they are (a trailing slash, a path, a colon, brackets, too long),
#: next to names their sanitised forms would take.
AWKWARD = ["Halictus sp./", "Halictus sp._", "a//b", "a/./b", "../up", ".", "Bombus: terrestris",
           "Andrena (Melandrena)", "ä ö ü", "x" * 300, "a_b", "a/b"]


@pytest.mark.parametrize("prefix", ["", "test_acc_class."])
def test_every_name_gets_its_own_key_that_mlflow_accepts(prefix):
    keys = mlflow_keys(AWKWARD, prefix)
    assert list(keys) == AWKWARD
    assert len(set(keys.values())) == len(AWKWARD)  # no two names share a key
    for key in keys.values():
        _validate_metric_name(key)
        _validate_param_name(key)
        assert len(key) <= 250 and ":" not in key
    # Names MLflow takes stay as they are; the rest are listed with their originals.
    assert keys["a_b"] == prefix + "a_b" and keys["a/b"] == prefix + "a/b" and keys["ä ö ü"] == prefix + "ä ö ü"
    assert keys["Halictus sp._"] == prefix + "Halictus sp._"
    assert keys["Halictus sp./"].startswith(prefix + "Halictus sp._-")  # sanitising collided: a disambiguator
    assert keys["Andrena (Melandrena)"] == prefix + "Andrena _Melandrena_"
    table = renamed(keys, prefix)
    kept = {"a_b", "a/b", "ä ö ü", "Halictus sp._"} | ({".", "../up"} if prefix else set())  # MLflow takes these
    assert set(table.values()) == set(AWKWARD) - kept
    assert mlflow_keys(list(reversed(AWKWARD)), prefix) == keys  # the same key in every run, whatever the order


def named_spiral(names: list[str], notes: dict | None = None) -> object:
    """A small generated spiral whose arms are called ``names`` (``dataset._target_`` of the test below)."""
    data = generate_point_data(arms=len(names), points_per_arm=40, seed=0)
    data.class_names = list(names)
    return data


def test_class_names_and_config_keys_mlflow_refuses_are_logged_under_valid_keys(tmp_path, store):
    """``Halictus sp./`` trained both folds, then crashed at the per-class metrics: no model, exit 1."""
    from dlexp.experiment import run_experiment

    names = ["Halictus sp./", "Halictus sp._", "Bombus: terrestris"]
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"], "tracking.experiment_name=keys"]
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.dataset = {"_target_": "test_mlflow_keys.named_spiral", "names": names,
                       "notes": {"Halictus sp./": "one specimen"}}
    run_experiment(cfg, tmp_path / "out", overrides)
    client = store["client"]
    _, (run,), _ = runs_by_kind(client, "keys")
    assert run.info.status == "FINISHED" and (tmp_path / "out" / "model.pt").exists()
    keys = mlflow_keys(names, "test_acc_class.")
    per_class = {k: v for k, v in run.data.metrics.items() if k.startswith("test_acc_class.")}
    assert set(per_class) == set(keys.values()) and len(per_class) == 3
    assert all(0 <= v <= 1 for v in per_class.values())
    assert run.data.params["dataset.notes.Halictus sp._"] == "one specimen"
    table = json.loads((tmp_path / "artifacts" / run.info.run_id / "artifacts" / "mlflow_keys.json").read_text())
    assert table == {"dataset.notes.Halictus sp._": "dataset.notes.Halictus sp./",
                     keys["Halictus sp./"]: "Halictus sp./", keys["Bombus: terrestris"]: "Bombus: terrestris"}


def test_a_swept_key_never_takes_a_column_of_the_jobs_table():
    """A swept ``dataset.name`` was shown as ``name`` and overwritten by the job's name; ``+model.test_acc`` by the
    metric."""
    from dlexp.sweeps.sweep import TAKEN_COLUMNS
    from dlexp.tracking.naming import short_overrides

    task = ["dataset.name=a", "+model.test_acc=1", "optimizer.lr=0.1", "trainer.seed=1"]
    assert short_overrides(task, None, TAKEN_COLUMNS) == {"dataset.name": "a", "model.test_acc": "1", "lr": "0.1",
                                                          "seed": "1"}
    assert short_overrides(task) == {"name": "a", "test_acc": "1", "lr": "0.1", "seed": "1"}  # run names stay short
