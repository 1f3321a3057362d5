"""A model of one's own for dlexp: built as ``TinyNet(input_shape=..., num_classes=..., width=..., depth=...)``."""

import math

from torch import nn


class TinyNet(nn.Module):
    """Flatten, ``depth`` hidden layers of ``width`` units with tanh, then logits (N, num_classes)."""

    def __init__(self, input_shape, num_classes, width=16, depth=1):
        super().__init__()
        size, layers = math.prod(input_shape), [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.Tanh()]
            size = width
        self.net = nn.Sequential(*layers, nn.Linear(size, num_classes))

    def forward(self, x):
        return self.net(x)
