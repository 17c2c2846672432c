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
from nnlab.tracking.run import Run, existing_run, flatten, open_run, process_tags
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
def training_run(
    cfg: DictConfig, tags: dict, tracked: bool = True, resume_id: str | None = None
) -> Iterator[Run | None]:
    """The MLflow run of one training (None when the logger is off or off rank 0); with
    ``resume_id``, the run a crashed training left, continued."""
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not tracked:
        yield None
        return
    if resume_id:
        tags = {**tags, "resumed": "true"}
    with open_run(
        mlflow_cfg.experiment_name,
        cfg.name,
        Path(cfg.paths.root_dir),
        mlflow_cfg.tracking_uri,
        tags={**tags, **process_tags()},
        resume_id=resume_id,
    ) as run:
        yield run


def record_failed_job(cfg: DictConfig, message: str) -> None:
    """A sweep job that could not train: a FAILED run under the sweep's parent, with the reason.
    A job that failed after its run started already has that run (``open_run`` ended it FAILED)."""
    mlflow_cfg = cfg.logger.get("mlflow") if isinstance(cfg.get("logger"), DictConfig) else None
    if not mlflow_cfg or not sweep_tags():
        return
    tags = {**sweep_tags(), "experiment": str(cfg.get("name")), "error": message[:5000]}
    parent = existing_run(tags["mlflow.parentRunId"], Path(cfg.paths.root_dir), mlflow_cfg.tracking_uri)
    client = parent.client
    exp_id = client.get_run(parent.run_id).info.experiment_id
    if client.search_runs(
        [exp_id], filter_string=f"tags.sweep_job = '{tags['sweep_job']}' and tags.sweep_id = '{parent.run_id}'"
    ):
        return
    run = client.create_run(exp_id, run_name=str(cfg.get("name")), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")


def record_start(run: Run, resolved: dict, parameters: int, config_file: Path, overrides: list[str]) -> None:
    """The run's params, config and overrides."""
    run.log_params({**flatten(resolved), "parameters": parameters})
    run.log_artifact(config_file)
    run.log_text("\n".join(overrides) + "\n", "overrides.txt")


def epoch_sink(run: Run) -> Callable[[dict], None]:
    """Logs each epoch's row at step = epoch, skipping epochs the run already has (a resumed
    run replays its history: the metric history stays 1..N without duplicates)."""
    logged = {m.step for m in run.client.get_metric_history(run.run_id, "val_acc")}

    def sink(row: dict) -> None:
        if row["epoch"] not in logged:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            logged.add(row["epoch"])

    return sink


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


def evaluation_run_id(models_dir: Path, checkpoint_run_id: str | None) -> str | None:
    """The MLflow run that trained the checkpoint: the id inside it, which run.json (when
    present) must name too; a mismatch means one of them is stale (a crashed re-run)."""
    recorded = read_json(models_dir / "run.json").get("mlflow_run_id") if (models_dir / "run.json").is_file() else None
    if checkpoint_run_id and recorded and checkpoint_run_id != recorded:
        raise ValueError(
            f"{models_dir}: best.ckpt was trained in MLflow run {checkpoint_run_id} but run.json names "
            f"run {recorded}; one of them is stale: train it again (dvc repro -f train@{models_dir.name})"
        )
    return checkpoint_run_id or recorded


def record_evaluation(cfg: DictConfig, run_id: str | None, metrics: dict, files: list[Path]) -> str | None:
    """Add test results to the MLflow run that trained the checkpoint."""
    mlflow_cfg = cfg.logger.get("mlflow")
    if not mlflow_cfg or not run_id:
        return None
    run = existing_run(run_id, Path(cfg.paths.root_dir), mlflow_cfg.tracking_uri)
    log_test_results(run, metrics, files)
    if mlflow_cfg.register and mlflow_cfg.log_model:
        run.register_champion(f"nnlab-{cfg.name}")
    return run.run_id
