"""Shared fixtures: small synthetic data in the canonical form, composed configs, MLflow stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnlab.data import blobs, mnist

from helpers import write_idx_dir


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
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # short runs get samples too
    return root


@pytest.fixture
def compose(project):
    """compose(*overrides): the config @hydra.main would build, rooted in the test project."""
    from nnlab.config.compose import compose_config

    def _compose(*overrides: str):
        return compose_config([*overrides, "trainer=cpu", "trainer.enable_progress_bar=false", "outputs=canonical"])

    return _compose
