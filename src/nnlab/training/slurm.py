"""A training inside a Slurm job: one run folder for all its tasks, and a requeued job that
continues its run instead of starting again.

- The run folder's name comes from the job, not the clock: ``slurm-<job id>`` in a batch script,
  ``slurm-<job id>.<step id>`` in an ``srun`` step. Every task of a multi-process run (``srun``
  with 2 tasks, DDP) computes the same folder, and a requeued job (same job id, same step id)
  finds its own folder again.
- A restarted job (``SLURM_RESTART_COUNT`` > 0) whose run folder holds ``models/last.ckpt``
  continues from it, as ``resume=true`` does: the same MLflow run, the same Optuna trial (a
  sweep job's folder and trial are in its config), epochs from the last finished one.
- The warning signal (``sbatch --signal=USR1@<seconds>``: before a time limit or a preemption)
  requeues the job at once. Nothing is written in the signal handler: ``last.ckpt`` of the last
  finished epoch is the checkpoint, so at most the epoch in progress is lost and the restarted
  run ends with the same metrics as one never interrupted.
- Lightning's own auto-requeue is turned off (``SLURMEnvironment(auto_requeue=False)``): it
  saves a mid-epoch ``hpc_ckpt_<n>.ckpt`` into the trainer's root folder (logs/, shared by every
  run) and loads it in the next Slurm training that has no checkpoint of its own.

Nothing here imports Lightning until a trainer needs it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from pathlib import Path

from nnlab.config.paths import in_slurm_task as in_task

REQUEUE_SIGNAL = signal.SIGUSR1  # submitit's own warning signal is USR2 (hydra/launcher=slurm handles it)
_log = logging.getLogger(__name__)


def restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def continues(models_dir: Path) -> bool:
    """A requeued job restarted with the unfinished run of its first start in ``models_dir``."""
    return in_task() and restart_count() > 0 and (Path(models_dir) / "last.ckpt").is_file()


def run_tags() -> dict[str, str]:
    """The job a run trained in, and how often Slurm restarted it (MLflow tags)."""
    if not in_task():
        return {}
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return {"slurm_job_id": job, "slurm_restart_count": str(restart_count())}


def quiet_srun_hint() -> None:
    """Lightning warns at every training that ``srun`` is on PATH but not used: not a problem
    outside a job (a login node, or this project's tests beside their own cluster)."""
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


def lightning_plugins() -> list:
    """The Trainer's plugins in a Slurm task: Lightning's SLURM environment without its
    auto-requeue (see the module's docstring); none elsewhere."""
    quiet_srun_hint()
    if not in_task():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():  # an interactive job: Lightning treats it as no cluster
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def requeue_now() -> bool:
    """``scontrol requeue <this job>``; whether Slurm accepted it."""
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("could not requeue Slurm job %s: %s", job, exc)
        return False
    if done.returncode != 0:
        _log.warning("could not requeue Slurm job %s: %s", job, " ".join(done.stderr.split()))
    return done.returncode == 0


def callbacks() -> list:
    """In a Slurm task, a Lightning callback: from ``setup`` to ``teardown`` the warning signal
    requeues the job (task 0 asks Slurm, the others only note it); none elsewhere."""
    if not in_task():
        return []
    import lightning as L

    class RequeueOnSignal(L.Callback):
        def __init__(self):
            self.previous = None
            self.signalled = False

        def setup(self, trainer, pl_module, stage):
            self.previous = signal.signal(REQUEUE_SIGNAL, self.handle)

        def handle(self, signum, frame):
            if self.signalled:
                return
            self.signalled = True
            if os.environ.get("SLURM_PROCID") == "0":
                print(f"{signal.Signals(signum).name}: requeueing Slurm job {os.environ['SLURM_JOB_ID']}", flush=True)
                requeue_now()

        def teardown(self, trainer, pl_module, stage):
            if self.previous is not None:
                signal.signal(REQUEUE_SIGNAL, self.previous)

    return [RequeueOnSignal()]
