"""Fitting a configured network: the Lightning path for torch networks, the NumPy loop for E4.

Each fitter describes the network before training and has a ``fit()`` returning the best
network (a torch module in eval mode) and its checkpoint. Nothing here knows of MLflow or DVC.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig
from torch import nn

from nnlab.models.checkpoint import CONFIG_KEY, PROCESS_KEY, RUN_ID_KEY, process_identity
from nnlab.models.module import Classifier
from nnlab.models.networks import count_parameters
from nnlab.models.summary import format_summary, summarize
from nnlab.training import blocks, numpy_loop
from nnlab.training.history import EpochHistory

# config.yaml is written into the checkpoint folder before Lightning's first checkpoint.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def build_module(cfg: DictConfig, steps_per_call: int = 1) -> Classifier:
    """The LightningModule for the config's network, optimizer and schedule."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return Classifier(
        instantiate(cfg.model),
        instantiate(cfg.optimizer),
        scheduler,
        num_classes=cfg.data.num_classes,
        label_smoothing=cfg.label_smoothing,
        compile_backend=cfg.get("compile"),
        steps_per_call=steps_per_call,
        batch_size=cfg.data.batch_size,
    )


class RunStateInCheckpoint(L.Callback):
    """Stores in every checkpoint Lightning writes the resolved config (models.checkpoint rebuilds
    the network from it), the MLflow run id, and the random number generators' states, which a
    resumed run restores so that it continues as if it had never stopped."""

    def __init__(self, config: dict):
        self.config = config
        self.run_id: str | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[RUN_ID_KEY] = self.run_id
        checkpoint[PROCESS_KEY] = process_identity()  # a resume=true refuses a writer still alive
        checkpoint["nnlab_rng"] = rng_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if "nnlab_rng" in checkpoint:
            set_rng_state(checkpoint["nnlab_rng"])


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpoint(L.Callback):
    """``last.ckpt`` at the end of every epoch (written to a temporary file, then renamed), and
    only then the epoch's history row goes to the tracker: what is tracked is always resumable."""

    def __init__(self, path: Path, history: EpochHistory):
        self.path, self.history = Path(path), history
        history.deferred = True

    def on_train_epoch_end(self, trainer, pl_module):
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
            self.history.flush()


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
    set_run_id: Callable[[str], None] = lambda run_id: None  # written into every checkpoint


def fitter_for(
    cfg: DictConfig,
    resolved: dict,
    datamodule,
    history: EpochHistory,
    models_dir: Path,
    extra_callbacks: Sequence[L.Callback] = (),
) -> Fitter:
    """``extra_callbacks`` join the Lightning trainer's (an Optuna trial's pruning); the NumPy loop takes none."""
    if cfg.model._target_ == numpy_loop.TARGET:
        return _numpy_fitter(cfg, datamodule, history, models_dir)
    return _lightning_fitter(cfg, resolved, datamodule, history, models_dir, extra_callbacks)


def _callbacks(cfg: DictConfig, resolved: dict, history: EpochHistory, models_dir: Path) -> list[L.Callback]:
    """history and config-in-checkpoint (always), then the configured ``callbacks`` group."""
    callbacks = [history, RunStateInCheckpoint(resolved), LastCheckpoint(models_dir / "last.ckpt", history)]
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if name == "model_checkpoint":
            callbacks.append(instantiate(spec, dirpath=str(models_dir)))
        elif name == "progress_bar" and spec.get("_target_") == RICH_BAR and cfg.trainer.enable_progress_bar:
            callbacks.append(
                ThrottledRichProgressBar(**instantiate({k: v for k, v in spec.items() if k != "_target_"}))
            )
        elif name != "progress_bar" or cfg.trainer.enable_progress_bar:
            callbacks.append(instantiate(spec))
    return callbacks


RICH_BAR = "lightning.pytorch.callbacks.RichProgressBar"


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's Rich bar, which moves its task and rebuilds its metrics on every training
    batch and redraws every ``refresh_rate`` batches: here all of it happens on the batches it
    redraws (and the last), so a small network's step does not pay for a bar nobody sees move."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = batch_idx + 1
        if done % max(self.refresh_rate, 1) == 0 or done == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def lightning_loggers(cfg: DictConfig, run_folder: Path) -> list:
    """The configured Lightning loggers (conf/logger/lightning/), each writing into its own
    subfolder of the run's folder; MLflow is recorded by nnlab itself, never by one of these."""
    loggers = []
    for name, spec in (cfg.logger.get("lightning") or {}).items():
        folder = str(run_folder / name)
        # DVCLive names its folder `dir`; Lightning's own loggers call it `save_dir`.
        where = {"dir": folder} if spec._target_.startswith("dvclive.") else {"save_dir": folder}
        loggers.append(instantiate(spec, **where))
    return loggers


def _lightning_fitter(
    cfg: DictConfig,
    resolved: dict,
    datamodule,
    history: EpochHistory,
    models_dir: Path,
    extra_callbacks: Sequence[L.Callback] = (),
) -> Fitter:
    if cfg.trainer.deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    callbacks = [*_callbacks(cfg, resolved, history, models_dir), *extra_callbacks]
    run_state = next(c for c in callbacks if isinstance(c, RunStateInCheckpoint))
    loggers = lightning_loggers(cfg, models_dir.parent)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=cfg.paths.log_dir)
    module = build_module(cfg, blocks.use_blocks(cfg, trainer, datamodule))
    last = models_dir / "last.ckpt"

    def fit():
        try:
            # weights_only: tensors and plain values, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if cfg.resume else None, weights_only=True)
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
    return Fitter(
        count_parameters(module.net),
        summary,
        accelerator,
        device,
        trainer.is_global_zero,
        fit,
        set_run_id=lambda run_id: setattr(run_state, "run_id", run_id),
    )


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
    """train.json: the run's best epoch, timings and size; numbers only (DVC shows every field
    of a metrics file as a column; the run's name and settings are in params.yaml beside it)."""
    best, rows = history.best(), history.rows

    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)

    return {
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
