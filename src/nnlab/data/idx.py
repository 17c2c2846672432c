"""Read and write the IDX format of the original MNIST files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

# Original file names, as torchvision keeps them in MNIST/raw.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# md5 of the four original (uncompressed) files.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

_UBYTE = 0x08


class DataError(ValueError):
    """Data that is missing, corrupted or not what was expected."""


def encode(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + array.tobytes()


def decode(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The uint8 array in IDX bytes; DataError when the header and size disagree."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DataError(f"{name}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{name}: IDX header says {expected} bytes for shape {shape}, file has {len(data)}")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header_len).reshape(shape)  # writable copy


def read(path: Path) -> np.ndarray:
    return decode(Path(path).read_bytes(), str(path))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
