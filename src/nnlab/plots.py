"""Figures people would rather look at than read. Matplotlib without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(counts: np.ndarray, path: Path, title: str) -> Path:
    n = len(counts)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1 + 0.5 * n))
    ax.imshow(np.log1p(counts), cmap="Blues")
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > counts.max() / 3 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="actual", title=title)
    return _save(fig, path)


def prediction_grid(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray, path: Path,
                    title: str, count: int = 40) -> Path:
    """Images with 'predicted (true)' labels; mistakes in red. Mistakes come first."""
    order = np.concatenate([np.flatnonzero(actual != predicted), np.flatnonzero(actual == predicted)])[:count]
    cols = 10
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        wrong = actual[i] != predicted[i]
        if images.ndim >= 3:
            ax.imshow(images[i].reshape(images.shape[-2:]), cmap="gray_r")
        ax.set_title(f"{predicted[i]} ({actual[i]})", fontsize=8, color="red" if wrong else "black")
    fig.suptitle(f"{title}: predicted (true), mistakes in red", fontsize=9)
    return _save(fig, path)


def scatter_predictions(points: np.ndarray, actual: np.ndarray, predicted: np.ndarray, path: Path,
                        title: str) -> Path:
    """2-D points coloured by prediction; mistakes circled in red."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(points[:, 0], points[:, 1], c=predicted, cmap="viridis", s=18)
    wrong = actual != predicted
    ax.scatter(points[wrong, 0], points[wrong, 1], s=80, facecolors="none", edgecolors="red", label="mistake")
    ax.set(title=f"{title}: {int(wrong.sum())} mistakes of {len(actual)}", xlabel="x1", ylabel="x2")
    return _save(fig, path)


def learning_curves(histories: dict[str, list[dict]], path: Path, key: str = "val_acc",
                    ylabel: str = "validation accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in sorted(histories.items()):
        ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{ylabel} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def run_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Loss and accuracy, train and validation, of one run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in rows]
    for split in ("train", "val"):
        left.plot(epochs, [r[f"{split}_loss"] for r in rows], marker="o", ms=3, label=split)
        right.plot(epochs, [r[f"{split}_acc"] for r in rows], marker="o", ms=3, label=split)
    left.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    right.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)
