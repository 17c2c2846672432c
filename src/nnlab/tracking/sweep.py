"""Hydra callback that groups a multirun under one MLflow parent run.

On the sweep's start it opens the store (creating and migrating it once, before any job
runs: parallel jobs then never race to create the schema) and a parent run; every job's
run becomes its child (tag ``mlflow.parentRunId``). At the end the parent gets the best
child and its metric and is closed. Jobs find the parent through environment variables,
which reach the joblib and submitit launchers' worker processes too.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nnlab.config.errors import TrackingError, fail
from nnlab.config.paths import find_root
from nnlab.tracking.search import trial_tags

PARENT_ENV = "NNLAB_SWEEP_PARENT_RUN_ID"
URI_ENV = "NNLAB_SWEEP_TRACKING_URI"
BEST_METRIC = "best_val_acc"


def sweep_tags() -> dict[str, str]:
    """Tags for a job's run when it is part of a sweep (empty otherwise)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return {}
    from hydra.core.hydra_config import HydraConfig

    tags = {"mlflow.parentRunId": parent, "sweep_id": parent}
    if HydraConfig.initialized():
        tags["sweep_job"] = str(HydraConfig.get().job.num)
    return {**tags, **trial_tags()}  # an Optuna search's job: its study and trial number


class MlflowSweepCallback(Callback):
    """Hydra builds it for every command, single runs included: MLflow is imported only when a
    multirun starts with tracking on (``evaluate logger=none`` and the like import none of it)."""

    def __init__(self) -> None:
        self.client = None  # an MlflowClient once a tracked multirun has started
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mlflow_cfg = (config.get("logger") or {}).get("mlflow")
        if not mlflow_cfg:
            return
        from mlflow.tracking import MlflowClient

        from nnlab.tracking.run import check_reachable, experiment_id, resolve_tracking_uri, store_lock

        root = find_root()
        uri = resolve_tracking_uri(mlflow_cfg.tracking_uri, root)
        try:  # before any job: MLflow's client would retry a server that is down for minutes
            check_reachable(uri)
        except TrackingError as exc:
            fail(f"nnlab.{config.hydra.job.name}", str(exc), code=1)
        with store_lock(uri):  # two searches started at once on a new store: one creates it
            self.client = MlflowClient(tracking_uri=uri)
            exp = experiment_id(self.client, mlflow_cfg.experiment_name, root, uri)
        overrides = " ".join(config.hydra.overrides.task)
        run = self.client.create_run(
            exp,
            run_name=f"sweep: {config.name}",
            tags={"sweep": "parent", "experiment": config.name, "sweep_overrides": overrides[:5000]},
        )
        self.parent = run.info.run_id
        self.client.log_param(self.parent, "sweep_overrides", overrides[:6000])
        os.environ[PARENT_ENV], os.environ[URI_ENV] = self.parent, uri
        atexit.register(self._close, "FAILED")  # a sweep that dies is not left RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent:
            return
        children = self.client.search_runs(
            [self.client.get_run(self.parent).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent}'",
        )
        scored = [c for c in children if BEST_METRIC in c.data.metrics]
        tags = {"jobs": str(len(children)), "failed_jobs": str(sum(c.info.status != "FINISHED" for c in children))}
        if scored:
            best = max(scored, key=lambda c: c.data.metrics[BEST_METRIC])
            tags.update(best_child=best.info.run_id, best_child_name=best.info.run_name or "")
            self.client.log_metric(self.parent, "best_child_val_acc", best.data.metrics[BEST_METRIC])
        for key, value in tags.items():
            self.client.set_tag(self.parent, key, value)
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self.parent and self.client.get_run(self.parent).info.status == "RUNNING":
            self.client.set_terminated(self.parent, status)
        os.environ.pop(PARENT_ENV, None)
