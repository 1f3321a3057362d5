"""Losses on class logits: one wrapper adapts any torch loss to class-index targets.

Cross-entropy takes logits and class indices as they are. Regression-style losses (Huber, MSE, smooth L1)
compare probabilities with one-hot targets, and NLL wants log-probabilities; :class:`ClassificationLoss`
does that conversion in this one place, so every loss config is just a torch loss plus two switches.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dlexp.errors import DlexpError

INPUTS = ("logits", "softmax", "log_softmax")
TARGETS = ("index", "one_hot")


class ClassificationLoss(nn.Module):
    """``criterion(transform(logits), encode(targets))``.

    Args:
        criterion: a torch loss module (``reduction='mean'``).
        inputs: what the criterion receives: raw ``logits``, ``softmax`` probabilities or ``log_softmax``.
        targets: class ``index`` tensors, or ``one_hot`` float vectors for regression-style losses.
    """

    def __init__(self, criterion: nn.Module, inputs: str = "logits", targets: str = "index") -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise DlexpError(f"loss.inputs={inputs!r}: expected one of {', '.join(INPUTS)}")
        if targets not in TARGETS:
            raise DlexpError(f"loss.targets={targets!r}: expected one of {', '.join(TARGETS)}")
        self.criterion = criterion
        self.inputs = inputs
        self.targets = targets

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.inputs == "softmax":
            prediction = logits.softmax(dim=-1)
        elif self.inputs == "log_softmax":
            prediction = logits.log_softmax(dim=-1)
        else:
            prediction = logits
        if self.targets == "one_hot":
            target = F.one_hot(target, num_classes=logits.shape[-1]).to(prediction.dtype)
        return self.criterion(prediction, target)
