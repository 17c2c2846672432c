"""Train one experiment: ``python -m nnlab.train experiment=mnist_cnn optimizer.lr=3e-4``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` is the
thin Hydra wrapper. Outputs: models/<name>/best.ckpt, metrics/<name>/train.json,
plots/<name>/history.csv and curves.png, and one MLflow run.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from nnlab import cli, evaluation, plots, tracking
from nnlab.checkpoint import ConfigInCheckpoint
from nnlab.config import ConfigError, validate
from nnlab.history import EpochHistory
from nnlab.models.module import Classifier
from nnlab.models.networks import count_parameters
from nnlab.reporting import git_tags, print_summary, write_json

# config.yaml is written into the checkpoint folder before Lightning's first checkpoint.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


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


def build(cfg: DictConfig):
    """(data module, LightningModule) from the config."""
    datamodule = instantiate(cfg.data)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = Classifier(instantiate(cfg.model), instantiate(cfg.optimizer), scheduler,
                        num_classes=cfg.data.num_classes, label_smoothing=cfg.label_smoothing)
    return datamodule, module


def _tags(cfg: DictConfig, trainer: L.Trainer) -> dict:
    tags = {
        "experiment": cfg.name,
        "data": cfg.data._target_.rsplit(".", 1)[-1].removesuffix("DataModule").lower(),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        **git_tags(Path(cfg.paths.root_dir)),
    }
    for var, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


def _trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    if cfg.trainer.deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if cfg.trainer.enable_progress_bar:
        callbacks = [*callbacks, RichProgressBar(refresh_rate=10)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=False, default_root_dir=cfg.paths.log_dir)


def _test(cfg: DictConfig, module: Classifier, datamodule, checkpoint: Path) -> dict:
    module.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    x, y = datamodule.splits["test"]
    result = evaluation.score(evaluation.predict_logits(module.net.cpu(), x), y, cfg.data.num_classes)
    return {"test_loss": result["loss"], "test_acc": result["accuracy"]}


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation accuracy, record everything. Returns the summary."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Outputs.for_config(cfg).make()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))

    datamodule, module = build(cfg)
    history = EpochHistory()
    # Best by validation loss: it breaks the ties that accuracy has (blobs reach 100 % at once).
    checkpoint = ModelCheckpoint(dirpath=out.models, filename="best", monitor="val/loss", mode="min",
                                 save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    trainer = _trainer(cfg, [history, checkpoint, ConfigInCheckpoint(resolved)])
    mlflow_cfg = cfg.logger.get("mlflow")
    root = Path(cfg.paths.root_dir)
    run_cm = (tracking.open_run(mlflow_cfg.experiment_name, cfg.name, root, mlflow_cfg.tracking_uri,
                                tags=_tags(cfg, trainer)) if mlflow_cfg else nullcontext())
    with run_cm as run:
        parameters = count_parameters(module.net)
        if run:
            run.log_params({**tracking.flatten(resolved), "parameters": parameters})
            run.log_artifact(out.models / "config.yaml")
            if overrides:
                run.set_tags({"overrides": " ".join(overrides)[:5000]})
            history.sinks.append(lambda row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]))
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        fit_seconds = time.perf_counter() - started
        if not trainer.is_global_zero:
            return {}
        best = history.best()
        summary = {
            "name": cfg.name, "reference": cfg.reference, "parameters": parameters,
            "epochs": len(history.rows), "best_epoch": best.get("epoch"),
            "best_val_acc": best.get("val_acc"), "best_val_loss": best.get("val_loss"),
            "train_seconds": round(fit_seconds, 3),
            "mean_epoch_seconds": round(sum(r["epoch_seconds"] for r in history.rows) / max(len(history.rows), 1), 3),
            "mean_samples_per_second": round(
                sum(r["samples_per_second"] for r in history.rows) / max(len(history.rows), 1), 1),
        }
        if cfg.test_after_fit:
            summary.update(_test(cfg, module, datamodule, Path(checkpoint.best_model_path)))
        history.write_csv(out.plots / "history.csv")
        plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
        write_json(out.metrics / "train.json", summary)
        if run:
            write_json(out.models / "run.json", {"mlflow_run_id": run.run_id})
            run.log_metrics({k: summary[k] for k in ("best_val_acc", "train_seconds", "test_acc", "test_loss")
                             if summary.get(k) is not None})
            for path in (out.plots / "history.csv", out.plots / "curves.png", out.metrics / "train.json"):
                run.log_artifact(path)
            run.log_artifact(checkpoint.best_model_path, "checkpoint")
    print_summary(summary, {"accelerator": f"{trainer.accelerator.__class__.__name__} x {trainer.num_devices}",
                            "checkpoint": checkpoint.best_model_path, "metrics": out.metrics / "train.json",
                            "history": out.plots / "history.csv",
                            "mlflow run": run.run_id if mlflow_cfg else "(logger=none)"})
    return summary


@hydra.main(version_base="1.3", config_path=str(cli.CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as exc:
        cli.fail("nnlab.train", f"config: {exc}")
    return summary.get("best_val_acc")  # what a sweeper optimises


def main() -> None:
    # Lightning's start-up chatter (device lines, tips); the summary says which device ran.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    cli.run_main("nnlab.train", _hydra_main)


if __name__ == "__main__":
    main()
