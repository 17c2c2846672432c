"""Optuna searches: the study's storage, its sampler and pruner settings, the trial a training job
belongs to, and what MLflow records of a search.

The sweeper (``hydra/sweeper=nnlab_optuna``, in ``src/hydra_plugins/``) asks the study for trials
and tells it their results; each trial runs as an ordinary training job (joblib, submitit, SLURM)
that finds its trial in ``hydra.sweeper.job``, which the sweeper sets for that job only. The job
reconnects to the study by storage URL, study name and trial id, reports its validation metric
every epoch and stops when the pruner says so.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nnlab.tracking.credentials import STORAGE_ENV, redacted
from nnlab.tracking.sqlite import creation_lock

# STORAGE_ENV is NNLAB_OPTUNA_STORAGE: the study's database (a team's PostgreSQL) when storage is null.

METRICS = {"val_acc": ("val/acc", "maximize"), "val_loss": ("val/loss", "minimize")}
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsgaii": "NSGAIISampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}
RETRIES = 8
_log = logging.getLogger(__name__)


class SearchError(ValueError):
    """A search setting that cannot work (one-line message: the key, what was wrong, what is allowed)."""


# ---------------------------------------------------------------- storage
def default_storage(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'optuna.db'}"


def resolve_storage(configured: str | None, root: Path) -> str:
    """``hydra.sweeper.storage``, else ``NNLAB_OPTUNA_STORAGE``, else ``optuna.db`` at the project
    root. A relative SQLite path is taken from the project root, so every job finds the same file."""
    url = str(configured or os.environ.get(STORAGE_ENV) or default_storage(root))
    if "://" not in url:
        raise SearchError(
            f"hydra.sweeper.storage: {redacted(url)!r} is not a database URL; use e.g. sqlite:///optuna.db "
            "or postgresql://host/db"
        )
    if url == "sqlite://" or url.startswith("sqlite:///:memory:"):
        raise SearchError("hydra.sweeper.storage: an in-memory database cannot be shared with the jobs; use a file")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{Path(root).resolve() / url.removeprefix('sqlite:///')}"
    return url


def has_credentials(url: str) -> bool:
    return redacted(url) != url


def _locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def retrying(call: Callable[[], Any]) -> Any:
    """``call()``, again after a pause while SQLite answers 'database is locked' (many writers)."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(RETRIES):
        try:
            return call()
        except OperationalError as exc:
            if not _locked(exc) or attempt == RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def open_storage(url: str, create: bool = True):
    """Optuna's RDB storage for ``url``: SQLite waits up to a minute for a lock instead of failing
    at once; other databases check pooled connections before use."""
    import optuna

    sqlite = url.startswith("sqlite:")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        with creation_lock(url):
            return retrying(
                lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create)
            )
    except ImportError as exc:
        raise SearchError(f"hydra.sweeper.storage: no database driver for {redacted(url)} ({exc})") from None
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            from nnlab.config.errors import first_line

            raise SearchError(f"hydra.sweeper.storage: cannot open {redacted(url)}: {first_line(exc)}") from None
        raise


# ---------------------------------------------------------------- samplers and pruners
def _build(kind: str, spec: Any, names: dict[str, str], module, quiet: bool = False) -> Any:
    """A sampler or pruner from a short name (``tpe``, ``median``, ``none``) or a mapping with
    ``_target_: optuna.<module>.<Class>`` and its arguments (hydra-optuna-sweeper's form)."""
    from omegaconf import DictConfig, OmegaConf

    key = f"hydra.sweeper.{kind}"
    allowed = f"hydra/sweeper/{kind}=<{' | '.join(names)}> or {{_target_: optuna.{kind}s.<Class>, ...}}"
    if spec is None:
        spec = "none" if kind == "pruner" else "tpe"
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        if spec not in names:
            raise SearchError(f"{key}: unknown {kind} {spec!r}; allowed: {allowed}")
        spec = {"_target_": f"optuna.{kind}s.{names[spec]}"}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("_target_"), str):
        raise SearchError(f"{key}: must be {allowed}, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if v is not None}  # null: Optuna's default
    target = kwargs.pop("_target_")
    prefix = f"optuna.{kind}s."
    name = target.removeprefix(prefix)
    if not target.startswith(prefix) or name not in names.values():
        raise SearchError(
            f"{key}._target_: must be one of {', '.join(prefix + n for n in names.values())}, got {target!r}"
        )
    cls = getattr(module, name)
    # A search config's settings for its default pruner stay behind when the command line picks
    # another one (hydra/sweeper/pruner=threshold): those the class does not take are dropped.
    # (A misspelt key never gets here: Hydra refuses keys that a sampler's or pruner's node lacks.)
    accepted = () if name == "NopPruner" else inspect.signature(cls.__init__).parameters
    for extra in sorted(set(kwargs) - set(accepted)):
        if not quiet and name != "NopPruner":
            _log.warning(f"{key}: {name} takes no {extra!r}; ignored")
        kwargs.pop(extra)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"{key}: {name}: {str(exc).splitlines()[0]}") from None


def build_sampler(spec: Any, seed_offset: int = 0):
    """The sampler; a seed given in the config is shifted by ``seed_offset`` (the number of the
    first trial this invocation asks) so that a resumed study or a second worker does not repeat
    the first worker's random start, while a new study is reproducible."""
    import optuna
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping) and spec.get("seed") is not None and seed_offset:
        spec = {**spec, "seed": int(spec["seed"]) + seed_offset}
    return _build("sampler", spec, SAMPLERS, optuna.samplers)


def build_pruner(spec: Any, quiet: bool = False):
    import optuna

    return _build("pruner", spec, PRUNERS, optuna.pruners, quiet)


def check_objective(metric: Any, direction: Any) -> tuple[str, str]:
    """(metric, direction): the epoch metric a trial is judged by and whether to maximize it."""
    if metric not in METRICS:
        raise SearchError(f"hydra.sweeper.metric: must be one of {', '.join(METRICS)}, got {metric!r}")
    if direction not in ("maximize", "minimize"):
        raise SearchError(f"hydra.sweeper.direction: must be maximize or minimize (one objective), got {direction!r}")
    natural = METRICS[metric][1]
    if direction != natural:
        raise SearchError(f"hydra.sweeper.direction: {metric} is to {natural}, got {direction!r}")
    return metric, direction


# ---------------------------------------------------------------- the job's side
def job_settings():
    """What the sweeper set for this job under ``hydra.sweeper.job`` (study, trial, trial_id, and
    storage and threads when it has them), or None outside an Optuna search."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper")
    job = sweeper.get("job") if sweeper is not None else None
    return job or None


def in_trial() -> bool:
    return job_settings() is not None


class JobTrial:
    """The trial a training job runs, reconnected to its study in the job's own process."""

    def __init__(self, study_name: str, number: int, trial_id: int, storage: str, metric: str, pruner_spec: Any):
        import optuna

        self.study_name, self.number, self.metric = study_name, number, metric
        self.monitor = METRICS[metric][0]
        study = retrying(
            lambda: optuna.load_study(
                study_name=study_name,
                storage=open_storage(storage, create=False),
                pruner=build_pruner(pruner_spec, quiet=True),
                sampler=optuna.samplers.RandomSampler(),
            )
        )
        self.trial = retrying(lambda: optuna.trial.Trial(study, trial_id))
        self.pruned_epoch: int | None = None

    def judge(self, epoch: int, value: float) -> bool:
        """Report one epoch's validation metric; True when the pruner stops the trial."""
        retrying(lambda: self.trial.report(value, epoch))
        if retrying(self.trial.should_prune):
            self.pruned_epoch = epoch
            return True
        return False

    def link_run(self, run_id: str, run_dir: Path) -> None:
        """The trial names its MLflow run and its folder (the report and the dashboard show them)."""
        retrying(lambda: self.trial.set_user_attr("mlflow_run_id", run_id))
        retrying(lambda: self.trial.set_user_attr("run_dir", str(run_dir)))


def job_trial() -> JobTrial | None:
    """This job's trial when an Optuna search launched it (None otherwise). Also caps the job's
    torch threads when several jobs share the machine's cores."""
    job = job_settings()
    if job is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job.threads))
    # A launcher's worker process did not run nnlab.train's main(): quiet Lightning's start-up lines there too.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    sweeper = HydraConfig.get().sweeper
    return JobTrial(
        str(job.study),
        int(job.trial),
        int(job.trial_id),
        job.get("storage") or os.environ[STORAGE_ENV],  # a URL with a password travels in the environment
        sweeper.get("metric", "val_acc"),
        sweeper.get("pruner"),
    )


def trial_tags() -> dict[str, str]:
    """Tags of a job's MLflow run when it is an Optuna trial (empty otherwise)."""
    job = job_settings()
    return {"optuna_study": str(job.study), "optuna_trial": str(job.trial)} if job else {}


def record_pruned(run, epoch: int) -> None:
    """A pruned trial's run ends FINISHED (it trained, just not to the end) with tags saying so."""
    run.client.set_tag(run.run_id, "optuna_state", "pruned")
    run.client.set_tag(run.run_id, "pruned_at_epoch", str(epoch))


def trial_value(summary: dict) -> float:
    """What the job hands back to the sweeper: the best epoch's metric, or optuna.TrialPruned."""
    from hydra.core.hydra_config import HydraConfig

    if summary.get("pruned_epoch"):
        import optuna

        raise optuna.TrialPruned(f"pruned at epoch {summary['pruned_epoch']}")
    metric = HydraConfig.get().sweeper.get("metric", "val_acc")
    return summary[f"best_{metric}"]


# ---------------------------------------------------------------- what MLflow records of a search
def _parent():
    """(client, parent run id) of this invocation's MLflow parent run (tracking.sweep opened it)."""
    from mlflow.tracking import MlflowClient

    from nnlab.tracking.sweep import PARENT_ENV, URI_ENV

    parent, uri = os.environ.get(PARENT_ENV), os.environ.get(URI_ENV)
    return (MlflowClient(tracking_uri=uri), parent) if parent and uri else (None, None)


def record_search_start(study_name: str, storage: str, metric: str, direction: str, trials_before: int) -> str | None:
    """Tags of the parent run naming the study (storage without credentials); returns its id."""
    client, parent = _parent()
    if not parent:
        return None
    tags = {
        "optuna_study": study_name,
        "optuna_storage": redacted(storage),
        "optuna_metric": metric,
        "optuna_direction": direction,
        "optuna_trials_before": str(trials_before),
        "optuna_resumed": str(trials_before > 0).lower(),
    }
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    return parent


def record_search_end(summary: dict, files: list[Path]) -> None:
    """The best over the whole study (value, params, trial, its run) and the report on the parent."""
    client, parent = _parent()
    if not parent:
        return
    counts = summary["counts"]
    tags = {f"trials_{state}": str(n) for state, n in counts.items()}
    tags["trials_this_invocation"] = str(summary["this_invocation"])
    best = summary.get("best")
    if best:
        tags.update(
            best_trial=str(best["number"]),
            best_trial_run_id=best.get("mlflow_run_id") or "",
            best_params=json.dumps(best["params"], default=str)[:5000],
        )
        client.log_metric(parent, "best_value", best["value"])
        client.log_metric(parent, f"best_{summary['metric']}", best["value"])
        existing = client.get_run(parent).data.params
        from mlflow.entities import Param

        params = [Param(f"best.{k}", str(v)[:6000]) for k, v in best["params"].items() if f"best.{k}" not in existing]
        if params:
            client.log_batch(parent, params=params[:100])
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    for path in files:
        client.log_artifact(parent, str(path), "search")


def record_failed_trial(study_name: str, number: int, name: str, message: str) -> None:
    """A trial that never reached a job (its combination of values cannot be composed): a FAILED
    child run of the parent with the reason, as a job that failed would leave."""
    client, parent = _parent()
    if not parent:
        return
    tags = {
        "mlflow.parentRunId": parent,
        "sweep_id": parent,
        "experiment": name,
        "optuna_study": study_name,
        "optuna_trial": str(number),
        "error": message[:5000],
    }
    run = client.create_run(client.get_run(parent).info.experiment_id, run_name=name, tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")
