"""Synthetic MNIST-shaped IDX files for the pipeline benchmark (the same as the tests use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnlab.data import idx


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 uint8 'digits': class c is a bright 7×5 block at one of ten places, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        row, col = 3 + 15 * (c // 5), 2 + 5 * (c % 5)
        images[i, row : row + 7, col : col + 5] = 220
    return images, labels.astype(np.uint8)


def write_idx_dir(folder: Path, n_train: int = 600, n_test: int = 200) -> dict[str, str]:
    """The four IDX files of a synthetic MNIST in ``folder``; returns their md5s."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, 1)
    test_x, test_y = synthetic_digits(n_test, 2)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    md5s = {}
    for key, array in arrays.items():
        data = idx.encode(array)
        (folder / idx.FILES[key]).write_bytes(data)
        md5s[idx.FILES[key]] = idx.md5(data)
    return md5s
