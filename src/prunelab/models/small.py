"""Small models sized for the embedded data sets, so a whole study runs on a laptop CPU.

* :func:`mlp`: Linear-BN-ReLU hidden layers on the flattened input (digits: 64 pixels).
* :func:`cnn`: conv3x3-BN-ReLU layers with a 2x2 max pool, global average pool, linear (digits:
  1x8x8 images).
* :func:`cnn1d`: the same in 1-D for MNIST-1D (1x40 sequences, channels first).
* :func:`gru`: a GRU sequence classifier reading the last output (MNIST-1D as 40 steps x 1 feature).

Every hidden width is explicit (``hidden_widths`` / ``widths``); each is one structured width unit,
masked after its BatchNorm like the zoo's larger families. PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.common import check_int, check_widths, out_width, reset_default_
from prunelab.models.registry import WidthUnit, register_family, register_model
from prunelab.models.widths import scale_units


class LinearBNReLU(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU()


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers, planes = [], in_features
        for width in hidden:
            layers.append(LinearBNReLU(planes, width))
            planes = width
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.flatten(x)))


def mlp(hidden_widths: Sequence[int] = (128, 64), in_features: int = 64, num_classes: int = 10) -> MLP:
    """Build an MLP on ``in_features`` inputs (any input shape is flattened)."""
    hidden = check_widths("hidden_widths", hidden_widths)
    model = MLP(check_int("in_features", in_features), hidden, check_int("num_classes", num_classes))
    init(model)
    return model


def mlp_units(model: MLP) -> list[WidthUnit]:
    return [WidthUnit(f"hidden.{i}", f"hidden.{i}.bn", f"hidden.{i}.fc", "hidden_widths", i, out_width(layer.fc))
            for i, layer in enumerate(model.hidden)]


def mlp_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_features", 64)),)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel: int, stride: int, dims: int) -> None:
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv = conv(in_planes, out_planes, kernel, stride, kernel // 2)
        self.bn = bn(out_planes)
        self.relu = nn.ReLU()


class ConvNet(nn.Module):
    """``features`` (conv-BN-ReLU layers, max pools after the layers in ``pool_after``), global
    average pool, linear. ``dims`` = 1 or 2."""

    def __init__(self, in_channels: int, widths: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                 pool_after: Sequence[int], num_classes: int, dims: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        planes = in_channels
        for i, (width, k, s) in enumerate(zip(widths, kernels, strides)):
            layers.append(ConvBNReLU(planes, width, k, s, dims))
            if i in pool_after:
                layers.append(nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2))
            planes = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def cnn(widths: Sequence[int] = (16, 32, 64), in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """A 2-D CNN for 8x8 digits: 3x3 convs, a 2x2 max pool after the second conv."""
    widths = check_widths("widths", widths)
    model = ConvNet(check_int("in_channels", in_channels), widths, [3] * len(widths), [1] * len(widths), (1,),
                    check_int("num_classes", num_classes), dims=2)
    init(model)
    return model


def cnn1d(widths: Sequence[int] = (32, 64, 64), in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """A 1-D CNN for MNIST-1D: kernel 5 then 3s, stride 2 from the second conv on."""
    widths = check_widths("widths", widths)
    kernels = [5] + [3] * (len(widths) - 1)
    strides = [1] + [2] * (len(widths) - 1)
    model = ConvNet(check_int("in_channels", in_channels), widths, kernels, strides, (),
                    check_int("num_classes", num_classes), dims=1)
    init(model)
    return model


def conv_units(model: ConvNet) -> list[WidthUnit]:
    out = []
    for j, layer in enumerate(model.features):
        if isinstance(layer, ConvBNReLU):
            path = f"features.{j}"
            out.append(WidthUnit(path, f"{path}.bn", f"{path}.conv", "widths", len(out), out_width(layer.conv)))
    return out


def cnn_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 1)), 8, 8)


def cnn1d_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 1)), 40)


class GRUClassifier(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def gru(input_size: int = 1, hidden_size: int = 64, num_layers: int = 1, num_classes: int = 10) -> GRUClassifier:
    """A GRU over (batch, T, ``input_size``) sequences, classifying from the last step."""
    model = GRUClassifier(check_int("input_size", input_size), check_int("hidden_size", hidden_size),
                          check_int("num_layers", num_layers), check_int("num_classes", num_classes))
    init(model)
    return model


def gru_shape(kwargs: dict) -> tuple[int, ...]:
    return (40, int(kwargs.get("input_size", 1)))


def init(model: nn.Module) -> None:
    """PyTorch's default rule for every layer (BN running statistics reset too)."""
    reset_default_(model)


# The MLP's and CNNs' width units are all their widths.
register_family("mlp", mlp, units=mlp_units, init=init, input_shape=(64,), task="vector", shape_of=mlp_shape,
                scale_width=scale_units, doc="MLP with BN (digits)")
register_family("cnn", cnn, units=conv_units, init=init, input_shape=(1, 8, 8), shape_of=cnn_shape,
                scale_width=scale_units, doc="small 2-D CNN (digits, 1x8x8)")
register_family("cnn1d", cnn1d, units=conv_units, init=init, input_shape=(1, 40), task="sequence",
                shape_of=cnn1d_shape, scale_width=scale_units, doc="small 1-D CNN (MNIST-1D, 1x40)")
register_family("gru", gru, init=init, input_shape=(40, 1), task="sequence", shape_of=gru_shape,
                doc="GRU sequence classifier (MNIST-1D as 40 steps x 1)")
register_model("mlp", "mlp", in_features=64, doc="MLP 64-128-64-10 (digits)")
register_model("cnn", "cnn", in_channels=1, doc="CNN 16-32-64 (digits, 1x8x8)")
register_model("cnn1d", "cnn1d", in_channels=1, doc="1-D CNN 32-64-64 (MNIST-1D, 1x40)")
register_model("gru", "gru", input_size=1, doc="GRU, hidden 64 (MNIST-1D, 40x1)")
