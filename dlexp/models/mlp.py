"""A multi-layer perceptron that maps feature vectors to class logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from dlexp.errors import DlexpError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise DlexpError(
            f"model.activation={name!r}: unknown activation; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def check_widths(key: str, widths: Sequence[int], allow_empty: bool = False) -> list[int]:
    """Layer widths from the config as ints; a clear error for an empty list or a width below 1."""
    widths = list(widths)
    if (not widths and not allow_empty) or any(not isinstance(w, int) or w < 1 for w in widths):
        raise DlexpError(f"{key}={widths}: expected a non-empty list of positive layer widths")
    return widths


def dense_layers(in_features: int, hidden_dims: Sequence[int], num_classes: int, activation: str,
                 dropout: float) -> list[nn.Module]:
    """Linear layers ``in_features -> hidden_dims... -> num_classes`` with activations (and dropout)."""
    if not 0.0 <= dropout < 1.0:
        raise DlexpError(f"model.dropout={dropout}: expected a value in [0, 1)")
    layers: list[nn.Module] = []
    width_in = in_features
    for width in hidden_dims:
        layers += [nn.Linear(width_in, width), make_activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return layers


class MLP(nn.Sequential):
    """``features -> hidden_dims[0] -> ... -> num_classes``, activation after every hidden layer.

    ``input_shape`` (``(n_features,)`` for point data; anything else is flattened) and ``num_classes``
    come from the dataset at run time; the config sets the rest.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_dims: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        hidden_dims = check_widths("model.hidden_dims", hidden_dims)
        layers = dense_layers(math.prod(input_shape), hidden_dims, num_classes, activation, dropout)
        if len(input_shape) > 1:
            layers.insert(0, nn.Flatten())
        super().__init__(*layers)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
