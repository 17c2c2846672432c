"""A job's side of a sweep or an Optuna search: which parent run it belongs to, what its run is
called, and, in a search, its trial.

- A grid sweep's job finds its parent run in the environment: the sweep's callback
  (``nnlab.tracking.sweep``) sets it before the launcher starts the jobs' processes.
- A search's job finds everything in ``hydra.sweeper.job``, which the sweeper sets for that job
  only: the study, the trial's number, the storage, the parent run, the torch threads it may use.
  The job reconnects to the study, keeps the trial's heartbeat (a trial that goes silent is
  failed and retried by the sweeper), reports its validation metric every epoch, stops when the
  pruner says so, and tells the study how it ended itself, so that the result survives a
  launcher that loses its workers. It records its process (host, pid, start time) on the trial:
  the sweeper continues a trial lost with its worker only once that process is gone.
- A trial the sweeper relaunched after its worker was lost (``continues`` in
  ``hydra.sweeper.job``) continues from its run folder's ``last.ckpt`` as ``resume=true`` does:
  the same MLflow run, the same trial, epochs from the last finished one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

PARENT_ENV = "NNLAB_SWEEP_PARENT_RUN_ID"  # a grid sweep's parent run, for its jobs' processes
SWEPT_ENV = "NNLAB_SWEEP_KEYS"  # the keys a grid sweep varies: its jobs' runs are named by them
_log = logging.getLogger(__name__)


def job_settings():
    """What the sweeper set for this job under ``hydra.sweeper.job`` (study, trial, parent,
    storage and threads when it has them), or None outside an Optuna search."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper")
    job = sweeper.get("job") if sweeper is not None else None
    return job or None


def in_trial() -> bool:
    return job_settings() is not None


def sweep_parent() -> str | None:
    """The id of the parent run this job belongs to (None outside a tracked sweep or search)."""
    job = job_settings()
    if job is not None:
        return str(job.get("parent") or "") or None
    return os.environ.get(PARENT_ENV) or None


def sweep_tags() -> dict[str, str]:
    """Tags for a job's run when it is part of a sweep or a search (empty otherwise)."""
    parent = sweep_parent()
    if not parent:
        return {}
    from hydra.core.hydra_config import HydraConfig

    tags = {"mlflow.parentRunId": parent, "sweep_id": parent}
    if HydraConfig.initialized():
        tags["sweep_job"] = str(HydraConfig.get().job.num)
    job = job_settings()
    if job is not None:
        tags.update(optuna_study=str(job.study), optuna_trial=str(job.trial))
    return tags


def run_name(experiment: str) -> str:
    """A search's job: ``trial <n>``; a grid sweep's job: the values it was given
    (``optimizer.lr=0.1 data.batch_size=32``); any other run: the experiment's name."""
    job = job_settings()
    if job is not None:
        return f"trial {job.trial}"
    swept = os.environ.get(SWEPT_ENV)
    if not swept or not sweep_parent():
        return experiment
    from hydra.core.hydra_config import HydraConfig

    keys = set(swept.split(","))
    given = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0].lstrip("+~") in keys]
    return " ".join(given) or experiment


def continues(models_dir) -> bool:
    """This job continues its trial after the worker that ran it was lost, and the run folder
    holds the last finished epoch (``models/last.ckpt``) to continue from."""
    from pathlib import Path

    job = job_settings()
    return job is not None and bool(job.get("continues")) and (Path(models_dir) / "last.ckpt").is_file()


def set_torch_threads_for_job() -> None:
    """In a search whose jobs share this machine's cores, this job's share of torch threads."""
    job = job_settings()
    if job is not None and job.get("threads"):
        import torch

        torch.set_num_threads(int(job.threads))


def _sweeper():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().sweeper


def _storage(job, sweeper):
    """The study's storage, opened as the sweeper opened it."""
    from hydra_plugins.nnlab_optuna_sweeper.study import STORAGE_ENV, open_storage

    url = job.get("storage") or os.environ[STORAGE_ENV]  # a URL with a password travels in the environment
    return open_storage(url, create=False)


class JobTrial:
    """The trial this job runs, reconnected to its study in the job's own process."""

    def __init__(self, job, sweeper) -> None:
        import optuna

        from hydra_plugins.nnlab_optuna_sweeper.study import METRICS, Heartbeat, build_pruner, retrying, trial_id
        from nnlab.config.process import identity

        self.study_name, self.number = str(job.study), int(job.trial)
        self.metric = sweeper.get("metric", "val_acc")
        self.monitor = METRICS[self.metric][0]
        self.storage = _storage(job, sweeper)
        study = retrying(
            lambda: optuna.load_study(
                study_name=self.study_name,
                storage=self.storage,
                pruner=build_pruner(sweeper.get("pruner"), quiet=True),
                sampler=optuna.samplers.RandomSampler(),
            )
        )
        self.trial_id = trial_id(self.storage, self.study_name, self.number)
        self.trial = retrying(lambda: optuna.trial.Trial(study, self.trial_id))
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0":
            retrying(lambda: self.trial.set_user_attr("process", identity()))  # whose loss the sweeper waits for
        self.pruned_epoch: int | None = None
        interval = sweeper.get("heartbeat_interval")
        if interval:
            Heartbeat(self.storage, {self.trial_id: self.number}, int(interval), name="trial-heartbeat")

    def judge(self, epoch: int, value: float, can_stop: bool = True) -> bool:
        """Report one epoch's validation metric; True when the pruner stops the trial (asked only
        while there are epochs left to save)."""
        from hydra_plugins.nnlab_optuna_sweeper.study import retrying

        retrying(lambda: self.trial.report(value, epoch))
        if can_stop and retrying(self.trial.should_prune):
            self.pruned_epoch = epoch
            return True
        return False

    def link_run(self, run_id: str, run_dir) -> None:
        """The trial names its MLflow run and its folder (the report and the dashboard show them)."""
        from hydra_plugins.nnlab_optuna_sweeper.study import retrying

        retrying(lambda: self.trial.set_user_attr("mlflow_run_id", run_id))
        retrying(lambda: self.trial.set_user_attr("run_dir", str(run_dir)))


def job_trial() -> JobTrial | None:
    """This job's trial when an Optuna search launched it (None otherwise)."""
    job = job_settings()
    return JobTrial(job, _sweeper()) if job is not None else None


def record_pruned(run, epoch: int) -> None:
    """A pruned trial's run ends FINISHED (it trained, just not to the end) with tags saying so."""
    run.client.set_tag(run.run_id, "optuna_state", "pruned")
    run.client.set_tag(run.run_id, "pruned_at_epoch", str(epoch))


def finish_trial(summary: dict) -> float | None:
    """Tell the study how this job's trial ended (the best epoch's metric, or pruned) and return
    what the job hands back to the sweeper: the value, or None for a pruned trial."""
    import optuna

    from hydra_plugins.nnlab_optuna_sweeper.study import retrying

    if not summary:  # a rank other than 0 of a multi-process training: rank 0 tells the study
        return None
    job, sweeper = job_settings(), _sweeper()
    study = retrying(lambda: optuna.load_study(study_name=str(job.study), storage=_storage(job, sweeper)))
    number = int(job.trial)
    if summary.get("pruned_epoch"):
        state = optuna.trial.TrialState.PRUNED
        retrying(lambda: study.tell(number, state=state, skip_if_finished=True))
        return None
    value: Any = summary[f"best_{sweeper.get('metric', 'val_acc')}"]
    retrying(lambda: study.tell(number, float(value), skip_if_finished=True))
    return value
