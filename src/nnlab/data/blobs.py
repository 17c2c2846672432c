"""The 2-D "blobs" data set: make_blobs, standardised, split into train/validation."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from nnlab.config.paths import replace_dir
from nnlab.config.schema import check
from nnlab.data.idx import DataError, read_bytes
from nnlab.errors import BLOBS_REPAIR

REPAIR = BLOBS_REPAIR  # what to run when data/blobs is bad
FLOAT32_MAX = float(np.finfo(np.float32).max)  # training reads the points as float32


def make(n_samples: int, centers: int, n_features: int, random_state: int, test_size: float) -> dict:
    from sklearn.datasets import make_blobs
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = make_blobs(n_samples=n_samples, centers=centers, n_features=n_features, random_state=random_state)
    scaler = StandardScaler()
    x = scaler.fit_transform(x)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=test_size, random_state=random_state)
    return {
        "train": (x_train.astype(np.float32), y_train.astype(np.int64)),
        "val": (x_val.astype(np.float32), y_val.astype(np.int64)),
        "scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()},
    }


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"x{i + 1}" for i in range(x.shape[1])] + ["label"])
    rows = np.column_stack([x, y]).tolist()
    lines = [header] + [",".join([repr(float(v)) for v in r[:-1]] + [str(int(r[-1]))]) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write(out_dir: Path, data: dict) -> None:
    """train.csv, val.csv and scaler.json, written to a temporary folder beside ``out_dir`` and
    then renamed into place: on any error the previous ``out_dir`` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".blobs-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for split in ("train", "val"):
            _write_csv(tmp / f"{split}.csv", *data[split])
        (tmp / "scaler.json").write_text(json.dumps(data["scaler"], indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points float32, labels int64, line number of each row) of one CSV; one-line DataError
    naming the file and line for anything that is not what ``_write_csv`` writes."""
    try:
        text = read_bytes(path, REPAIR).decode()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file; {REPAIR}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file (no header, no rows); {REPAIR}")
    lines = text.split("\n")
    if lines[-1] != "":
        raise DataError(
            f"{path} line {len(lines)}: incomplete last line (no newline at the end: truncated file?); {REPAIR}"
        )
    lines.pop()
    header = [cell.strip() for cell in lines[0].split(",")]
    n_features = len(header) - 1
    if n_features < 1 or header != [f"x{i + 1}" for i in range(n_features)] + ["label"]:
        raise DataError(f"{path} line 1: header {lines[0][:60]!r} is not x1,...,xN,label; {REPAIR}")
    if len(lines) == 1:
        raise DataError(f"{path}: header only, no data rows; {REPAIR}")
    x = np.empty((len(lines) - 1, n_features), dtype=np.float64)
    y = np.empty(len(lines) - 1, dtype=np.int64)
    for row, line in enumerate(lines[1:]):
        number = row + 2
        cells = line.split(",")
        if len(cells) != n_features + 1:
            raise DataError(
                f"{path} line {number}: {len(cells)} columns, expected {n_features + 1} "
                f"(truncated or malformed row); {REPAIR}"
            )
        for col, cell in enumerate(cells):
            name = header[col]
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{path} line {number}, column {name}: {cell.strip()[:30]!r} is not a number; {REPAIR}"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{path} line {number}, column {name}: {cell.strip()} is not a finite number; {REPAIR}")
            if col < n_features:
                if abs(value) > FLOAT32_MAX:  # finite as float64, inf once training reads it
                    raise DataError(
                        f"{path} line {number}, column {name}: {cell.strip()} overflows float32, the type "
                        f"training reads the data as (largest {FLOAT32_MAX:.4g}); the data is at fault: {REPAIR}"
                    )
                x[row, col] = value
            elif value != int(value) or not cell.strip().lstrip("+-").isdigit():
                raise DataError(f"{path} line {number}, column label: {cell.strip()} is not an integer class; {REPAIR}")
            elif value < 0:
                raise DataError(f"{path} line {number}, column label: {cell.strip()} is negative; {REPAIR}")
            else:
                y[row] = int(value)
    return x.astype(np.float32), y, np.arange(2, len(lines) + 1)


def _check_labels(tables: dict[str, tuple[Path, np.ndarray, np.ndarray]]) -> None:
    """make_blobs gives every class 0..K-1 the same number of points (±1) over train + val.
    A class that is missing, or one far rarer than the rest, means a changed label."""
    counts = np.bincount(np.concatenate([y for _, y, _ in tables.values()]))
    present = np.flatnonzero(counts)
    folder = next(iter(tables.values()))[0].parent
    names = " and ".join(path.name for path, _, _ in tables.values())
    if len(present) < 2:
        raise DataError(
            f"{folder}: every row of {names} has label {present[0]}, blobs need at least 2 classes; {REPAIR}"
        )
    if counts.min() > 0 and counts.max() - counts.min() <= 1:
        return
    typical = np.median(counts[present])
    outliers = [c for c in present if counts[c] * 2 < typical]
    if outliers:  # a class far rarer than the rest: point at its first row
        others = counts[[c for c in present if c not in outliers]]
        for path, y, line_numbers in tables.values():
            hits = np.flatnonzero(np.isin(y, outliers))
            if hits.size:
                label = int(y[hits[0]])
                raise DataError(
                    f"{path} line {line_numbers[hits[0]]}, column label: class {label} occurs {counts[label]} "
                    f"time(s) in {names} while the other classes occur {others.min()}-{others.max()} times "
                    f"(a corrupted label?); {REPAIR}"
                )
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise DataError(
            f"{folder}: labels {missing.tolist()} never occur in {names}, but the labels must "
            f"be 0..{len(counts) - 1}; {REPAIR}"
        )
    raise DataError(
        f"{folder}: the classes 0..{len(counts) - 1} occur {counts.tolist()} times in {names}, "
        f"but make_blobs gives each class the same number of points (a changed label?); {REPAIR}"
    )


def _check_scaler(path: Path, n_features: int) -> None:
    try:
        scaler = json.loads(path.read_text())
        mean, scale = np.asarray(scaler["mean"], dtype=np.float64), np.asarray(scaler["scale"], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise DataError(f"{path}: not a scaler file with 'mean' and 'scale' lists; {REPAIR}") from None
    if mean.shape != (n_features,) or scale.shape != (n_features,):
        raise DataError(
            f"{path}: mean and scale must have {n_features} values (one per column of the CSVs), "
            f"got {mean.size} and {scale.size}; {REPAIR}"
        )
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise DataError(f"{path}: mean and scale must be finite and scale > 0; {REPAIR}")


def _check_standardised(tables: dict[str, tuple[Path, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """prepare_blobs writes the points standardised (mean 0, standard deviation 1 over train + val).
    No standardised value of n points lies farther than sqrt(n - 1) from 0 (Samuelson's
    inequality), so one that does was changed after preparing: it would train to an enormous
    loss and be reported as a success (1e30: loss 1.6e27), or overflow (1e39) and look like a
    learning rate that is too high."""
    n = sum(len(x) for _, x, _, _ in tables.values())
    bound = math.sqrt(max(n - 1, 1)) * (1 + 1e-6)
    for path, x, _, line_numbers in tables.values():
        far = np.argwhere(np.abs(x.astype(np.float64)) > bound)
        if far.size:
            row, col = far[0]
            raise DataError(
                f"{path} line {line_numbers[row]}, column x{col + 1}: {float(x[row, col]):.6g} is not a "
                f"standardised value (|x| <= sqrt({n} - 1) = {bound:.4g} for {n} points); the data is at fault: {REPAIR}"
            )


def load(data_dir: Path, check_labels: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(points float32, labels) for train and val; the validation split is also the test split.

    Every problem is a one-line DataError naming the file (and line) and `dvc repro prepare_blobs`:
    a missing, empty, header-only or truncated CSV, a non-numeric or non-finite cell, a negative
    or non-integer label, CSVs with different columns, a bad scaler.json (checked when present)
    and, with ``check_labels``, classes that are not the balanced 0..K-1 that make_blobs writes.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "train.csv").is_file():
        raise DataError(f"no prepared blobs in {data_dir}: run `dvc repro prepare_blobs` first")
    tables = {}
    for split in ("train", "val"):
        path = data_dir / f"{split}.csv"
        x, y, line_numbers = _read_csv(path)
        tables[split] = (path, x, y, line_numbers)
    n_features = tables["train"][1].shape[1]
    if tables["val"][1].shape[1] != n_features:
        raise DataError(
            f"{tables['val'][0]}: {tables['val'][1].shape[1]} feature columns but train.csv has {n_features}; {REPAIR}"
        )
    if (data_dir / "scaler.json").exists():
        _check_scaler(data_dir / "scaler.json", n_features)
    _check_standardised(tables)
    if check_labels:
        _check_labels({split: (path, y, lines) for split, (path, _, y, lines) in tables.items()})
    out = {split: (x, y) for split, (_, x, y, _) in tables.items()}
    out["test"] = out["val"]
    return out


@dataclass
class BlobsParams:
    """The ``blobs:`` section of params.yaml, the prepare_blobs stage's settings (checked by
    ``nnlab.config.schema.check_section`` before anything is written); ``make``'s arguments."""

    n_samples: int = MISSING
    centers: int = MISSING
    n_features: int = MISSING
    random_state: int = MISSING
    test_size: float = MISSING  # the validation split's fraction

    def __post_init__(self):
        check(self.centers >= 2, "centers", f"must be an integer >= 2, got {self.centers}")
        check(self.n_features >= 1, "n_features", f"must be an integer >= 1, got {self.n_features}")
        least = 2 * self.centers
        check(
            self.n_samples >= least,
            "n_samples",
            f"must be an integer >= 2 * blobs.centers = {least}, got {self.n_samples}",
        )
        check(
            0 <= self.random_state <= 2**32 - 1,
            "random_state",
            f"must be an integer in 0..4294967295, got {self.random_state}",
        )
        check(0 < self.test_size < 1, "test_size", f"must be a number in (0, 1), got {self.test_size}")  # nan fails too
        n_test = math.ceil(self.test_size * self.n_samples)  # as train_test_split counts them
        n_train = math.floor((1 - self.test_size) * self.n_samples)
        check(
            n_train >= 1 and n_test >= 1,
            "test_size",
            f"{self.test_size!r} of {self.n_samples} samples leaves {n_train} for training and {n_test} "
            "for validation; both need at least 1",
        )
