"""Torch networks trained by :mod:`hogwild_mts.engines.networks`: MLP, CNN (2-D for images, 1-D
for signals) and LeNet-5.

Every network is built from the data: ``input_shape`` (one row's shape without the batch
dimension) and ``outputs`` (>= 1: the classes of a cross-entropy task, or the values per target
row of an MSE task); it maps a float batch ``(N, *input_shape)`` to ``(N, outputs)``.  None has
buffers (no batch norm), so the whole state is the parameter vector the Hogwild! workers share.
A shape a network cannot take (too small after its convolutions and poolings, or of the wrong
rank) raises ValueError naming the shape and what is allowed, before anything is trained.
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["MLP", "CNN", "CNN1D", "LeNet5", "NETWORKS", "build_network", "cnn", "check_input_shape"]


def check_input_shape(input_shape, outputs) -> tuple[tuple[int, ...], int]:
    """Return ``input_shape, outputs`` as a tuple of positive ints and an int >= 1, or raise
    ValueError naming what is wrong."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints (one row's shape), "
                         f"got {input_shape!r}")
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
        raise ValueError(f"outputs (classes) must be an integer >= 1, got {outputs!r}")
    return shape, outputs


def _image_shape(model: str, input_shape, minimum: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image input at least ``minimum`` pixels high and wide, or ValueError."""
    if len(input_shape) != 3:
        raise ValueError(f"model {model!r} takes images of shape (channels, height, width), "
                         f"got input shape {tuple(input_shape)}")
    _, height, width = input_shape
    if height < minimum or width < minimum:
        raise ValueError(f"model {model!r} needs images of at least {minimum}x{minimum} pixels "
                         f"(height x width), got input shape (C, H, W) = {tuple(input_shape)}")
    return input_shape


def is_signal(input_shape) -> bool:
    """True for 1-D signals: ``(C, L)``, or ``(C, 1, L)`` (an image one pixel high, as MNIST-1D loads)."""
    return len(input_shape) == 2 or (len(input_shape) == 3 and input_shape[1] == 1)


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden size -> Linear to the outputs.  Any input shape."""

    def __init__(self, input_shape, outputs: int, hidden=(128,)):
        super().__init__()
        input_shape, outputs = check_input_shape(input_shape, outputs)
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive ints, got {hidden!r}")
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs):
        return self.layers(inputs)


class CNN(nn.Module):
    """Two stages of 3x3 convolution (padding 1) -> ReLU -> 2x2 max-pool, then one hidden fully
    connected layer.  Images (C, H, W) of at least 4x4 pixels (two halvings)."""

    MIN_SIZE = 4

    def __init__(self, input_shape, outputs: int, channels=(16, 32), hidden: int = 128):
        super().__init__()
        input_shape, outputs = check_input_shape(input_shape, outputs)
        c, h, w = _image_shape("cnn", input_shape, self.MIN_SIZE)
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, first, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        flat = second * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                        nn.Linear(hidden, outputs))

    def forward(self, images):
        return self.classifier(self.features(images))


class CNN1D(nn.Module):
    """The 1-D counterpart of :class:`CNN` for signals (C, L) or (C, 1, L), e.g. MNIST-1D's 40
    samples: two stages of width-5 convolution (padding 2) -> ReLU -> max-pool by 2, then one
    hidden fully connected layer.  Signals of at least 4 samples."""

    MIN_LENGTH = 4

    def __init__(self, input_shape, outputs: int, channels=(16, 32), hidden: int = 128):
        super().__init__()
        input_shape, outputs = check_input_shape(input_shape, outputs)
        if not is_signal(input_shape) or input_shape[-1] < self.MIN_LENGTH:
            raise ValueError(f"model 'cnn' on signals takes (channels, length) or (channels, 1, "
                             f"length) with length >= {self.MIN_LENGTH}, got input shape {input_shape}")
        c, length = input_shape[0], input_shape[-1]
        first, second = channels
        self.signal_shape = (c, length)
        self.features = nn.Sequential(
            nn.Conv1d(c, first, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(first, second, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(second * (length // 4), hidden),
                                        nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, signals):
        return self.classifier(self.features(signals.reshape((-1,) + self.signal_shape)))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling: 5x5 conv (6, padding 2) -> pool ->
    5x5 conv (16) -> pool -> 120 -> 84 -> outputs.  Images of at least 12x12 pixels."""

    MIN_SIZE = 12

    def __init__(self, input_shape, outputs: int):
        super().__init__()
        input_shape, outputs = check_input_shape(input_shape, outputs)
        c, h, w = _image_shape("lenet", input_shape, self.MIN_SIZE)
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, outputs))

    def forward(self, images):
        return self.classifier(self.features(images))


def cnn(input_shape, outputs: int) -> nn.Module:
    """The ``cnn`` model: :class:`CNN1D` for signals (see :func:`is_signal`), :class:`CNN` for images."""
    input_shape, outputs = check_input_shape(input_shape, outputs)
    return (CNN1D if is_signal(input_shape) else CNN)(input_shape, outputs)


NETWORKS = {"mlp": MLP, "cnn": cnn, "lenet": LeNet5}  # name -> f(input_shape, outputs)


def build_network(name: str, input_shape, outputs: int) -> nn.Module:
    """The registered network ``name`` (mlp, cnn, lenet) for this input shape and output count."""
    try:
        factory = NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(NETWORKS)}") from None
    return factory(input_shape, outputs)
