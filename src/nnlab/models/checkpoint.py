"""Checkpoints that carry their resolved config, so they restore into the same network."""

from __future__ import annotations

import pickle
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab.config.schema import ConfigError, check_group
from nnlab.models.networks import NETWORKS

CONFIG_KEY = "nnlab_config"
RUN_ID_KEY = "nnlab_run_id"  # the MLflow run that wrote the checkpoint (None: untracked)


def build_network(model: Any) -> nn.Module:
    """One of nnlab's own networks from a model config read from a file. The ``_target_`` only
    selects a class in ``NETWORKS`` and every value goes through the model schema: nothing a file
    names is imported or called (Hydra's ``instantiate`` would run any ``_target_``)."""
    if not isinstance(model, dict) or not all(isinstance(k, str) for k in model):
        raise ConfigError("model: not a mapping of names to values")
    if any(isinstance(v, str) and "${" in v for v in model.values()):
        raise ConfigError("model: interpolations are not allowed in a saved config")
    target = model.get("_target_")
    if target not in NETWORKS:
        raise ConfigError(f"model._target_: must be one of {', '.join(NETWORKS)}, got {target!r}")
    spec = check_group("model", model)
    return NETWORKS[target](**{f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "_target_"})


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded as tensors and plain values only (nothing the file names is
    imported or run). Its failures become one ValueError line: torch's own are a bare number (a
    text file), empty (an empty file), or advice to load with ``weights_only=False``, which would
    run whatever a crafted file names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if named:
            raise ValueError(
                f"{path} names {named[1]}, which a checkpoint of tensors and plain values never does: "
                "refused, and nothing in it was run"
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint (its contents do not unpickle)") from None
    except Exception:  # EOFError (empty), OSError (truncated), KeyError (text), RuntimeError (bad zip)
        raise ValueError(f"{path} is not a PyTorch checkpoint (empty, cut short, or another kind of file)") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} was not written by nnlab (it holds a {type(state).__name__}, not a mapping)")
    return state


def run_id_in(state: dict) -> str | None:
    """The MLflow run id a checkpoint's contents carry (None: untracked, or written before run ids
    travelled)."""
    run_id = state.get(RUN_ID_KEY)
    return run_id if isinstance(run_id, str) else None


def saved_run_id(path: str | Path) -> str | None:
    """The MLflow run id the checkpoint at ``path`` carries."""
    return run_id_in(read_checkpoint(path))


def load_network(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """(network with the checkpoint's weights, in eval mode; the config it was trained with)."""
    return network_from(read_checkpoint(path), Path(path))


def network_from(state: dict, path: Path) -> tuple[nn.Module, DictConfig]:
    """``load_network`` of contents already read from ``path`` (named in the errors)."""
    if CONFIG_KEY not in state:
        raise ValueError(f"{path} was not written by nnlab (no {CONFIG_KEY} inside)")
    saved = state[CONFIG_KEY]
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: its {CONFIG_KEY} is not a config mapping")
    try:
        net = build_network(saved.get("model"))
    except ConfigError as exc:
        raise ValueError(f"{path}: refusing its saved config: {exc}") from None
    cfg = OmegaConf.create({k: v for k, v in saved.items() if k != "model"})
    cfg.model = OmegaConf.create(saved["model"])
    weights = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(weights)
    return net.eval(), cfg


def network_only(checkpoint: str | Path, target: Path) -> Path:
    """A copy of ``checkpoint`` with only what ``load_network`` reads (config and network weights):
    what a deployed model needs, without optimizer state or the training's run id."""
    state = read_checkpoint(checkpoint)
    weights = {k: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    torch.save({CONFIG_KEY: state[CONFIG_KEY], "state_dict": weights}, target)
    return target


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


def input_example(cfg: DictConfig, datamodule) -> np.ndarray:
    """Two test inputs as a user gives them: MNIST (2, 28, 28) pixels in [0, 1]; blobs (2, 2)."""
    x = datamodule.scale(datamodule.splits["test"][0][:2])
    if "mean" in cfg.data:
        x = (x * cfg.data.std + cfg.data.mean)[:, 0]
    return x.numpy().astype(np.float32)
