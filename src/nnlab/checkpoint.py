"""Checkpoints that carry their resolved config, so they restore into the same network."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

CONFIG_KEY = "nnlab_config"


def load_network(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """(network with the checkpoint's weights, in eval mode; the config it was trained with)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if CONFIG_KEY not in state:
        raise ValueError(f"{path} was not written by nnlab (no {CONFIG_KEY} inside)")
    cfg = OmegaConf.create(state[CONFIG_KEY])
    net = instantiate(cfg.model)
    weights = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(weights)
    return net.eval(), cfg


class Standardize(nn.Module):
    """(x - mean) / std as the first layer, so a deployed model takes raw [0, 1] pixels."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def deployable(net: nn.Module, cfg: DictConfig) -> nn.Module:
    """The network with the data's input scaling built in: MNIST takes (n, 1, 28, 28) pixels in
    [0, 1]; blobs take (n, 2) points already standardised like data/blobs/. Outputs logits."""
    if "mean" in cfg.data and "std" in cfg.data:
        return nn.Sequential(Standardize(cfg.data.mean, cfg.data.std), net).eval()
    return net.eval()
