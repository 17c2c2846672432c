"""What MLflow records for a training or an evaluation. Stages hand over facts (the config, the
files they wrote, the fitted network); this module decides tags, params, metrics and artifacts.
MLflow (``tracking.run``) is imported only once there is a run to record: a training or an
evaluation with ``logger=none`` imports none of it (2-3 s and 120 MB per process here)."""

from __future__ import annotations

import getpass
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from nnlab.config.paths import Outputs, portable, retrain_command
from nnlab.data.integrity import data_hash
from nnlab.errors import CheckpointError, TrackingError
from nnlab.report.tables import read_json, six_digits, write_json
from nnlab.tracking.names import data_name, experiment_name, registered_model_name
from nnlab.tracking.trial import run_name, sweep_tags

if TYPE_CHECKING:
    from nnlab.tracking.run import Run


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


def source_tags(commit: str | None) -> dict:
    """MLflow's own source tags, which fill the UI's User, Source and Version columns."""
    tags = {"mlflow.source.name": "nnlab.train", "mlflow.source.type": "LOCAL", "mlflow.user": getpass.getuser()}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_tags(cfg: DictConfig, accelerator: str, device: str) -> dict:
    tags = {
        "experiment": cfg.name,
        "data": data_name(cfg),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data_md5": data_hash(Path(cfg.data.data_dir)),
        "accelerator": accelerator,
        "device": device,
        **git_tags(Path(cfg.paths.root_dir)),
        **sweep_tags(),
    }
    tags.update(source_tags(tags.get("git_commit")))
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
    from nnlab.tracking.run import open_run, process_tags, system_metrics

    if resume_id:
        tags = {**tags, "resumed": "true"}
    with (
        open_run(
            experiment_name(cfg),
            run_name(cfg.name),  # a sweep's job: its trial or its swept values
            Path(cfg.paths.root_dir),
            mlflow_cfg.tracking_uri,
            tags={**tags, **process_tags()},
            resume_id=resume_id,
        ) as run,
        system_metrics(run, mlflow_cfg.system_metrics_interval, resumed=bool(resume_id)),
    ):
        yield run


def record_failed_job(cfg: DictConfig, message: str) -> None:
    """A sweep job that could not train: a FAILED run under the sweep's parent, with the reason.
    A job that failed after its run started already has that run (``open_run`` ended it FAILED)."""
    mlflow_cfg = cfg.logger.get("mlflow") if isinstance(cfg.get("logger"), DictConfig) else None
    if not mlflow_cfg or not sweep_tags():
        return
    from nnlab.tracking.run import existing_run

    tags = {**sweep_tags(), "experiment": str(cfg.get("name")), "error": message[:5000]}
    parent = existing_run(tags["mlflow.parentRunId"], Path(cfg.paths.root_dir), mlflow_cfg.tracking_uri)
    client = parent.client
    exp_id = client.get_run(parent.run_id).info.experiment_id
    if client.search_runs(
        [exp_id], filter_string=f"tags.sweep_job = '{tags['sweep_job']}' and tags.sweep_id = '{parent.run_id}'"
    ):
        return
    run = client.create_run(exp_id, run_name=run_name(str(cfg.get("name"))), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")


def record_start(run: Run, resolved: dict, parameters: int, config_file: Path, overrides: list[str]) -> None:
    """The run's params and its config (``config_file``'s name), both with paths relative to the
    project, so that the same run on two machines records the same; and its overrides."""
    from omegaconf import OmegaConf

    from nnlab.tracking.run import flatten

    params = portable(resolved, Path(resolved["paths"]["root_dir"]))
    run.log_params({**flatten(params), "parameters": parameters})
    run.log_text(OmegaConf.to_yaml(params), config_file.name)
    run.log_text("\n".join(overrides) + "\n", "overrides.txt")


SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}


def log_datasets(run: Run, cfg: DictConfig, datamodule, splits: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """The data sets as MLflow inputs (name, digest, source, schema: the UI's Dataset column);
    returns {split: (name, digest)} for metrics linked to them."""
    import mlflow.data
    from mlflow.entities import Dataset, DatasetInput, InputTag

    data = data_name(cfg)
    inputs, found = [], {}
    for split in splits:
        x, y = datamodule.splits[split]  # as stored (MNIST: the pixel bytes, as in data/mnist)
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local folder
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                x.numpy(), targets=y.numpy(), source=Path(cfg.data.data_dir).resolve().as_uri(), name=f"{data}-{split}"
            )
        found[split] = (dataset.name, dataset.digest)
        tag = InputTag(key="mlflow.data.context", value=SPLIT_CONTEXT[split])
        fields = dataset.to_dict()  # name, digest, source, source type, schema, profile
        entity = Dataset(**{k: fields.get(k) for k in ("name", "digest", "source_type", "source", "schema", "profile")})
        inputs.append(DatasetInput(entity, tags=[tag]))
    log_inputs(run, inputs)
    return found


def log_inputs(run: Run, inputs: list, attempts: int = 5) -> None:
    """``log_inputs``, again when another run inserted the same new data set at the same moment
    (a parallel sweep on a server: the store's unique key on the data set fails the second insert,
    and by then the row exists, so the retry links it; the failed request changed nothing)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or "unique" not in text or "datasets" not in text:
                raise
            time.sleep(0.1 * (attempt + 1))


# An epoch's row under the name its MLflow metric has where the run's summary logs the same
# name once: the UI shows a metric's latest value, so one name must not hold both the last
# epoch's seconds and the whole run's.
EPOCH_METRIC_NAMES = {"train_seconds": "epoch_train_seconds"}
SUMMARY_METRICS = ("best_val_acc", "best_val_loss", "train_seconds")


def epoch_sink(run: Run) -> Callable[[dict], None]:
    """Logs each epoch's row at step = epoch, skipping epochs the run already has (a resumed
    run replays its history: the metric history stays 1..N without duplicates)."""
    logged = {m.step for m in run.client.get_metric_history(run.run_id, "val_acc")}

    def sink(row: dict) -> None:
        if row["epoch"] not in logged:
            # the values history.csv holds (6 significant digits)
            metrics = {
                EPOCH_METRIC_NAMES.get(k, k): six_digits(v) for k, v in row.items() if k != "epoch" and v is not None
            }
            run.log_metrics(metrics, step=row["epoch"])
            logged.add(row["epoch"])

    return sink


def log_test_results(run: Run, metrics: dict, files: list[Path], dataset: tuple[str, str] | None) -> None:
    """Test metrics in the run; when it logged a model, test loss and accuracy are linked to that
    model and the test set (shown on the model's page; logged once, they are the run's too)."""
    run.log_metrics({f"test_acc_class_{c}": v for c, v in metrics["per_class_accuracy"].items()})
    model_id = run.model_id()
    name, digest = dataset if model_id and dataset else (None, None)
    link = {"model_id": model_id, "dataset_name": name, "dataset_digest": digest} if model_id else {}
    run.log_metrics({"test_loss": metrics["test_loss"], "test_acc": metrics["test_acc"]}, **link)
    for path in files:
        run.log_artifact(path, "evaluation")


def record_results(
    run: Run,
    cfg: DictConfig,
    out: Outputs,
    summary: dict,
    loggable: bool,
    checkpoint: Path,
    datamodule,
    test_results: tuple[dict, list[Path]] | None,
) -> dict:
    """Summary metrics (``summary``, what train.json holds), the run's files, the logged (and
    registered) model and the test results linked to it. ``loggable``: whether the network can be
    logged as a model. Writes models/<name>/run.json."""
    from nnlab.models.checkpoint import input_example

    mlflow_cfg = cfg.logger.mlflow
    run.log_metrics({k: summary[k] for k in SUMMARY_METRICS})
    for path in (
        out.plots / "history.csv",
        out.plots / "curves.png",
        out.metrics / "train.json",
        out.models / "model_summary.txt",
    ):
        run.log_artifact(path)
    run.log_artifact(checkpoint, "checkpoint")
    record = {"mlflow_run_id": run.run_id}
    if mlflow_cfg.log_model and loggable:
        record["model_uri"], record["model_id"] = run.log_model(checkpoint, input_example(cfg, datamodule), cfg.name)
    if test_results:
        log_test_results(run, *test_results, dataset=log_datasets(run, cfg, datamodule, ("test",))["test"])
        if "model_uri" in record and mlflow_cfg.register:
            record["registered_version"] = register(run, cfg, test_results[0]["test_acc"])
    write_json(out.models / "run.json", record)
    return record


def evaluation_run(cfg: DictConfig, models_dir: Path, checkpoint_run_id: str | None) -> Run | None:
    """The MLflow run that trained models_dir/best.ckpt (which carries ``checkpoint_run_id``), found
    before anything is scored, so that a stale checkpoint, a store that is down or one without that
    run stops the stage with one line and nothing written. None when the checkpoint names no run
    (trained with logger=none)."""
    run_id = evaluation_run_id(models_dir, checkpoint_run_id, cfg.name)
    if not run_id:
        return None
    from nnlab.tracking.run import RunNotFound, existing_run

    try:
        return existing_run(run_id, Path(cfg.paths.root_dir), cfg.logger.mlflow.tracking_uri)
    except RunNotFound as exc:
        raise TrackingError(
            f"{models_dir / 'best.ckpt'} was trained in MLflow run {run_id}, which tracking store "
            f"{exc.uri} does not hold: use the store that has it (MLFLOW_TRACKING_URI or "
            f"logger.mlflow.tracking_uri), train it again ({retrain_command(models_dir, cfg.name)}) "
            "or score without recording (logger=none)"
        ) from None


def evaluation_run_id(models_dir: Path, checkpoint_run_id: str | None, name: str) -> str | None:
    """The MLflow run that trained models_dir/best.ckpt: the id inside it, which run.json (when
    present) must name too; a mismatch means one of them is stale (a crashed re-run)."""
    recorded = read_json(models_dir / "run.json").get("mlflow_run_id") if (models_dir / "run.json").is_file() else None
    if checkpoint_run_id and recorded and checkpoint_run_id != recorded:
        raise CheckpointError(
            f"{models_dir}: best.ckpt was trained in MLflow run {checkpoint_run_id} but run.json names "
            f"run {recorded}; one of them is stale: train it again ({retrain_command(models_dir, name)})"
        )
    return checkpoint_run_id or recorded


def record_evaluation(cfg: DictConfig, run: Run, datamodule, metrics: dict, files: list[Path]) -> None:
    """Add the test set and results to the MLflow run that trained the checkpoint."""
    log_test_results(run, metrics, files, log_datasets(run, cfg, datamodule, ("test",))["test"])
    mlflow_cfg = cfg.logger.mlflow
    if mlflow_cfg.register and mlflow_cfg.log_model:
        register(run, cfg, metrics["test_acc"])


def register(run: Run, cfg: DictConfig, test_acc: float) -> int:
    """Register the run's model as ``nnlab-<name>``, described for the registry's pages."""
    return run.register_champion(registered_model_name(cfg), model_about(cfg), recipe_about(cfg, test_acc, run))


def model_about(cfg: DictConfig) -> str:
    """What a registered model is: its network, data, inputs and outputs."""
    skip = ("_target_", "input_shape", "num_classes")
    network = cfg.model._target_.rsplit(".", 1)[-1]
    settings = ", ".join(f"{k} {v}" for k, v in cfg.model.items() if k not in skip)
    if settings:
        network += f" ({settings})"
    data = data_name(cfg)
    if "mean" in cfg.data:
        takes = "images (n, 28, 28) or (n, 1, 28, 28) with pixels in [0, 1], or grey pictures of any size"
    else:
        takes = f"points (n, {cfg.data.input_shape[0]}) standardised like data/{data}"
    return (
        f"nnlab experiment {cfg.name}: {network} trained on {data} "
        f"({cfg.data.num_classes} classes). Takes {takes}; returns label, probabilities and logits."
    )


def recipe_about(cfg: DictConfig, test_acc: float, run: Run) -> str:
    """One registered version: the recipe that trained it and its test accuracy."""
    optimizer = cfg.optimizer._target_.rsplit(".", 1)[-1]
    scheduler = cfg.scheduler._target_.rsplit(".", 1)[-1] if (cfg.get("scheduler") or {}).get("_target_") else None
    epochs = cfg.trainer.max_epochs
    return (
        f"Recipe: {optimizer} lr {cfg.optimizer.lr}, batch {cfg.data.batch_size}, {epochs} epoch{'s' * (epochs != 1)}, "
        f"{scheduler or 'constant learning rate'}, seed {cfg.seed}. Test accuracy {test_acc:.2%} on "
        f"{data_name(cfg)}-test. MLflow run {run.run_id}."
    )
