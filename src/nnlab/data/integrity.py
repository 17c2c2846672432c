"""Fingerprints and safe replacement of the prepared data folders (data/mnist, data/blobs).

``data_hash`` hashes the data bytes themselves, so a run tagged with it records exactly what
it was trained on: a flipped pixel, a changed label or another split gives another hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nnlab.data.idx import FILES, DataError
from nnlab.errors import BLOBS_REPAIR, MNIST_REPAIR

# The files whose bytes make up each prepared data set, relative to its folder, sorted.
MNIST_DATA_FILES = tuple(sorted([*(f"raw/{name}" for name in FILES.values()), "split.npz"]))
BLOBS_DATA_FILES = ("scaler.json", "train.csv", "val.csv")

_CHUNK = 1 << 20


def data_files(data_dir: str | Path) -> list[Path]:
    """The data files of a prepared MNIST (raw IDX files + split.npz) or blobs folder (CSVs +
    scaler.json), or every file of another data set's folder, in sorted order; a one-line
    DataError when the folder or one of MNIST's or the blobs' files is missing."""
    data_dir = Path(data_dir)
    if (data_dir / "manifest.json").is_file() or (data_dir / "raw").is_dir():
        names, remedy = MNIST_DATA_FILES, MNIST_REPAIR
    elif any((data_dir / name).exists() for name in BLOBS_DATA_FILES):
        names, remedy = BLOBS_DATA_FILES, BLOBS_REPAIR
    elif data_dir.is_dir() and any(p.is_file() for p in data_dir.rglob("*")):
        # a data set added to nnlab (docs/extending.md): every file in its folder
        return sorted((p for p in data_dir.rglob("*") if p.is_file()), key=lambda p: p.relative_to(data_dir).as_posix())
    else:
        raise DataError(
            f"{data_dir}: no prepared MNIST (manifest.json, raw/) or blobs (train.csv) here; "
            "run `dvc repro prepare_mnist` or `dvc repro prepare_blobs`"
        )
    paths = [data_dir / name for name in names]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file is missing; {remedy}")
    return paths


def data_hash(data_dir: str | Path) -> str:
    """md5 (hex) over the data bytes of a prepared folder (see ``data_files``).

    For each file in sorted order: its path relative to ``data_dir`` (with '/'), a NUL byte,
    its size as 8 big-endian bytes, then its contents. Metadata (manifest.json) is left out,
    so the hash depends on the data alone, not on where it was downloaded from.
    """
    data_dir = Path(data_dir)
    digest = hashlib.md5()
    for path in data_files(data_dir):
        digest.update(path.relative_to(data_dir).as_posix().encode() + b"\0")
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
