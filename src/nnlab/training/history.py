"""Per-epoch history of a training run: one row per epoch, written to CSV and to sinks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

from nnlab.config.schema import MONITORED
from nnlab.errors import NnlabError
from nnlab.report.tables import write_rows

COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "train_seconds",
    "samples_per_second",
)


def best_epoch_rule(cfg) -> tuple[str, str]:
    """(history column, "min" or "max"): how the best epoch is chosen, from the checkpoint's
    ``monitor`` and ``mode`` (conf/callbacks; a search sets them to its objective). One rule for
    the epoch the checkpoint keeps, train.json's ``best_*``, a trial's value and the NumPy loop."""
    spec = cfg.callbacks.model_checkpoint
    return MONITORED[spec.monitor], spec.mode


def best_row(rows: list[dict], column: str, mode: str) -> dict:
    """The first row with the lowest (min) or highest (max) value of ``column``, as Lightning's
    ModelCheckpoint keeps the first of a tie; {} when none has a value."""
    scored = [r for r in rows if r[column] is not None]
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r[column]) if scored else {}


class TrainingDiverged(NnlabError, RuntimeError):
    """The loss became nan or inf: the run stops and ends FAILED, and no model is logged."""


class EpochHistory(L.Callback):
    """Collects train/val loss and accuracy, learning rate and timings once per epoch."""

    def __init__(self, sinks: list[Callable[[dict], None]] | None = None):
        self.rows: list[dict] = []
        self.sinks = sinks or []
        # deferred: rows reach the sinks only on flush(), once the epoch's last.ckpt is written,
        # so the tracked history never runs ahead of what a resumed run continues from.
        self.deferred = False
        self._pending: list[dict] = []
        self._epoch_start = self._train_end = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start, self._train_end, self._samples = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._samples += len(batch[1])

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        # Callbacks run before the LightningModule's own on_train_epoch_end, where it logs
        # the training metrics: ask the module for them when it can tell. Every rank asks:
        # computing them synchronises the processes.
        if hasattr(pl_module, "epoch_metrics"):
            metrics.update({k: float(v) for k, v in pl_module.epoch_metrics("train").items()})
        if not trainer.is_global_zero:
            return
        row = {
            "epoch": trainer.current_epoch + 1,
            "train_loss": metrics.get("train/loss"),
            "train_acc": metrics.get("train/acc"),
            "val_loss": metrics.get("val/loss"),
            "val_acc": metrics.get("val/acc"),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "epoch_seconds": now - self._epoch_start,
            "train_seconds": train_seconds,
            # samples seen by this process times the number of processes
            "samples_per_second": self._samples * trainer.world_size / max(train_seconds, 1e-9),
        }
        self.record(row)

    def record(self, row: dict) -> None:
        """Keep one epoch's row and hand it to the sinks (also used by the NumPy loop).
        A non-finite loss stops the run here, before anything of that epoch is recorded."""
        for key in ("train_loss", "val_loss"):
            value = row.get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: {key} is {value} in epoch {row['epoch']}; "
                    f"lower optimizer.lr (the rate was {row.get('lr'):g} then) or set trainer.gradient_clip_val"
                )
        self.rows.append(row)
        self._pending.append(row)
        if not self.deferred:
            self.flush()

    def flush(self) -> None:
        """Hand the rows not yet handed over to the sinks."""
        pending, self._pending = self._pending, []
        for row in pending:
            for sink in self.sinks:
                sink(row)

    def state_dict(self) -> dict:  # saved in every checkpoint: a resumed run keeps its history
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self._pending = list(self.rows)  # sinks skip what they already have (see tracking.record)
        self.flush()

    def best(self, column: str = "val_loss", mode: str = "min") -> dict:
        """The epoch the checkpoint keeps (``best_epoch_rule``)."""
        return best_row(self.rows, column, mode)

    def write_csv(self, path: Path) -> None:
        write_rows(path, self.rows, COLUMNS)
