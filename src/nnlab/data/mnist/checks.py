"""Checking MNIST before anything is written: the fetched bytes (md5s, IDX structure, labels)
and the schema of the ``mnist:`` section of params.yaml (the prepare_mnist stage checks it first)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from nnlab.config.schema import check
from nnlab.data import idx
from nnlab.data.idx import FILES, OFFICIAL_MD5, DataError
from nnlab.data.mnist.sources import SOURCES

N_TRAIN = 60_000  # images in the original training file


def verify(files: dict[str, bytes], expected_md5: dict[str, str]) -> dict[str, np.ndarray]:
    """Check md5s and IDX structure; return the decoded arrays by original file name."""
    for name, want in expected_md5.items():
        got = idx.md5(files[name])
        if got != want:
            raise DataError(f"{name}: md5 {got} does not match the expected {want} (corrupted or wrong file)")
    arrays = {name: idx.decode(data, name) for name, data in files.items()}
    for split in ("train", "test"):
        images = arrays[FILES[f"{split}_images"]]
        labels = arrays[FILES[f"{split}_labels"]]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{split}: images {images.shape} and labels {labels.shape} do not match")
        if labels.max(initial=0) > 9:
            raise DataError(f"{split}: labels must be 0-9, found {labels.max()}")
    return arrays


@dataclass
class MnistParams:
    """The ``mnist:`` section of params.yaml, the prepare_mnist stage's settings (checked by
    ``nnlab.config.schema.check_section`` before anything is fetched or written)."""

    source: str = MISSING  # one of SOURCES
    dir: str | None = MISSING  # the folder with the four IDX files, for source: dir
    val_size: int = MISSING  # validation images carved from the training images
    seed: int = MISSING
    md5: dict[str, str] | None = None  # IDX file name -> md5; None: the official md5s

    def __post_init__(self):
        check(self.source in SOURCES, "source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check(self.dir is None or bool(self.dir.strip()), "dir", f"must be null or a folder path, got {self.dir!r}")
        if self.source == "dir":
            check(
                self.dir is not None,
                "dir",
                "required when mnist.source is dir (a folder with the four IDX files), got None",
            )
            check(Path(self.dir).is_dir(), "dir", f"{self.dir!r} is not an existing folder")
        check(
            1 <= self.val_size <= N_TRAIN - 1,
            "val_size",
            f"must be an integer in 1..{N_TRAIN - 1}, got {self.val_size}",
        )
        check(self.seed >= 0, "seed", f"must be an integer >= 0, got {self.seed}")
        if self.md5 is not None:
            for name, value in self.md5.items():
                check(name in OFFICIAL_MD5, "md5", f"unknown file {name!r}; allowed: {', '.join(OFFICIAL_MD5)}")
                hex_digits = len(value) == 32 and set(value.lower()) <= set("0123456789abcdef")
                check(hex_digits, f"md5.{name}", f"must be 32 hex digits, got {value!r}")
            self.md5 = {name: value.lower() for name, value in self.md5.items()}
