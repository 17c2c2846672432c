"""The project's root and every output folder: the one place that decides where files go."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _is_root(folder: Path) -> bool:
    return (folder / ".dvc").is_dir() or (folder / "conf" / "train.yaml").is_file()


def find_root(start: str | Path | None = None) -> Path:
    """``NNLAB_ROOT``, else ``DVC_ROOT``, else the nearest folder above ``start`` that holds the
    project (a ``.dvc/`` or ``conf/train.yaml``; reference/ has a dvc.yaml but is not the root),
    else the nearest with a params.yaml, else ``start``."""
    for var in ("NNLAB_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    here = Path(start or os.getcwd()).resolve()
    folders = (here, *here.parents)
    for folder in folders:
        if _is_root(folder):
            return folder
    return next((f for f in folders if (f / "params.yaml").is_file()), here)


def register_resolvers() -> None:
    """``${nnlab_root:}`` in conf/paths/*.yaml; called by the composer before Hydra composes."""
    if not OmegaConf.has_resolver("nnlab_root"):
        OmegaConf.register_new_resolver("nnlab_root", lambda: str(find_root()))


def conf_dir() -> Path:
    """The project's conf/ (where a DVC stage or a test runs), else the one beside this package."""
    here = find_root() / "conf"
    return here if (here / "train.yaml").is_file() else Path(__file__).resolve().parents[3] / "conf"


@dataclass
class Outputs:
    """Where one run's model, metrics and plots go."""

    models: Path
    metrics: Path
    plots: Path

    @classmethod
    def canonical(cls, paths: DictConfig, name: str) -> Outputs:
        """models/<name>, metrics/<name>, plots/<name>: what the DVC stages declare."""
        return cls(*(Path(paths[k]) / name for k in ("models_dir", "metrics_dir", "plots_dir")))

    @classmethod
    def in_folder(cls, base: Path) -> Outputs:
        return cls(base / "models", base / "metrics", base / "plots")

    def make(self) -> Outputs:
        for folder in (self.models, self.metrics, self.plots):
            folder.mkdir(parents=True, exist_ok=True)
        return self
