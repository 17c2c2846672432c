"""Checkpoints that carry their resolved config, so they restore into the same network."""

from __future__ import annotations

import os
import pickle
import re
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab.config.process import alive, identity
from nnlab.config.schema import ConfigError, check_group
from nnlab.errors import CheckpointError, NnlabError
from nnlab.models.networks import NETWORKS

CONFIG_KEY = "nnlab_config"
RUN_ID_KEY = "nnlab_run_id"  # the MLflow run that wrote the checkpoint (None: untracked)
PROCESS_KEY = "nnlab_process"  # the process that wrote it: a resume refuses one still alive


def build_network(model: Any) -> nn.Module:
    """One of nnlab's own networks from a model config read from a file. The ``_target_`` only
    selects a class in ``NETWORKS`` and every value goes through the model schema: nothing a file
    names is imported or called (Hydra's ``instantiate`` would run any ``_target_``)."""
    if not isinstance(model, dict) or not all(isinstance(k, str) for k in model):
        raise ConfigError("model: not a mapping of names to values")
    refuse_interpolations(model, "model")
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
            raise CheckpointError(
                f"{path} names {named[1]}, which a checkpoint of tensors and plain values never does: "
                "refused, and nothing in it was run"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (its contents do not unpickle)") from None
    except Exception:  # EOFError (empty), OSError (truncated), KeyError (text), RuntimeError (bad zip)
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (empty, cut short, or another kind of file)"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} was not written by nnlab (it holds a {type(state).__name__}, not a mapping)")
    return state


def run_id_in(state: dict) -> str | None:
    """The MLflow run id a checkpoint's contents carry (None: untracked, or written before run ids
    travelled)."""
    run_id = state.get(RUN_ID_KEY)
    return run_id if isinstance(run_id, str) else None


def saved_run_id(path: str | Path) -> str | None:
    """The MLflow run id the checkpoint at ``path`` carries; WriterAlive when the process that
    wrote it still runs (resuming it would make two processes write one folder and one run)."""
    state = read_checkpoint(path)
    writer = live_writer(state)
    if writer:
        raise WriterAlive(
            f"{Path(path).parents[1]} is still being trained by process {writer['pid']} on {writer['host']}; "
            "wait for it to end (or stop it), then resume"
        )
    return run_id_in(state)


class WriterAlive(NnlabError, RuntimeError):
    """The process that wrote a checkpoint is still running (one-line message naming it)."""


def process_identity() -> dict:
    """This process, as a checkpoint records it: host name, pid and start time."""
    return identity()


def live_writer(state: dict) -> dict | None:
    """The identity of the process that wrote checkpoint contents ``state`` if that process is
    still alive on this host (same pid and, where known, the same start time), else None."""
    writer = state.get(PROCESS_KEY)
    if not isinstance(writer, dict) or writer.get("host") != socket.gethostname():
        return None
    pid = writer.get("pid")
    if type(pid) is not int or pid == os.getpid() or not alive(pid, writer.get("started")):
        return None  # exited, or the pid now belongs to another process
    return writer


def load_network(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """(network with the checkpoint's weights, in eval mode; the config it was trained with)."""
    return network_from(read_checkpoint(path), Path(path))


def refuse_interpolations(tree: Any, key: str) -> None:
    """ConfigError naming the first key under ``key`` (at any depth, in lists too) whose value or
    name holds an OmegaConf interpolation: nothing from a file is ever resolved (``${oc.env:X}``
    would put an environment variable into an error message). The value itself is not quoted."""
    if isinstance(tree, str):
        if "${" in tree:
            raise ConfigError(f"{key}: interpolations (${{...}}) are not allowed in a saved config")
    elif isinstance(tree, dict):
        for name, value in tree.items():
            if not isinstance(name, str) or "${" in name:
                raise ConfigError(f"{key}: holds a key that is not a plain name")
            refuse_interpolations(value, f"{key}.{name}" if key else name)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            refuse_interpolations(value, f"{key}[{i}]")


def _check_saved_data(data: Any) -> None:
    """The saved ``data`` values a loaded network is used with: its input shape and scaling."""
    if not isinstance(data, dict):
        raise ConfigError("data: not a mapping of names to values")
    shape = data.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(type(d) is int and d > 0 for d in shape)):
        raise ConfigError("data.input_shape: must be a list of positive integers")
    for name in ("mean", "std"):
        value = data.get(name)
        if value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
        ):
            raise ConfigError(f"data.{name}: must be a finite number")
    if data.get("std") is not None and data["std"] <= 0:
        raise ConfigError("data.std: must be > 0")


def saved_weights(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict`` (a mapping of names to tensors), or one ValueError line."""
    weights = state.get("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{path} holds no network weights (no state_dict of named tensors inside)")
    return weights


def _listed(names: list[str], most: int = 3) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _load_weights(net: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """``weights`` into ``net``, refused in one line when they do not fit it (torch's own message
    spans lines: "Error(s) in loading state_dict for MLP:" and then the reasons) or when they hold
    NaN or infinity (such a network predicts class 0 with probabilities NaN)."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{k} is {list(weights[k].shape)}, the network needs {list(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    reasons = (
        ([f"missing {_listed(missing)}"] if missing else [])
        + ([f"unexpected {_listed(unexpected)}"] if unexpected else [])
        + ([f"size mismatch: {_listed(mismatched, 2)}"] if mismatched else [])
    )
    if reasons:
        raise CheckpointError(
            f"{path}: its weights do not fit the network its saved config describes ({'; '.join(reasons)})"
        )
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{path}: weights {_listed(broken)} hold NaN or infinite values (the training that wrote it "
            "diverged): refusing to use it"
        )
    net.load_state_dict(weights)


def network_from(state: dict, path: Path) -> tuple[nn.Module, DictConfig]:
    """``load_network`` of contents already read from ``path`` (named in the errors). Nothing in
    the saved config is resolved: an interpolation anywhere in it is refused by its key."""
    if CONFIG_KEY not in state:
        raise CheckpointError(f"{path} was not written by nnlab (no {CONFIG_KEY} inside)")
    saved = state[CONFIG_KEY]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its {CONFIG_KEY} is not a config mapping")
    try:
        refuse_interpolations(saved, "")
        net = build_network(saved.get("model"))
        _check_saved_data(saved.get("data", {}))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: refusing its saved config: {exc}") from None
    weights = {k.removeprefix("net."): v for k, v in saved_weights(state, path).items() if k.startswith("net.")}
    _load_weights(net, weights, path)
    cfg = OmegaConf.create({k: v for k, v in saved.items() if k != "model"})
    cfg.model = OmegaConf.create(saved["model"])
    return net.eval(), cfg


def network_only(checkpoint: str | Path, target: Path) -> Path:
    """A copy of ``checkpoint`` with only what ``load_network`` reads (config and network weights):
    what a deployed model needs, without optimizer state or the training's run id."""
    state = read_checkpoint(checkpoint)
    weights = {k: v for k, v in saved_weights(state, Path(checkpoint)).items() if k.startswith("net.")}
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
