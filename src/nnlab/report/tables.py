"""Tables in files and on the terminal: JSON and CSV reading and writing, the end-of-run summary."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

console = Console()


@contextmanager
def results_needed(prog: str, root: Path, fix: str) -> Iterator[None]:
    """A report read outside the pipeline (by hand, before its inputs exist): a missing results
    file is one line naming it and ``fix``, not a traceback."""
    try:
        yield
    except FileNotFoundError as exc:
        from nnlab.errors import fail

        missing = Path(exc.filename)
        shown = missing.relative_to(root) if missing.is_relative_to(root) else missing
        fail(prog, f"{shown} is missing: {fix}")


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it and a rename: a reader (or a later
    stage) sees the old file or the whole new one, never half of it (a full disk, a kill)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_yaml(path: Path, data: dict) -> None:
    write_atomically(Path(path), yaml.safe_dump(data, sort_keys=False))


def read_training(metrics_dir: Path) -> dict:
    """A training's train.json with its run's ``reference`` id from params.yaml beside it
    (results written before params.yaml existed carry it inside train.json)."""
    train = read_json(Path(metrics_dir) / "train.json")
    params = Path(metrics_dir) / "params.yaml"
    if params.is_file():
        train["reference"] = (yaml.safe_load(params.read_text()) or {}).get("reference")
    return train


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def print_summary(name: str, summary: dict, places: dict) -> None:
    table = Table(title=f"nnlab: {name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "parameters",
        "epochs",
        "best_epoch",
        "best_val_acc",
        "test_acc",
        "train_seconds",
        "mean_samples_per_second",
    ):
        if summary.get(key) is not None:
            table.add_row(key.replace("_", " "), _cell(summary[key]))
    for key, value in places.items():
        table.add_row(key, str(value))
    console.print(table)


def six_digits(value: float) -> float:
    """A measurement as nnlab writes it: 6 significant digits (a float32's noise beyond them
    dropped: 0.9826, not 0.98259997). history.csv, train.json and MLflow's epoch metrics agree."""
    return float(f"{value:.6g}")


def write_rows(path: Path, rows: list[dict], columns) -> None:
    """A CSV with ``columns`` in order; floats to 6 significant digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k) for k in columns})


def read_history(path: Path) -> list[dict]:
    """A history.csv as rows of floats (None for empty cells)."""
    with Path(path).open() as handle:
        return [
            {k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(handle)
        ]
