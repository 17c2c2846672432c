"""The package's shape: the top holds only entry points, no stage imports another, and every
stage's dvc.yaml deps cover all the code it imports (so DVC re-runs it when that code changes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers import REPO

SRC = REPO / "src"
PACKAGE = SRC / "nnlab"
NOT_STAGES = ("__init__", "errors")  # errors.py: the error policy every stage shares
STAGES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in NOT_STAGES)


def imported_modules(path: Path) -> set[str]:
    """Every nnlab module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnlab"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from nnlab.x import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nnlab"))
    return found


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(stage: str) -> set[Path]:
    """The files of a stage and of everything it imports, transitively (with package __init__s)."""
    seen: set[Path] = set()
    todo = [PACKAGE / f"{stage}.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way run their __init__
                file = module_file(".".join(parts[:i]))
                if file:
                    todo.append(file)
    return seen


def stage_deps() -> dict[str, list[str]]:
    """python -m nnlab.<stage> -> the src deps its dvc.yaml stages declare."""
    deps: dict[str, list[str]] = {}
    for dvc_file in (REPO / "dvc.yaml", REPO / "reference" / "dvc.yaml"):
        for spec in yaml.safe_load(dvc_file.read_text())["stages"].values():
            spec = spec.get("do", spec)
            module = spec["cmd"].split("python -m nnlab.")[1].split()[0]
            deps.setdefault(module, []).extend(d for d in spec["deps"] if d.startswith("src/"))
    return deps


def test_the_top_of_the_package_holds_only_entry_points():
    for stage in STAGES:
        text = (PACKAGE / f"{stage}.py").read_text()
        assert 'if __name__ == "__main__":' in text, f"nnlab/{stage}.py is not an entry point: move it into a wing"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_never_imports_another_stage(stage):
    others = {f"nnlab.{s}" for s in STAGES} - {f"nnlab.{stage}"}
    for path in closure(stage):
        assert not imported_modules(path) & others, f"{path.relative_to(REPO)} imports a stage"


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_every_stage_declares_the_code_it_imports(stage):
    declared = [REPO / d for d in stage_deps()[stage]]
    missing = [
        p.relative_to(REPO)
        for p in closure(stage) - {PACKAGE / "__init__.py"}
        if not any(p == d or d in p.parents for d in declared)
    ]
    assert missing == [], f"dvc.yaml stages running nnlab.{stage} do not declare {missing}"


def test_the_check_sees_a_missing_dep():
    """The checker itself: train imports tracking, so deps without it must be caught."""
    files = closure("train")
    assert PACKAGE / "tracking" / "record.py" in files and PACKAGE / "data" / "integrity.py" in files


def test_the_committed_lock_matches_the_code_and_params():
    """dvc.lock holds the hashes of each stage's code, config and params when the pipeline last
    ran: a commit that changes them without re-running it (`make repro`) is stale, and fails here.
    Outputs and data absent from a fresh clone (DVC's cache is not in git) are not staleness."""
    import json
    import subprocess

    from helpers import venv_env

    status = subprocess.run(
        ["dvc", "status", "--json", "dvc.yaml"], cwd=REPO, capture_output=True, text=True, env=venv_env(), timeout=120
    )
    assert status.returncode == 0, status.stderr
    generated = ("data/", "models/", "metrics", "plots")  # produced by stages, or absent in a fresh clone
    stale = []
    for stage, changes in json.loads(status.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):  # "changed command", ...
                stale.append(f"{stage}: {change}")
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict) or (state == "modified" and not path.startswith(generated)):
                    stale.append(f"{stage}: {path} {state}")
    assert not stale, "dvc.lock is stale (run `make repro` and commit dvc.lock, metrics/, plots/): " + "; ".join(stale)


def test_the_comparison_plots_name_every_mnist_experiment():
    """dvc.yaml's comparison `plots` draw each MNIST experiment of params.yaml (blobs, another
    task, stays out); no top-level `params`: `dvc exp show` holds reports/hyperparameters.yaml."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    experiments = yaml.safe_load((REPO / "params.yaml").read_text())["experiments"]
    mnist = {e for e, spec in experiments.items() if spec["data"] == "mnist"}
    assert "params" not in pipeline
    for plot in pipeline["plots"]:
        ((name, spec),) = plot.items()
        assert set(spec["y"]) == {f"plots/{e}/history.csv" for e in mnist}, name
