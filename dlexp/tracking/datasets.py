"""A run's training and test data as MLflow datasets (``mlflow.log_inputs``): name, source, content digest.

The runs table of MLflow's UI shows them in its *Dataset* column, and ``mlflow.search_runs`` returns them
(``inputs.dataset_inputs``). The digest is dlexp.data.digest's, of the files' bytes (an image set: its CSV
and its images); generated data is digested from its arrays. The same data digest, as the tag
``dlexp.data_digest``, is what a resumed sweep compares (dlexp.sweeps.sweep).
"""

from __future__ import annotations

import time

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from omegaconf import DictConfig

from dlexp.data.digest import data_digest, data_files, tensor_digest
from dlexp.data.protocol import ExperimentData

DATA_DIGEST_TAG = "dlexp.data_digest"


def dataset_source(paths: list, dataset: DictConfig):
    """MLflow's source of a dataset: its file (its first file for an image set: the CSV), or the code that
    generated it."""
    if paths:
        from mlflow.data.sources import LocalArtifactDatasetSource

        return LocalArtifactDatasetSource(str(paths[0].resolve()))
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource({"generator": str(dataset.get("_target_", "")),
                              **{str(k): str(v) for k, v in dataset.items() if k != "_target_"}})


DATASET_ATTEMPTS = 4  # a dataset row another job inserted at the same moment


def log_datasets(dataset_cfg: DictConfig, data: ExperimentData, digests: dict[str, str]) -> None:
    """Log the run's ``training`` and ``testing`` data on the active run.

    ``digests``: dlexp.data.digest.context_digests of ``dataset_cfg`` (empty strings for generated data,
    which then gets the digest of its arrays). Names are ``<data name>-train`` / ``-test``.
    """
    files = data_files(dataset_cfg)
    datasets, contexts = [], []
    for context, x, y, suffix in (("training", data.x_train, data.y_train, "train"),
                                  ("testing", data.x_test, data.y_test, "test")):
        digest = digests.get(context) or tensor_digest(x, y)
        datasets.append(MetaDataset(dataset_source(files[context], dataset_cfg), name=f"{data.name}-{suffix}",
                                    digest=digest))
        contexts.append(context)
    # Jobs started together (a SLURM array, the parallel launcher) log the same dataset at once: the store's
    # first insert of its row wins and the others fail on its unique key (seen on a PostgreSQL server:
    # "duplicate key value violates unique constraint dataset_pk"); once that row is committed, the same call
    # finds it and only links it to this run.
    for attempt in range(DATASET_ATTEMPTS):
        try:
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(datasets))
            return
        except Exception as error:
            text = str(error).lower()
            if attempt == DATASET_ATTEMPTS - 1 or not ("unique" in text or "duplicate" in text):
                raise
            time.sleep(0.5 * (attempt + 1))


def data_changed(run, dataset_cfg: DictConfig) -> str | None:
    """How the data of ``dataset_cfg`` differs from what ``run`` trained on (its ``dlexp.data_digest`` tag),
    as a few words for the resume line; None when it is the same (or generated: its config is its content).

    A run from before data digests (no tag) counts as changed: what it read cannot be told.
    """
    try:
        now = data_digest(dataset_cfg)
    except OSError:
        return None  # a file is missing: the job fails on it with its own clear line
    before = run.data.tags.get(DATA_DIGEST_TAG, "")
    if now == before:
        return None
    files = sorted({str(path) for paths in data_files(dataset_cfg).values() for path in paths})
    return f"{DATA_DIGEST_TAG} {before[:12] or 'none'} -> {now[:12] or 'none'} ({', '.join(files)})"
