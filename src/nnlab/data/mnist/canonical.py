"""Writing the canonical form: raw/ (the four IDX files), split.npz (the train/validation
indices into the 60,000 training images) and manifest.json, all at once or not at all."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nnlab.config.paths import replace_dir
from nnlab.data import idx
from nnlab.data.idx import FILES, OFFICIAL_MD5, DataError
from nnlab.data.mnist.checks import verify


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < val_size < n:
        raise DataError(f"mnist.val_size must be between 1 and {n - 1}; got {val_size}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def prepare(
    out_dir: Path,
    files: dict[str, bytes],
    source: str,
    val_size: int,
    seed: int,
    expected_md5: dict[str, str] | None = None,
) -> dict:
    """Verify, then write the canonical form atomically: on any error nothing is written."""
    expected_md5 = OFFICIAL_MD5 if expected_md5 is None else expected_md5
    arrays = verify(files, expected_md5)
    train_labels = arrays[FILES["train_labels"]]
    train_idx, val_idx = split_indices(len(train_labels), val_size, seed)
    manifest = {
        "source": source,
        "md5": {name: idx.md5(data) for name, data in sorted(files.items())},
        "counts": {
            "train": int(len(train_idx)),
            "val": int(len(val_idx)),
            "test": int(len(arrays[FILES["test_labels"]])),
        },
        "label_counts": {
            "train": np.bincount(train_labels[train_idx], minlength=10).tolist(),
            "val": np.bincount(train_labels[val_idx], minlength=10).tolist(),
            "test": np.bincount(arrays[FILES["test_labels"]], minlength=10).tolist(),
        },
        "split": {"val_size": val_size, "seed": seed},
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mnist-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        (tmp / "raw").mkdir()
        for name, data in files.items():
            (tmp / "raw" / name).write_bytes(data)
        np.savez(tmp / "split.npz", train=train_idx, val=val_idx)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
