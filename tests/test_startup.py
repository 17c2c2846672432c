"""Start-up structure: the stages that do not train import neither Lightning nor MLflow (nor
torch where they need none), and --help composes no training. Checked by importing in a fresh
interpreter and reading sys.modules; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, run_module, venv_env

HEAVY = ("torch", "lightning", "mlflow", "torchmetrics", "matplotlib", "optuna")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=venv_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("nnlab.prepare_mnist", set()),
        ("nnlab.prepare_blobs", set()),
        ("nnlab.compare", set()),  # matplotlib only once a figure is drawn
        ("nnlab.predict", set()),
        ("nnlab.evaluate", set()),  # torch when it scores, MLflow only when tracking
        ("nnlab.train", set()),  # Lightning, torch and MLflow when a run starts
        ("nnlab.bench", set()),
        ("nnlab.config.compose", set()),
    ],
)
def test_importing_a_stage_loads_no_heavy_module(module, allowed):
    assert loaded_after(f"import {module}") <= allowed


def test_help_of_the_hydra_stages_loads_no_heavy_module():
    code = (
        "import runpy, sys\nsys.argv = ['nnlab.train', '--help', 'experiment=mnist_cnn']\n"
        "try:\n    runpy.run_module('nnlab.train', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    assert loaded_after(code) == set()


def test_help_lists_the_groups_and_the_composed_config():
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.train", "--help", "experiment=mnist_cnn"],
        capture_output=True,
        text=True,
        env=venv_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "  model: cnn, linear, mlp, numpy_mlp" in proc.stdout
    assert "  trainer: auto, cpu, ddp, gpu, mps" in proc.stdout
    assert "Config with experiment=mnist_cnn" in proc.stdout and "name: mnist_cnn" in proc.stdout


def test_the_schema_names_the_networks_activations():
    from nnlab.config.schema import ACTIVATIONS as named
    from nnlab.models.networks import ACTIVATIONS

    assert tuple(named) == tuple(ACTIVATIONS)


def _imported(importtime_report: str) -> set[str]:
    """The top-level packages a ``python -X importtime`` process imported, from its report."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_report.splitlines()
        if line.startswith("import time:")
    }


def test_an_untracked_training_and_evaluation_import_no_mlflow(project):
    """logger=none: neither the training nor the evaluation imports MLflow (Hydra's sweep
    callback and the recording module import it only for a tracked run); a tracked one does."""
    args = ["experiment=blobs_linear", "trainer=cpu", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
    imported = {}
    for module, logger in (("nnlab.train", "none"), ("nnlab.evaluate", "none"), ("nnlab.evaluate", "mlflow")):
        if logger == "mlflow":  # evaluate records into the run that trained the checkpoint
            trained = run_module("nnlab.train", *args, "outputs=canonical", cwd=project)
            assert trained.returncode == 0, trained.stderr[-2000:]
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", module, *args, "outputs=canonical", f"logger={logger}"],
            capture_output=True,
            text=True,
            env=venv_env(),
            cwd=project,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported[module, logger] = _imported(proc.stderr) & {"torch", "lightning", "mlflow"}
    assert (project / "metrics" / "blobs_linear" / "test.json").is_file()
    assert imported == {
        ("nnlab.train", "none"): {"torch", "lightning"},
        ("nnlab.evaluate", "none"): {"torch"},
        ("nnlab.evaluate", "mlflow"): {"torch", "mlflow"},
    }
