"""Helpers the tests share (fixtures stay in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnlab.data import idx

REPO = Path(__file__).resolve().parents[1]


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 uint8 'digits': class c is a bright 7×7 block at one of ten places, plus noise."""
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


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin/ first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(os.sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def run_module(module: str, *args: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` as a real process with the venv's environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=venv_env(**env),
        timeout=timeout,
        cwd=cwd,
    )
