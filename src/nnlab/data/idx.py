"""Read and write the IDX format of the original MNIST files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from nnlab.errors import MNIST_REPAIR, NnlabError, joined_lines

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


class DataError(NnlabError, ValueError):
    """Data that is missing, corrupted or not what was expected.

    The message is always one line (embedded line breaks are joined with ' | '), so a
    command line can print it as is.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(joined_lines(message), *args)


def encode(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + array.tobytes()


def decode(data: bytes, name: str = "IDX data", remedy: str = "") -> np.ndarray:
    """The uint8 array in IDX bytes; DataError when the header and size disagree.

    ``remedy`` (what to run to fix it) is appended to the message after a '; '.
    """

    def fail(what: str) -> DataError:
        return DataError(f"{name}: {what}" + (f"; {remedy}" if remedy else ""))

    if len(data) < 4:
        raise fail(f"truncated IDX file ({len(data)} bytes, no complete header)")
    if data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise fail("not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise fail(f"truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header_len})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_len + math.prod(shape)
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "trailing bytes"
        raise fail(f"IDX header says {expected} bytes for shape {shape}, file has {len(data)} ({kind})")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header_len).reshape(shape)  # writable copy


def read(path: Path, remedy: str = MNIST_REPAIR) -> np.ndarray:
    """The array in an IDX file; a missing, truncated or malformed file is a one-line DataError
    that names the file and ``remedy`` (by default: re-create the prepared MNIST)."""
    return decode(read_bytes(path, remedy), str(path), remedy)


def read_bytes(path: Path, remedy: str = MNIST_REPAIR) -> bytes:
    """A prepared data file's bytes; a missing or unreadable one is a one-line DataError with ``remedy``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing; {remedy}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); {remedy}") from None


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
