"""Scoring a network on the test split: loss, accuracy, per-class accuracy, confusion matrix,
and the files that show them (test.json, confusion.csv/.png, predictions.png)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nnlab.models.networks import forward_in_pieces
from nnlab.report import plots
from nnlab.report.tables import write_json


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    return forward_in_pieces(net, x)


def score(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Loss, accuracy, per-class accuracy, counts[actual, predicted] and the predictions."""
    y_pred = logits.argmax(1)
    # counts[actual, predicted], as torchmetrics' multiclass_confusion_matrix (not imported: it
    # pulls in torchvision and scipy, seconds of start-up for one bincount)
    pairs = y.long() * num_classes + y_pred.long()
    counts = torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((y_pred == y).float().mean()),
        "per_class_accuracy": {str(c): round(float(a), 6) for c, a in enumerate(per_class)},
        "n": int(len(y)),
        "confusion": counts,
        "predicted": y_pred.numpy(),
    }


def write_confusion_csv(path: Path, actual: np.ndarray, predicted: np.ndarray) -> None:
    """One row per test sample: the form `dvc plots` draws as a confusion matrix."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual.tolist(), predicted.tolist()))


def score_and_write(
    net: nn.Module, datamodule, name: str, metrics_dir: Path, plots_dir: Path
) -> tuple[dict, list[Path]]:
    """Score on the test split; write test.json, confusion.csv/.png and predictions.png.
    Returns (the metrics, the files written)."""
    datamodule.setup("test")
    x, y = datamodule.inputs("test")
    device = next(net.parameters(), torch.zeros(0)).device
    result = score(predict_logits(net, x.to(device)).cpu(), y, datamodule.num_classes)
    actual, predicted, counts = y.numpy(), result.pop("predicted"), result.pop("confusion")
    metrics = {
        "test_loss": round(result["loss"], 6),
        "test_acc": round(result["accuracy"], 6),
        "n": result["n"],
        "per_class_accuracy": result["per_class_accuracy"],
    }
    write_json(metrics_dir / "test.json", metrics)
    plots_dir.mkdir(parents=True, exist_ok=True)
    write_confusion_csv(plots_dir / "confusion.csv", actual, predicted)
    files = [
        metrics_dir / "test.json",
        plots.confusion_matrix(counts, plots_dir / "confusion.png", f"{name}: test confusion"),
    ]
    if x.ndim == 4:
        files.append(
            plots.prediction_grid(datamodule.raw_test_inputs, actual, predicted, plots_dir / "predictions.png", name)
        )
    else:
        files.append(plots.scatter_predictions(x.numpy(), actual, predicted, plots_dir / "predictions.png", name))
    return metrics, files
