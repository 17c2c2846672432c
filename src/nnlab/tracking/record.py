"""What MLflow records for a training or an evaluation. Stages hand over facts (the config, the
files they wrote, the fitted network); this module decides tags, params, metrics and artifacts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from torch import nn

from nnlab.config.paths import Outputs
from nnlab.data.integrity import data_hash
from nnlab.report.tables import read_json, write_json
from nnlab.tracking.run import Run, existing_run, flatten, open_run
from nnlab.tracking.sweep import sweep_tags


def git_tags(root: Path) -> dict:
    """The commit and whether the work tree had changes, when ``root`` is in a git repository."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


def run_tags(cfg: DictConfig, accelerator: str, device: str) -> dict:
    tags = {
        "experiment": cfg.name,
        "data": cfg.data._target_.rsplit(".", 1)[-1].removesuffix("DataModule").lower(),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data_md5": data_hash(Path(cfg.data.data_dir)),
        "accelerator": accelerator,
        "device": device,
        **git_tags(Path(cfg.paths.root_dir)),
        **sweep_tags(),
    }
    for var, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


@contextmanager
def training_run(cfg: DictConfig, tags: dict, tracked: bool = True) -> Iterator[Run | None]:
    """The MLflow run of one training (None when the logger is off or off rank 0)."""
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not tracked:
        yield None
        return
    with open_run(
        mlflow_cfg.experiment_name, cfg.name, Path(cfg.paths.root_dir), mlflow_cfg.tracking_uri, tags=tags
    ) as run:
        yield run


def record_start(
    run: Run, resolved: dict, parameters: int, config_file: Path, overrides: list[str]
) -> Callable[[dict], None]:
    """The run's params, config and overrides; returns the sink that logs each epoch's row."""
    run.log_params({**flatten(resolved), "parameters": parameters})
    run.log_artifact(config_file)
    run.log_text("\n".join(overrides) + "\n", "overrides.txt")
    return lambda row: run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def log_test_results(run: Run, metrics: dict, files: list[Path]) -> None:
    per_class = {f"test_acc_class_{c}": v for c, v in metrics["per_class_accuracy"].items()}
    run.log_metrics({"test_loss": metrics["test_loss"], "test_acc": metrics["test_acc"], **per_class})
    for path in files:
        run.log_artifact(path, "evaluation")


def record_results(
    run: Run,
    cfg: DictConfig,
    out: Outputs,
    model: nn.Module | None,
    checkpoint: Path,
    input_example: np.ndarray,
    test_results: tuple[dict, list[Path]] | None,
) -> dict:
    """Summary metrics, the run's files, the test results and the logged (and registered) model.
    ``model`` is the deployable network, or None when it cannot be logged. Writes models/<name>/run.json."""
    mlflow_cfg = cfg.logger.mlflow
    summary = read_json(out.metrics / "train.json")
    run.log_metrics({k: summary[k] for k in ("best_val_acc", "best_val_loss", "train_seconds")})
    for path in (
        out.plots / "history.csv",
        out.plots / "curves.png",
        out.metrics / "train.json",
        out.models / "model_summary.txt",
    ):
        run.log_artifact(path)
    run.log_artifact(checkpoint, "checkpoint")
    if test_results:
        log_test_results(run, *test_results)
    record = {"mlflow_run_id": run.run_id}
    if mlflow_cfg.log_model and model is not None:
        record["model_uri"] = run.log_model(model, input_example, mlflow_cfg.serialization_format)
        if mlflow_cfg.register and test_results:
            record["registered_version"] = run.register_champion(f"nnlab-{cfg.name}")
    write_json(out.models / "run.json", record)
    return record


def record_evaluation(cfg: DictConfig, models_dir: Path, metrics: dict, files: list[Path]) -> str | None:
    """Add test results to the MLflow run that trained the checkpoint (from its run.json)."""
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not (models_dir / "run.json").is_file():
        return None
    run = existing_run(
        read_json(models_dir / "run.json")["mlflow_run_id"], Path(cfg.paths.root_dir), mlflow_cfg.tracking_uri
    )
    log_test_results(run, metrics, files)
    if mlflow_cfg.register and mlflow_cfg.log_model:
        run.register_champion(f"nnlab-{cfg.name}")
    return run.run_id
