"""The Optuna side of a search: the study's storage (with its heartbeat), its sampler and pruner
built from the table in ``config``, the objective, and the one error type of the sweeper.

The sweeper (``_loop``) asks the study for trials and the jobs report to it (``nnlab.tracking.trial``);
both open the storage here, so every process sees the same database the same way.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nnlab.errors import SearchError
from nnlab.tracking.credentials import STORAGE_ENV, redacted
from nnlab.tracking.sqlite import creation_lock

from .config import TABLES

# STORAGE_ENV is NNLAB_OPTUNA_STORAGE: the study's database (a team's PostgreSQL) when storage is null.

METRICS = {"val_acc": ("val/acc", "maximize"), "val_loss": ("val/loss", "minimize")}
RETRIES = 8
_log = logging.getLogger(__name__)


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


def open_storage(url: str, create: bool = True, heartbeat: Mapping[str, Any] | None = None):
    """Optuna's RDB storage for ``url``: SQLite waits up to a minute for a lock instead of failing
    at once; other databases check pooled connections before use. ``heartbeat`` (the sweeper's
    heartbeat_interval, grace_period, max_retry) turns on Optuna's detection of dead trials."""
    import optuna

    sqlite = url.startswith("sqlite:")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    beat = heartbeat_options(heartbeat)
    try:
        with creation_lock(url):
            return retrying(
                lambda: optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, skip_table_creation=not create, **beat
                )
            )
    except ImportError as exc:
        raise SearchError(f"hydra.sweeper.storage: no database driver for {redacted(url)} ({exc})") from None
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            from nnlab.errors import first_line

            raise SearchError(f"hydra.sweeper.storage: cannot open {redacted(url)}: {first_line(exc)}") from None
        raise


def heartbeat_options(heartbeat: Mapping[str, Any] | None) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments: a trial silent for grace_period seconds is FAIL, then
    retried up to max_retry times with the same values (Optuna's RetryHeartbeatStaleTrialCallback)."""
    if not heartbeat or heartbeat.get("heartbeat_interval") is None:
        return {}
    import optuna

    interval, grace, retries = (heartbeat.get(k) for k in ("heartbeat_interval", "grace_period", "max_retry"))
    for key, value, low in (("heartbeat_interval", interval, 1), ("grace_period", grace, 1), ("max_retry", retries, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise SearchError(
                f"hydra.sweeper.{key}: must be a whole number >= {low}"
                + (" or null" if key != "heartbeat_interval" else "")
                + f", got {value!r}"
            )
    if grace is not None and grace <= interval:
        raise SearchError(
            f"hydra.sweeper.grace_period: must be longer than heartbeat_interval ({interval}), got {grace}"
        )
    return {
        "heartbeat_interval": interval,
        "grace_period": grace,
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries),
    }


class Heartbeat:
    """Optuna's heartbeat of trials, recorded by this process on a daemon thread every ``interval``
    seconds for as long as each trial is RUNNING, until ``stop()`` (or the end of a ``with``
    block). The job keeps its own trial's; the sweeper keeps those of the trials it relaunches.
    ``trials`` maps each trial's storage id to its number (for the warning of a missed beat)."""

    def __init__(self, storage, trials: Mapping[int, int], interval: float, name: str):
        self.storage, self.trials, self.interval = storage, dict(trials), interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def _run(self) -> None:
        running = list(self.trials)
        while running:
            running = [tid for tid in running if self._beat(tid)]
            if self._stop.wait(self.interval):
                return

    def _beat(self, tid: int) -> bool:
        """One beat; False once the trial is no longer RUNNING."""
        from optuna.trial import TrialState

        try:
            if retrying(lambda: self.storage.get_trial(tid)).state != TrialState.RUNNING:
                return False
            retrying(lambda: self.storage.record_heartbeat(tid))
        except Exception as exc:  # a missed beat is not worth the training; the next one may land
            _log.warning(f"trial {self.trials[tid]}: heartbeat not recorded ({type(exc).__name__})")
        return True

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- samplers and pruners
def _build(kind: str, spec: Any, quiet: bool = False) -> Any:
    """A sampler or pruner from a short name (``tpe``, ``median``, ``none``) or a mapping with
    ``_target_: optuna.<module>.<Class>`` and its arguments (hydra-optuna-sweeper's form)."""
    import optuna
    from omegaconf import DictConfig, OmegaConf

    table = TABLES[kind]
    classes = [c.cls for c in table.values()]
    key = f"hydra.sweeper.{kind}"
    allowed = f"hydra/sweeper/{kind}=<{' | '.join(table)}> or {{_target_: optuna.{kind}s.<Class>, ...}}"
    if spec is None:
        spec = "none" if kind == "pruner" else "tpe"
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        if spec not in table:
            raise SearchError(f"{key}: unknown {kind} {spec!r}; allowed: {allowed}")
        spec = {"_target_": f"optuna.{kind}s.{table[spec].cls}"}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("_target_"), str):
        raise SearchError(f"{key}: must be {allowed}, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if v is not None}  # null: Optuna's default
    target = kwargs.pop("_target_")
    prefix = f"optuna.{kind}s."
    name = target.removeprefix(prefix)
    if not target.startswith(prefix) or name not in classes:
        raise SearchError(f"{key}._target_: must be one of {', '.join(prefix + n for n in classes)}, got {target!r}")
    cls = getattr(optuna.samplers if kind == "sampler" else optuna.pruners, name)
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
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping) and spec.get("seed") is not None and seed_offset:
        spec = {**spec, "seed": int(spec["seed"]) + seed_offset}
    return _build("sampler", spec)


def build_pruner(spec: Any, quiet: bool = False):
    return _build("pruner", spec, quiet)


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


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of the study (Optuna's public storage API)."""
    study_id = retrying(lambda: storage.get_study_id_from_name(study_name))
    return retrying(lambda: storage.get_trial_id_from_study_id_trial_number(study_id, number))
