"""``ExperimentData``: what training, the pictures and MLflow logging need of a dataset.

Every ``dataset`` config's target returns one. ``PointData`` (point tables, generated spirals) and
``ImageData`` (a CSV of images) both declare it as their base and implement every member, so the
experiment asks the data instead of checking which kind it got: points simply have no groups, no
transforms and nothing to say about their split.

A dataset of one's own: a ``dataset`` config whose ``_target_`` (a function or class, called with the
config's other keys) returns an ExperimentData. The easiest way is to return a
:class:`dlexp.data.points.PointData` (any row shape, not only points) built from four tensors and the class
names; it fills in the rest. :func:`dlexp.data.contract.check_data` checks what it returns as it loads:

- ``x_train`` ``(N, *input_shape)`` and ``x_test`` ``(M, *input_shape)``: float32 values as the model takes
  them (any unit; dlexp does not rescale), or e.g. uint8 images that the transforms turn into float32;
  finite. ``x_train`` is split into the k folds (training and validation); ``x_test`` is only evaluated.
- ``y_train`` ``(N,)`` and ``y_test`` ``(M,)``: ``torch.long`` class indices in ``[0, n_classes)``.
- ``class_names``: ``n_classes >= 2`` names; index ``i`` is ``class_names[i]`` in plots and reports.
- ``groups``: None, or one value per training row (a specimen, a patient, a recording): k-fold never puts
  one group in two folds.
- ``train_transform`` / ``eval_transform``: None, or a function of a batch ``(B, *input_shape)`` returning the
  float32 batch the model sees, for training batches (augmentation) and for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

#: A batch of stored rows -> model inputs (for images: augmentation, float conversion, normalisation).
Transform = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class ExperimentData(Protocol):
    """Train and test rows with class indices, and how to feed and describe them."""

    name: str
    #: points ``N x features`` (float); images ``N x 3 x H x W`` (uint8, see the transforms)
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: ``class_names[i]`` is the label class index ``i`` came from
    class_names: list[str]
    #: each training row's group (an image's specimen): k-fold keeps a group in one fold; None: no groups
    groups: np.ndarray | None
    #: what training batches (``train_transform``) and evaluation (``eval_transform``) pass through; None:
    #: the rows go in as they are
    train_transform: Transform | None
    eval_transform: Transform | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row's shape, what the model is built for."""
        ...

    @property
    def n_features(self) -> int:
        """Values per row (2 for the spiral: its decision boundary can be drawn)."""
        ...

    @property
    def n_classes(self) -> int: ...

    @property
    def grouped(self) -> bool:
        """Whether the test set holds out whole groups (then ``test_acc`` is also ``test_acc_grouped``)."""
        ...

    def describe(self) -> str:
        """One line for the summary: name, sizes, shape, classes."""
        ...

    def split_note(self) -> str | None:
        """How the train/test split was made when that matters to its honesty (the tag ``dlexp.split``);
        None when there is nothing to say."""
        ...
