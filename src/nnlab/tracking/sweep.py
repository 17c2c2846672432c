"""The MLflow parent run of a multirun: a grid sweep's (opened by ``MlflowSweepCallback``) or an
Optuna search's (opened by the sweeper, which hands it to its jobs itself).

Opening the parent opens the store (creating and migrating it once, before any job runs:
parallel jobs then never race to create the schema), marks parents that a killed sweep left
RUNNING as KILLED, and tags the parent with who ran what (user, source, git commit). Every job's
run is its child (tag ``mlflow.parentRunId``, see ``nnlab.tracking.trial``). One owner of "best":
a grid sweep's parent gets the child with the best ``best_val_acc`` (a grid searches nothing, so
the callback ranks by validation accuracy); a search's parent gets the study's best trial, by the
study's own metric and direction, from the sweeper.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nnlab.config.paths import find_root
from nnlab.errors import TrackingError, fail, report
from nnlab.tracking.credentials import redacted
from nnlab.tracking.trial import PARENT_ENV, SWEPT_ENV

BEST_METRIC = "best_val_acc"
SEARCH_SWEEPER = "hydra_plugins.nnlab_optuna_sweeper.sweeper.NnlabOptunaSweeper"


class SweepParent:
    """One multirun's parent run, through MLflow's client."""

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def open(cls, config: DictConfig, run_name: str, tags: dict[str, str]) -> SweepParent | None:
        """The parent run of the multirun ``config`` describes (None when tracking is off)."""
        mlflow_cfg = (config.get("logger") or {}).get("mlflow")
        if not mlflow_cfg:
            return None
        from mlflow.tracking import MlflowClient

        from nnlab.tracking.names import experiment_name
        from nnlab.tracking.record import git_tags, source_tags
        from nnlab.tracking.run import (
            check_reachable,
            experiment_id,
            mark_dead_runs_killed,
            process_tags,
            resolve_tracking_uri,
            store_lock,
        )

        prog = f"nnlab.{config.hydra.job.name}"
        root = find_root()
        uri = resolve_tracking_uri(mlflow_cfg.tracking_uri, root)
        try:  # before any job: MLflow's client would retry a server that is down for minutes
            check_reachable(uri)
        except TrackingError as exc:
            fail(prog, str(exc), code=1)
        with store_lock(uri):  # two sweeps started at once on a new store: one creates it
            client = MlflowClient(tracking_uri=uri)
            exp = experiment_id(client, experiment_name(config), root, uri)
        for dead in mark_dead_runs_killed(client, exp, run_name):
            print(f"{prog}: parent run {dead} ({run_name!r}) was left RUNNING by a sweep that died; marked KILLED")
        overrides = " ".join(config.hydra.overrides.task)
        commit = git_tags(root)
        tags = {
            "sweep": "parent",
            "experiment": str(config.name),
            "sweep_overrides": overrides[:5000],
            **commit,
            **source_tags(commit.get("git_commit")),
            **process_tags(),
            **tags,
        }
        run = client.create_run(exp, run_name=run_name, tags=tags)
        client.log_param(run.info.run_id, "sweep_overrides", overrides[:6000])
        return cls(client, run.info.run_id, uri)

    def children(self) -> list:
        exp = self.client.get_run(self.run_id).info.experiment_id
        return self.client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'")

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def close(self, status: str) -> None:
        """End the parent ``status`` (FINISHED, FAILED, KILLED) unless it has ended already."""
        if self.client.get_run(self.run_id).info.status == "RUNNING":
            self.client.set_terminated(self.run_id, status)

    # ------------------------------------------------------------ a grid sweep
    def record_grid_best(self) -> None:
        """Jobs, failed jobs, and the child with the best validation accuracy."""
        children = self.children()
        scored = [c for c in children if BEST_METRIC in c.data.metrics]
        failed = sum(c.info.status != "FINISHED" for c in children)
        tags = {"jobs": len(children), "failed_jobs": failed}
        if scored:
            best = max(scored, key=lambda c: c.data.metrics[BEST_METRIC])
            tags.update(best_child=best.info.run_id, best_child_name=best.info.run_name or "")
            self.client.log_metric(self.run_id, "best_child_val_acc", best.data.metrics[BEST_METRIC])
        self.set_tags(tags)

    # ------------------------------------------------------------ an Optuna search
    def record_search_start(self, study: str, storage: str, metric: str, direction: str, before: int) -> None:
        """Tags naming the study (its storage without credentials) and where it stood."""
        self.set_tags(
            {
                "optuna_study": study,
                "optuna_storage": redacted(storage),
                "optuna_metric": metric,
                "optuna_direction": direction,
                "optuna_trials_before": before,
                "optuna_resumed": str(before > 0).lower(),
            }
        )

    def record_search_end(self, summary: dict, files: Iterable[Path], report_root: Path) -> None:
        """The best over the whole study (value, params, trial, its run) and the report, its plots
        in the artifact folders its links name."""
        counts = summary["counts"]
        tags: dict[str, Any] = {f"trials_{state}": n for state, n in counts.items()}
        tags["trials_this_invocation"] = summary["this_invocation"]
        tags["trials_lost"] = summary.get("lost", 0)
        tags["trials_continued"] = summary.get("continued", 0)
        best = summary.get("best")
        if best:
            tags.update(
                best_trial=best["number"],
                best_trial_run_id=best.get("mlflow_run_id") or "",
                best_params=json.dumps(best["params"], default=str)[:5000],
            )
            self.client.log_metric(self.run_id, "best_value", best["value"])
            self.client.log_metric(self.run_id, f"best_{summary['metric']}", best["value"])
            from mlflow.entities import Param

            existing = self.client.get_run(self.run_id).data.params
            params = [
                Param(f"best.{k}", str(v)[:6000]) for k, v in best["params"].items() if f"best.{k}" not in existing
            ]
            if params:
                self.client.log_batch(self.run_id, params=params[:100])
        self.set_tags(tags)
        for path in files:
            folder = Path(path).parent.relative_to(report_root).as_posix()
            self.client.log_artifact(self.run_id, str(path), "search" if folder == "." else f"search/{folder}")

    def end_lost_trial(self, study: str, number: int, reason: str) -> None:
        """The runs of a trial whose process died without ending them (this search's or an
        earlier one's): KILLED, with the reason."""
        exp = self.client.get_run(self.run_id).info.experiment_id
        runs = self.client.search_runs(
            [exp],
            filter_string=f"tags.optuna_study = '{study}' and tags.optuna_trial = '{number}' "
            "and attributes.status = 'RUNNING'",
        )
        for run in runs:
            self.client.set_tag(run.info.run_id, "killed_reason", reason[:5000])
            self.client.set_terminated(run.info.run_id, "KILLED")

    def record_failed_trial(self, study: str, number: int, experiment: str, message: str) -> None:
        """A trial that never reached a job (its values cannot be composed): a FAILED child run
        with the reason, as a job that failed would leave."""
        tags = {
            "mlflow.parentRunId": self.run_id,
            "sweep_id": self.run_id,
            "experiment": experiment,
            "optuna_study": study,
            "optuna_trial": str(number),
            "error": message[:5000],
        }
        exp = self.client.get_run(self.run_id).info.experiment_id
        run = self.client.create_run(exp, run_name=f"trial {number}", tags=tags)
        self.client.set_terminated(run.info.run_id, "FAILED")


def swept_keys(overrides: Iterable[str]) -> list[str]:
    """The keys a grid sweep's overrides vary (``optimizer.lr=0.01,0.1`` -> ``optimizer.lr``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def check_log_dir(config: DictConfig) -> None:
    """A sweep's or a search's folder goes under ``paths.log_dir``: one that cannot be created is
    one line now, before any parent run or study exists (Hydra's launcher would fail creating the
    sweep folder with a page of chained tracebacks, and an Optuna search would fail every trial)."""
    from nnlab.config.paths import check_writable
    from nnlab.config.schema import ConfigError

    paths = config.get("paths")
    if not paths or not paths.get("log_dir"):
        return
    try:
        check_writable(paths.log_dir, "paths.log_dir")
    except ConfigError as exc:
        report(f"nnlab.{config.hydra.job.name}", exc)


class MlflowSweepCallback(Callback):
    """Hydra builds it for every command, single runs included: MLflow is imported only when a
    grid sweep starts with tracking on (``evaluate logger=none`` and the like import none of it).
    An Optuna search's parent is the sweeper's own."""

    def __init__(self) -> None:
        self.parent: SweepParent | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_log_dir(config)
        if config.hydra.sweeper.get("_target_") == SEARCH_SWEEPER:
            return
        self.parent = SweepParent.open(config, f"sweep: {config.name}", {})
        if self.parent is None:
            return
        # The jobs' processes (joblib, submitit, SLURM) inherit the environment of this one.
        os.environ[PARENT_ENV] = self.parent.run_id
        os.environ[SWEPT_ENV] = ",".join(swept_keys(config.hydra.overrides.task))
        atexit.register(self._close, "FAILED")  # a sweep that dies is not left RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        self.parent.record_grid_best()
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self.parent is not None:
            self.parent.close(status)
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEPT_ENV, None)
