"""Digests of a dataset's *contents*: which bytes a run trained and was tested on.

A dataset config names its files (``train_path``/``test_path`` of a point table; ``csv`` and ``images`` of an
image set, a folder or a zip); this reads them and hashes their bytes, so an edited file gets a new digest
where the config (and so ``dlexp.tracking.store.config_hash``) stays the same. Generated data has no files:
its config is its content (the config hash covers it), and its arrays are hashed when MLflow is told of them.

Each file is read once per process and version: digests are kept by (path, size, modification time), so a
run's resume check and its logged datasets share one read (hashing a 100 MB zip takes ~0.2 s).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: hex digits kept: MLflow's dataset table holds digests of at most 36 characters (128 bits is plenty to
#: tell two versions of a file apart)
DIGEST_LENGTH = 32
_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex, ``DIGEST_LENGTH`` digits) of a file's bytes, or of a folder's files (relative names and
    bytes, in sorted order). Raises OSError when ``path`` cannot be read."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        digest = hashlib.sha256()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file_digest(file).encode())
        else:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _memo[key] = digest.hexdigest()[:DIGEST_LENGTH]
    return _memo[key]


def combine(parts: list[str]) -> str:
    """One digest of several (order matters)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:DIGEST_LENGTH]


def tensor_digest(*arrays) -> str:
    """Digest of arrays' (numpy or torch, on the CPU) shapes, dtypes and bytes."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
        digest.update(f"{array.shape}{array.dtype}".encode() + array.tobytes())
    return digest.hexdigest()[:DIGEST_LENGTH]


CONTEXT_KEYS = {"training": "train_path", "testing": "test_path"}


def data_files(dataset: DictConfig) -> dict[str, list[Path]]:
    """The files each context (``training``, ``testing``) reads, from the dataset config.

    A point table: ``train_path`` for training, ``test_path`` for testing. Otherwise every config value
    that names an existing file or folder (an image set's CSV and its images, a zip or a folder) serves
    both: the train/test split is made from them by the config's seed. Empty lists for generated data.
    """
    values = OmegaConf.to_container(dataset, resolve=True)
    if all(key in values for key in CONTEXT_KEYS.values()):
        return {context: [Path(str(values[key]))] for context, key in CONTEXT_KEYS.items()}
    files = [Path(value) for key, value in values.items()
             if key != "cache_dir" and isinstance(value, str) and value and os.path.exists(value)]
    if "csv" in values and values.get("images") in (None, "") and values.get("csv"):
        csv = Path(str(values["csv"]))  # the images beside the CSV (dlexp.data.images._images_beside)
        files += [p for p in (csv.with_suffix(".zip"), csv.with_suffix("")) if p.exists()][:1]
    return {context: files for context in CONTEXT_KEYS}


def context_digests(dataset: DictConfig) -> dict[str, str]:
    """``{"training": digest, "testing": digest}`` of the files :func:`data_files` names (``""`` for a
    context without files). Raises OSError when a named file cannot be read."""
    def digest(paths: list[Path]) -> str:
        if len(paths) == 1:
            return file_digest(paths[0])  # a point table's digest is its file's (sha256sum's first digits)
        return combine([file_digest(path) for path in paths]) if paths else ""

    return {context: digest(paths) for context, paths in data_files(dataset).items()}


def data_digest(dataset: DictConfig) -> str:
    """One digest of everything the dataset config reads (``""`` for generated data: its config is its
    content). What a resumed sweep compares: a job whose data changed is trained again."""
    digests = context_digests(dataset)
    return combine(list(digests.values())) if any(digests.values()) else ""
