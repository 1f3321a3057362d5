"""A multi-layer perceptron that maps feature vectors to class logits."""

from __future__ import annotations

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


class MLP(nn.Sequential):
    """``in_features -> hidden_dims[0] -> ... -> num_classes``, activation after every hidden layer.

    ``in_features`` and ``num_classes`` come from the dataset at run time; the config sets the rest.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        hidden_dims = list(hidden_dims)
        if not hidden_dims or any(int(width) < 1 for width in hidden_dims):
            raise DlexpError(
                f"model.hidden_dims={hidden_dims}: expected a non-empty list of positive layer widths"
            )
        if not 0.0 <= dropout < 1.0:
            raise DlexpError(f"model.dropout={dropout}: expected a value in [0, 1)")
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden_dims:
            layers += [nn.Linear(width_in, int(width)), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = int(width)
        layers.append(nn.Linear(width_in, num_classes))
        super().__init__(*layers)
        self.in_features = in_features
        self.num_classes = num_classes
