"""The models of the comparisons: MLPs with configurable widths and activation, and a small 1-D CNN."""
from __future__ import annotations

from torch import nn

from ..errors import CommandError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
MODELS = ("mlp", "cnn")


def mlp(num_features: int, widths: tuple[int, ...], num_classes: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = num_features
    for w in widths:
        layers += [nn.Linear(width_in, w), ACTIVATIONS[activation]()]
        width_in = w
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)


class Cnn1d(nn.Module):
    """Three strided 1-D convolutions and a linear read-out, after the MNIST-1D paper's small CNN."""

    def __init__(self, length: int, num_classes: int, channels: int = 25, activation: str = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), act(),
        )
        out_len = length
        for k in (5, 3, 3):
            out_len = (out_len + 2 - k) // 2 + 1
        self.head = nn.Linear(channels * out_len, num_classes)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


def build(name: str, num_features: int, num_classes: int, widths: tuple[int, ...], activation: str) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise CommandError(f"unknown activation {activation!r} (expected one of: {', '.join(ACTIVATIONS)})")
    if name == "mlp":
        return mlp(num_features, widths, num_classes, activation)
    if name == "cnn":
        return Cnn1d(num_features, num_classes, activation=activation)
    raise CommandError(f"unknown model {name!r} (expected one of: {', '.join(MODELS)})")
