"""Small output helpers shared by the entry points: JSON files, git facts, the end summary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def git_tags(root: Path) -> dict:
    """The commit and whether the work tree had changes, when ``root`` is in a git repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def print_summary(summary: dict, places: dict) -> None:
    table = Table(title=f"nnlab: {summary.get('name')}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key in ("parameters", "epochs", "best_epoch", "best_val_acc", "test_acc", "train_seconds",
                "mean_samples_per_second"):
        if summary.get(key) is not None:
            table.add_row(key.replace("_", " "), _fmt(summary[key]))
    for key, value in places.items():
        table.add_row(key, str(value))
    console.print(table)
