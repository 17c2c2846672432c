"""Loading the canonical form, checked: every problem is a one-line DataError naming the file
and how to repair it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnlab.data import idx
from nnlab.data.idx import FILES, DataError
from nnlab.errors import MNIST_REPAIR


def _manifest_md5(data_dir: Path) -> dict[str, str]:
    path = data_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable MNIST manifest ({type(exc).__name__}); {MNIST_REPAIR}") from None
    md5s = manifest.get("md5") if isinstance(manifest, dict) else None
    if not isinstance(md5s, dict) or not all(isinstance(md5s.get(name), str) for name in FILES.values()):
        raise DataError(f"{path}: has no md5 for each of the four raw files; {MNIST_REPAIR}")
    return md5s


def _read_raw(data_dir: Path, md5s: dict[str, str] | None) -> dict[str, np.ndarray]:
    """The four IDX arrays of ``data_dir/raw``, structure-checked, then md5-checked against ``md5s``."""
    arrays = {}
    for key, name in FILES.items():
        path = data_dir / "raw" / name
        data = idx.read_bytes(path, MNIST_REPAIR)
        arrays[key] = idx.decode(data, str(path), MNIST_REPAIR)
        if md5s is not None:
            got = idx.md5(data)
            if got != md5s[name]:
                raise DataError(
                    f"{path}: md5 {got} does not match {md5s[name]} in manifest.json "
                    f"(corrupted or changed file); {MNIST_REPAIR}"
                )
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = data_dir / "raw" / FILES[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{where}: {labels.shape} labels do not fit the images {images.shape} "
                f"of {FILES[f'{split}_images']}; {MNIST_REPAIR}"
            )
        if len(labels) and labels.max() > 9:
            bad = int(np.argmax(labels > 9))
            raise DataError(f"{where}: label {int(labels[bad])} of item {bad} is not a digit 0-9; {MNIST_REPAIR}")
    return arrays


def load_split(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices from split.npz, checked to be disjoint integer indices below ``n``."""
    path = Path(path)
    remedy = MNIST_REPAIR
    if not path.is_file():
        raise DataError(f"{path}: file is missing; {remedy}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            train, val = np.asarray(npz["train"]), np.asarray(npz["val"])
    except (KeyError, TypeError, AttributeError):  # TypeError/AttributeError: a plain .npy array
        raise DataError(f"{path}: not a split file (needs the arrays 'train' and 'val'); {remedy}") from None
    except Exception as exc:  # BadZipFile, ValueError (pickled or garbage bytes), OSError, EOFError
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}); {remedy}") from None
    for key, part in (("train", train), ("val", val)):
        if part.ndim != 1 or not np.issubdtype(part.dtype, np.integer) or len(part) == 0:
            raise DataError(
                f"{path}: '{key}' must be a non-empty 1-D integer index array, got {part.dtype} {part.shape}; {remedy}"
            )
        if part.min() < 0 or part.max() >= n:
            raise DataError(f"{path}: '{key}' has indices outside 0..{n - 1}; {remedy}")
    if np.intersect1d(train, val).size:
        raise DataError(f"{path}: 'train' and 'val' share images; {remedy}")
    return train, val


def load(data_dir: Path, check_md5: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images uint8 (n, 28, 28), labels) for train, val and test from the canonical form.

    Every problem is a one-line DataError naming the file and what to run: a missing or
    malformed raw file, a raw file whose md5 differs from manifest.json (``check_md5``), a
    missing or malformed split.npz.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").is_file():
        raise DataError(f"no prepared MNIST in {data_dir}: run `dvc repro prepare_mnist` first")
    md5s = _manifest_md5(data_dir) if check_md5 else None
    raw = _read_raw(data_dir, md5s)
    train_x, train_y = raw["train_images"], raw["train_labels"]
    train_idx, val_idx = load_split(data_dir / "split.npz", len(train_y))
    return {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": (raw["test_images"], raw["test_labels"]),
    }
