"""Checking MNIST before anything is written: the fetched bytes (md5s, IDX structure, labels)
and the ``mnist:`` section of params.yaml (the prepare_mnist stage checks it first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnlab.config.schema import is_int
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


PARAM_KEYS = ("source", "dir", "val_size", "seed", "md5")


def _param_error(key: str, need: str, value: object) -> DataError:
    return DataError(f"params.yaml mnist.{key}: must be {need}, got {value!r}")


def check_params(params: dict) -> dict:
    """The ``mnist:`` section of params.yaml, checked; returns it with defaults filled in
    (source: auto, dir: None, md5: None = the official md5s). One-line DataError otherwise."""
    if not isinstance(params, dict):
        raise DataError(f"params.yaml mnist: must be a mapping of {', '.join(PARAM_KEYS)}, got {params!r}")
    unknown = sorted(set(map(str, params)) - set(PARAM_KEYS))
    if unknown:
        raise DataError(f"params.yaml mnist.{unknown[0]}: unknown key; allowed: {', '.join(PARAM_KEYS)}")
    for key in ("val_size", "seed"):
        if key not in params:
            raise DataError(f"params.yaml mnist.{key}: missing")
    source = params.get("source", "auto")
    if not isinstance(source, str) or source not in SOURCES:
        raise _param_error("source", f"one of {', '.join(SOURCES)}", source)
    directory = params.get("dir")
    if directory is not None and (not isinstance(directory, (str, Path)) or not str(directory).strip()):
        raise _param_error("dir", "null or a folder path", directory)
    if source == "dir":
        if directory is None:
            raise DataError(
                "params.yaml mnist.dir: required when mnist.source is dir (a folder with the four IDX files), got None"
            )
        if not Path(directory).is_dir():
            raise DataError(f"params.yaml mnist.dir: {str(directory)!r} is not an existing folder")
    val_size = params["val_size"]
    if not is_int(val_size) or not 1 <= val_size <= N_TRAIN - 1:
        raise _param_error("val_size", f"an integer in 1..{N_TRAIN - 1}", val_size)
    seed = params["seed"]
    if not is_int(seed) or seed < 0:
        raise _param_error("seed", "an integer >= 0", seed)
    md5 = params.get("md5")
    if md5 is not None:
        if not isinstance(md5, dict):
            raise _param_error("md5", "null or a mapping of IDX file name to md5", md5)
        for name, value in md5.items():
            if name not in OFFICIAL_MD5:
                raise DataError(f"params.yaml mnist.md5: unknown file {name!r}; allowed: {', '.join(OFFICIAL_MD5)}")
            if not isinstance(value, str) or len(value) != 32 or not set(value.lower()) <= set("0123456789abcdef"):
                raise DataError(f"params.yaml mnist.md5.{name}: must be 32 hex digits, got {value!r}")
        md5 = {name: value.lower() for name, value in md5.items()}
    return {
        "source": source,
        "dir": None if directory is None else str(directory),
        "val_size": int(val_size),
        "seed": int(seed),
        "md5": md5,
    }
