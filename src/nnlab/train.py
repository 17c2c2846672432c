"""Train one experiment: ``python -m nnlab.train experiment=mnist_cnn optimizer.lr=3e-4``.

``train(cfg)`` reads as the recipe: fit, write the outputs, record them. Tests call it with a
composed config; ``main`` is the thin Hydra entry point. Outputs: models/<name>/best.ckpt,
metrics/<name>/train.json, plots/<name>/history.csv and curves.png, and one MLflow run.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnlab.config.compose import hydra_main
from nnlab.config.paths import (
    Outputs,
    canonical_outputs,
    move_into_place,
    new_run_folder,
    portable,
    unfinished_run,
)
from nnlab.config.schema import ConfigError, check
from nnlab.errors import NnlabError, fail, report
from nnlab.report import plots
from nnlab.report.tables import print_summary, write_json, write_yaml
from nnlab.training import slurm as slurm_job

# Lightning, MLflow and torch are imported where a run needs them, so that `--help`, a config
# error and Hydra's start-up do not wait seconds for them.

PROG = "nnlab.train"


def run_outputs(cfg: DictConfig) -> tuple[Outputs, Outputs | None]:
    """(where the run writes, where its results end: None when that is the same place).
    A sweep job writes into its own folder; a single run into logs/runs/<name>/<time>/ (Hydra's
    run folder); resume=true continues the newest unfinished one. Inside a DVC stage (or with
    outputs=canonical) the finished results then move into models/, metrics/, plots/<name>."""
    from nnlab.training.numpy_loop import TARGET

    hydra_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    multirun = hydra_dir is not None and HydraConfig.get().mode == RunMode.MULTIRUN
    if cfg.resume:
        check(not multirun, "resume", "continues one run; it does not apply to a sweep (-m)")
        check(cfg.model._target_ != TARGET, "resume", "works for the Lightning models, not the NumPy network")
        work = unfinished_run(cfg.paths.log_dir, cfg.name)
        check(
            work is not None,
            "resume",
            f"no unfinished run of {cfg.name!r} (a run folder with models/last.ckpt) "
            f"under {Path(cfg.paths.log_dir) / 'runs' / cfg.name}; run without resume=true",
        )
    else:
        work = hydra_dir or new_run_folder(cfg.paths.log_dir, cfg.name)
    final = Outputs.canonical(cfg.paths, cfg.name) if not multirun and canonical_outputs(cfg.outputs) else None
    return Outputs.in_folder(work), final


def resumed_run_id(out: Outputs) -> str | None:
    """The MLflow run that the unfinished run in ``out`` continues; a last.ckpt that is damaged,
    not nnlab's or still being written is a config error naming it (Lightning would print torch's
    traceback)."""
    from nnlab.models.checkpoint import WriterAlive, saved_run_id

    try:
        return saved_run_id(out.models / "last.ckpt")
    except WriterAlive as exc:  # a live run is never joined by a second process
        raise ConfigError(f"resume: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"resume: {exc}; delete {out.models.parent} or run without resume=true") from None


def write_config(cfg: DictConfig, out: Outputs) -> dict:
    """The resolved config: models/config.yaml (a new run's), and metrics/params.yaml, the values
    this run used, for `dvc params diff` / `dvc exp show` (dvc.yaml's top-level params)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not cfg.resume:
        (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    write_yaml(out.metrics / "params.yaml", portable(resolved, Path(cfg.paths.root_dir)))
    return resolved


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation loss, record everything. Returns the summary."""
    from hydra.utils import instantiate

    from nnlab.tracking import record
    from nnlab.tracking.trial import continues as trial_continues
    from nnlab.tracking.trial import job_trial, record_pruned, set_torch_threads_for_job
    from nnlab.training.fit import fitter_for, run_summary
    from nnlab.training.history import EpochHistory
    from nnlab.training.pruning import PruneWhenJudged
    from nnlab.training.runtime import prepare_run

    overrides = prepare_run(cfg, overrides)
    out, final = run_outputs(cfg)
    out.make()
    # a requeued Slurm job, or a search's trial relaunched after its worker was lost: its run, from
    # the last finished epoch
    if slurm_job.continues(out.models) or trial_continues(out.models):
        cfg.resume = True
    resume_id = resumed_run_id(out) if cfg.resume else None
    resolved = write_config(cfg, out)
    datamodule, history = instantiate(cfg.data), EpochHistory()
    set_torch_threads_for_job()  # a search's jobs that share this machine's cores split them
    trial = job_trial()  # in an Optuna search: report every epoch, stop when pruned
    pruning = [PruneWhenJudged(trial.monitor, trial.judge)] if trial else []
    fitter = fitter_for(cfg, resolved, datamodule, history, out.models, [*pruning, *slurm_job.callbacks()])
    (out.models / "model_summary.txt").write_text(fitter.summary_text)
    tags = {**record.run_tags(cfg, fitter.accelerator, fitter.device), **slurm_job.run_tags()}
    tags = tags if fitter.is_global_zero else {}
    with record.training_run(cfg, tags, fitter.is_global_zero, resume_id) as run:
        if run:
            fitter.set_run_id(run.run_id)
            if trial:
                trial.link_run(run.run_id, out.models.parent)
            history.sinks.append(record.epoch_sink(run))
            if not resume_id:
                record.record_start(run, resolved, fitter.parameters, out.models / "config.yaml", overrides)
                datamodule.setup("fit")
                record.log_datasets(run, cfg, datamodule, ("train", "val"))
        started = time.perf_counter()
        fitted = fitter.fit()
        if fitted is None:  # not rank 0: rank 0 writes and records
            return {}
        net, checkpoint = fitted
        summary = run_summary(cfg, history, fitter.parameters, time.perf_counter() - started)
        if trial and trial.pruned_epoch:
            summary["pruned_epoch"] = trial.pruned_epoch
            if run:
                record_pruned(run, trial.pruned_epoch)
        test_results = write_results(cfg, net, datamodule, history, out, summary)
        if run:
            record.record_results(run, cfg, out, summary, fitter.loggable, checkpoint, datamodule, test_results)
    (out.models / "last.ckpt").unlink(missing_ok=True)  # finished: nothing left to resume
    if final:
        move_into_place(out, final)
        out, checkpoint = final, final.models / checkpoint.name
    places = {
        "accelerator": fitter.accelerator,
        "checkpoint": checkpoint,
        "metrics": out.metrics / "train.json",
        "history": out.plots / "history.csv",
        "mlflow run": run.run_id if run else "(not tracked)",
    }
    print_summary(cfg.name, summary, places)
    return summary


def write_results(cfg: DictConfig, net, datamodule, history, out: Outputs, summary: dict) -> tuple | None:
    """The fitted network scored on the test split (``test_after_fit``; its results join
    ``summary``), the history and its curves, and train.json. Returns the test results or None."""
    from nnlab.training.evaluation import score_and_write

    test_results = score_and_write(net, datamodule, cfg.name, out.metrics, out.plots) if cfg.test_after_fit else None
    if test_results:
        summary.update(test_acc=test_results[0]["test_acc"], test_loss=test_results[0]["test_loss"])
    history.write_csv(out.plots / "history.csv")
    plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
    write_json(out.metrics / "train.json", summary)
    return test_results


def _task(cfg: DictConfig) -> float | None:
    from nnlab.tracking import record
    from nnlab.tracking.trial import finish_trial, in_trial

    # Lightning's start-up chatter (device lines, tips); the summary says which device ran. Here,
    # not in main(): a launcher's worker process runs the task without main().
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    hydra = HydraConfig.get()
    try:
        summary = train(cfg, list(hydra.overrides.task))
    except NnlabError as exc:
        if hydra.mode != RunMode.MULTIRUN:
            report(PROG, exc)
        # One bad job does not stop a sweep: it is recorded as a FAILED run and the others go on.
        print(f"{PROG}: error: job {hydra.job.num} ({' '.join(hydra.overrides.task)}): {exc.line()}", file=sys.stderr)
        record.record_failed_job(cfg, exc.line())
        return None
    except KeyboardInterrupt:
        fail(PROG, "interrupted; the MLflow run is marked KILLED", code=130)
    except OSError as exc:  # a full disk, a folder that cannot be written: one line, the run FAILED
        from nnlab.config.paths import storage_error

        error = storage_error(exc)
        if error is None:
            raise
        fail(PROG, error.line(), code=error.exit_code)
    if in_trial():  # an Optuna search: the study is told how the trial ended
        return finish_trial(summary)
    return summary.get("best_val_acc")  # what a sweeper optimises


def main() -> None:
    hydra_main(PROG, _task, quick_exit=True)


if __name__ == "__main__":
    main()
