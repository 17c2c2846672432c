"""Stage evaluate: score an experiment's best checkpoint on the held-out test split.

``python -m nnlab.evaluate experiment=mnist_cnn``. For MNIST that is the official 10,000
test images; for blobs its validation split. Writes metrics/<name>/test.json, the confusion
matrix as DVC plot data (plots/<name>/confusion.csv) and as a PNG, and a PNG of predictions;
logs the same into the MLflow run that trained the checkpoint.
"""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from nnlab import cli, evaluation, plots
from nnlab.checkpoint import load_network
from nnlab.config import ConfigError, validate
from nnlab.reporting import console, read_json, write_json
from nnlab.tracking.mlflow_run import Run, existing_run


def write_confusion_csv(path: Path, actual: np.ndarray, predicted: np.ndarray) -> None:
    """One row per test sample: the form `dvc plots` draws as a confusion matrix."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual.tolist(), predicted.tolist()))


def evaluate_network(net: nn.Module, datamodule, name: str, metrics_dir: Path, plots_dir: Path
                     ) -> tuple[dict, list[Path]]:
    """Score on the test split and write test.json, confusion.csv/.png and predictions.png."""
    datamodule.setup("test")
    x, y = datamodule.splits["test"]
    device = next(net.parameters(), torch.zeros(0)).device
    result = evaluation.score(evaluation.predict_logits(net, x.to(device)).cpu(), y, datamodule.num_classes)
    actual, predicted, counts = y.numpy(), result.pop("predicted"), result.pop("confusion")
    metrics = {"test_loss": round(result["loss"], 6), "test_acc": round(result["accuracy"], 6), "n": result["n"],
               "per_class_accuracy": result["per_class_accuracy"]}
    write_json(metrics_dir / "test.json", metrics)
    plots_dir.mkdir(parents=True, exist_ok=True)
    write_confusion_csv(plots_dir / "confusion.csv", actual, predicted)
    artifacts = [metrics_dir / "test.json",
                 plots.confusion_matrix(counts, plots_dir / "confusion.png", f"{name}: test confusion")]
    if x.ndim == 4:
        artifacts.append(plots.prediction_grid(datamodule.raw_test_inputs, actual, predicted,
                                               plots_dir / "predictions.png", name))
    else:
        artifacts.append(plots.scatter_predictions(x.numpy(), actual, predicted, plots_dir / "predictions.png", name))
    return metrics, artifacts


def log_test_results(run: Run, metrics: dict, artifacts: list[Path]) -> None:
    per_class = {f"test_acc_class_{c}": v for c, v in metrics["per_class_accuracy"].items()}
    run.log_metrics({"test_loss": metrics["test_loss"], "test_acc": metrics["test_acc"], **per_class})
    for path in artifacts:
        run.log_artifact(path, "evaluation")


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    name = cfg.name
    models, metrics_dir, plots_dir = (Path(cfg.paths[k]) / name for k in ("models_dir", "metrics_dir", "plots_dir"))
    net, _ = load_network(models / "best.ckpt")
    net.to("cuda" if torch.cuda.is_available() else "cpu")
    metrics, artifacts = evaluate_network(net, instantiate(cfg.data), name, metrics_dir, plots_dir)
    mlflow_cfg = cfg.logger.get("mlflow")
    if mlflow_cfg and (models / "run.json").is_file():
        # add the results to the MLflow run that trained this checkpoint
        run = existing_run(read_json(models / "run.json")["mlflow_run_id"], Path(cfg.paths.root_dir),
                           mlflow_cfg.tracking_uri)
        log_test_results(run, metrics, artifacts)
        if mlflow_cfg.register and mlflow_cfg.log_model:
            run.register_champion(f"nnlab-{name}")
    console.print(f"[bold]{name}[/]: test accuracy {metrics['test_acc']:.4f}, loss {metrics['test_loss']:.4f} "
                  f"on {metrics['n']} samples -> {metrics_dir / 'test.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(cli.CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except ConfigError as exc:
        cli.fail("nnlab.evaluate", f"config: {exc}")
    except FileNotFoundError as exc:
        cli.fail("nnlab.evaluate", f"{exc} (train it first: dvc repro train@{cfg.name})")
    except ValueError as exc:  # a checkpoint that nnlab did not write, or one it refuses
        cli.fail("nnlab.evaluate", str(exc).splitlines()[0])


def main() -> None:
    cli.run_main("nnlab.evaluate", _hydra_main)


if __name__ == "__main__":
    main()
