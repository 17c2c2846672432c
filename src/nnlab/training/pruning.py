"""Stopping a training early when a judge says so (an Optuna pruner, in a search).

Optuna's own Lightning callback raises ``TrialPruned`` inside ``Trainer.fit``, which would end
the run as a failure and skip its results; this one lets Lightning finish the epoch and stop, so
a pruned trial keeps its best checkpoint, history and MLflow run like any finished training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L


class PruneWhenJudged(L.Callback):
    """After each epoch's validation, ``judge(epoch, value, can_stop)`` gets the ``monitor``
    metric (epochs count from 1); True stops the fit at the end of that epoch. Rank 0 judges, all
    ranks stop. After the last epoch there is nothing left to save: ``can_stop`` is False, so a
    trial that trained to the end is never called pruned."""

    def __init__(self, monitor: str, judge: Callable[[int, float], bool]):
        self.monitor, self.judge = monitor, judge
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        value = trainer.callback_metrics.get(self.monitor)
        stop = False
        if trainer.is_global_zero and value is not None and math.isfinite(float(value)):
            stop = bool(self.judge(epoch, float(value), epoch < _last_epoch(trainer)))
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.broadcast(stop))
        if stop:
            self.stopped_epoch = epoch
            trainer.should_stop = True


def _last_epoch(trainer) -> float:
    """The epoch the fit ends after at the latest (max_epochs of -1 or None: no limit)."""
    last = trainer.max_epochs
    return math.inf if last is None or last < 0 else last
