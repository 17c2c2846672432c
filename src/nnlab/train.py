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

from nnlab import cli, plots, tracking
from nnlab.checkpoint import ConfigInCheckpoint, deployable
from nnlab.evaluate import evaluate_network, log_test_results
from nnlab.config import ConfigError, validate
from nnlab.history import EpochHistory
from nnlab.models.module import Classifier
from nnlab.models.networks import count_parameters
from nnlab.models.summary import format_summary, summarize
from nnlab.reporting import git_tags, print_summary, write_json
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


def build(cfg: DictConfig):
    """(data module, LightningModule) from the config."""
    datamodule = instantiate(cfg.data)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = Classifier(instantiate(cfg.model), instantiate(cfg.optimizer), scheduler,
                        num_classes=cfg.data.num_classes, label_smoothing=cfg.label_smoothing)
    return datamodule, module


def data_md5(data_dir: Path) -> str:
    """md5 of the prepared data's manifest (MNIST) or of its files (blobs)."""
    files = [data_dir / "manifest.json"] if (data_dir / "manifest.json").is_file() else sorted(data_dir.glob("*.*"))
    digest = hashlib.md5()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _tags(cfg: DictConfig, trainer: L.Trainer) -> dict:
    tags = {
        "experiment": cfg.name,
        "data": cfg.data._target_.rsplit(".", 1)[-1].removesuffix("DataModule").lower(),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data_md5": data_md5(Path(cfg.data.data_dir)),
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        **git_tags(Path(cfg.paths.root_dir)),
        **sweep_tags(),
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


def _open_run(cfg: DictConfig, trainer: L.Trainer):
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not trainer.is_global_zero:
        return nullcontext()
    return tracking.open_run(mlflow_cfg.experiment_name, cfg.name, Path(cfg.paths.root_dir),
                             mlflow_cfg.tracking_uri, tags=_tags(cfg, trainer))


def _summary(cfg: DictConfig, history: EpochHistory, parameters: int, seconds: float) -> dict:
    best, rows = history.best(), history.rows

    def mean(key):
        return sum(r[key] for r in rows) / max(len(rows), 1)

    return {"name": cfg.name, "reference": cfg.reference, "parameters": parameters, "epochs": len(rows),
            "best_epoch": best.get("epoch"), "best_val_acc": best.get("val_acc"),
            "best_val_loss": best.get("val_loss"), "train_seconds": round(seconds, 3),
            "mean_epoch_seconds": round(mean("epoch_seconds"), 3),
            "mean_samples_per_second": round(mean("samples_per_second"), 1)}


def _input_example(cfg: DictConfig, datamodule) -> np.ndarray:
    """Two test inputs as the deployed model takes them (MNIST: pixels in [0, 1])."""
    x = datamodule.splits["test"][0][:2]
    if "mean" in cfg.data:
        x = x * cfg.data.std + cfg.data.mean
    return x.numpy().astype(np.float32)


def _log_results(run, cfg: DictConfig, out: Outputs, summary: dict, net, datamodule, test_artifacts) -> dict:
    mlflow_cfg = cfg.logger.mlflow
    run.log_metrics({k: summary[k] for k in ("best_val_acc", "best_val_loss", "train_seconds")})
    for path in (out.plots / "history.csv", out.plots / "curves.png", out.metrics / "train.json",
                 out.models / "model_summary.txt"):
        run.log_artifact(path)
    run.log_artifact(out.models / "best.ckpt", "checkpoint")
    if test_artifacts:
        log_test_results(run, *test_artifacts)
    record = {"mlflow_run_id": run.run_id}
    if mlflow_cfg.log_model:
        record["model_uri"] = run.log_model(deployable(net, cfg), _input_example(cfg, datamodule),
                                            mlflow_cfg.serialization_format)
        if mlflow_cfg.register and test_artifacts:
            record["registered_version"] = run.register_champion(f"nnlab-{cfg.name}")
    return record


def _fit(trainer: L.Trainer, module, datamodule) -> None:
    """trainer.fit, with Ctrl-C kept a KeyboardInterrupt (Lightning turns it into exit code 1)."""
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted") from None
        raise


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Fit, keep the best checkpoint by validation loss, record everything. Returns the summary."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Outputs.for_config(cfg).make()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out.models / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    datamodule, module = build(cfg)
    layers = summarize(module.net, cfg.data.input_shape)
    (out.models / "model_summary.txt").write_text(format_summary(layers, type(module.net).__name__))
    parameters = count_parameters(module.net)

    history = EpochHistory()
    # Best by validation loss: it breaks the ties that accuracy has (blobs reach 100 % at once).
    checkpoint = ModelCheckpoint(dirpath=out.models, filename="best", monitor="val/loss", mode="min",
                                 save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    trainer = _trainer(cfg, [history, checkpoint, ConfigInCheckpoint(resolved)])
    with _open_run(cfg, trainer) as run:
        if run:
            run.log_params({**tracking.flatten(resolved), "parameters": parameters})
            run.log_artifact(out.models / "config.yaml")
            run.log_text("\n".join(overrides or []) + "\n", "overrides.txt")
            history.sinks.append(lambda row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]))
        started = time.perf_counter()
        _fit(trainer, module, datamodule)
        if not trainer.is_global_zero:
            return {}
        summary = _summary(cfg, history, parameters, time.perf_counter() - started)
        module.load_state_dict(torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
        net = module.net.cpu().eval()
        test_artifacts = None
        if cfg.test_after_fit:
            test_artifacts = evaluate_network(net, datamodule, cfg.name, out.metrics, out.plots)
            summary.update(test_acc=test_artifacts[0]["test_acc"], test_loss=test_artifacts[0]["test_loss"])
        history.write_csv(out.plots / "history.csv")
        plots.run_curves(history.rows, out.plots / "curves.png", cfg.name)
        write_json(out.metrics / "train.json", summary)
        if run:
            write_json(out.models / "run.json", _log_results(run, cfg, out, summary, net, datamodule, test_artifacts))
    print_summary(summary, {"accelerator": f"{type(trainer.accelerator).__name__} x {trainer.num_devices}",
                            "checkpoint": checkpoint.best_model_path, "metrics": out.metrics / "train.json",
                            "history": out.plots / "history.csv",
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
