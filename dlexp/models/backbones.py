"""torchvision classification models (resnet18, mobilenet_v3_small, ...) with a new head for our classes.

``weights`` is a torchvision weights name such as ``IMAGENET1K_V1`` or ``DEFAULT`` (downloaded once into
torch's cache on first use, so it needs the internet then) or None for random initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import nn

from dlexp.errors import DlexpError


def _replace_last_linear(model: nn.Module, num_classes: int) -> str:
    """Swap the model's final ``nn.Linear`` (resnet's ``fc``, mobilenet's ``classifier[-1]``, ...) and
    return its name."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise DlexpError(f"model: {type(model).__name__} has no final linear layer to replace")
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, nn.Linear(old.in_features, num_classes))
    return last


class FrozenBackbone(nn.Module):
    """A torchvision model of which only the new head trains: every other layer is frozen.

    Frozen means no gradients and eval mode at all times, so BatchNorm keeps its running statistics and
    dropout stays off whatever ``train()`` says; ``requires_grad=False`` alone would still let BatchNorm
    update its statistics on every training batch.
    """

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(head + "."))
        self.train()

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(mode)
        self.model.eval()
        self.model.get_submodule(self.head).train(mode)
        return self

    def forward(self, x):
        return self.model(x)


def torchvision_classifier(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    weights: str | None = None,
    freeze: bool = False,
) -> nn.Module:
    """torchvision's ``name`` with ``weights`` (or none), its last linear layer replaced for ``num_classes``.

    ``freeze=True`` trains only that new head (sensible with pretrained weights): see FrozenBackbone.
    """
    if name not in (names := torchvision.models.list_models(module=torchvision.models)):
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        raise DlexpError(f"model.name={name!r}: not a torchvision classification model; "
                         f"{f'did you mean {close[0]}? ' if close else ''}expected one of {', '.join(names)}")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise DlexpError(f"model: {name} needs RGB (3, height, width) inputs, got shape {tuple(input_shape)}")
    if weights is not None:
        try:
            torchvision.models.get_model_weights(name)[weights]
        except KeyError:
            choices = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
            raise DlexpError(f"model.weights={weights!r}: {name} has {choices}, DEFAULT or null") from None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except OSError as error:  # URLError and friends: no internet and nothing in torch's cache
        raise DlexpError(f"model.weights={weights}: could not download {name}'s weights ({error}); "
                         "download them once with internet or use model.weights=null") from None
    head = _replace_last_linear(model, num_classes)
    return FrozenBackbone(model, head) if freeze else model
