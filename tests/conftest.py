"""Shared fixtures: small synthetic data in the canonical form, composed configs, MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nnlab.data import blobs, idx, mnist

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


@pytest.fixture
def raw_dir(tmp_path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "raw_mnist"
    return folder, write_idx_dir(folder)


@pytest.fixture
def project(tmp_path, raw_dir, monkeypatch) -> Path:
    """A project root in tmp_path with prepared synthetic MNIST and blobs; runs are tracked there."""
    root = tmp_path / "project"
    folder, md5s = raw_dir
    mnist.prepare(root / "data" / "mnist", mnist.from_dir(folder), "dir", val_size=100, seed=0, expected_md5=md5s)
    blobs.write(root / "data" / "blobs", blobs.make(500, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")  # marks the root for find_root()
    monkeypatch.setenv("NNLAB_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def compose(project):
    """compose(*overrides): the config @hydra.main would build, rooted in the test project."""
    from nnlab.cli import compose_config

    def _compose(*overrides: str):
        return compose_config([*overrides, "trainer=cpu", "trainer.enable_progress_bar=false"])

    return _compose


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin/ first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(os.sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env
