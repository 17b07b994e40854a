"""Torch networks trained by :mod:`hogwild_mts.engines.networks`: MLP, CNN and LeNet-5.

Every network is built from the data: ``input_shape = (C, H, W)`` and ``classes`` (>= 2), and maps
a float batch ``(N, C, H, W)`` to logits ``(N, classes)``.  None has buffers (no batch norm), so
the whole state is the parameter vector the Hogwild! workers share.  A shape a network cannot
take (too small after its convolutions and poolings) raises ValueError naming the shape and the
minimum, before anything is trained.
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["MLP", "CNN", "LeNet5", "NETWORKS", "build_network", "check_input_shape"]


def check_input_shape(input_shape, classes) -> tuple[tuple[int, int, int], int]:
    """Return ``(C, H, W), classes`` as ints, or raise ValueError naming what is wrong."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    return shape, classes


def _require_size(model: str, input_shape, minimum: int) -> None:
    _, height, width = input_shape
    if height < minimum or width < minimum:
        raise ValueError(f"model {model!r} needs images of at least {minimum}x{minimum} pixels "
                         f"(height x width), got input shape (C, H, W) = {tuple(input_shape)}")


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden size -> Linear to the classes.  Any image size."""

    def __init__(self, input_shape, classes: int, hidden=(128,)):
        super().__init__()
        input_shape, classes = check_input_shape(input_shape, classes)
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive ints, got {hidden!r}")
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, images):
        return self.layers(images)


class CNN(nn.Module):
    """Two stages of 3x3 convolution (padding 1) -> ReLU -> 2x2 max-pool, then one hidden fully
    connected layer.  Needs images of at least 4x4 pixels (two halvings)."""

    MIN_SIZE = 4

    def __init__(self, input_shape, classes: int, channels=(16, 32), hidden: int = 128):
        super().__init__()
        (c, h, w), classes = check_input_shape(input_shape, classes)
        _require_size("cnn", (c, h, w), self.MIN_SIZE)
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, first, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        flat = second * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                        nn.Linear(hidden, classes))

    def forward(self, images):
        return self.classifier(self.features(images))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling: 5x5 conv (6, padding 2) -> pool ->
    5x5 conv (16) -> pool -> 120 -> 84 -> classes.  Needs images of at least 12x12 pixels."""

    MIN_SIZE = 12

    def __init__(self, input_shape, classes: int):
        super().__init__()
        (c, h, w), classes = check_input_shape(input_shape, classes)
        _require_size("lenet", (c, h, w), self.MIN_SIZE)
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))

    def forward(self, images):
        return self.classifier(self.features(images))


NETWORKS = {"mlp": MLP, "cnn": CNN, "lenet": LeNet5}


def build_network(name: str, input_shape, classes: int) -> nn.Module:
    """The registered network ``name`` (mlp, cnn, lenet) for this input shape and class count."""
    try:
        cls = NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(NETWORKS)}") from None
    return cls(input_shape, classes)
