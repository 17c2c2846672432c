"""The search: ask the study for a batch of trials, launch them as jobs through the configured
launcher, tell the study how each ended, repeat; then report the best of the whole study.

- The study lives in a database (see nnlab.tracking.search.resolve_storage), so a second
  invocation with the same study_name continues it, and processes on other machines share it:
  Optuna numbers trials in the database, so no number is used twice.
- Each job gets ``hydra.sweeper.job`` (study, trial number and id, storage, threads) and
  ``hydra.sweep.subdir=trial_<n>``; the training reports every epoch and may be pruned.
- A job that ends with optuna.TrialPruned is PRUNED; one that fails or returns no finite value
  is FAIL (the job itself recorded its MLflow run as FAILED), and the search goes on.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from nnlab.config.errors import fail, first_line
from nnlab.config.paths import find_root
from nnlab.config.schema import NAME_PATTERN
from nnlab.report.search import write_search_report
from nnlab.tracking.search import (
    STORAGE_ENV,
    SearchError,
    build_pruner,
    build_sampler,
    check_objective,
    has_credentials,
    open_storage,
    record_failed_trial,
    record_search_end,
    record_search_start,
    resolve_storage,
    retrying,
)

from ._space import Param, search_space

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.prog = f"nnlab.{config.hydra.job.name}"

    # ------------------------------------------------------------ settings
    def _checked(self) -> dict[str, Any]:
        s = self.settings
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

    def _check_keys(self, space: list[Param], fixed: list[str]) -> None:
        """Each searched key can be set on its own (one of its values composes): a misspelt key is
        one line now, not a failed trial each time. A combination that cannot be composed later
        (a key of one optimizer given to another) fails only its trial."""
        loader = self.hydra_context.config_loader
        for param in space:
            d = param.distribution
            values = list(d.choices) if hasattr(d, "choices") else [d.low]
            error = None
            for value in values:
                try:
                    loader.load_sweep_config(self.config, [*fixed, param.override(value)])
                    error = None
                    break
                except Exception as exc:
                    error = exc
            if error is not None:
                raise SearchError(f"{param.key}: cannot be set ({_config_error(error)})")

    # ------------------------------------------------------------ the search
    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except SearchError as exc:
            fail(self.prog, str(exc))

    def _sweep(self, arguments: list[str]) -> None:
        s = self._checked()
        self.metric = s["metric"]
        space, fixed = search_space(self.settings.get("params"), arguments)
        if not space:
            raise SearchError(
                "hydra.sweeper.params: nothing to search; give e.g. optimizer.lr: tag(log, interval(1e-4, 1e-1))"
            )
        self._check_keys(space, fixed)
        root = find_root()
        url = resolve_storage(self.settings.get("storage"), root)
        os.environ[STORAGE_ENV] = url  # jobs in new processes (and a URL with a password) find it here
        storage = open_storage(url)
        study = retrying(
            lambda: optuna.create_study(
                storage=storage,
                study_name=s["name"],
                direction=s["direction"],
                load_if_exists=True,
                sampler=build_sampler(self.settings.get("sampler")),
                pruner=build_pruner(self.settings.get("pruner")),
            )
        )
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
        before = len(retrying(lambda: study.get_trials(deepcopy=False)))
        parent = record_search_start(s["name"], url, s["metric"], s["direction"], before)
        if parent:
            retrying(lambda: study.set_user_attr(f"mlflow_parent:{parent}", {"trials_before": before}))
        n_jobs, threads = self._parallelism(s["n_jobs"])
        log.info(
            f"Optuna study {s['name']} ({before} trials so far), {s['n_trials']} more, {n_jobs} at once: "
            + ", ".join(p.name for p in space)
        )
        job = {"study": s["name"], **({"storage": url} if not has_credentials(url) else {})}
        if threads:
            job["threads"] = threads
        failed = self._run(study, space, fixed, job, s["n_trials"], n_jobs)
        self._finish(study, s, url, s["n_trials"])
        if failed / s["n_trials"] > s["rate"]:
            fail(
                self.prog, f"{failed} of {s['n_trials']} trials failed (hydra.sweeper.max_failure_rate={s['rate']})", 1
            )

    def _run(self, study, space: list[Param], fixed: list[str], job: dict, n_trials: int, n_jobs: int) -> int:
        """Ask, launch and tell until ``n_trials`` trials have ended; returns how many failed."""
        done = failed = 0
        pending: list[optuna.trial.Trial] = []
        name = str(self.config.get("name", "trial"))
        try:
            while done < n_trials:
                batch = min(n_jobs, n_trials - done)
                pending = [retrying(study.ask) for _ in range(batch)]
                if done == 0:  # seeded: reproducible for a new study, no repeats when resumed or shared
                    study.sampler = build_sampler(self.settings.get("sampler"), seed_offset=pending[0].number)
                launchable, overrides = [], []
                for trial in pending:
                    values = [retrying(lambda p=p, t=trial: p.suggest(t)) for p in space]
                    trial_overrides = [*fixed, *(p.override(v) for p, v in zip(space, values))]
                    problem = self._compose_problem(trial_overrides)
                    if problem:
                        print(f"{self.prog}: error: trial {trial.number}: {problem}", file=sys.stderr)
                        record_failed_trial(job["study"], trial.number, name, f"config: {problem}")
                        retrying(lambda t=trial: study.tell(t, state=optuna.trial.TrialState.FAIL))
                        failed += 1
                        continue
                    settings = {**job, "trial": trial.number, "trial_id": trial._trial_id}
                    launchable.append(trial)
                    overrides.append(
                        [
                            *trial_overrides,
                            f"hydra.sweep.subdir=trial_{trial.number}",
                            "hydra.sweeper.job={"
                            + ",".join(f"{k}:{_quoted(str(v))}" for k, v in settings.items())
                            + "}",
                        ]
                    )
                if overrides:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                    self.job_idx += len(returns)
                    for trial, ret in zip(launchable, returns):
                        failed += self._tell(study, trial, ret)
                done += batch
                pending = []
        finally:
            for trial in pending:  # interrupted: no trial is left RUNNING in the study
                retrying(lambda t=trial: study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True))
        return failed

    def _compose_problem(self, overrides: list[str]) -> str | None:
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as exc:
            return _config_error(exc)
        return None

    def _tell(self, study, trial, ret: JobReturn) -> int:
        """Tell the study how the trial's job ended; 1 when it failed."""
        State = optuna.trial.TrialState
        outcome = ret._return_value
        if ret.status == JobStatus.COMPLETED and isinstance(outcome, int | float) and math.isfinite(outcome):
            retrying(lambda: study.tell(trial, float(outcome)))
            log.info(f"Trial {trial.number}: {self.metric} = {outcome:.6g}")
            return 0
        if isinstance(outcome, optuna.TrialPruned):
            retrying(lambda: study.tell(trial, state=State.PRUNED))
            log.info(f"Trial {trial.number}: pruned ({outcome})")
            return 0
        if ret.status != JobStatus.COMPLETED:  # raised in the job (a bad value already printed its line)
            print(f"{self.prog}: error: trial {trial.number}: {first_line(outcome)}", file=sys.stderr)
        retrying(lambda: study.tell(trial, state=State.FAIL))
        log.info(f"Trial {trial.number}: failed")
        return 1

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
            "parents": sorted(k.split(":", 1)[1] for k in study.user_attrs if k.startswith("mlflow_parent:")),
            "best": None,
        }
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            summary["best"] = {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                "run_dir": best.user_attrs.get("run_dir"),
            }
        files = write_search_report(study, summary, Path(self.config.paths.reports_dir) / "search")
        record_search_end(summary, files)
        _print_summary(summary, files[0])


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
    print(
        f"\nOptuna study {summary['study']}: {summary['trials']} trials ({c['complete']} complete, "
        f"{c['pruned']} pruned, {c['fail']} failed), {summary['this_invocation']} by this run"
    )
    best = summary["best"]
    if best:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        print(f"best trial {best['number']}: {summary['metric']} = {best['value']:.6g}  {params}")
        print(f"  MLflow run {best['mlflow_run_id'] or '(not tracked)'}, folder {best['run_dir'] or '-'}")
    else:
        print("no trial completed yet")
    print(f"report: {report}")
