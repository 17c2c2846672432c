"""Blocks: several optimizer steps per Lightning training batch (``steps_per_call``).

nnlab.models.module.Classifier trains by Lightning's manual optimization: every training batch
Lightning hands over is a block of batches, and the module takes one optimizer step per batch,
in the order and with the per-step hooks (backward, optimizer step, zero_grad), clipping and
gradient scaling of Lightning's automatic optimization. An ordinary run's blocks hold one batch.
Lightning's loop has a fixed cost per training batch (hook dispatch to the module and every
callback, strategy and precision wrappers, progress counters), which on a CPU is as much as a
small MLP's whole step (reports/bench.md has the figures); with blocks of ``steps_per_call``
batches it is paid once per block, and the training is the same bit for bit
(tests/test_blocks.py). What Lightning does around each of its batches (batch hooks,
validation, checkpoints, loggers, Ctrl-C) then happens once per block.
"""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig

from nnlab.config.schema import check
from nnlab.data.tensors import TensorData

AUTO_STEPS_PER_CALL = 16  # Lightning's per-batch cost, paid once per 16 optimizer steps
# ModelCheckpoint's arguments that save in the middle of an epoch, counted in training steps or time.
STEPWISE_CHECKPOINT_KEYS = ("every_n_train_steps", "train_time_interval")
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true")  # those without a gradient scaler


def obstacles(cfg: DictConfig, trainer: L.Trainer, datamodule) -> list[str]:
    """What in this run needs one optimizer step per Lightning batch (blocks of one), if anything:
    a data module that cannot cut blocks, or something Lightning does between its batches."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    stepwise = [
        name
        for name, spec in (cfg.get("callbacks") or {}).items()
        if spec is not None and any(spec.get(key) for key in STEPWISE_CHECKPOINT_KEYS)
    ]
    found = [
        (not isinstance(datamodule, TensorData), f"data._target_={cfg.data._target_} (not one of nnlab's data sets)"),
        (not isinstance(trainer.strategy, SingleDeviceStrategy), f"trainer.strategy={type(trainer.strategy).__name__}"),
        (
            trainer.precision not in PRECISIONS,
            f"trainer.precision={trainer.precision} (blocks: {', '.join(PRECISIONS)})",
        ),
        (trainer.max_steps != -1, f"max_steps={trainer.max_steps}"),
        (bool(stepwise), f"a checkpoint every n training steps or seconds (callbacks.{', '.join(stepwise)})"),
    ]
    return [reason for present, reason in found if present]


def steps_per_call(cfg: DictConfig, trainer: L.Trainer, datamodule) -> int:
    """``cfg.steps_per_call``; for ``auto`` AUTO_STEPS_PER_CALL where nothing stands in the way,
    else 1. A number > 1 where something does is a ConfigError naming it."""
    wanted = cfg.get("steps_per_call", 1)
    found = obstacles(cfg, trainer, datamodule) if wanted != 1 else []
    if wanted == "auto":
        return 1 if found else AUTO_STEPS_PER_CALL
    check(
        not found,
        "steps_per_call",
        f"{wanted} steps in one Lightning batch does not fit {'; '.join(found)}; use steps_per_call=1 or auto",
    )
    return int(wanted)


def use_blocks(cfg: DictConfig, trainer: L.Trainer, datamodule) -> int:
    """Tell the data module how many batches a block holds; returns that number. With blocks,
    ``limit_train_batches`` moves from the trainer (which would count blocks) to the data module."""
    count = steps_per_call(cfg, trainer, datamodule)
    datamodule.steps_per_call = count
    if count > 1:
        datamodule.train_limit, trainer.limit_train_batches = cfg.trainer.limit_train_batches, 1.0
    return count
