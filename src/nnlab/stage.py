"""Helpers for the small argparse stages: reading their section of params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from nnlab.paths import find_root


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
