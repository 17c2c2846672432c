"""The 2-D "blobs" data set: make_blobs, standardised, split into train/validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnlab.data.idx import DataError


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        _write_csv(out_dir / f"{split}.csv", *data[split])
    (out_dir / "scaler.json").write_text(json.dumps(data["scaler"], indent=2) + "\n")


def load(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(points float32, labels) for train and val; the validation split is also the test split."""
    data_dir = Path(data_dir)
    if not (data_dir / "train.csv").is_file():
        raise DataError(f"no prepared blobs in {data_dir}: run `dvc repro prepare_blobs` first")
    out = {}
    for split in ("train", "val"):
        table = np.loadtxt(data_dir / f"{split}.csv", delimiter=",", skiprows=1, ndmin=2)
        out[split] = (table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64))
    out["test"] = out["val"]
    return out
