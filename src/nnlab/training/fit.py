"""Fitting a configured network: the Lightning path for torch networks, the NumPy loop for E4.

Each fitter describes the network before training and has a ``fit()`` returning the best
network (a torch module in eval mode) and its checkpoint. Nothing here knows of MLflow or DVC.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
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
from nnlab.report.tables import six_digits
from nnlab.training import blocks, numpy_loop
from nnlab.training import slurm as slurm_job
from nnlab.training.checkpoint_io import AtomicCheckpointIO
from nnlab.training.history import EpochHistory, best_epoch_rule

# config.yaml is written into the checkpoint folder before Lightning's first checkpoint.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def build_module(cfg: DictConfig) -> Classifier:
    """The LightningModule for the config's network, optimizer, schedule and gradient clipping
    (``trainer.gradient_clip_val``: the module clips, Lightning's Trainer must not be given it)."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return Classifier(
        instantiate(cfg.model),
        instantiate(cfg.optimizer),
        scheduler,
        num_classes=cfg.data.num_classes,
        label_smoothing=cfg.label_smoothing,
        compile_backend=cfg.get("compile"),
        batch_size=cfg.data.batch_size,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
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
        try:
            trainer.save_checkpoint(partial, weights_only=False)
            if trainer.is_global_zero:
                os.replace(partial, self.path)
        finally:
            if trainer.is_global_zero:  # rank 0 writes the file: another rank would remove it under it
                partial.unlink(missing_ok=True)
        if trainer.is_global_zero:
            self.history.flush()


class Fitter:
    """One way of training a configured network. Before training it describes the network
    (``parameters``, ``summary_text``) and where it runs; ``fit()`` returns (the best network in
    eval mode, its checkpoint), or None off rank 0. ``fitter_for`` picks the way."""

    parameters: int
    summary_text: str
    accelerator: str = "cpu"
    device: str = "cpu"
    is_global_zero: bool = True
    loggable: bool = True  # mlflow.pytorch.log_model can save the network

    def set_run_id(self, run_id: str) -> None:
        """The MLflow run this training records into (written into its checkpoints)."""

    def fit(self) -> tuple[nn.Module, Path] | None:
        raise NotImplementedError


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
        return NumpyFitter(cfg, datamodule, history, models_dir)
    return LightningFitter(cfg, resolved, datamodule, history, models_dir, extra_callbacks)


def configured_callbacks(cfg: DictConfig, models_dir: Path) -> list[L.Callback]:
    """The config's ``callbacks`` group (the checkpoint into ``models_dir``; the bar only when shown)."""
    callbacks = []
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


class LightningFitter(Fitter):
    """Lightning's Trainer with nnlab's module: the history, the run state and last.ckpt in every
    checkpoint, then the configured callbacks and ``extra_callbacks``."""

    def __init__(
        self,
        cfg: DictConfig,
        resolved: dict,
        datamodule,
        history: EpochHistory,
        models_dir: Path,
        extra_callbacks: Sequence[L.Callback] = (),
    ):
        if cfg.trainer.deterministic and torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.run_state = RunStateInCheckpoint(resolved)
        callbacks = [
            history,
            self.run_state,
            LastCheckpoint(models_dir / "last.ckpt", history),
            *configured_callbacks(cfg, models_dir),
            *extra_callbacks,
        ]
        loggers = lightning_loggers(cfg, models_dir.parent)
        self.trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=cfg.paths.log_dir,
            gradient_clip_val=None,  # the module clips (build_module): manual optimization
            # in a Slurm job: no mid-epoch checkpoints in logs/; everywhere: no half-written checkpoint
            plugins=[*slurm_job.lightning_plugins(), AtomicCheckpointIO()],
        )
        self.datamodule = datamodule
        blocks.use_blocks(cfg, self.trainer, datamodule)
        self.module = build_module(cfg)
        self.resume_from = models_dir / "last.ckpt" if cfg.resume else None
        self.parameters = count_parameters(self.module.net)
        self.summary_text = format_summary(
            summarize(self.module.net, cfg.data.input_shape), type(self.module.net).__name__
        )
        self.accelerator = type(self.trainer.accelerator).__name__.removesuffix("Accelerator").lower()
        self.device = torch.cuda.get_device_name(0) if self.accelerator == "cuda" else self.accelerator
        self.is_global_zero = self.trainer.is_global_zero

    def set_run_id(self, run_id: str) -> None:
        self.run_state.run_id = run_id

    def fit(self) -> tuple[nn.Module, Path] | None:
        trainer, module = self.trainer, self.module
        try:
            # weights_only: tensors and plain values, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
            trainer.fit(
                module,
                datamodule=self.datamodule,
                ckpt_path=self.resume_from and str(self.resume_from),
                weights_only=True,
            )
        except SystemExit:  # Lightning turns Ctrl-C into exit code 1: keep it an interrupt
            if trainer.interrupted:
                raise KeyboardInterrupt("training interrupted") from None
            raise
        if not trainer.is_global_zero:
            return None
        best = Path(trainer.checkpoint_callback.best_model_path)
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        return module.net.cpu().eval(), best


class NumpyFitter(Fitter):
    """The NumPy network's own loop (E4), on the CPU; its best weights go to best.npz."""

    loggable = False  # not a torch module: mlflow.pytorch cannot save it

    def __init__(self, cfg: DictConfig, datamodule, history: EpochHistory, models_dir: Path):
        probe = instantiate(cfg.model)
        self.cfg, self.datamodule, self.history, self.models_dir = cfg, datamodule, history, models_dir
        self.parameters = probe.parameter_count()
        self.summary_text = format_summary(numpy_loop.summary_rows(probe), "NumpyMLP")

    def fit(self) -> tuple[nn.Module, Path]:
        mlp, _ = numpy_loop.fit(self.cfg, self.datamodule, self.history.record)
        path = self.models_dir / "best.npz"
        np.savez(path, **mlp.state_dict())
        return numpy_loop.NumpyAsTorch(mlp), path


def run_summary(cfg: DictConfig, history: EpochHistory, parameters: int, seconds: float) -> dict:
    """train.json: the run's best epoch, timings and size; numbers only (DVC shows every field
    of a metrics file as a column; the run's name and settings are in params.yaml beside it)."""
    best, rows = history.best(*best_epoch_rule(cfg)), history.rows

    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)

    def measured(value):  # 0.9782, not 0.9782000184059143 (a float32 printed as a double)
        return None if value is None else six_digits(float(value))

    return {
        "seed": cfg.seed,
        "parameters": parameters,
        "epochs": len(rows),
        "best_epoch": best.get("epoch"),
        "best_val_acc": measured(best.get("val_acc")),
        "best_val_loss": measured(best.get("val_loss")),
        "train_seconds": round(seconds, 3),
        "mean_epoch_seconds": round(mean("epoch_seconds"), 3),
        "mean_samples_per_second": round(mean("samples_per_second"), 1),
        "final_train_loss": measured(rows[-1]["train_loss"]) if rows else None,
    }
