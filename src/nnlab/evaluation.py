"""Evaluate a network on tensors: loss, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    net.eval()
    return torch.cat([net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[actual, predicted]."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def score(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    y_pred = logits.argmax(1)
    counts = confusion(y.numpy(), y_pred.numpy(), num_classes)
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((y_pred == y).float().mean()),
        "per_class_accuracy": {str(c): round(float(a), 6) for c, a in enumerate(per_class)},
        "n": int(len(y)),
        "confusion": counts,
        "predicted": y_pred.numpy(),
    }
