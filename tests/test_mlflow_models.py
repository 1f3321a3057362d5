"""Runs' models and data as MLflow citizens: LoggedModels that load by run id and by registered name and
predict from raw input, datasets with content digests, the data digest in a sweep's resume key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUICK, compose_config
from PIL import Image
from sweep_support import ROOT, TINY, TINY_WITH_MODELS, dlexp_env, run_dlexp, sqlite_store

from dlexp.data.digest import file_digest
from dlexp.experiment import run_experiment
from dlexp.tracking.store import job_run


def finished_run(store, experiment: str, output_dir):
    client = store["client"]
    return job_run(client, client.get_experiment_by_name(experiment).experiment_id, output_dir)


def point_table(path) -> tuple[pd.DataFrame, np.ndarray]:
    """A course point file as a user reads it: a DataFrame of its features (x1, x2) and its labels."""
    table = np.loadtxt(path)
    return pd.DataFrame(table[:, 1:], columns=["x1", "x2"]), np.array([str(int(v)) for v in table[:, 0]])


def correct(predicted: pd.DataFrame, labels: np.ndarray) -> int:
    return int((predicted["class"].to_numpy() == labels).sum())


def test_a_spiral_runs_models_load_by_run_id_and_give_its_test_accuracies_exactly(store):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    out = store["dir"] / "run"
    summary = run_experiment(compose_config(overrides), out, overrides)
    run = finished_run(store, "spiral", out)
    mlflow.set_tracking_uri(store["uri"])
    features, labels = point_table(ROOT / "data" / "testData.txt")

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = model.predict(features)
    assert correct(predicted, labels) == round(summary["test_acc"] * len(labels))
    assert list(predicted.columns) == ["class", "probability", *[f"p.{c}" for c in "01234"]]
    assert np.allclose(predicted[[f"p.{c}" for c in "01234"]].sum(axis=1), 1, atol=1e-5)
    ensemble = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/ensemble").predict(features)
    assert correct(ensemble, labels) == round(summary["test_acc_ensemble"] * len(labels))

    # the pytorch flavor: an exported program on the network's input, loaded without unpickling
    network = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    logits = network(torch.tensor(features.to_numpy(), dtype=torch.float32))
    assert int((logits.argmax(1).numpy().astype(str) == labels).sum()) == correct(predicted, labels)
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.flavors["pytorch"]["model_data"] == "data"
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["x1", "x2"]

    # LoggedModels of the run, with its metrics; the data it used, with content digests
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert sorted(m.name for m in logged) == ["ensemble", "model"]
    assert all(m.source_run_id == run.info.run_id for m in logged)
    assert {m.key: m.value for m in logged[0].metrics}["test_acc"] == pytest.approx(summary["test_acc"])
    inputs = {d.tags[0].value: d.dataset for d in mlflow.get_run(run.info.run_id).inputs.dataset_inputs}
    assert inputs["training"].digest == file_digest(ROOT / "data" / "trainData.txt")
    assert inputs["testing"].digest == file_digest(ROOT / "data" / "testData.txt")
    assert json.loads(inputs["testing"].source)["uri"] == str(ROOT / "data" / "testData.txt")
    assert inputs["training"].name == "spiral-train"


def write_images(folder, n_per_class: int = 8) -> tuple:
    """Tiny photos of 2 classes (reddish and bluish, noisy, of several sizes) and their CSV."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2 * n_per_class):
        label = ["red", "blue"][i % 2]
        pixels = rng.integers(0, 120, (12 + i % 5, 14, 3), dtype=np.uint8)
        pixels[..., 0 if label == "red" else 2] += 120
        name = f"img {i:02d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},{label},s{i}\n")
    csv = folder.parent / "photos.csv"
    csv.write_text("filename,species,sample\n" + "".join(rows))
    return csv, folder


def test_an_image_runs_model_predicts_from_image_files_as_the_run_scored_them(store):
    csv, folder = write_images(store["dir"] / "photos")
    overrides = ["+experiment=insects", f"dataset.csv={csv}", f"dataset.images={folder}", "dataset.cache_dir=null",
                 "dataset.image_size=[10,12]", "dataset.num_workers=0", "model.channels=[4]", "model.hidden_dims=[8]",
                 "trainer.max_epochs=3", "trainer.folds=2", "trainer.batch_size=4", *store["overrides"]]
    out = store["dir"] / "run"
    summary = run_experiment(compose_config(overrides), out, overrides)
    run = finished_run(store, "insects", out)
    mlflow.set_tracking_uri(store["uri"])
    # the run's test rows: what the summary says the held-out files are
    data_cfg = compose_config(overrides).dataset
    from dlexp.config.build import build

    data = build("dataset", data_cfg)
    paths = [str(folder / name) for name in data.test_files]
    labels = np.array([data.class_names[i] for i in data.y_test.tolist()])
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = model.predict(pd.DataFrame({"image": paths}))
    assert correct(predicted, labels) == round(summary["test_acc"] * len(labels))
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB").resize((14, 14))) for p in paths[:2]])
    assert len(model.predict(arrays)) == 2  # arrays N x H x W x 3 too (resized as files are)
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {"insects-train", "insects-test"}


@pytest.mark.full
def test_a_sweep_registers_its_best_model_as_champion_and_a_worse_sweep_leaves_the_alias(tmp_path):
    where = sqlite_store(tmp_path)
    first = run_dlexp("-m", *TINY_WITH_MODELS, *where, "optimizer.lr=0.01,0.03", "tracking.register_as=spiral-mlp",
                      timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "as models:/spiral-mlp@champion" in first.stdout
    client = mlflow.MlflowClient(where[0].split("=", 1)[1])
    champion = client.get_model_version_by_alias("spiral-mlp", "champion")
    best = client.get_run(champion.run_id)
    sweep_run = client.get_run(best.data.tags["mlflow.parentRunId"])
    assert sweep_run.data.tags["dlexp.best_run_id"] == champion.run_id

    mlflow.set_tracking_uri(where[0].split("=", 1)[1])
    features, labels = point_table(ROOT / "data" / "testData.txt")
    predicted = mlflow.pyfunc.load_model("models:/spiral-mlp@champion").predict(features)
    assert correct(predicted, labels) == round(best.data.metrics["test_acc"] * len(labels))

    elsewhere = [arg for arg in where if not arg.startswith("hydra.sweep.dir=")]
    elsewhere.append(f"hydra.sweep.dir={tmp_path}/sweep2")
    worse = run_dlexp("-m", *TINY_WITH_MODELS, *elsewhere, "trainer.max_epochs=1", "optimizer.lr=0.00001,0.00002",
                      "tracking.register_as=spiral-mlp", timeout=600)
    assert worse.returncode == 0, worse.stderr[-3000:]
    assert f"the champion stays version {champion.version}" in worse.stdout
    assert client.get_model_version_by_alias("spiral-mlp", "champion").version == champion.version
    assert len(client.search_model_versions("name = 'spiral-mlp'")) == 2


@pytest.mark.full
def test_a_resumed_sweep_trains_again_a_job_whose_data_file_changed(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    args = ["-m", *TINY, *sqlite_store(tmp_path), f"dataset.train_path={data / 'trainData.txt'}",
            f"dataset.test_path={data / 'testData.txt'}", "trainer.seed=1,2"]
    assert run_dlexp(*args, timeout=600).returncode == 0
    again = run_dlexp(*args, timeout=600)
    assert again.returncode == 0 and "data changed" not in again.stderr + again.stdout
    records = sorted((tmp_path / "sweep").glob("*/dlexp_job.json"))
    assert [json.loads(r.read_text())["reused"] for r in records] == [True, True]

    lines = (data / "trainData.txt").read_text().splitlines(keepends=True)
    (data / "trainData.txt").write_text("".join(lines[:-10]))  # an edit in place: same path, same config
    edited = run_dlexp(*args, timeout=600)
    assert edited.returncode == 0, edited.stderr[-3000:]
    said = [line for line in (edited.stdout + edited.stderr).splitlines() if "data changed" in line]
    assert len(said) == 2 and str(data / "trainData.txt") in said[0]
    assert [json.loads(r.read_text())["reused"] for r in records] == [False, False]


def test_a_model_loads_in_a_fresh_process_that_knows_only_the_store(store):
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    out = store["dir"] / "run"
    run_experiment(compose_config(overrides), out, overrides)
    run_id = finished_run(store, "spiral", out).info.run_id
    script = (f"import mlflow, pandas as pd; mlflow.set_tracking_uri({store['uri']!r}); "
              f"print(mlflow.pyfunc.load_model('runs:/{run_id}/model')"
              ".predict(pd.DataFrame({'x1': [0.5], 'x2': [0.1]}))['class'][0])")
    env = {k: v for k, v in dlexp_env().items() if k != "PYTHONPATH"}  # the pyfunc comes from the model's code/
    done = subprocess.run([sys.executable, "-c", script], cwd=store["dir"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] in list("01234")


def test_artifacts_go_beside_a_sqlite_store_outside_the_project_and_the_closing_lines_say_where(tmp_path, caplog):
    from dlexp.tracking.store import setup_experiment
    from dlexp.tracking.where import report_run

    uri = f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    cfg = compose_config(["+experiment=spiral", f"tracking.uri={uri}"])
    assert cfg.tracking.artifact_location is None
    setup_experiment(uri, "spiral", None)
    with mlflow.start_run(tags={"dlexp.output_dir": str(tmp_path / "run")}) as run:
        mlflow.log_text("hello", "hello.txt")
    assert (tmp_path / "elsewhere" / "mlartifacts" / run.info.run_id / "artifacts" / "hello.txt").is_file()
    caplog.set_level("INFO", logger="dlexp")
    report_run(cfg, tmp_path / "run")
    assert f"  artifacts:  {run.info.artifact_uri}\n" in caplog.text + "\n"

    # an experiment made earlier with its artifacts elsewhere is used as it is, and said
    other = compose_config(["+experiment=spiral", f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/new"])
    caplog.clear()
    report_run(other, tmp_path / "run")
    assert f"was created with its artifacts there, not in {tmp_path}/new" in caplog.text


@pytest.mark.parametrize("switch", [True, False])
def test_system_metrics_are_recorded_by_mlflow_only_when_switched_on(store, monkeypatch, switch):
    pytest.importorskip("psutil")
    import time

    from dlexp.experiment import use_system_metrics

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    use_system_metrics(compose_config(["+experiment=spiral", f"tracking.system_metrics={str(switch).lower()}"]))
    mlflow.set_tracking_uri(store["uri"])
    experiment_id = mlflow.create_experiment("system_metrics")  # not the experiment an earlier test made active
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            time.sleep(2)
    finally:
        mlflow.disable_system_metrics_logging()
    metrics = store["client"].get_run(run.info.run_id).data.metrics
    system = {key for key in metrics if key.startswith("system/")}
    if switch:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    else:
        assert not system


def test_the_models_are_made_in_the_training_process_without_mlflows_scan_of_installed_packages(store, monkeypatch):
    """Where the cost of logging models went (benchmarks/README.md): the run's training process makes them; the
    helper process that draws never loads the export machinery or scikit-learn; and MLflow's check of the
    pinned requirements against every installed package is skipped, its requirements still pinned."""
    from mlflow.utils import requirements_utils

    from dlexp.tracking import background
    from dlexp.tracking.models import pip_requirements

    background._shutdown()  # a helper of this test's own: earlier tests gave theirs other work
    scans = []
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # as in a fresh process
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions",
                        lambda: scans.append(1) or {})
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    out = store["dir"] / "run"
    run_experiment(compose_config(overrides), out, overrides)
    run = finished_run(store, "spiral", out)

    models = store["client"].search_logged_models([run.info.experiment_id])
    assert sorted(model.name for model in models) == ["ensemble", "model"]
    assert scans == []
    requirements = mlflow.pyfunc.get_model_dependencies(f"runs:/{run.info.run_id}/model")
    requirements = Path(requirements).read_text().split()
    assert requirements == list(pip_requirements())
    in_helper = background.picture_pool().submit(
        eval, "sorted(m for m in ('sklearn', 'torch._dynamo', 'torch.export') if m in __import__('sys').modules)")
    assert in_helper.result() == []


def test_a_model_that_cannot_be_exported_leaves_the_run_finished_and_says_why(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this model")

    monkeypatch.setattr(torch.export, "export", refuse)  # what mlflow.pytorch calls for the pt2 format
    overrides = ["+experiment=spiral", *QUICK, *store["overrides"]]
    out = store["dir"] / "run"
    run_experiment(compose_config(overrides), out, overrides)
    run = finished_run(store, "spiral", out)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dlexp.model_error"] == "RuntimeError: torch.export cannot trace this model"
    assert (out / "model.pt").is_file()
    # the model it began is marked FAILED (the UI's Models tab), not left PENDING; the ensemble was not begun
    models = store["client"].search_logged_models([run.info.experiment_id])
    assert [(model.name, str(model.status)) for model in models] == [("model", "FAILED")]


def test_a_dataset_another_job_is_inserting_at_the_same_moment_is_linked_on_a_retry(store, monkeypatch):
    """Jobs of a SLURM array logged the same dataset at once into a PostgreSQL server: one failed on the
    dataset row's unique key (seen in CI). The retry finds the row and links it; other errors are raised."""
    from dlexp.tracking import datasets

    monkeypatch.setattr(datasets.time, "sleep", lambda seconds: None)
    real, calls = mlflow.log_inputs, []

    def racing(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException(
                'duplicate key value violates unique constraint "dataset_pk"')
        return real(**kwargs)

    monkeypatch.setattr(datasets.mlflow, "log_inputs", racing)
    cfg = compose_config(["+experiment=spiral", *store["overrides"]])
    from dlexp.config.build import build

    data = build("dataset", cfg.dataset)
    mlflow.set_tracking_uri(store["uri"])
    experiment_id = mlflow.create_experiment("race")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        datasets.log_datasets(cfg.dataset, data, {})
    assert len(calls) == 2
    inputs = store["client"].get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["spiral-test", "spiral-train"]

    monkeypatch.setattr(datasets.mlflow, "log_inputs", lambda **kwargs: (_ for _ in ()).throw(
        mlflow.exceptions.MlflowException("permission denied")))
    with mlflow.start_run(experiment_id=experiment_id), pytest.raises(mlflow.exceptions.MlflowException):
        datasets.log_datasets(cfg.dataset, data, {})
