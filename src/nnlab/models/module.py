"""The one LightningModule: any network, optimizer and schedule from config."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

# Schedulers whose length is the whole run; filled in with the real number of steps.
_TOTAL_STEPS_ARGS = ("total_steps", "T_max")


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``net``'s logits.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_`` objects): the
    optimizer takes the parameters, the scheduler the optimizer. Schedulers step per batch.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": (
                    MulticlassAccuracy(num_classes, average="micro")
                    if kind == "acc"
                    else MeanMetric(nan_strategy=float("inf"))  # a nan loss counts as inf: the run stops
                )
                for split in ("train", "val")
                for kind in ("acc", "loss")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        # Only update the metric states here: self.log on every step costs more than a small MLP's
        # forward and backward. The epoch values are computed and logged once, in the epoch hooks.
        self.metrics[f"{split}_acc"].update(logits.detach(), y)
        self.metrics[f"{split}_loss"].update(loss.detach(), weight=len(y))
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
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        keywords = getattr(self.scheduler_factory, "keywords", {})
        # At least 10 steps: one-cycle's warm-up phase must not be empty on a tiny run.
        total = max(int(self.trainer.estimated_stepping_batches), 10)
        extra = {k: total for k in _TOTAL_STEPS_ARGS if k in keywords and keywords[k] is None}
        scheduler = self.scheduler_factory(optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
