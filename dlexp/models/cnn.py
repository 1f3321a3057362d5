"""A small configurable CNN: conv blocks (conv -> activation -> optional max-pool), then dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.mlp import check_widths, dense_layers, make_activation


def _per_layer(key: str, value, n: int) -> list:
    """One entry per conv layer: a scalar/pair repeats, a list must have one entry per layer.

    A kernel of ``[3, 2]`` means height 3, width 2 when it is not a list of per-layer entries.
    """
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) == 2 and all(isinstance(v, int) for v in value) and n != 2:
        return [tuple(value)] * n
    if len(value) != n:
        raise DlexpError(f"{key}={value}: expected one entry per conv layer ({n})")
    return [v if isinstance(v, int) else tuple(v) for v in value]


class ConvNet(nn.Module):
    """``input_shape = (channels, height, width)`` -> conv blocks -> flatten -> dense -> class logits.

    Per-layer settings (``kernel_sizes``, ``strides``, ``paddings``) take one value for all layers or a
    list with one entry per layer; an entry may be an int or a ``[height, width]`` pair.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        kernel_sizes=3,
        strides=1,
        paddings=1,
        pool: int = 2,
        hidden_dims: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise DlexpError(f"model: ConvNet needs (channels, height, width) inputs, got shape {tuple(input_shape)}")
        channels = check_widths("model.channels", channels)
        n = len(channels)
        kernels = _per_layer("model.kernel_sizes", kernel_sizes, n)
        strides = _per_layer("model.strides", strides, n)
        paddings = _per_layer("model.paddings", paddings, n)
        blocks: list[nn.Module] = []
        width_in = input_shape[0]
        for width, kernel, stride, padding in zip(channels, kernels, strides, paddings, strict=True):
            blocks += [nn.Conv2d(width_in, width, kernel, stride, padding), make_activation(activation)]
            if pool > 1:
                blocks.append(nn.MaxPool2d(pool))
            width_in = width
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            try:
                flat = self.features(torch.zeros(1, *input_shape)).numel()
            except RuntimeError as error:
                raise DlexpError(
                    f"model: the conv layers shrink a {tuple(input_shape)} input to nothing ({error}); "
                    "use a larger image size or fewer/smaller strides and pools"
                ) from None
        hidden_dims = check_widths("model.hidden_dims", hidden_dims, allow_empty=True)
        self.classifier = nn.Sequential(nn.Flatten(), *dense_layers(flat, hidden_dims, num_classes,
                                                                     activation, dropout))
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
