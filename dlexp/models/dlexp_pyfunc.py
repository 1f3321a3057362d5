"""The ``python_function`` side of a dlexp model logged to MLflow: raw input in, class names and probabilities out.

MLflow loads this module by name (``loader_module: dlexp_pyfunc`` in the model's MLmodel file) from the copy
that travels in the model's ``code/`` folder, so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` works
where dlexp is not installed: it needs only torch, torchvision, numpy, pandas and Pillow. Hence it imports
nothing from dlexp; its image steps are the same torchvision calls training used (dlexp.data.decode,
dlexp.data.image_cache.resize_transform, dlexp.data.image_transforms.BatchTransform), in the same order,
which a test holds to (the pyfunc's test accuracy is the run's, exactly).

The network itself is the model's ``pytorch`` flavor: a ``torch.export`` program (``data/model.pt2``), which
loads without unpickling code. ``preprocessing.json`` beside it says what the input is:

- points: ``{"kind": "points", "feature_columns": ["x1", "x2"], ...}``: a DataFrame with those columns
  (or an ``N x features`` array), float32 as the training file's numbers were read;
- images: ``{"kind": "images", "image_size": [h, w], "mean": [...], "std": [...]}``: a DataFrame with an
  ``image`` column of file paths (or encoded bytes), a list of paths, or a uint8 array ``N x H x W x 3`` or
  ``N x 3 x H x W``; each image is decoded to RGB, resized to ``image_size`` (antialiased, uint8), scaled
  to [0, 1] and normalised by ``mean``/``std``;

and ``"outputs"``: ``logits`` (one fold's model: softmax is applied here) or ``probabilities`` (the fold
models' ensemble, which already averages their softmax outputs).

``predict`` returns a DataFrame, one row per input: ``class`` (the predicted class name), ``probability``
(its probability) and ``p.<class name>`` for every class.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

PREPROCESSING_FILE = "preprocessing.json"
IMAGE_COLUMN = "image"
CHUNK = 256  # rows per forward pass (dlexp.training.loop.EVAL_CHUNK's role)


def _load_pyfunc(path: str, model_config: dict | None = None) -> RawInputModel:
    """MLflow's hook: ``path`` is the model's ``data`` folder (``model.pt2`` and ``preprocessing.json``)."""
    return RawInputModel(Path(path))


class RawInputModel:
    """An exported network plus the preprocessing its training used; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self.spec = json.loads((data_dir / PREPROCESSING_FILE).read_text())
        self.program = torch.export.load(str(data_dir / "model.pt2")).module()
        self.class_names = list(self.spec["class_names"])

    def get_raw_model(self) -> torch.nn.Module:
        """The network (normalised tensors in, logits or probabilities out)."""
        return self.program

    def predict(self, data, params: dict | None = None) -> pd.DataFrame:
        """Class names and probabilities for raw ``data`` (see the module docstring for the forms)."""
        x = self.points(data) if self.spec["kind"] == "points" else self.images(data)
        with torch.no_grad():
            out = torch.cat([self.program(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)]) if len(x) else \
                torch.zeros(0, len(self.class_names))
        probabilities = out.softmax(dim=1) if self.spec["outputs"] == "logits" else out
        p = probabilities.numpy()
        best = p.argmax(axis=1)
        table = pd.DataFrame({"class": [self.class_names[i] for i in best],
                              "probability": p[np.arange(len(p)), best]})
        for i, name in enumerate(self.class_names):
            table[f"p.{name}"] = p[:, i]
        if isinstance(data, pd.DataFrame):
            table.index = data.index
        return table

    def points(self, data) -> torch.Tensor:
        columns = self.spec["feature_columns"]
        if isinstance(data, pd.DataFrame):
            missing = [c for c in columns if c not in data.columns]
            if missing:
                raise ValueError(f"the input has no column {', '.join(missing)}; expected columns {columns}")
            data = data[columns].to_numpy()
        array = np.asarray(data, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != len(columns):
            raise ValueError(f"expected {len(columns)} features per row ({columns}), got shape {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array))

    def images(self, data) -> torch.Tensor:
        from torchvision.transforms import v2

        resize = v2.Resize(tuple(self.spec["image_size"]), antialias=True)
        if isinstance(data, pd.DataFrame):
            if IMAGE_COLUMN not in data.columns:
                raise ValueError(f"the input has no {IMAGE_COLUMN!r} column (image file paths or bytes)")
            data = list(data[IMAGE_COLUMN])
        if isinstance(data, np.ndarray | torch.Tensor) and not (isinstance(data, np.ndarray) and data.dtype == object):
            batch = torch.as_tensor(np.asarray(data))
            if batch.ndim != 4:
                raise ValueError(f"expected an image array N x H x W x 3 or N x 3 x H x W, got shape {batch.shape}")
            if batch.shape[1] != 3 and batch.shape[-1] == 3:
                batch = batch.permute(0, 3, 1, 2)
            images = [resize(image.to(torch.uint8)) for image in batch]
        else:
            images = [resize(decode_rgb(item)) for item in data]
        if not images:
            return torch.zeros(0, 3, *self.spec["image_size"])
        finish = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(list(self.spec["mean"]), list(self.spec["std"]))])
        return finish(torch.stack(images))


def decode_rgb(item) -> torch.Tensor:
    """A file path or encoded image bytes -> uint8 RGB ``3 x H x W`` (dlexp.data.decode.decode_rgb's steps:
    torchvision's decoder, PIL for what it cannot read, 16-bit scaled to 8)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    if isinstance(item, str | os.PathLike):
        item = Path(item).read_bytes()
    data = bytes(item)
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as pil:
            image = v2.functional.pil_to_tensor(pil.convert("RGB"))
    if image.dtype != torch.uint8:
        image = v2.functional.to_dtype(image, torch.uint8, scale=True)
    return image
