"""The dataset contract (:class:`dlexp.data.protocol.ExperimentData`), checked as the data is loaded.

A dataset class of one's own gets one line naming its target and the member that is wrong, instead of a
shape error deep inside training or a plot.
"""

from __future__ import annotations

import numpy as np
import torch

from dlexp.data.protocol import ExperimentData
from dlexp.errors import DlexpError

#: What the experiment reads of a dataset (ExperimentData's members).
MEMBERS = ("name", "x_train", "y_train", "x_test", "y_test", "class_names", "groups", "train_transform",
           "eval_transform", "input_shape", "n_features", "n_classes", "grouped", "describe", "split_note")


def check_data(data: object, target: str = "dataset") -> ExperimentData:
    """Return ``data`` if it keeps the ExperimentData contract, else raise :class:`DlexpError` in one line.

    Checked: every member exists; ``x_train``/``x_test`` are tensors with the same row shape, equal to
    ``input_shape``, float32 (or any dtype when ``eval_transform`` turns them into float32, as images'
    uint8 do) and finite; ``y_train``/``y_test`` are int64 (``torch.long``) vectors of one class index per
    row in ``[0, n_classes)``; ``n_classes == len(class_names) >= 2``; ``groups`` is None or one value per
    training row. ``target`` (the config's ``_target_``) names the data in the messages.
    """
    where = f"dataset: {target}"
    missing = [m for m in MEMBERS if not hasattr(data, m)]
    if missing:
        raise DlexpError(f"{where} returned {type(data).__name__}, which lacks {', '.join(missing)}; expected an "
                         "ExperimentData (dlexp/data/protocol.py; subclass dlexp.data.points.PointData to get "
                         "them all)")
    for part in ("x_train", "y_train", "x_test", "y_test"):
        if not isinstance(getattr(data, part), torch.Tensor):
            raise DlexpError(f"{where}: {part} is {type(getattr(data, part)).__name__}; expected a torch.Tensor")
    shape = tuple(int(v) for v in data.input_shape)
    for x, y, part in ((data.x_train, data.y_train, "train"), (data.x_test, data.y_test, "test")):
        if tuple(x.shape[1:]) != shape:
            raise DlexpError(f"{where}: x_{part} has rows of shape {tuple(x.shape[1:])}, but input_shape is "
                             f"{shape}; expected x_{part} of shape (N, *input_shape)")
        if y.dtype != torch.long or y.dim() != 1:
            raise DlexpError(f"{where}: y_{part} is {y.dtype} of shape {tuple(y.shape)}; expected class indices "
                             "as a torch.long vector (N,)")
        if len(y) != len(x):
            raise DlexpError(f"{where}: {len(x)} rows in x_{part} but {len(y)} labels in y_{part}; expected one "
                             "label per row")
        if data.eval_transform is None and x.dtype != torch.float32:
            raise DlexpError(f"{where}: x_{part} is {x.dtype}; expected float32 (or an eval_transform that "
                             "makes float32 batches of it)")
        if x.is_floating_point() and not torch.isfinite(x).all():
            row = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero()[0])
            raise DlexpError(f"{where}: x_{part} row {row} holds NaN or infinite values; expected finite values")
    if len(data.y_train) == 0:
        raise DlexpError(f"{where}: no training rows")
    names = list(data.class_names)
    if data.n_classes != len(names) or len(names) < 2:
        raise DlexpError(f"{where}: n_classes={data.n_classes} with class_names {names}; expected n_classes == "
                         "len(class_names) >= 2")
    for y, part in ((data.y_train, "train"), (data.y_test, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise DlexpError(f"{where}: y_{part} holds class index {bad}; expected indices 0..{len(names) - 1} "
                             f"into class_names")
    if data.groups is not None and len(np.asarray(data.groups)) != len(data.y_train):
        raise DlexpError(f"{where}: {len(np.asarray(data.groups))} groups for {len(data.y_train)} training rows; "
                         "expected one group per training row, or groups=None")
    return data
