"""Every figure of the project, saved one way. Matplotlib without a display (the one Agg switch)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np


def _pyplot():
    """pyplot on the Agg backend, imported on the first figure: a stage that only reads or
    writes tables (or prints its --help) does not pay matplotlib's start-up."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def save(fig, path: Path, tight: bool = True) -> Path:
    """Lay out (unless the figure placed its axes itself), write at 110 dpi (creating the
    folder) and close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def confusion_matrix(counts: np.ndarray, path: Path, title: str) -> Path:
    n = len(counts)
    fig, ax = _pyplot().subplots(figsize=(1.2 + 0.55 * n, 1 + 0.5 * n))
    ax.imshow(np.log1p(counts), cmap="Blues")
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > counts.max() / 3 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="actual", title=title)
    return save(fig, path)


def prediction_grid(
    images: np.ndarray, actual: np.ndarray, predicted: np.ndarray, path: Path, title: str, count: int = 40
) -> Path:
    """Images with 'predicted (true)' labels; mistakes in red. Mistakes come first."""
    order = np.concatenate([np.flatnonzero(actual != predicted), np.flatnonzero(actual == predicted)])[:count]
    cols = 10
    rows = max(1, -(-len(order) // cols))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        wrong = actual[i] != predicted[i]
        if images.ndim >= 3:
            ax.imshow(images[i].reshape(images.shape[-2:]), cmap="gray_r")
        ax.set_title(f"{predicted[i]} ({actual[i]})", fontsize=8, color="red" if wrong else "black")
    fig.suptitle(f"{title}: predicted (true), mistakes in red", fontsize=9)
    # Fixed margins: tight_layout measures all 40 axes and took most of the figure's 0.9 s.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (rows * 1.15), wspace=0.1, hspace=0.45)
    return save(fig, path, tight=False)


def scatter_predictions(points: np.ndarray, actual: np.ndarray, predicted: np.ndarray, path: Path, title: str) -> Path:
    """2-D points coloured by prediction; mistakes circled in red."""
    fig, ax = _pyplot().subplots(figsize=(5, 4.5))
    ax.scatter(points[:, 0], points[:, 1], c=predicted, cmap="viridis", s=18)
    wrong = actual != predicted
    ax.scatter(points[wrong, 0], points[wrong, 1], s=80, facecolors="none", edgecolors="red", label="mistake")
    ax.set(title=f"{title}: {int(wrong.sum())} mistakes of {len(actual)}", xlabel="x1", ylabel="x2")
    return save(fig, path)


def learning_curves(
    histories: dict[str, list[dict]], path: Path, key: str = "val_acc", ylabel: str = "validation accuracy"
) -> Path:
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for name, rows in sorted(histories.items()):
        ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{ylabel} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def run_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Loss and accuracy, train and validation, of one run."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in rows]
    for split in ("train", "val"):
        left.plot(epochs, [r[f"{split}_loss"] for r in rows], marker="o", ms=3, label=split)
        right.plot(epochs, [r[f"{split}_acc"] for r in rows], marker="o", ms=3, label=split)
    left.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    right.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def reference_losses(
    runs_by_experiment: dict[str, list[dict]], published: dict[str, dict[int, float]], path: Path
) -> Path:
    """Each reference experiment's mean training loss per epoch against the losses the texts printed."""
    panels = [
        (exp, runs)
        for exp, runs in runs_by_experiment.items()
        if runs[0].get("reference") in published and exp.startswith("ref_")
    ]
    fig, axes = _pyplot().subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (exp, runs) in zip(axes[0], panels):
        epochs = [r["epoch"] for r in runs[0]["history"]]
        mean = [statistics.mean(run["history"][i]["train_loss"] for run in runs) for i in range(len(epochs))]
        ax.plot(epochs, mean, label=f"nnlab (mean of {len(runs)} seeds)")
        points = published[runs[0]["reference"]]
        ax.plot(list(points), list(points.values()), "rx", ms=9, mew=2, label="published")
        ax.set(title=f"{exp} ({runs[0]['reference']})", xlabel="epoch", ylabel="training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def activation_functions(activations, path: Path) -> Path:
    """The activations and their derivatives, and a three-way softmax, from ``activations``
    (nnlab.models.activations: ELEMENTWISE, softmax, softmax_jacobian)."""
    z = np.linspace(-6, 6, 481)
    fig, (left, middle, right) = _pyplot().subplots(1, 3, figsize=(13, 3.8))
    for name, (f, df) in activations.ELEMENTWISE.items():
        style = ":" if name == "identity" else "-"  # identity overlaps ReLU for z > 0
        left.plot(z, f(z), style, label=name)
        middle.plot(z, df(z), style, label=f"{name}'")
    left.set(title="activation f(z)", xlabel="z", ylim=(-1.5, 3))
    middle.set(title="derivative f'(z)", xlabel="z", ylim=(-0.1, 1.2))
    scores = np.stack([z, np.zeros_like(z), np.full_like(z, 1.0)], axis=1)
    probs = activations.softmax(scores)
    for k, label in enumerate(("class 0: score z", "class 1: score 0", "class 2: score 1")):
        right.plot(z, probs[:, k], label=label)
    right.plot(z, [activations.softmax_jacobian(s)[0, 0] for s in scores], "k--", label="d p0 / d z")
    right.set(title="softmax over three scores", xlabel="z")
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def gradient_norms(norms: dict[str, list[float]], path: Path) -> Path:
    """Per-layer weight-gradient norm of each network, log scale, first layer on the left."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    for name, values in norms.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set(
        yscale="log",
        xlabel="layer (1 = next to the input)",
        ylabel="‖∂loss/∂W‖",
        title="gradient norm per layer, sigmoid networks at initialisation",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save(fig, path)
