"""The one LightningModule: any network, optimizer and schedule from config."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from nnlab.models.networks import forward_in_pieces, prefers_channels_last

# Schedulers whose length is the whole run; filled in with the real number of steps.
_TOTAL_STEPS_ARGS = ("total_steps", "T_max")


def fast_optimizer_options(factory: Callable, device: torch.device) -> dict:
    """On CUDA, the optimizer's fused implementation where it has one (one kernel for all the
    parameters), else its foreach one; unless the config chose (``fused`` or ``foreach`` true or
    false, not null). On the CPU nothing changes (the single-tensor path, the results of every
    earlier run) unless the config chose."""
    if torch.device(device).type != "cuda":
        return {}
    keywords = getattr(factory, "keywords", {}) or {}
    if keywords.get("fused") is not None or keywords.get("foreach") is not None:
        return {}
    accepted = inspect.signature(getattr(factory, "func", factory)).parameters
    for option in ("fused", "foreach"):
        if option in accepted:
            return {option: True}
    return {}


def _summed(*states: torch.Tensor) -> list[torch.Tensor]:
    """The states summed over every process of a distributed run (copies: the states stay this
    process's own, so computing twice never counts twice)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(states)
    summed = [state.clone() for state in states]
    for state in summed:
        dist.all_reduce(state)
    return summed


class RunningMean(nn.Module):
    """Σ value·weight / Σ weight over an epoch, as torchmetrics' MeanMetric(nan_strategy=inf)
    computes it (the same float32 operations in the same order, so the same values), with no
    check that waits for the device: a nan counts as inf (the run then stops as diverged).
    Two small operations per update: the weights are summed on the host, in float32 as there,
    and a nan is turned into inf once, in compute (a nan in the sum comes only from a nan value:
    losses are never -inf)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(()), persistent=False)
        self.weight = np.float32(0)

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total.add_(value.detach().float() * weight)  # add_, not +=: no attribute assignment
        self.weight += np.float32(weight)

    def compute(self) -> torch.Tensor:
        weight = torch.tensor(self.weight, device=self.total.device)
        total, weight = _summed(self.total, weight)
        return torch.where(total.isnan(), math.inf, total) / weight

    def reset(self) -> None:
        self.total.zero_()
        self.weight = np.float32(0)


class RunningAccuracy(nn.Module):
    """The share of samples whose largest logit is the label (torchmetrics' micro-averaged
    MulticlassAccuracy): the count of correct ones on the device, updated without waiting for
    it, and the count of samples on the host."""

    def __init__(self):
        super().__init__()
        self.register_buffer("correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.total = 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.correct.add_((logits.detach().argmax(1) == y).sum())
        self.total += y.numel()

    def compute(self) -> torch.Tensor:
        total = torch.tensor(self.total, device=self.correct.device)
        correct, total = _summed(self.correct, total)
        return correct.float() / total.clamp(min=1).float()

    def reset(self) -> None:
        self.correct.zero_()
        self.total = 0


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``net``'s logits.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_`` objects): the
    optimizer takes the parameters, the scheduler the optimizer. Schedulers step per batch.

    One training path, Lightning's manual optimization: each training batch Lightning hands
    over is a block of one or more batches of ``batch_size`` (nnlab.data.tensors.TensorBatches;
    an ordinary run's blocks hold one), and ``training_step`` takes one optimizer step per batch
    in the order of Lightning's automatic optimization, firing the same per-step hooks.
    ``gradient_clip_val`` clips each step's gradients by norm where automatic optimization
    would (Lightning's Trainer takes no clipping with manual optimization).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        compile_backend: str | None = None,
        batch_size: int | None = None,
        gradient_clip_val: float | None = None,
    ):
        super().__init__()
        self.net = net
        self.automatic_optimization = False  # training_step takes the steps of its block
        self.batch_size = batch_size  # of the batches a block holds (None: a block is one batch)
        self.gradient_clip_val = gradient_clip_val
        # torch.compile's wrapper shares net's parameters; kept out of the module tree so that
        # state dicts and checkpoints stay those of net. The first step pays the compile time.
        self.__dict__["_forward"] = torch.compile(net, backend=compile_backend) if compile_backend else net
        self.channels_last = False  # decided in configure_model, once the trainer's device is known
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.num_classes = num_classes
        # Epoch metrics: states on the device, updated every step, computed once per epoch.
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": RunningAccuracy() if kind == "acc" else RunningMean()
                for split in ("train", "val")
                for kind in ("acc", "loss")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_model(self):
        # Called before the strategy moves the network to its device (.to keeps the layout) and
        # wraps it: DDP lays out its gradient buckets by the parameters' layout at that moment.
        self.channels_last = prefers_channels_last(self.net, self.trainer.strategy.root_device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # validation runs under no_grad: its (large) batches go through the network in pieces
        logits = self._forward(x) if split == "train" else forward_in_pieces(self._forward, x)
        loss = self.loss_fn(logits, y)
        # Only update the metric states here: self.log on every step costs more than a small MLP's
        # forward and backward. The epoch values are computed and logged once, in the epoch hooks.
        self.metrics[f"{split}_acc"].update(logits, y)
        self.metrics[f"{split}_loss"].update(loss, weight=len(y))
        return loss

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        """This epoch's loss and accuracy so far (synchronised across devices)."""
        return {f"{split}/{kind}": self.metrics[f"{split}_{kind}"].compute() for kind in ("loss", "acc")}

    def _log_epoch(self, split: str) -> None:
        # The metric objects are already synchronised across devices; sync_dist keeps Lightning quiet.
        self.log_dict(self.epoch_metrics(split), prog_bar=True, sync_dist=True)
        for kind in ("loss", "acc"):
            self.metrics[f"{split}_{kind}"].reset()

    def training_step(self, batch, batch_idx):
        """One optimizer step per batch of the block: forward, zero_grad, backward, step, and the
        scheduler's step, as Lightning's automatic optimization orders them (backward and step
        outside autocast, as there). Lightning's optimizer counts each step in
        ``trainer.global_step``; manual_backward and its step fire the backward and
        optimizer-step hooks, ``zero_grad`` the one automatic optimization fires before it."""
        x, y = batch
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        autocast = torch.is_autocast_enabled(x.device.type)
        size = self.batch_size or len(y)
        parts = zip(x.split(size), y.split(size)) if len(y) > size else [(x, y)]
        for x_part, y_part in parts:
            loss = self._step((x_part, y_part), "train")
            with torch.autocast(x.device.type, enabled=False) if autocast else nullcontext():
                self.zero_grad_with_hooks(optimizer)
                self.manual_backward(loss)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()

    def zero_grad_with_hooks(self, optimizer) -> None:
        """``on_before_zero_grad`` of every callback and of this module, then zero_grad: what
        automatic optimization does before each backward (manual optimization leaves it out)."""
        for callback in self.trainer.callbacks:
            callback.on_before_zero_grad(self.trainer, self, optimizer)
        self.on_before_zero_grad(optimizer)
        optimizer.zero_grad()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Called after the callbacks' hook and after a gradient scaler unscaled the gradients:
        # where automatic optimization clips.
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def optimizer_steps(self) -> int:
        """The run's number of optimizer steps (Lightning counts a block as one batch)."""
        trainer = self.trainer
        batches = trainer.estimated_stepping_batches  # loads the training batches
        blocks = trainer.train_dataloader
        if getattr(blocks, "per_call", 1) == 1:
            return int(batches)
        steps = trainer.max_epochs * blocks.steps  # the data module holds limit_train_batches
        return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(
            self.net.parameters(), **fast_optimizer_options(self.optimizer_factory, self.device)
        )
        if self.scheduler_factory is None:
            return optimizer
        keywords = getattr(self.scheduler_factory, "keywords", {})
        # At least 10 steps: one-cycle's warm-up phase must not be empty on a tiny run.
        total = max(self.optimizer_steps(), 10)
        extra = {k: total for k in _TOTAL_STEPS_ARGS if k in keywords and keywords[k] is None}
        scheduler = self.scheduler_factory(optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
