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
from nnlab.config.errors import TrackingError, fail
from nnlab.config.paths import (
    Outputs,
    canonical_outputs,
    move_into_place,
    new_run_folder,
    portable,
    register_resolvers,
    unfinished_run,
)
from nnlab.config.schema import ConfigError, check, validate
from nnlab.data.idx import DataError
from nnlab.report import plots
from nnlab.report.tables import print_summary, write_json, write_yaml
from nnlab.tracking.credentials import strip_credentials, strip_override

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
    """The MLflow run that the unfinished run in ``out`` continues; a last.ckpt that is damaged or
    not nnlab's is a config error naming it (Lightning would print torch's traceback)."""
    from nnlab.models.checkpoint import WriterAlive, saved_run_id

    try:
        return saved_run_id(out.models / "last.ckpt")
    except WriterAlive as exc:  # a live run is never joined by a second process
        raise ConfigError(f"resume: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"resume: {exc}; delete {out.models.parent} or run without resume=true") from None


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation loss, record everything. Returns the summary."""
    import lightning as L
    from hydra.utils import instantiate

    from nnlab.tracking import record
    from nnlab.tracking.trial import job_trial, record_pruned, set_torch_threads_for_job
    from nnlab.training import precision
    from nnlab.training.evaluation import score_and_write
    from nnlab.training.fit import fitter_for, run_summary
    from nnlab.training.history import EpochHistory
    from nnlab.training.pruning import PruneWhenJudged
    from nnlab.training.runtime import prepare_training_process

    prepare_training_process()  # no page faults and no CUDA probing per step (the values are unchanged)
    register_resolvers()  # ${nnlab_root:} also in a launcher's worker process
    validate(cfg)
    from nnlab.training.numpy_loop import refuse_unused_choices

    refuse_unused_choices(cfg)  # the NumPy network's run records only what it uses
    precision.check_device(cfg.trainer)  # a GPU that is absent, fp16 that the CPU would train in bf16
    precision.resolve(cfg.trainer)  # `auto`: what it means on this machine, recorded as such
    if cfg.logger.get("mlflow"):  # credentials go to the environment, never into a file
        cfg.logger.mlflow.tracking_uri = strip_credentials(cfg.logger.mlflow.tracking_uri)
    overrides = [strip_override(o) for o in overrides or []]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out, final = run_outputs(cfg)
    out.make()
    resume_id = resumed_run_id(out) if cfg.resume else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not cfg.resume:
        (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    # The values this run used, for `dvc params diff` / `dvc exp show` (dvc.yaml's top-level params).
    write_yaml(out.metrics / "params.yaml", portable(resolved, Path(cfg.paths.root_dir)))
    datamodule, history = instantiate(cfg.data), EpochHistory()
    set_torch_threads_for_job()  # a search's jobs that share this machine's cores split them
    trial = job_trial()  # in an Optuna search: report every epoch, stop when pruned
    pruning = [PruneWhenJudged(trial.monitor, trial.judge)] if trial else []
    fitter = fitter_for(cfg, resolved, datamodule, history, out.models, pruning)
    (out.models / "model_summary.txt").write_text(fitter.summary_text)
    tags = record.run_tags(cfg, fitter.accelerator, fitter.device) if fitter.is_global_zero else {}
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
        if fitted is None:
            return {}
        net, checkpoint = fitted
        summary = run_summary(cfg, history, fitter.parameters, time.perf_counter() - started)
        if trial and trial.pruned_epoch:
            summary["pruned_epoch"] = trial.pruned_epoch
            if run:
                record_pruned(run, trial.pruned_epoch)
        test_results = (
            score_and_write(net, datamodule, cfg.name, out.metrics, out.plots) if cfg.test_after_fit else None
        )
        if test_results:
            summary.update(test_acc=test_results[0]["test_acc"], test_loss=test_results[0]["test_loss"])
        history.write_csv(out.plots / "history.csv")
        plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
        write_json(out.metrics / "train.json", summary)
        if run:
            record.record_results(run, cfg, out, fitter.loggable, checkpoint, datamodule, test_results)
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


def _task(cfg: DictConfig) -> float | None:
    from nnlab.tracking import record
    from nnlab.tracking.trial import finish_trial, in_trial
    from nnlab.training.history import TrainingDiverged

    # Lightning's start-up chatter (device lines, tips); the summary says which device ran. Here,
    # not in main(): a launcher's worker process runs the task without main().
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    hydra = HydraConfig.get()
    try:
        summary = train(cfg, list(hydra.overrides.task))
    except (ConfigError, DataError, TrainingDiverged, TrackingError) as exc:
        message = f"config: {exc}" if isinstance(exc, ConfigError) else str(exc)
        if hydra.mode != RunMode.MULTIRUN:
            fail(PROG, message, code=2 if isinstance(exc, ConfigError) else 1)
        # One bad job does not stop a sweep: it is recorded as a FAILED run and the others go on.
        print(f"{PROG}: error: job {hydra.job.num} ({' '.join(hydra.overrides.task)}): {message}", file=sys.stderr)
        record.record_failed_job(cfg, message)
        return None
    except KeyboardInterrupt:
        fail(PROG, "interrupted; the MLflow run is marked KILLED", code=130)
    if in_trial():  # an Optuna search: the study is told how the trial ended
        return finish_trial(summary)
    return summary.get("best_val_acc")  # what a sweeper optimises


def main() -> None:
    hydra_main(PROG, _task, quick_exit=True)


if __name__ == "__main__":
    main()
