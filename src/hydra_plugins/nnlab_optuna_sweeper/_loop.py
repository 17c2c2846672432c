"""The search: ask the study for a batch of trials, launch them as jobs through the configured
launcher, settle how each ended, repeat; then report the best of the whole study.

- The study lives in a database (``study.resolve_storage``), so a second invocation with the same
  study_name continues it, and processes on other machines share it: Optuna numbers trials in
  the database, so no number is used twice.
- Each job gets ``hydra.sweeper.job`` (study, trial number, storage, parent run, threads) and
  ``hydra.sweep.subdir=trial_<n>``; the training reports every epoch, may be pruned, and tells
  the study how it ended (``nnlab.tracking.trial``).
- A trial whose job fails or returns no finite value is FAIL, and the search goes on.
- A trial whose job was lost with its worker (joblib's loky stops its whole pool when one worker
  dies, so the healthy trials beside a killed one are lost with it) continues as itself once its
  process is gone: the same trial number, run folder and MLflow run, from its last finished epoch
  (``last.ckpt``, as ``resume=true`` and a requeued Slurm job continue), up to ``max_retry``
  times; the sweeper keeps its heartbeat meanwhile.
- A trial whose process died unseen (a lost node, a search killed as a whole) stops writing its
  heartbeat: once silent for the grace period it is FAIL and run again with the same values as a
  new trial (Optuna's RetryHeartbeatStaleTrialCallback), and the search goes on. Trials and
  parents that a killed search left RUNNING are repaired when the study is next opened.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nnlab.config.paths import find_root
from nnlab.config.process import alive
from nnlab.config.schema import NAME_PATTERN, ConfigError, validate
from nnlab.errors import fail, first_line
from nnlab.report.search import write_search_report
from nnlab.tracking.sweep import SweepParent

from ._space import Param, search_space
from .config import SETTINGS, setting_error
from .study import (
    METRICS,
    STORAGE_ENV,
    Heartbeat,
    SearchError,
    build_pruner,
    build_sampler,
    check_objective,
    has_credentials,
    heartbeat_options,
    open_storage,
    resolve_storage,
    retrying,
    trial_id,
)

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# The heartbeat is kept by each job (nnlab.tracking.trial), not by Study.optimize, as Optuna assumes.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
CHECKED_VALUES = 20  # values of one searched key composed and checked before the first trial
# How long a lost trial's process may take to exit (loky fails the pool's futures first, then
# kills its workers) before its trial is left to the heartbeat check instead of being continued.
EXIT_WAIT = 10.0


def _quoted(text: str) -> str:
    """A string value for Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OptunaSearch:
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.job_idx = 0
        self.parent: SweepParent | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.prog = f"nnlab.{config.hydra.job.name}"

    # ------------------------------------------------------------ settings
    def _checked(self) -> dict[str, Any]:
        s = self.settings
        for key in s:
            if key not in SETTINGS:
                raise SearchError(setting_error(key))
        name = s.get("study_name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise SearchError(
                f"hydra.sweeper.study_name: must be a plain name (letters, digits, '.', '_', '-'), got {name!r}"
            )
        n_trials, n_jobs, rate = s.get("n_trials"), s.get("n_jobs"), s.get("max_failure_rate")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            raise SearchError(f"hydra.sweeper.n_trials: must be a whole number >= 1, got {n_trials!r}")
        if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1):
            raise SearchError(f"hydra.sweeper.n_jobs: must be null (the launcher decides) or >= 1, got {n_jobs!r}")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise SearchError(f"hydra.sweeper.max_failure_rate: must be in [0, 1], got {rate!r}")
        metric, direction = check_objective(s.get("metric"), s.get("direction"))
        params = s.get("params")
        if params is not None and not isinstance(params, DictConfig | dict):
            raise SearchError(f"hydra.sweeper.params: must be a mapping key: search space, got {params!r}")
        storage = s.get("storage")
        if storage is not None and not isinstance(storage, str):
            raise SearchError(f"hydra.sweeper.storage: must be a database URL or null, got {storage!r}")
        build_sampler(s.get("sampler")), build_pruner(s.get("pruner"))  # one line now, not in every job
        heartbeat_options(s)
        return {
            "name": name,
            "n_trials": n_trials,
            "n_jobs": n_jobs,
            "rate": rate,
            "metric": metric,
            "direction": direction,
        }

    def _parallelism(self, n_jobs: int | None) -> tuple[int, int | None]:
        """(trials launched at once, torch threads per job when they share this machine's cores)."""
        launcher = self.config.hydra.launcher
        target = str(launcher.get("_target_", ""))
        local = "SlurmLauncher" not in target
        cpus = _cpus()
        if n_jobs is None:
            if "joblib" in target.lower():
                jobs = launcher.get("n_jobs") or -1
                n_jobs = jobs if jobs > 0 else max(1, cpus + 1 + jobs)
            elif "submitit" in target.lower():  # submitit_local: one trial per core; SLURM: its array
                parallel = int(launcher.get("array_parallelism") or cpus)
                n_jobs = min(parallel, cpus) if local else parallel
            else:
                n_jobs = 1
        threads = max(1, cpus // n_jobs) if local and n_jobs > 1 else None
        return n_jobs, threads

    def _check_space(self, space: list[Param], fixed: list[str]) -> None:
        """Before the first trial, each searched key's values are composed and checked against
        the config's schema: a misspelt key, or a key none of whose values can work
        (``optimizer.lr=choice(-4,0)``), is one line now, not a failed trial each time. A value
        that fails among others that work fails only its trials."""
        for param in space:
            d = param.distribution
            values = list(d.choices) if hasattr(d, "choices") else [d.low, d.high]
            problems = [self._job_problem([*fixed, param.override(v)], param.name) for v in values[:CHECKED_VALUES]]
            if all(problems):
                compose = [p for p in problems if p.startswith("cannot be set")]
                if compose:
                    raise SearchError(f"{param.key}: {compose[0]}")
                raise SearchError(f"{param.key}: no value of the search space passes the config check ({problems[0]})")

    def _job_problem(self, overrides: list[str], key: str) -> str | None:
        """Why a job with ``overrides`` could not train because of ``key`` (None when its config
        composes, and checks as far as ``key`` goes: other problems are each job's to report)."""
        try:
            job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as exc:
            return f"cannot be set ({_config_error(exc)})"
        with open_dict(job):
            del job["hydra"]
        try:
            validate(job)
        except ConfigError as exc:
            return f"config: {exc}" if str(exc).startswith(f"{key}:") else None
        except Exception:  # a value only the job can resolve: the job checks it
            return None
        return None

    # ------------------------------------------------------------ the search
    def sweep(self, arguments: list[str]) -> None:
        status = "FAILED"
        try:
            self._sweep(arguments)
            status = "FINISHED"
        except SearchError as exc:
            fail(self.prog, str(exc))
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if self.parent is not None:
                self.parent.close(status)

    def _sweep(self, arguments: list[str]) -> None:
        s = self._checked()
        self.metric = s["metric"]
        space, fixed = search_space(self.settings.get("params"), arguments)
        if not space:
            raise SearchError(
                "hydra.sweeper.params: nothing to search; give e.g. optimizer.lr: tag(log, interval(1e-4, 1e-1))"
            )
        self._check_space(space, fixed)
        root = find_root()
        url = resolve_storage(self.settings.get("storage"), root)
        os.environ[STORAGE_ENV] = url  # jobs in new processes (and a URL with a password) find it here
        self.storage = open_storage(url, heartbeat=self.settings)
        study = retrying(
            lambda: optuna.create_study(
                storage=self.storage,
                study_name=s["name"],
                direction=s["direction"],
                load_if_exists=True,
                sampler=build_sampler(self.settings.get("sampler")),
                pruner=build_pruner(self.settings.get("pruner")),
            )
        )
        self._check_study(study, s)
        retrying(lambda: study.set_metric_names([s["metric"]]))  # Optuna's dashboard names the objective
        self.parent = SweepParent.open(self.config, f"search: {s['name']}", {"optuna_study": s["name"]})
        self._repair(study)
        before = len(retrying(lambda: study.get_trials(deepcopy=False)))
        if self.parent:
            self.parent.record_search_start(s["name"], url, s["metric"], s["direction"], before)
            retrying(lambda: study.set_user_attr(f"mlflow_parent:{self.parent.run_id}", {"trials_before": before}))
        n_jobs, threads = self._parallelism(s["n_jobs"])
        log.info(
            f"Optuna study {s['name']} ({before} trials so far), {s['n_trials']} more, {n_jobs} at once: "
            + ", ".join(p.name for p in space)
        )
        job: dict[str, Any] = {"study": s["name"], **({"storage": url} if not has_credentials(url) else {})}
        if self.parent:
            job["parent"] = self.parent.run_id
        if threads:
            job["threads"] = threads
        failed = self._run(study, space, fixed, job, s["n_trials"], n_jobs)
        self._finish(study, s, url, s["n_trials"])
        if failed / s["n_trials"] > s["rate"]:
            fail(
                self.prog, f"{failed} of {s['n_trials']} trials failed (hydra.sweeper.max_failure_rate={s['rate']})", 1
            )

    def _check_study(self, study, s: dict) -> None:
        if study.direction.name.lower() != s["direction"]:
            raise SearchError(
                f"hydra.sweeper.direction: study {s['name']!r} is to {study.direction.name.lower()}, got "
                f"{s['direction']!r}; choose another study_name"
            )
        known = study.user_attrs.get("metric")
        if known and known != s["metric"]:
            raise SearchError(
                f"hydra.sweeper.metric: study {s['name']!r} optimises {known}, got {s['metric']!r}; "
                "choose another study_name"
            )
        if not known:
            retrying(lambda: study.set_user_attr("metric", s["metric"]))

    def _repair(self, study) -> None:
        """Trials a killed search left RUNNING whose heartbeat has stopped: FAIL (and retried), said
        in one line each; their MLflow runs KILLED. One still beating belongs to a live search."""
        lost = self._fail_stale(study)
        for t in lost:
            print(
                f"{self.prog}: trial {t.number} was left RUNNING by a search that stopped; marked FAIL{_retry(t, study)}"
            )

    def _fail_stale(self, study) -> list:
        """Optuna's heartbeat check: RUNNING trials silent for the grace period become FAIL (the
        storage's RetryHeartbeatStaleTrialCallback enqueues their retries). Returns them, their runs KILLED."""
        if self.settings.get("heartbeat_interval") is None:
            return []
        running = {t.number for t in retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))}
        if not running:
            return []
        retrying(lambda: optuna.storages.fail_stale_trials(study))
        lost = [
            t
            for t in retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
            if t.number in running
        ]
        for t in lost:
            self._end_lost_run(t)
        return lost

    def _end_lost_run(self, trial) -> None:
        if self.parent is not None:
            name = self.settings["study_name"]
            self.parent.end_lost_trial(name, trial.number, f"trial {trial.number}'s process died (no heartbeat)")

    def _run(self, study, space: list[Param], fixed: list[str], job: dict, n_trials: int, n_jobs: int) -> int:
        """Ask, launch and settle until ``n_trials`` trials have ended (a lost trial that is run
        again counts once, when its retry ends); returns how many failed."""
        done = failed = 0
        self.lost = 0
        self.continued: set[int] = set()  # trials continued after their worker was lost
        pending: list[optuna.trial.Trial] = []
        name = str(self.config.get("name", "trial"))
        try:
            while done < n_trials:
                batch = min(n_jobs, n_trials - done)
                pending = [retrying(study.ask) for _ in range(batch)]
                self._first_beat(study, pending)
                if done == 0:  # seeded: reproducible for a new study, no repeats when resumed or shared
                    study.sampler = build_sampler(self.settings.get("sampler"), seed_offset=pending[0].number)
                launchable, overrides, settings = [], [], []
                for trial in pending:
                    values = [retrying(lambda p=p, t=trial: p.suggest(t)) for p in space]
                    trial_overrides = [*fixed, *(p.override(v) for p, v in zip(space, values))]
                    problem = self._compose_problem(trial_overrides)
                    if problem:
                        print(f"{self.prog}: error: trial {trial.number}: {problem}", file=sys.stderr)
                        if self.parent:
                            self.parent.record_failed_trial(job["study"], trial.number, name, f"config: {problem}")
                        retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL))
                        failed, done = failed + 1, done + 1
                        continue
                    launchable.append(trial)
                    overrides.append(trial_overrides)
                    settings.append({**job, "trial": trial.number})
                if overrides:
                    jobs = [self._job_overrides(o, j) for o, j in zip(overrides, settings)]
                    returns = self._launch(jobs, len(jobs))
                    returns = self._continue_lost(study, launchable, overrides, settings, returns)
                    for trial, ret in zip(launchable, returns):
                        self._tell(study, trial, ret)
                    ended, lost = self._settle(study, launchable)
                    done += len(ended)
                    failed += sum(t.state == TrialState.FAIL for t in ended)
                    self.lost += len(lost)
                pending = []
        finally:
            for trial in pending:  # interrupted: no trial is left RUNNING in the study
                retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL, skip_if_finished=True))
        return failed

    def _job_overrides(self, trial_overrides: list[str], settings: dict[str, Any]) -> list[str]:
        monitor, direction = METRICS[self.metric]
        return [
            *trial_overrides,
            # A trial's best epoch (the checkpoint it keeps, train.json's best_*, its value) is the objective's.
            f"callbacks.model_checkpoint.monitor={monitor}",
            f"callbacks.model_checkpoint.mode={'max' if direction == 'maximize' else 'min'}",
            f"hydra.sweep.subdir=trial_{settings['trial']}",
            "hydra.sweeper.job={" + ",".join(f"{k}:{_quoted(str(v))}" for k, v in settings.items()) + "}",
        ]

    def _first_beat(self, study, trials: list) -> None:
        """A heartbeat for each new trial: one whose job never starts is found silent too."""
        if self.settings.get("heartbeat_interval") is None:
            return
        for trial in trials:
            tid = trial_id(self.storage, study.study_name, trial.number)
            retrying(lambda tid=tid: self.storage.record_heartbeat(tid))

    def _compose_problem(self, overrides: list[str]) -> str | None:
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as exc:
            return _config_error(exc)
        return None

    def _launch(self, overrides: list[list[str]], n: int) -> list[JobReturn | None]:
        """The jobs' returns; None for each when the launcher lost a worker (joblib's
        TerminatedWorkerError, submitit's UncompletedJobError): ``_continue_lost`` and the study's
        heartbeat settle them."""
        try:
            returns = list(self.launcher.launch(overrides, initial_job_idx=self.job_idx))
        except Exception as exc:
            print(
                f"{self.prog}: warning: a worker died while running trials ({type(exc).__name__}: "
                f"{first_line(exc)}); trials still running go on, each one lost with it continues from its "
                "last checkpoint (or, if it never started training, is failed and run again)",
                file=sys.stderr,
            )
            returns = [None] * n
        self.job_idx += n
        return returns

    def _continue_lost(
        self, study, trials: list, overrides: list[list[str]], settings: list[dict], returns: list
    ) -> list[JobReturn | None]:
        """Relaunch each trial whose job was lost with its worker (no JobReturn, still RUNNING, its
        process gone) as a continuation of itself: the same trial and run folder, resumed from its
        last.ckpt by the job (``continues`` in its ``hydra.sweeper.job``), at most ``max_retry``
        times each. Their heartbeats are kept meanwhile, so the stale-trial check (this search's or
        another's on the same study) does not fail them. Returns the final JobReturns."""
        limit = self.settings.get("max_retry")
        tries = dict.fromkeys(range(len(trials)), 0)
        returns = list(returns)
        while True:
            waiting = [i for i, ret in enumerate(returns) if ret is None and (limit is None or tries[i] < limit)]
            with self._beating([trials[i].number for i in waiting], study):
                gone = self._gone(study, [trials[i] for i in waiting])
            lost = [i for i, g in zip(waiting, gone) if g]
            if not lost:
                return returns
            for i in lost:
                tries[i] += 1
                self.continued.add(trials[i].number)
                print(
                    f"{self.prog}: trial {trials[i].number} was lost with its worker; it continues from its "
                    f"last checkpoint (try {tries[i]}{f' of {limit}' if limit is not None else ''})",
                    file=sys.stderr,
                )
            jobs = [self._job_overrides(overrides[i], {**settings[i], "continues": tries[i]}) for i in lost]
            with self._beating([trials[i].number for i in lost], study):
                again = self._launch(jobs, len(jobs))
            for i, ret in zip(lost, again):
                returns[i] = ret

    def _gone(self, study, trials: list) -> list[bool]:
        """For each of ``trials``: True when it is still RUNNING and the process its job recorded
        (``process`` in its user attrs) is this host's and has exited, waiting up to EXIT_WAIT
        seconds for that. False for a finished trial, one whose job never recorded its process
        (it never started training: the heartbeat check settles it) or whose process is another
        host's or still alive: such a job may still tell the study how it ended."""
        deadline = time.monotonic() + EXIT_WAIT
        while True:
            answers = [self._process_gone(_trial(study, t.number)) for t in trials]
            if all(a is not None for a in answers) or time.monotonic() > deadline:
                return [bool(a) for a in answers]
            time.sleep(0.1)

    @staticmethod
    def _process_gone(trial) -> bool | None:
        """True: RUNNING and its recorded process has exited; False: not to be continued; None:
        its process still runs (it may be exiting)."""
        process = trial.user_attrs.get("process")
        if trial.state != TrialState.RUNNING or not isinstance(process, dict):
            return False
        if process.get("host") != socket.gethostname() or type(process.get("pid")) is not int:
            return False
        return None if alive(process["pid"], process.get("started")) else True

    def _beating(self, numbers: list[int], study):
        """The trials' heartbeats, kept by this process while the block runs (their jobs are being
        relaunched; each job beats again once it runs)."""
        interval = self.settings.get("heartbeat_interval")
        if interval is None or not numbers:
            return nullcontext()
        trials = {trial_id(self.storage, study.study_name, n): n for n in numbers}
        return Heartbeat(self.storage, trials, min(interval, 2), name="lost-trials-heartbeat")

    def _tell(self, study, trial, ret: JobReturn | None) -> None:
        """Tell the study how the trial's job ended when the job did not tell it itself."""
        if ret is None or _trial(study, trial.number).state.is_finished():
            return  # lost with its worker (_settle decides), or told by the job
        if ret.status == JobStatus.COMPLETED:
            outcome = ret.return_value
            if isinstance(outcome, int | float) and math.isfinite(outcome):
                retrying(lambda: study.tell(trial, float(outcome), skip_if_finished=True))
                return
        else:  # raised in the job
            try:
                _ = ret.return_value  # Hydra's JobReturn raises the job's exception here
            except Exception as exc:
                print(f"{self.prog}: error: trial {trial.number}: {first_line(exc)}", file=sys.stderr)
        retrying(lambda: study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))

    def _settle(self, study, trials: list) -> tuple[list, list]:
        """Wait until none of ``trials`` is RUNNING: a job still alive ends and tells the study; a
        lost one goes silent and is failed by the heartbeat check (without a heartbeat: at once).
        Returns (the trials that ended, the lost ones that are run again)."""
        numbers = {t.number for t in trials}
        interval = self.settings.get("heartbeat_interval")
        while True:
            running = [n for n in numbers if _trial(study, n).state == TrialState.RUNNING]
            if not running:
                break
            if interval is None:
                for n in running:
                    retrying(lambda n=n: study.tell(n, state=TrialState.FAIL, skip_if_finished=True))
                    self._end_lost_run(_trial(study, n))
                break
            for t in self._fail_stale(study):
                print(f"{self.prog}: trial {t.number} lost its process; marked FAIL{_retry(t, study)}")
            time.sleep(min(interval, 2))
        retried = _retried(study)
        ended, lost = [], []
        for n in sorted(numbers):
            t = _trial(study, n)
            (lost if n in retried else ended).append(t)
            log.info(f"Trial {n}: " + _outcome(t, self.metric))
        return ended, lost

    def _finish(self, study, s: dict, url: str, this_invocation: int) -> None:
        """The best trial of the whole study: printed, written to reports/search/, on the parent run."""
        trials = retrying(lambda: study.get_trials(deepcopy=False))
        counts = {state: 0 for state in ("complete", "pruned", "fail", "running", "waiting")}
        for t in trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        summary: dict[str, Any] = {
            "study": s["name"],
            "storage": url,
            "metric": s["metric"],
            "direction": s["direction"],
            "sampler": type(study.sampler).__name__,
            "pruner": type(study.pruner).__name__,
            "counts": counts,
            "trials": len(trials),
            "this_invocation": this_invocation,
            "lost": self.lost,
            "continued": len(self.continued),
            "best": None,
        }
        if counts["complete"]:
            best = study.best_trial
            summary["best"] = {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                "run_dir": best.user_attrs.get("run_dir"),
            }
        folder = Path(self.config.paths.reports_dir) / "search"
        files = write_search_report(study, summary, folder, find_root())
        if self.parent:
            self.parent.record_search_end(summary, files, folder)
        _print_summary(summary, files[0])


def _trial(study, number: int):
    return retrying(lambda: study.get_trials(deepcopy=False)[number])


def _retried(study) -> set[int]:
    """Numbers of the trials whose retry waits in the study (Optuna's RetryHeartbeatStaleTrialCallback:
    a retry's history ends with the trial it repeats)."""
    waiting = retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    histories = (RetryHeartbeatStaleTrialCallback.retry_history(t) for t in waiting)
    return {history[-1] for history in histories if history}


def _retry(trial, study) -> str:
    return "; it is run again with the same values" if trial.number in _retried(study) else ""


def _outcome(trial, metric: str) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"{metric} = {trial.value:.6g}"
    if trial.state == TrialState.PRUNED:
        return f"pruned at epoch {trial.last_step}"
    return "failed"


def _config_error(exc: BaseException) -> str:
    """Hydra's and OmegaConf's composition errors in one line."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith(("full_key", "object_type", "reference_type", "See "))
    ]
    return " ".join(lines) or type(exc).__name__


def _print_summary(summary: dict, report: Path) -> None:
    c = summary["counts"]
    lost = f", {summary['lost']} lost with their process and run again" if summary["lost"] else ""
    if summary.get("continued"):
        lost += f", {summary['continued']} continued from their checkpoint after losing their worker"
    # Trials another live search is running (or its retries waiting) are counted, not hidden.
    others = "".join(f", {c[state]} {state}" for state in ("running", "waiting") if c.get(state))
    print(
        f"\nOptuna study {summary['study']}: {summary['trials']} trials ({c['complete']} complete, "
        f"{c['pruned']} pruned, {c['fail']} failed{lost}{others}), {summary['this_invocation']} by this run"
    )
    best = summary["best"]
    if best:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        print(f"best trial {best['number']}: {summary['metric']} = {best['value']:.6g}  {params}")
        print(f"  MLflow run {best['mlflow_run_id'] or '(not tracked)'}, folder {best['run_dir'] or '-'}")
    else:
        print("no trial completed yet")
    print(f"report: {report}")
