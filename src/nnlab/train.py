"""Train one experiment: ``python -m nnlab.train experiment=mnist_cnn optimizer.lr=3e-4``.

``train(cfg)`` reads as the recipe: fit, write the outputs, record them. Tests call it with a
composed config; ``main`` is the thin Hydra entry point. Outputs: models/<name>/best.ckpt,
metrics/<name>/train.json, plots/<name>/history.csv and curves.png, and one MLflow run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nnlab.config.compose import hydra_main
from nnlab.config.errors import fail
from nnlab.config.paths import Outputs, register_resolvers
from nnlab.config.schema import ConfigError, validate
from nnlab.data.idx import DataError
from nnlab.models.checkpoint import deployable, input_example
from nnlab.report import plots
from nnlab.report.tables import print_summary, write_json
from nnlab.tracking import record
from nnlab.tracking.credentials import strip_credentials, strip_override
from nnlab.training.evaluation import score_and_write
from nnlab.training.fit import fitter_for, run_summary
from nnlab.training.history import EpochHistory

PROG = "nnlab.train"


def outputs_for(cfg: DictConfig) -> Outputs:
    """The canonical places, or the job's own folder inside a Hydra multirun."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Outputs.in_folder(Path(HydraConfig.get().runtime.output_dir))
    return Outputs.canonical(cfg.paths, cfg.name)


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation loss, record everything. Returns the summary."""
    register_resolvers()  # ${nnlab_root:} also in a launcher's worker process
    validate(cfg)
    if cfg.logger.get("mlflow"):  # credentials go to the environment, never into a file
        cfg.logger.mlflow.tracking_uri = strip_credentials(cfg.logger.mlflow.tracking_uri)
    overrides = [strip_override(o) for o in overrides or []]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = outputs_for(cfg).make()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    datamodule, history = instantiate(cfg.data), EpochHistory()
    fitter = fitter_for(cfg, resolved, datamodule, history, out.models)
    (out.models / "model_summary.txt").write_text(fitter.summary_text)
    tags = record.run_tags(cfg, fitter.accelerator, fitter.device) if fitter.is_global_zero else {}
    with record.training_run(cfg, tags, fitter.is_global_zero) as run:
        if run:
            history.sinks.append(
                record.record_start(run, resolved, fitter.parameters, out.models / "config.yaml", overrides)
            )
        started = time.perf_counter()
        fitted = fitter.fit()
        if fitted is None:
            return {}
        net, checkpoint = fitted
        summary = run_summary(cfg, history, fitter.parameters, time.perf_counter() - started)
        test_results = (
            score_and_write(net, datamodule, cfg.name, out.metrics, out.plots) if cfg.test_after_fit else None
        )
        if test_results:
            summary.update(test_acc=test_results[0]["test_acc"], test_loss=test_results[0]["test_loss"])
        history.write_csv(out.plots / "history.csv")
        plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
        write_json(out.metrics / "train.json", summary)
        if run:
            model = deployable(net, cfg) if fitter.loggable else None
            record.record_results(run, cfg, out, model, checkpoint, input_example(cfg, datamodule), test_results)
    print_summary(
        summary,
        {
            "accelerator": fitter.accelerator,
            "checkpoint": checkpoint,
            "metrics": out.metrics / "train.json",
            "history": out.plots / "history.csv",
            "mlflow run": run.run_id if run else "(not tracked)",
        },
    )
    return summary


def _task(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as exc:
        fail(PROG, f"config: {exc}")
    except DataError as exc:
        fail(PROG, str(exc), code=1)
    except KeyboardInterrupt:
        fail(PROG, "interrupted; the MLflow run is marked KILLED", code=130)
    return summary.get("best_val_acc")  # what a sweeper optimises


def main() -> None:
    # Lightning's start-up chatter (device lines, tips); the summary says which device ran.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    hydra_main(PROG, _task)


if __name__ == "__main__":
    main()
