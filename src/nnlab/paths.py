"""Where the project's root is, so that every entry point resolves the same absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

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


OmegaConf.register_new_resolver("nnlab_root", lambda: str(find_root()), replace=True)
