"""Training loop of the NumPy network (reference E4): same data, outputs and tracking as the
Lightning path, but plain SGD on hand-written gradients."""

from __future__ import annotations

import time

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from threadpoolctl import threadpool_limits
from torch import nn

from nnlab.models.numpy_mlp import NumpyMLP
from nnlab.training.history import best_epoch_rule, best_row

TARGET = "nnlab.models.numpy_mlp.NumpyMLP"


class NumpyAsTorch(nn.Module):
    """A NumpyMLP seen as a torch module (log-probabilities as logits), for the shared evaluation."""

    def __init__(self, mlp: NumpyMLP):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.mlp.predict_proba(x.cpu().numpy())
        return torch.from_numpy(np.log(np.clip(probs, 1e-12, None))).float()


def refuse_unused_choices(cfg: DictConfig) -> None:
    """The NumPy network trains by plain SGD in this one process on the CPU, in float32 or float64:
    a choice it would ignore (DDP, Adam, a schedule, mixed precision) is refused in one line,
    since the run would record it as if it had been used. ``precision: auto`` becomes 32-true."""
    if cfg.model._target_ != TARGET:
        return
    from nnlab.config.schema import ConfigError

    def refuse(key: str, value, allowed: str) -> ConfigError:
        return ConfigError(f"{key}: the NumPy network (model=numpy_mlp) {allowed}, got {value!r}")

    trainer, optimizer = cfg.trainer, cfg.optimizer
    for key, allowed in (("strategy", ("auto", None)), ("devices", (1, "1")), ("num_nodes", (1,))):
        if trainer[key] not in allowed:
            raise refuse(f"trainer.{key}", trainer[key], "trains in one process on one device: use trainer=cpu")
    if trainer.accelerator not in ("auto", "cpu"):
        raise refuse("trainer.accelerator", trainer.accelerator, "trains on the CPU: use trainer=cpu")
    if optimizer._target_ != "torch.optim.SGD" or optimizer.get("momentum") or optimizer.get("weight_decay"):
        name = optimizer._target_.rsplit(".", 1)[-1]
        raise refuse("optimizer", name, "trains by plain SGD: use optimizer=sgd with momentum 0 and weight_decay 0")
    if cfg.get("scheduler"):
        scheduler = cfg.scheduler._target_.rsplit(".", 1)[-1]
        raise refuse("scheduler", scheduler, "keeps optimizer.lr constant: use scheduler=none")
    if trainer.precision == "auto":
        trainer.precision = "32-true"
    elif trainer.precision not in ("32-true", "32", 32):
        raise refuse("trainer.precision", trainer.precision, "computes in full precision: use 32-true")


def _score(mlp: NumpyMLP, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    probs = mlp.predict_proba(x)
    return mlp.loss(probs, y), float((probs.argmax(1) == y).mean())


def fit(cfg: DictConfig, datamodule, on_epoch) -> tuple[NumpyMLP, list[dict]]:
    """Train ``cfg.trainer.max_epochs`` epochs; keep the weights of the best epoch (``best_epoch_rule``:
    the checkpoint's monitor and mode, as in the Lightning path).

    ``on_epoch(row)`` gets each epoch's history row (the same columns as the Lightning path)."""
    datamodule.setup("fit")
    (x_train, y_train), (x_val, y_val) = ((t.numpy() for t in datamodule.inputs(s)) for s in ("train", "val"))
    mlp = instantiate(cfg.model)
    rng = np.random.default_rng(cfg.seed)
    column, mode = best_epoch_rule(cfg)
    rows, best_state = [], mlp.state_dict()
    # One BLAS thread: per-sample steps are tiny, and threads only fight over the cores.
    with threadpool_limits(limits=1):
        for epoch in range(1, cfg.trainer.max_epochs + 1):
            started = time.perf_counter()
            train = mlp.fit_epoch(x_train, y_train, cfg.optimizer.lr, batch_size=cfg.data.batch_size, rng=rng)
            train_seconds = time.perf_counter() - started
            val_loss, val_acc = _score(mlp, x_val, y_val)
            row = {
                "epoch": epoch,
                "train_loss": train["train_loss"],
                "train_acc": train["train_acc"],
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": cfg.optimizer.lr,
                "epoch_seconds": time.perf_counter() - started,
                "train_seconds": train_seconds,
                "samples_per_second": len(y_train) / train_seconds,
            }
            rows.append(row)
            on_epoch(row)
            if best_row(rows, column, mode) is row:
                best_state = mlp.state_dict()
    mlp.load_state_dict(best_state)
    return mlp, rows


def summary_rows(mlp: NumpyMLP) -> list[dict]:
    """The NumPy network's layers in the rows nnlab.models.summary.format_summary prints."""
    last = len(mlp.weights) - 1
    return [
        {
            "layer": f"dense_{i}",
            "type": "softmax" if i == last else "sigmoid",
            "output_shape": [None, w.shape[1]],
            "parameters": w.size + b.size,
        }
        for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases))
    ]
