"""The small argparse stages: their command line and their section of params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from nnlab.config.paths import find_root
from nnlab.config.schema import check_section


def parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=Path, default=None, help="params file (default: <root>/params.yaml)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: <root>/{out})")
    return p


def params_section(path: Path | None, section: str) -> dict:
    path = path or find_root() / "params.yaml"
    data = yaml.safe_load(Path(path).read_text()) or {}
    if section not in data:
        raise SystemExit(f"{path}: no '{section}' section")
    return data[section]


def checked_params(path: Path | None, section: str, schema: type):
    """A prepare stage's own section of params.yaml (the only one its DVC stage declares) as its
    checked ``schema`` object; ParamsError ``<section>.<key>: ...`` if a value is refused."""
    return check_section(section, schema, params_section(path, section))


def stage_setup(
    description: str, section: str, out: str = "reports", argv: list[str] | None = None
) -> tuple[Path, dict, Path]:
    """A report stage's (project root, its params.yaml section, its output folder, created)."""
    args = parser(description, out).parse_args(argv)
    root = find_root()
    folder = args.out or root / out
    folder.mkdir(parents=True, exist_ok=True)
    return root, params_section(args.params, section), folder
