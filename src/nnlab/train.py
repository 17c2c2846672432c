"""Train one experiment: ``python -m nnlab.train experiment=mnist_cnn optimizer.lr=3e-4``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` is the
thin Hydra wrapper. Outputs: models/<name>/best.ckpt, metrics/<name>/train.json,
plots/<name>/history.csv and curves.png, and one MLflow run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab import cli, numpy_train, plots, tracking
from nnlab.checkpoint import CONFIG_KEY, deployable
from nnlab.evaluate import evaluate_network, log_test_results
from nnlab.config import ConfigError, validate
from nnlab.history import EpochHistory
from nnlab.models.module import Classifier
from nnlab.models.networks import count_parameters
from nnlab.models.summary import format_summary, summarize
from nnlab.reporting import git_tags, print_summary, read_json, write_json
from nnlab.tracking.credentials import strip_credentials, strip_override
from nnlab.tracking.sweep import sweep_tags

# config.yaml is written into the checkpoint folder before Lightning's first checkpoint.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@dataclass
class Outputs:
    models: Path
    metrics: Path
    plots: Path

    @classmethod
    def for_config(cls, cfg: DictConfig) -> Outputs:
        """The canonical places, or the job's own folder inside a Hydra multirun."""
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            base = Path(HydraConfig.get().runtime.output_dir)
            return cls(base / "models", base / "metrics", base / "plots")
        paths = cfg.paths
        return cls(*(Path(paths[k]) / cfg.name for k in ("models_dir", "metrics_dir", "plots_dir")))

    def make(self) -> Outputs:
        for folder in (self.models, self.metrics, self.plots):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def build_module(cfg: DictConfig) -> Classifier:
    """The LightningModule for the config's network, optimizer and schedule."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return Classifier(instantiate(cfg.model), instantiate(cfg.optimizer), scheduler,
                      num_classes=cfg.data.num_classes, label_smoothing=cfg.label_smoothing)


def data_md5(data_dir: Path) -> str:
    """md5 of the prepared data's manifest (MNIST) or of its files (blobs)."""
    files = [data_dir / "manifest.json"] if (data_dir / "manifest.json").is_file() else sorted(data_dir.glob("*.*"))
    digest = hashlib.md5()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _tags(cfg: DictConfig, accelerator: str) -> dict:
    tags = {
        "experiment": cfg.name,
        "data": cfg.data._target_.rsplit(".", 1)[-1].removesuffix("DataModule").lower(),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data_md5": data_md5(Path(cfg.data.data_dir)),
        "accelerator": accelerator,
        "device": torch.cuda.get_device_name(0) if accelerator == "cuda" else accelerator,
        **git_tags(Path(cfg.paths.root_dir)),
        **sweep_tags(),
    }
    for var, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


class ConfigInCheckpoint(L.Callback):
    """Stores the resolved config in every checkpoint Lightning writes (see checkpoint.load_network)."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.config


@dataclass
class Fitter:
    """One way of training: its network before training and a ``fit()`` that returns
    (the best network as a torch module in eval mode, its checkpoint), or None off rank 0."""

    parameters: int
    summary_text: str
    accelerator: str
    is_global_zero: bool
    fit: Callable[[], tuple[nn.Module, Path] | None]
    loggable: bool = True  # mlflow.pytorch.log_model can save it


def _lightning_fitter(cfg: DictConfig, resolved: dict, datamodule, history: EpochHistory, out: Outputs) -> Fitter:
    module = build_module(cfg)
    # Best by validation loss: it breaks the ties that accuracy has (blobs reach 100 % at once).
    checkpoint = ModelCheckpoint(dirpath=out.models, filename="best", monitor="val/loss", mode="min",
                                 save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    if cfg.trainer.deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    callbacks = [history, checkpoint, ConfigInCheckpoint(resolved)]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar(refresh_rate=10))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, default_root_dir=cfg.paths.log_dir)

    def fit():
        try:
            trainer.fit(module, datamodule=datamodule)
        except SystemExit:  # Lightning turns Ctrl-C into exit code 1: keep it an interrupt
            if trainer.interrupted:
                raise KeyboardInterrupt("training interrupted") from None
            raise
        if not trainer.is_global_zero:
            return None
        best = Path(checkpoint.best_model_path)
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        return module.net.cpu().eval(), best

    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    return Fitter(count_parameters(module.net), format_summary(summarize(module.net, cfg.data.input_shape),
                  type(module.net).__name__), accelerator, trainer.is_global_zero, fit)


def _numpy_fitter(cfg: DictConfig, datamodule, history: EpochHistory, out: Outputs) -> Fitter:
    probe = instantiate(cfg.model)

    def fit():
        mlp, _ = numpy_train.fit(cfg, datamodule, history.record)
        path = out.models / "best.npz"
        np.savez(path, **mlp.state_dict())
        return numpy_train.NumpyAsTorch(mlp), path

    return Fitter(probe.parameter_count(), numpy_train.summary_table(probe), "cpu", True, fit, loggable=False)


def _open_run(cfg: DictConfig, fitter: Fitter):
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not fitter.is_global_zero:
        return nullcontext()
    return tracking.open_run(mlflow_cfg.experiment_name, cfg.name, Path(cfg.paths.root_dir),
                             mlflow_cfg.tracking_uri, tags=_tags(cfg, fitter.accelerator))


def _summary(cfg: DictConfig, history: EpochHistory, parameters: int, seconds: float) -> dict:
    best, rows = history.best(), history.rows

    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)

    return {"name": cfg.name, "reference": cfg.reference, "seed": cfg.seed, "parameters": parameters,
            "epochs": len(rows), "best_epoch": best.get("epoch"), "best_val_acc": best.get("val_acc"),
            "best_val_loss": best.get("val_loss"), "train_seconds": round(seconds, 3),
            "mean_epoch_seconds": round(mean("epoch_seconds"), 3),
            "mean_samples_per_second": round(mean("samples_per_second"), 1),
            "final_train_loss": rows[-1]["train_loss"] if rows else None}


def _input_example(cfg: DictConfig, datamodule) -> np.ndarray:
    """Two test inputs as the deployed model takes them (MNIST: pixels in [0, 1])."""
    x = datamodule.splits["test"][0][:2]
    if "mean" in cfg.data:
        x = x * cfg.data.std + cfg.data.mean
    return x.numpy().astype(np.float32)


def _log_results(run, cfg: DictConfig, out: Outputs, fitted: tuple, fitter: Fitter, datamodule,
                 test_results) -> dict:
    mlflow_cfg = cfg.logger.mlflow
    net, checkpoint = fitted
    summary = read_json(out.metrics / "train.json")
    run.log_metrics({k: summary[k] for k in ("best_val_acc", "best_val_loss", "train_seconds")})
    for path in (out.plots / "history.csv", out.plots / "curves.png", out.metrics / "train.json",
                 out.models / "model_summary.txt"):
        run.log_artifact(path)
    run.log_artifact(checkpoint, "checkpoint")
    if test_results:
        log_test_results(run, *test_results)
    record = {"mlflow_run_id": run.run_id}
    if mlflow_cfg.log_model and fitter.loggable:
        record["model_uri"] = run.log_model(deployable(net, cfg), _input_example(cfg, datamodule),
                                            mlflow_cfg.serialization_format)
        if mlflow_cfg.register and test_results:
            record["registered_version"] = run.register_champion(f"nnlab-{cfg.name}")
    return record


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation loss, record everything. Returns the summary."""
    validate(cfg)
    if cfg.logger.get("mlflow"):  # credentials go to the environment, never into a file
        cfg.logger.mlflow.tracking_uri = strip_credentials(cfg.logger.mlflow.tracking_uri)
    overrides = [strip_override(o) for o in overrides or []]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Outputs.for_config(cfg).make()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    datamodule, history = instantiate(cfg.data), EpochHistory()
    if cfg.model._target_ == numpy_train.TARGET:
        fitter = _numpy_fitter(cfg, datamodule, history, out)
    else:
        fitter = _lightning_fitter(cfg, resolved, datamodule, history, out)
    (out.models / "model_summary.txt").write_text(fitter.summary_text)
    with _open_run(cfg, fitter) as run:
        if run:
            run.log_params({**tracking.flatten(resolved), "parameters": fitter.parameters})
            run.log_artifact(out.models / "config.yaml")
            run.log_text("\n".join(overrides) + "\n", "overrides.txt")
            history.sinks.append(lambda row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]))
        started = time.perf_counter()
        fitted = fitter.fit()
        if fitted is None:
            return {}
        summary = _summary(cfg, history, fitter.parameters, time.perf_counter() - started)
        test_results = None
        if cfg.test_after_fit:
            test_results = evaluate_network(fitted[0], datamodule, cfg.name, out.metrics, out.plots)
            summary.update(test_acc=test_results[0]["test_acc"], test_loss=test_results[0]["test_loss"])
        history.write_csv(out.plots / "history.csv")
        plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
        write_json(out.metrics / "train.json", summary)
        if run:
            write_json(out.models / "run.json", _log_results(run, cfg, out, fitted, fitter, datamodule, test_results))
    print_summary(summary, {"accelerator": fitter.accelerator, "checkpoint": fitted[1],
                            "metrics": out.metrics / "train.json", "history": out.plots / "history.csv",
                            "mlflow run": run.run_id if run else "(not tracked)"})
    return summary


@hydra.main(version_base="1.3", config_path=str(cli.CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as exc:
        cli.fail("nnlab.train", f"config: {exc}")
    except KeyboardInterrupt:
        cli.fail("nnlab.train", "interrupted; the MLflow run is marked KILLED", code=130)
    return summary.get("best_val_acc")  # what a sweeper optimises


def main() -> None:
    # Lightning's start-up chatter (device lines, tips); the summary says which device ran.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    cli.run_main("nnlab.train", _hydra_main)


if __name__ == "__main__":
    main()
