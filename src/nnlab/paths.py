"""Where the project's root is, so that every entry point resolves the same absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

MARKERS = ("dvc.yaml", "params.yaml")


def find_root(start: str | Path | None = None) -> Path:
    """``NNLAB_ROOT``, else ``DVC_ROOT``, else the nearest folder above ``start`` with a dvc.yaml."""
    for var in ("NNLAB_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in MARKERS):
            return folder
    return here


OmegaConf.register_new_resolver("nnlab_root", lambda: str(find_root()), replace=True)
