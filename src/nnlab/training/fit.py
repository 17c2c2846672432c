"""Fitting a configured network: the Lightning path for torch networks, the NumPy loop for E4.

Each fitter describes the network before training and has a ``fit()`` returning the best
network (a torch module in eval mode) and its checkpoint. Nothing here knows of MLflow or DVC.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from nnlab.models.checkpoint import CONFIG_KEY
from nnlab.models.module import Classifier
from nnlab.models.networks import count_parameters
from nnlab.models.summary import format_summary, summarize
from nnlab.training import numpy_loop
from nnlab.training.history import EpochHistory

# config.yaml is written into the checkpoint folder before Lightning's first checkpoint.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def build_module(cfg: DictConfig) -> Classifier:
    """The LightningModule for the config's network, optimizer and schedule."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return Classifier(
        instantiate(cfg.model),
        instantiate(cfg.optimizer),
        scheduler,
        num_classes=cfg.data.num_classes,
        label_smoothing=cfg.label_smoothing,
    )


class ConfigInCheckpoint(L.Callback):
    """Stores the resolved config in every checkpoint Lightning writes (see models.checkpoint)."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.config


@dataclass
class Fitter:
    """One way of training: facts about its network, and ``fit()`` returning (the best network
    in eval mode, its checkpoint), or None off rank 0."""

    parameters: int
    summary_text: str
    accelerator: str
    device: str
    is_global_zero: bool
    fit: Callable[[], tuple[nn.Module, Path] | None]
    loggable: bool = True  # mlflow.pytorch.log_model can save it


def fitter_for(cfg: DictConfig, resolved: dict, datamodule, history: EpochHistory, models_dir: Path) -> Fitter:
    if cfg.model._target_ == numpy_loop.TARGET:
        return _numpy_fitter(cfg, datamodule, history, models_dir)
    return _lightning_fitter(cfg, resolved, datamodule, history, models_dir)


def _callbacks(cfg: DictConfig, resolved: dict, history: EpochHistory, models_dir: Path) -> list[L.Callback]:
    """history and config-in-checkpoint (always), then the configured ``callbacks`` group."""
    callbacks = [history, ConfigInCheckpoint(resolved)]
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if name == "model_checkpoint":
            callbacks.append(instantiate(spec, dirpath=str(models_dir)))
        elif name != "progress_bar" or cfg.trainer.enable_progress_bar:
            callbacks.append(instantiate(spec))
    return callbacks


def _lightning_fitter(cfg: DictConfig, resolved: dict, datamodule, history: EpochHistory, models_dir: Path) -> Fitter:
    module = build_module(cfg)
    if cfg.trainer.deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    callbacks = _callbacks(cfg, resolved, history, models_dir)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, default_root_dir=cfg.paths.log_dir)

    def fit():
        try:
            trainer.fit(module, datamodule=datamodule)
        except SystemExit:  # Lightning turns Ctrl-C into exit code 1: keep it an interrupt
            if trainer.interrupted:
                raise KeyboardInterrupt("training interrupted") from None
            raise
        if not trainer.is_global_zero:
            return None
        best = Path(trainer.checkpoint_callback.best_model_path)
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        return module.net.cpu().eval(), best

    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    device = torch.cuda.get_device_name(0) if accelerator == "cuda" else accelerator
    summary = format_summary(summarize(module.net, cfg.data.input_shape), type(module.net).__name__)
    return Fitter(count_parameters(module.net), summary, accelerator, device, trainer.is_global_zero, fit)


def _numpy_fitter(cfg: DictConfig, datamodule, history: EpochHistory, models_dir: Path) -> Fitter:
    probe = instantiate(cfg.model)

    def fit():
        mlp, _ = numpy_loop.fit(cfg, datamodule, history.record)
        path = models_dir / "best.npz"
        np.savez(path, **mlp.state_dict())
        return numpy_loop.NumpyAsTorch(mlp), path

    summary = format_summary(numpy_loop.summary_rows(probe), "NumpyMLP")
    return Fitter(probe.parameter_count(), summary, "cpu", "cpu", True, fit, loggable=False)


def run_summary(cfg: DictConfig, history: EpochHistory, parameters: int, seconds: float) -> dict:
    """train.json: the run's best epoch, timings and size."""
    best, rows = history.best(), history.rows

    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)

    return {
        "name": cfg.name,
        "reference": cfg.reference,
        "seed": cfg.seed,
        "parameters": parameters,
        "epochs": len(rows),
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc"),
        "best_val_loss": best.get("val_loss"),
        "train_seconds": round(seconds, 3),
        "mean_epoch_seconds": round(mean("epoch_seconds"), 3),
        "mean_samples_per_second": round(mean("samples_per_second"), 1),
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
    }
