"""A run's models as MLflow 3 LoggedModels: ``model`` (the reported fold's) and ``ensemble`` (the fold models'
mean probabilities, the run's ``test_acc_ensemble``).

Each is an MLflow model with two flavors, written through MLflow's own custom-flavor mechanism
(``mlflow.models.Model.log(flavor=this module)`` calls :func:`save_model`):

- ``pytorch``: ``mlflow.pytorch.save_model(serialization_format="pt2")``, a ``torch.export`` program that
  loads without unpickling code (``mlflow.pytorch.load_model``; normalised tensors in);
- ``python_function``: dlexp.models.dlexp_pyfunc, copied into the model's ``code/`` folder, which takes raw
  input (a DataFrame of feature columns, image files or arrays) and returns class names and probabilities.

The signature and input example are the pyfunc's (raw input); both models are logged by the training process
after the run's summary metrics, which MLflow then links to them (``Model.log`` copies a run's step-0 metrics
to its model), while the helper process draws the run's pictures (:func:`log_run_models`).
Load: ``mlflow.pyfunc.load_model("runs:/<run id>/model")`` (or ``/ensemble``, or ``models:/NAME@champion``
once registered, dlexp.tracking.registry).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from dlexp.data.protocol import ExperimentData
from dlexp.models import dlexp_pyfunc

log = logging.getLogger(__name__)

MODEL_NAME = "model"
ENSEMBLE_NAME = "ensemble"
EXAMPLE_ROWS = 5
MODEL_ERROR_TAG = "dlexp.model_error"  # why a run has no MLflow models (it finished without them)


class MeanProbabilities(torch.nn.Module):
    """The fold models as one: the mean of their softmax outputs, ``N x classes`` (what the run's
    ``test_acc_ensemble`` scores, dlexp.experiment)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).softmax(dim=1) for member in self.members]).mean(dim=0)


def feature_columns(n: int) -> list[str]:
    """Names of a point table's feature columns (its files have no header): ``x1 .. xn``."""
    return [f"x{i}" for i in range(1, n + 1)]


def preprocessing(data: ExperimentData, outputs: str) -> dict:
    """What dlexp.models.dlexp_pyfunc needs to turn raw input into the network's input."""
    spec = {"class_names": list(data.class_names), "outputs": outputs}
    if len(data.input_shape) == 3:
        return {**spec, "kind": "images", "image_size": list(data.input_shape[1:]),
                "mean": list(data.mean), "std": list(data.std)}
    return {**spec, "kind": "points", "feature_columns": feature_columns(data.n_features)}


def raw_signature(spec: dict) -> ModelSignature:
    """Points: the feature columns (double; the pyfunc reads them as float32 as training did) in, the
    prediction table out. Images: only the output side, since MLflow's input schemas cannot say "a
    column of paths or bytes, or an array" and would turn the arrays away (dlexp_pyfunc checks the input)."""
    inputs = (Schema([ColSpec("double", c) for c in spec["feature_columns"]]) if spec["kind"] == "points"
              else None)
    outputs = Schema([ColSpec("string", "class"), ColSpec("float", "probability"),
                      *[ColSpec("float", f"p.{name}") for name in spec["class_names"]]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def raw_example(data: ExperimentData, spec: dict) -> pd.DataFrame | None:
    """A few test rows as a user would pass them; None for images (their example would be file paths that
    exist only on this machine)."""
    if spec["kind"] != "points":
        return None
    return pd.DataFrame(data.x_test[:EXAMPLE_ROWS].numpy().astype(np.float64), columns=spec["feature_columns"])


@functools.cache
def pip_requirements() -> tuple[str, ...]:
    """What loading needs, pinned as MLflow pins them (given, so MLflow does not load the model in a
    subprocess to infer them: that took seconds per model); read once per process."""
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    return tuple(_get_pinned_requirement(name) for name in ("mlflow", "torch", "torchvision", "pandas", "numpy",
                                                            "pillow"))


@contextlib.contextmanager
def requirements_taken_as_pinned() -> Iterator[None]:
    """MLflow's save without its check that the given requirements match the installed packages
    (``warn_dependency_requirement_mismatches``): it maps every installed distribution's files to its modules
    (``importlib_metadata.packages_distributions``), 0.48 s of CPU the first time in a process, the largest
    part of logging a run's models once ``torch.export`` is loaded (measured, benchmarks/README.md), and it
    cannot find a mismatch in :func:`pip_requirements`, which are the installed versions. MLflow has no
    switch for it; where its module no longer has the name, nothing is changed (the save is only slower)."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    check = getattr(environment, name, None)
    if check is None:
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, check)


def save_model(path: str, mlflow_model: Model, pytorch_model: torch.nn.Module, spec: dict,
               tensor_example: np.ndarray, signature: ModelSignature, input_example=None,
               pip_requirements: list[str] | None = None, **kwargs) -> None:
    """MLflow's custom-flavor hook: the pt2 ``pytorch`` flavor, then dlexp's ``python_function`` over it.

    ``tensor_example``: a batch (> 1 row, so the batch dimension is exported dynamic) of the network's input;
    ``signature`` / ``input_example``: the raw input's (see the module docstring).
    """
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME

    # the tensor signature pt2 needs (batch dimension -1: exported dynamic), given so that MLflow does not run
    # the network once more to infer it; the raw input's signature replaces it below
    tensor_signature = ModelSignature(inputs=Schema([TensorSpec(tensor_example.dtype,
                                                                (-1, *tensor_example.shape[1:]))]))
    with requirements_taken_as_pinned():
        mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, serialization_format="pt2",
                                  signature=tensor_signature, input_example=tensor_example,
                                  pip_requirements=pip_requirements)
    root = Path(path)
    (root / "data" / dlexp_pyfunc.PREPROCESSING_FILE).write_text(json.dumps(spec, indent=2))
    (root / "code").mkdir(exist_ok=True)
    shutil.copy(dlexp_pyfunc.__file__, root / "code" / "dlexp_pyfunc.py")
    # replaces the python_function flavor mlflow.pytorch wrote (tensors in, logits out)
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module="dlexp_pyfunc", data="data", code="code",
                               conda_env=_CONDA_ENV_FILE_NAME, python_env=_PYTHON_ENV_FILE_NAME)
    mlflow_model.signature = signature
    for name in ("input_example.json", "serving_input_example.json"):
        (root / name).unlink(missing_ok=True)
    mlflow_model.saved_input_example_info = None
    if input_example is not None:
        _save_example(mlflow_model, input_example, path)
    mlflow_model.save(str(root / "MLmodel"))


@dataclass
class ModelToLog:
    """One LoggedModel to make: what :func:`log_model` needs."""

    name: str
    network: torch.nn.Module  # a CPU copy in eval mode
    spec: dict
    tensor_example: np.ndarray
    raw_example: pd.DataFrame | None


def models_to_log(best_model: torch.nn.Module, fold_models: list[torch.nn.Module],
                  data: ExperimentData) -> list[ModelToLog]:
    """The run's reported model as ``model`` and (with more than one fold) its folds' ensemble as ``ensemble``.

    The exported networks take what training fed the model: rows through the data's eval transform (images:
    normalised floats); two test rows are the example that ``torch.export`` traces.
    """
    x = data.x_test[:2] if len(data.x_test) >= 2 else data.x_train[:2]
    x = (data.eval_transform(x) if data.eval_transform is not None else x).cpu().numpy()
    wanted = [(MODEL_NAME, best_model, "logits")]
    if len(fold_models) > 1:
        wanted.append((ENSEMBLE_NAME, MeanProbabilities(fold_models), "probabilities"))
    items = []
    for name, network, outputs in wanted:
        spec = preprocessing(data, outputs)
        items.append(ModelToLog(name, copy.deepcopy(network).cpu().eval(), spec, x, raw_example(data, spec)))
    return items


#: the run's tags its LoggedModels get too (where the code came from; MLflow would resolve them again from the
#: process's context, which costs ~0.2 s: it checks for IPython, git, ...)
SOURCE_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
               "mlflow.source.git.branch", "mlflow.source.git.repoURL")


def log_model(item: ModelToLog, run_id: str, experiment_id: str, params: dict[str, str] | None = None,
              tags: dict[str, str] | None = None):
    """Log ``item`` as a LoggedModel of ``run_id`` in ``experiment_id``, with ``params`` and ``tags``;
    returns MLflow's ModelInfo.

    The LoggedModel is created here (``MlflowClient.create_logged_model``) and handed to ``Model.log`` by
    ``model_id``, which then neither resolves the process's context tags nor reads the run's params again;
    ``Model.log`` still links the model to the run and copies the run's step-0 metrics onto it."""
    client = mlflow.MlflowClient()
    model = client.create_logged_model(experiment_id, name=item.name, source_run_id=run_id, params=params,
                                       tags=tags)
    try:
        return Model.log(artifact_path=None, name=item.name, flavor=sys.modules[__name__], run_id=run_id,
                         model_id=model.model_id, pytorch_model=item.network, spec=item.spec,
                         tensor_example=item.tensor_example, signature=raw_signature(item.spec),
                         input_example=item.raw_example, pip_requirements=list(pip_requirements()),
                         validate_serving_input=False)
    except BaseException:  # an export error, Ctrl-C: the model is FAILED in the UI, not left PENDING
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise


def log_models_for(tracking_uri: str, run_id: str, items: list[ModelToLog]) -> list[str]:
    """Log ``items`` on ``run_id`` of the store at ``tracking_uri``, each with the run's
    params and source tags (as MLflow's ``Model.log`` would give them); their model ids."""
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.MlflowClient().get_run(run_id)
    tags = {key: value for key, value in run.data.tags.items() if key in SOURCE_TAGS}
    return [log_model(item, run_id, run.info.experiment_id, run.data.params, tags).model_id for item in items]


def log_run_models(writer, tracking_uri: str, run_id: str, best_model: torch.nn.Module,
                   fold_models: list[torch.nn.Module], data: ExperimentData) -> None:
    """Log the run's models in this process, while the helper process draws the run's pictures and makes
    the writes queued before (dlexp.tracking.background). This process has already paid for most of what a
    first ``torch.export`` needs (creating a torch optimizer imports ``torch._dynamo``, ~1 s of CPU): the
    spiral's two models take ~0.75 s here the first time in a process, ~0.3 s for a sweep's later jobs,
    against ~3 s of CPU in the helper, which would import torch, the export machinery and MLflow's model
    modules anew while its queue held the run's pictures and writes (benchmarks/README.md, "Where the models
    are made"). A model that cannot be exported or logged does not fail the run: a warning says why, and so
    does the tag ``dlexp.model_error``; so does a tracking server that stopped answering earlier in the run
    (``writer.journal`` offline), which is not waited for again."""
    journal = writer.journal
    try:
        if journal is not None and journal.offline:
            raise ConnectionError("the tracking server stopped answering earlier in this run")
        log_models_for(tracking_uri, run_id, models_to_log(best_model, fold_models, data))
    except Exception as error:  # noqa: BLE001 (the run's results stand; the model's absence is said)
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        log.warning("the run's MLflow models could not be logged (%s); its results and model.pt stand", reason)
        # through the writer: a server that went away gets the tag from the run folder's journal (dlexp sync)
        writer.submit(writer.store_call, tracking_uri, "set_tag", run_id, MODEL_ERROR_TAG, reason[:5000])
