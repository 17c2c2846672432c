"""Plain PyTorch networks. They know nothing of Lightning, DVC or MLflow."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnlab.models.pooling import MaxPool2d

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# Inference (validation, test, evaluate) runs a network on at most this many samples at a time:
# a CNN's activations for a 1000-image batch take 273 MB of memory, for 256 images 102 MB. Each
# sample's logits do not depend on how many others share its piece, so the results are the same.
INFERENCE_PIECE = 256


def forward_in_pieces(net, x: torch.Tensor, piece: int = INFERENCE_PIECE) -> torch.Tensor:
    """``net(x)`` computed ``piece`` samples at a time (call it under no_grad: the pieces' graphs
    would otherwise all be kept)."""
    if len(x) <= piece:
        return net(x)
    return torch.cat([net(x[i : i + piece]) for i in range(0, len(x), piece)])


# Devices whose convolution kernels run faster on channels-last (NHWC) tensors: CUDA's, and the
# CPU's oneDNN. A training step of the E3 CNN at batch 128 on the 2-core CPU took 98-107 ms on
# NCHW tensors and 88-90 ms on NHWC ones; mnist_cnn's 4-epoch fit 186 s and 152 s. (MPS: not measured.)
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


def prefers_channels_last(net: nn.Module, device: torch.device | str) -> bool:
    """Whether ``net`` should train channels-last on ``device``: it convolves, and the device's
    kernels are faster that way."""
    convolutional = any(isinstance(m, nn.Conv2d) for m in net.modules())
    return convolutional and torch.device(device).type in CHANNELS_LAST_DEVICES


def _flat_dim(input_shape: Sequence[int]) -> int:
    return math.prod(input_shape)


class LinearClassifier(nn.Module):
    """One affine map from the flattened input to the class logits (logistic regression)."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Fully connected layers with one activation between them and optional dropout."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden_sizes: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_dim(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two convolution/ReLU/max-pool blocks (computed as convolution, pool, ReLU), then a hidden
    dense layer.

    The defaults are reference experiment E3: conv 1→32 and 32→64 (3×3, padding 1),
    dropout 0.25, dense 3136→128, dropout 0.5, dense 128→10: 421,642 parameters.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        hidden_size: int = 128,
        conv_dropout: float = 0.25,
        dropout: float = 0.5,
    ):
        super().__init__()
        in_ch, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_ch in channels:
            # Pooling before the ReLU: max pooling and ReLU commute (both keep the largest value,
            # ReLU clamps it), and the pooled window's first maximum is the one the ReLU'd
            # window would pick whenever it is positive; where it is not, the ReLU zeroes the
            # gradient either way. So the values and gradients are exactly conv/ReLU/pool's, and
            # the ReLU and its backward touch a quarter of the elements: 74 -> 68 ms per E3 step.
            blocks += [
                nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                MaxPool2d(2),  # nn.MaxPool2d's values, through the CPU's faster kernel
                nn.ReLU(inplace=True),  # in place: on the pooled tensor, nothing else needs it
            ]
            in_ch, height, width = out_ch, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Dropout(conv_dropout),
            nn.Flatten(),
            nn.Linear(in_ch * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# The only classes a saved config may name: a checkpoint's ``_target_`` is looked up here,
# never imported (see nnlab.models.checkpoint.build_network).
NETWORKS: dict[str, type[nn.Module]] = {f"{__name__}.{cls.__name__}": cls for cls in (LinearClassifier, MLP, CNN)}
